"""The labelling page in a real headless Chromium, driven by key presses over the DevTools
protocol (chromium --remote-debugging-port, aiohttp's websocket client, Input.dispatchKeyEvent),
against a real ``edge-smw label`` process; the CSV is checked after every key.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge_smw.data.datasets import load_dataset
from edge_smw.images import read_image, write_image
from tests.label_support import copy_crops, face_photos, start_label, stop, write_corrupt

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             "/usr/bin/chromium") if p and os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium chromium-driver)")
WAIT = 60.0  # seconds before a wait gives up (a failure, not a timing assertion)


class Page:
    """A minimal DevTools-protocol client for one page."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.last_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        call_id = self.last_id
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.ws.receive_json(), WAIT)
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def eval(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                if await self.eval(expression):
                    return
            except RuntimeError:  # the page is between documents
                pass
            await asyncio.sleep(0.05)
        raise AssertionError(f"the page never reached {expression!r}; it shows: "
                             f"{await self.eval('document.body.innerText')!r}")

    async def idle(self) -> None:
        await self.wait_for("window.labelApp && labelApp.ready && labelApp.pending === 0")

    async def press(self, key: str) -> None:
        """A real key press (down, up) as the keyboard sends it, then wait for the page."""
        if key.startswith("Arrow"):
            codes = {"ArrowLeft": 37, "ArrowUp": 38, "ArrowRight": 39, "ArrowDown": 40}
            down = {"type": "rawKeyDown", "key": key, "code": key,
                    "windowsVirtualKeyCode": codes[key]}
        else:
            code = f"Digit{key}" if key.isdigit() else f"Key{key.upper()}"
            down = {"type": "keyDown", "key": key, "code": code, "text": key,
                    "unmodifiedText": key, "windowsVirtualKeyCode": ord(key.upper())}
        await self.call("Input.dispatchKeyEvent", **down)
        await self.call("Input.dispatchKeyEvent", **{**down, "type": "keyUp", "text": ""})
        await self.idle()

    async def path(self) -> str:
        return await self.eval("labelApp.path()")


def labels(csv_path: Path) -> dict[str, str]:
    if not csv_path.exists():
        return {}
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "score"]
    return {row[0]: row[1] for row in rows[1:]}


def launch_chromium(profile: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text().split()[0])
        if proc.poll() is not None:
            raise AssertionError(f"chromium exited with code {proc.returncode}")
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("chromium did not open its DevTools port")


@pytest.fixture
def photos(smiles_dir: Path, tmp_path: Path) -> Path:
    """Four photos of real faces the detector finds, one real tight crop, one corrupt file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, photo in zip(("a1.png", "a2.png", "c1.png", "c2.png"),
                           face_photos(smiles_dir, 4), strict=True):
        write_image(folder / name, photo)
    write_corrupt(folder / "b_broken.jpg", smiles_dir)
    crop = next((smiles_dir / "not_smiling").glob("*.jpg"))
    write_image(folder / "c3.png", read_image(crop))
    return folder


def run_page(label_args: list[str], profile: Path, csv_path: Path,
             steps: Callable[[Page, Path, str], Awaitable[None]]) -> str:
    """``edge-smw label`` + Chromium on its page; run ``steps``; stop both; the CLI output."""
    server, url = start_label(*label_args)
    browser, port = launch_chromium(profile)
    try:
        asyncio.run(drive(url, port, csv_path, steps))
    finally:
        os.killpg(browser.pid, signal.SIGTERM)
        try:
            browser.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait(timeout=30)
        code, out = stop(server)
    assert code == 0, out
    return out


def test_keys_in_a_real_browser_label_the_csv(photos: Path, tmp_path: Path) -> None:
    csv_path = photos / "labels.csv"
    run_page([str(photos)], tmp_path / "profile", csv_path, scenario)
    dataset = load_dataset(csv_path)
    assert {item.path.name: dataset.levels[item.level] for item in dataset.items} == {
        "a1.png": "4", "a2.png": "3", "c1.png": "1"}


async def drive(url: str, port: int, csv_path: Path,
                steps: Callable[[Page, Path, str], Awaitable[None]] | None = None) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = json.loads(await response.text())
        target = next(t for t in targets if t["type"] == "page")
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            page = Page(ws)
            await page.call("Page.navigate", url=url)
            await page.idle()
            await (steps or scenario)(page, csv_path, url.split("/?", 1)[0] + "/")


async def scenario(page: Page, csv_path: Path, base: str) -> None:
    # the first photo, its face box and its crop; the poster's hints beside the keys
    assert await page.path() == "a1.png"
    await page.wait_for("document.getElementById('face').complete && "
                        "document.getElementById('face').naturalWidth > 0")
    assert await page.eval("!document.getElementById('face-box').hidden")
    levels_text = await page.eval("document.getElementById('levels').innerText")
    for word in ("hate", "dislike", "neutral", "like", "love"):
        assert word in levels_text
    assert await page.eval("location.search") == ""  # the token left the address bar

    await page.press("4")
    assert labels(csv_path) == {"a1.png": "4"}
    assert await page.path() == "a2.png"

    await page.press("2")
    assert labels(csv_path) == {"a1.png": "4", "a2.png": "2"}
    assert await page.path() == "c1.png"  # the corrupt photo between them was passed over
    assert "b_broken.jpg" in await page.eval("document.getElementById('unreadable').textContent")

    await page.press("s")
    assert labels(csv_path) == {"a1.png": "4", "a2.png": "2", "c1.png": ""}
    assert await page.path() == "c2.png"

    await page.press("u")
    assert labels(csv_path) == {"a1.png": "4", "a2.png": "2"}
    assert await page.path() == "c1.png"

    await page.press("5")
    assert labels(csv_path) == {"a1.png": "4", "a2.png": "2", "c1.png": "5"}
    await page.press("ArrowLeft")
    assert await page.path() == "c1.png"
    await page.press("ArrowLeft")
    assert await page.path() == "a2.png"  # back over the corrupt photo too
    await page.press("3")
    assert labels(csv_path) == {"a1.png": "4", "a2.png": "3", "c1.png": "5"}
    assert await page.path() == "c1.png"
    progress = await page.eval("document.getElementById('progress-text').innerText")
    assert progress == "3 labelled · 0 skipped · 5 photos (+1 unreadable)"
    counts = await page.eval(
        "[...document.querySelectorAll('#levels li')].map(li => "
        "li.querySelector('.count').textContent)")
    assert counts == ["0", "0", "1", "1", "1"]

    # another tab changed the labels meanwhile: this tab's key is refused, not applied blindly
    await page.eval("labelApp.revision = 'from-another-tab'")
    await page.press("1")
    assert labels(csv_path)["c1.png"] == "5"
    assert "Another tab" in await page.eval("document.getElementById('toast').innerText")
    assert await page.path() == "c1.png"
    await page.press("1")
    assert labels(csv_path) == {"a1.png": "4", "a2.png": "3", "c1.png": "1"}
    assert await page.path() == "c2.png"

    # a fresh page (a restart of the browser tab) resumes at the first photo not looked at
    await page.eval("window.oldPage = true")
    await page.call("Page.navigate", url=base)
    await page.wait_for("!window.oldPage && window.labelApp && labelApp.ready && "
                        "labelApp.pending === 0")
    assert await page.path() == "c2.png"
    await page.press("ArrowRight")
    assert await page.path() == "c3.png"
    assert await page.eval("!document.getElementById('no-face').hidden")  # tight crop: no face
    assert await page.eval("labelApp.lastError") is None


@pytest.mark.slow
def test_page_shows_the_models_suggestion_most_uncertain_first(
        smiles_onnx: Path, smiles_dir: Path, tmp_path: Path) -> None:
    from edge_smw.label import LabelSession

    folder = tmp_path / "crops"
    copy_crops(smiles_dir, folder, 6)
    with LabelSession(folder, model=smiles_onnx, order="uncertainty", detect=False,
                      backend="onnxruntime-cpu", labels_csv=tmp_path / "probe.csv") as session:
        order = session.order
        first = session.analyser.info(order[0]).suggestion
    assert first is not None
    csv_path = folder / "labels.csv"

    async def steps(page: Page, csv_path: Path, base: str) -> None:
        assert await page.eval("labelApp.photos.map(p => p.path)") == order
        assert await page.path() == order[0]
        await page.wait_for("!document.getElementById('suggestion').hidden")
        text = await page.eval("document.getElementById('suggestion').innerText")
        assert f"model suggests {first['level']}" in text
        suggested = await page.eval(
            "[...document.querySelectorAll('#levels li')].findIndex(li => "
            "li.classList.contains('suggested'))")
        assert suggested == first["level_index"]
        assert await page.eval("document.getElementById('levels').innerText.includes('hate')") \
            is False  # named levels: no 1..5 poster words
        await page.press("2")
        assert labels(csv_path) == {order[0]: "smiling"}
        await page.press("1")
        assert labels(csv_path) == {order[0]: "smiling", order[1]: "not_smiling"}

    run_page([str(folder), "--model", str(smiles_onnx), "--order", "uncertainty",
              "--no-detect", "--backend", "onnxruntime-cpu"], tmp_path / "profile", csv_path,
             steps)
    dataset = load_dataset(csv_path, levels=("not_smiling", "smiling"))
    assert {i.path.name: i.level for i in dataset.items} == {order[0]: 1, order[1]: 0}
