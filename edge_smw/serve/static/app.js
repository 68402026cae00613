// edge-smw serve: live page. Data from /api/events (one JSON per scored frame), the picture
// from /stream.mjpg, camera state from /healthz, captures from /api/captures.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token");
const MAX_POINTS = 150;

function withToken(url) {
  if (!token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

const el = (id) => document.getElementById(id);
const state = { levels: [], history: [], captures: null, frames: [], camera: "unknown" };

// -- stream: reconnect after errors (server restart, network) ------------------------------
function startStream() {
  const img = el("stream");
  img.onerror = () => setTimeout(startStream, 2000);
  img.src = withToken("stream.mjpg") + (token ? "&" : "?") + "t=" + Date.now();
}

// -- scores --------------------------------------------------------------------------------
function render(data) {
  if (data.levels) state.levels = data.levels;
  const best = data.best;
  if (best) {
    el("level").textContent = best.level;
    el("score").textContent = `smoothed ${best.smoothed_score.toFixed(2)} ` +
      `(raw ${best.expected_score.toFixed(2)}) of 1–${state.levels.length}`;
  } else {
    el("level").textContent = "–";
    el("score").textContent = "no face in view";
  }
  const rows = (data.faces || []).map((f) =>
    `<tr><td>${f.track}</td><td>${escapeHtml(f.smoothed_level)}</td>` +
    `<td>${f.expected_score.toFixed(2)}</td><td>${f.smoothed_score.toFixed(2)}</td></tr>`);
  el("faces").querySelector("tbody").innerHTML = rows.join("");
  if (data.frame != null) {
    state.history.push([data.frame, best ? best.smoothed_score : null]);
    if (state.history.length > MAX_POINTS) state.history.splice(0, state.history.length - MAX_POINTS);
    const now = performance.now();
    state.frames.push(now);
    while (state.frames.length && now - state.frames[0] > 5000) state.frames.shift();
    const span = (now - state.frames[0]) / 1000;
    if (state.frames.length > 1 && span > 0) {
      el("fps").textContent = `${((state.frames.length - 1) / span).toFixed(1)} scored frames/s`;
    }
  }
  drawSpark();
  if (data.captures != null && data.captures !== state.captures) loadCaptures();
}

function drawSpark() {
  const canvas = el("spark");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, k = Math.max(2, state.levels.length);
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#2c3038";
  ctx.lineWidth = 1;
  for (let level = 1; level <= k; level++) {
    const y = h - 6 - ((level - 1) / (k - 1)) * (h - 12);
    ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke();
  }
  const pts = state.history;
  if (!pts.length) return;
  ctx.strokeStyle = "#35c46a";
  ctx.lineWidth = 2;
  ctx.beginPath();
  let pen = false;
  pts.forEach(([, s], i) => {
    const x = pts.length === 1 ? w - 1 : (i / (MAX_POINTS - 1)) * w;
    if (s == null) { pen = false; return; }
    const y = h - 6 - ((s - 1) / (k - 1)) * (h - 12);
    if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    pen = true;
  });
  ctx.stroke();
  const scores = pts.map((p) => p[1]).filter((s) => s != null);
  el("range").textContent = scores.length
    ? `min ${Math.min(...scores).toFixed(2)}  max ${Math.max(...scores).toFixed(2)}  (1 = ${state.levels[0] || "lowest"}, ${k} = ${state.levels[k - 1] || "highest"})`
    : "";
}

// -- captures ------------------------------------------------------------------------------
async function loadCaptures() {
  try {
    const resp = await fetch(withToken("api/captures?limit=12"));
    if (!resp.ok) return;
    const data = await resp.json();
    state.captures = data.count;
    if (!data.enabled) {
      el("captures").innerHTML = '<p class="muted">auto-capture is off (start with --captures DIR)</p>';
      return;
    }
    el("capture-count").textContent = `${data.count} saved, threshold ${data.threshold}`;
    el("captures").innerHTML = data.captures.length ? data.captures.map((c) =>
      `<a class="capture" href="${withToken(c.image)}" target="_blank">` +
      `<img loading="lazy" src="${withToken(c.image)}" alt="capture ${escapeHtml(c.name)}">` +
      `<div>${escapeHtml((c.time || "").replace("T", " ").slice(0, 19))}<br>` +
      `best ${c.best_score != null ? c.best_score.toFixed(2) : "–"}</div></a>`).join("")
      : '<p class="muted">none yet</p>';
  } catch (err) { /* next refresh will retry */ }
}

// -- camera health -------------------------------------------------------------------------
async function checkHealth() {
  let camera = "unknown", detail = "";
  try {
    const resp = await fetch(withToken("healthz"));
    const data = await resp.json();
    camera = data.camera ? data.camera.state : "unknown";
    detail = data.camera && data.camera.last_error ? data.camera.last_error : "";
  } catch (err) {
    camera = "unreachable"; detail = "the edge-smw server does not answer";
  }
  state.camera = camera;
  const badge = el("camera");
  badge.textContent = "camera: " + camera;
  badge.className = "badge badge-" + (["live", "lost", "waiting", "ended", "stopped", "starting"].includes(camera) ? camera : "unknown");
  const banner = el("banner");
  if (camera === "live") {
    banner.hidden = true;
  } else {
    banner.hidden = false;
    banner.textContent = camera === "lost" ? "camera lost, reconnecting… " + detail
      : camera === "waiting" ? "waiting for the camera… " + detail
      : camera === "ended" ? "the video has ended" : "camera " + camera;
  }
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

async function init() {
  startStream();
  try {
    const resp = await fetch(withToken("api/latest"));
    if (resp.ok) {
      const data = await resp.json();
      state.history = (data.history || []).slice(-MAX_POINTS);
      state.levels = data.levels || [];
      render(Object.assign({}, data, { frame: null }));
    }
  } catch (err) { /* events below will fill in */ }
  const events = new EventSource(withToken("api/events"));
  events.onmessage = (e) => render(JSON.parse(e.data));
  loadCaptures();
  checkHealth();
  setInterval(checkHealth, 2000);
  setInterval(loadCaptures, 10000);
}

init();
