// edge-smw label: one photo at a time, keys 1..K score it, every change saved by the server.
"use strict";

const app = {
  state: null,       // /api/state
  photos: [],        // [{path, score}] in the session's order
  index: 0,
  direction: 1,
  revision: null,
  unreadable: new Map(),  // path -> reason
  infos: new Map(),       // path -> /api/photo answer
  queue: Promise.resolve(),
  pending: 0,        // actions queued or running (tests wait for 0)
  ready: false,
  lastError: null,
  path() { return this.photos[this.index] ? this.photos[this.index].path : null; },
};
window.labelApp = app;

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(message, status, data) { super(message); this.status = status; this.data = data; }
}

async function api(method, url, body) {
  const options = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new ApiError("The edge-smw label server is not answering. Your labels are saved; " +
                       "restart `edge-smw label` to carry on.", 0, null);
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(data.error || `HTTP ${response.status}`, response.status, data);
  return data;
}

const q = (path) => encodeURIComponent(path);

// -- state -------------------------------------------------------------------------------
async function loadState(keepPath) {
  const state = await api("GET", "/api/state");
  app.state = state;
  app.photos = state.photos.map((p) => ({ path: p.path, score: p.score }));
  app.revision = state.revision;
  for (const u of state.unreadable) app.unreadable.set(u.path, u.reason);
  const kept = keepPath ? app.photos.findIndex((p) => p.path === keepPath) : -1;
  renderLevels();
  renderSummary(state);
  renderUnreadable();
  $("where").textContent = state.photos_dir;
  $("files").textContent = `labels: ${state.labels_csv}` +
    (state.model ? ` · model: ${state.model.path} (${state.model.backend})` : "") +
    (state.order !== "name" ? ` · order: most ${state.order === "margin" ? "uncertain (margin)" : "uncertain"} first` : "");
  await show(kept >= 0 ? kept : state.position, 1);
}

function applySummary(summary) {
  app.revision = summary.revision;
  app.state.counts = summary.counts;
  app.state.labelled = summary.labelled;
  app.state.skipped = summary.skipped;
  renderSummary(app.state);
}

// -- rendering ---------------------------------------------------------------------------
function renderLevels() {
  const list = $("levels");
  list.textContent = "";
  app.state.levels.forEach((level, i) => {
    const li = document.createElement("li");
    li.dataset.level = level;
    const key = document.createElement("kbd");
    key.textContent = app.state.keys[i];
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = level;
    const hint = document.createElement("span");
    hint.className = "hint";
    hint.textContent = app.state.hints[i] || "";
    const count = document.createElement("span");
    count.className = "count";
    li.append(key, name, hint, count);
    li.addEventListener("click", () => enqueue(() => setScore(i)));
    list.append(li);
  });
  $("last-key").textContent = app.state.keys[app.state.keys.length - 1];
}

function renderSummary(state) {
  const readable = state.total - app.unreadable.size;
  const looked = state.labelled + state.skipped;
  $("progress-bar").style.width = `${readable ? (100 * looked) / readable : 0}%`;
  $("progress-text").textContent =
    `${state.labelled} labelled · ${state.skipped} skipped · ${readable} photos` +
    (app.unreadable.size ? ` (+${app.unreadable.size} unreadable)` : "");
  for (const li of $("levels").children) {
    li.querySelector(".count").textContent = state.counts[li.dataset.level] ?? 0;
  }
}

function renderUnreadable() {
  const box = $("unreadable-box");
  box.hidden = app.unreadable.size === 0;
  $("unreadable-title").textContent = `${app.unreadable.size} unreadable photo(s), skipped`;
  const list = $("unreadable");
  list.textContent = "";
  for (const [path, reason] of [...app.unreadable.entries()].sort()) {
    const li = document.createElement("li");
    li.textContent = `${path}: ${reason}`;
    list.append(li);
  }
}

function renderStatus() {
  const photo = app.photos[app.index];
  const status = $("status");
  status.textContent = "";
  const span = document.createElement("span");
  if (!photo) return;
  if (photo.score === null || photo.score === undefined) {
    span.textContent = "not labelled yet";
  } else if (photo.score === "") {
    span.className = "skipped";
    span.textContent = "skipped";
  } else {
    const i = app.state.levels.indexOf(photo.score);
    const hint = app.state.hints[i];
    span.className = "labelled";
    span.textContent = `labelled ${photo.score}${hint ? " · " + hint : ""}`;
  }
  status.append(span);
  if (allLooked()) {
    const done = document.createElement("div");
    done.className = "done";
    done.textContent = "Every photo has been looked at. Train with: edge-smw train --data " +
      `${app.state.labels_csv} --levels ${app.state.levels.join(",")}`;
    status.append(done);
  }
  for (const li of $("levels").children) {
    li.classList.toggle("current", li.dataset.level === photo.score);
  }
}

function allLooked() {
  return app.photos.every((p) => p.score !== null && p.score !== undefined ||
                                  app.unreadable.has(p.path));
}

function place(element, box, info) {
  if (!box) { element.hidden = true; return; }
  const [x, y, w, h] = box;
  element.style.left = `${(100 * x) / info.width}%`;
  element.style.top = `${(100 * y) / info.height}%`;
  element.style.width = `${(100 * w) / info.width}%`;
  element.style.height = `${(100 * h) / info.height}%`;
  element.hidden = false;
}

function renderInfo(info) {
  const detect = app.state.detect;
  place($("face-box"), detect ? info.box : null, info);
  place($("face-square"), detect ? info.square : null, info);
  const face = $("face");
  const noFace = $("no-face");
  const hasCrop = !detect || info.box;
  face.hidden = !hasCrop;
  noFace.hidden = !!hasCrop;
  if (hasCrop) {
    face.src = `/api/image?path=${q(info.path)}&kind=face`;
    $("face-caption").textContent = (app.state.model ? "what the model sees" :
      "the crop training will use") + (info.faces > 1 ? ` (largest of ${info.faces} faces)` : "");
  } else {
    noFace.textContent = "No face found: training skips this photo (unless it is run with " +
      "--no-detect). Press s to skip it, or score it anyway.";
    $("face-caption").textContent = "";
  }
  const suggestion = $("suggestion");
  for (const li of $("levels").children) li.classList.remove("suggested");
  if (info.suggestion) {
    const s = info.suggestion;
    const p = s.probabilities[s.level_index];
    suggestion.textContent = "";
    const line = document.createElement("div");
    line.textContent = `model suggests ${s.level} (${(100 * p).toFixed(0)}%), expected score ` +
      `${s.expected_score.toFixed(2)} · uncertainty ${(100 * info.entropy).toFixed(0)}%`;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${100 * p}%`;
    suggestion.append(line, bar);
    suggestion.hidden = false;
    const li = $("levels").children[s.level_index];
    if (li) li.classList.add("suggested");
  } else {
    suggestion.hidden = true;
  }
}

// -- navigation --------------------------------------------------------------------------
async function photoInfo(path) {
  if (!app.infos.has(path)) app.infos.set(path, await api("GET", `/api/photo?path=${q(path)}`));
  return app.infos.get(path);
}

function readableFrom(start, direction) {
  for (let i = start; i >= 0 && i < app.photos.length; i += direction) {
    if (!app.unreadable.has(app.photos[i].path)) return i;
  }
  return -1;
}

async function show(index, direction) {
  if (!app.photos.length) return;
  index = Math.max(0, Math.min(app.photos.length - 1, index));
  let target = readableFrom(index, direction);
  if (target < 0) target = readableFrom(index, -direction);
  if (target < 0) { renderStatus(); return; }  // nothing readable at all
  app.index = target;
  app.direction = direction;
  const path = app.photos[target].path;
  $("photo").src = `/api/image?path=${q(path)}&kind=photo`;
  $("photo-name").textContent = `${target + 1} / ${app.photos.length} · ${path}`;
  renderStatus();
  const info = await photoInfo(path);
  if (info.error) {  // found unreadable: list it and pass over it
    app.unreadable.set(path, info.error);
    renderUnreadable();
    renderSummary(app.state);
    toast(`${path} cannot be read (${info.error}); skipped`, false);
    await show(target + direction, direction);
    return;
  }
  if (app.index === target) renderInfo(info);
  prefetch(target, direction);
}

function prefetch(from, direction) {
  let i = from;
  for (let n = 0; n < 2; n++) {
    i = readableFrom(i + direction, direction);
    if (i < 0) return;
    const path = app.photos[i].path;
    photoInfo(path).then((info) => {
      if (info.error) return;
      new Image().src = `/api/image?path=${q(path)}&kind=photo`;
      if (!app.state.detect || info.box) new Image().src = `/api/image?path=${q(path)}&kind=face`;
    }).catch(() => {});
  }
}

function move(delta) {
  const next = app.index + delta;
  if (next < 0 || next >= app.photos.length || readableFrom(next, delta) < 0) {
    toast(delta > 0 ? "this is the last photo" : "this is the first photo", false);
    return Promise.resolve();
  }
  return show(next, delta);
}

function nextUnlabelled() {
  const n = app.photos.length;
  for (let step = 1; step <= n; step++) {
    const i = (app.index + step) % n;
    const p = app.photos[i];
    if ((p.score === null || p.score === undefined) && !app.unreadable.has(p.path)) {
      return show(i, 1);
    }
  }
  toast("no unlabelled photo left", false);
  return Promise.resolve();
}

// -- changes -----------------------------------------------------------------------------
async function change(url, body) {
  try {
    return await api("POST", url, { ...body, revision: app.revision });
  } catch (err) {
    if (err.status === 409) {
      await loadState(app.path());
      toast("Another tab changed the labels; this page has reloaded them. Press the key again.",
            true);
      return null;
    }
    throw err;
  }
}

async function setScore(levelIndex) {
  const photo = app.photos[app.index];
  if (!photo) return;
  const answer = await change("/api/label", { path: photo.path, score: app.state.levels[levelIndex] });
  if (!answer) return;
  photo.score = answer.change.after;
  applySummary(answer);
  await advance();
}

async function skip() {
  const photo = app.photos[app.index];
  if (!photo) return;
  const answer = await change("/api/skip", { path: photo.path });
  if (!answer) return;
  photo.score = answer.change.after;
  applySummary(answer);
  await advance();
}

async function advance() {
  if (readableFrom(app.index + 1, 1) >= 0) await show(app.index + 1, 1);
  else renderStatus();
}

async function undo() {
  const answer = await change("/api/undo", {});
  if (!answer) return;
  applySummary(answer);
  if (!answer.change) { toast("nothing to undo", false); return; }
  const i = app.photos.findIndex((p) => p.path === answer.change.path);
  if (i < 0) return;
  app.photos[i].score = answer.change.after;
  await show(i, 1);
}

// -- input -------------------------------------------------------------------------------
function enqueue(action) {
  app.pending += 1;
  app.queue = app.queue
    .then(action)
    .catch((err) => { app.lastError = err.message; toast(err.message, true); })
    .then(() => { app.pending -= 1; });
  return app.queue;
}

document.addEventListener("keydown", (event) => {
  if (!app.ready || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  const level = app.state.keys.indexOf(key);
  let action;
  if (level >= 0) action = () => setScore(level);
  else if (key === "ArrowRight") action = () => move(1);
  else if (key === "ArrowLeft") action = () => move(-1);
  else if (key === "u" || key === "U") action = undo;
  else if (key === "s" || key === "S") action = skip;
  else if (key === "n" || key === "N") action = nextUnlabelled;
  else return;
  event.preventDefault();
  if (event.repeat && !key.startsWith("Arrow")) return;  // a held key scores only once
  enqueue(action);
});

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && app.ready) {
    enqueue(() => loadState(app.path()));  // another tab may have labelled meanwhile
  }
});

let toastTimer = null;
function toast(message, isError) {
  const element = $("toast");
  element.textContent = message;
  element.className = isError ? "error" : "";
  element.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { element.hidden = true; }, isError ? 8000 : 2500);
}

enqueue(async () => {
  await loadState(null);
  app.ready = true;
});
