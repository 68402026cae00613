"""Storage faults under ``serve --captures`` and ``label``: a folder that is remounted
read-only, a disk that fills up, a folder that cannot be written at start, SIGTERM while
captures are in flight, and kill -9 in the middle of writes followed by a restart.

The faults are real: a small tmpfs is mounted for the test, filled, and remounted read-only
and back (root only; the tests skip with the reason elsewhere).
"""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import pytest

from edge_smw.label.server import TOKEN_HEADER
from tests.faults.support import (
    complete_captures,
    footage_fixture,
    plant_temp_leftovers,
    temp_files,
    tmpfs,
)
from tests.label_support import copy_crops, start_label, stop
from tests.serve_support import ServeProcess, get_json, http, metrics, wait_until

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def footage(smiles_dir, smiles_onnx, tmp_path_factory):
    return footage_fixture(smiles_dir, smiles_onnx, tmp_path_factory)


@pytest.fixture(scope="module")
def frames(footage, tmp_path_factory) -> Path:
    """A folder camera of the face footage (every other frame): at 10 fps it triggers a
    capture every second or so with the settings below."""
    return footage.write_folder(tmp_path_factory.mktemp("frames"), step=2)


def serve_capturing(smiles_onnx, frames, footage, captures: Path, *extra) -> ServeProcess:
    return ServeProcess(["--model", smiles_onnx, "--camera", frames, "--loop", "--fps", 10,
                         "--threads", 1, "--captures", captures,
                         "--threshold", footage.threshold, "--capture-frames", 1,
                         "--cooldown", 0, "--smooth", "none", "--min-free-mb", 0, *extra])


def saved(proc: ServeProcess) -> float:
    return metrics(proc.url)["edge_smw_captures_total"]


def captures_health(proc: ServeProcess) -> tuple[int, dict]:
    status, health = get_json(proc.url + "/healthz")
    return status, health


def test_read_only_remount_holds_captures_back_and_recovers(smiles_onnx, frames, footage,
                                                           tmp_path):
    with tmpfs(tmp_path / "card") as card:
        folder = card.path / "captures"
        with serve_capturing(smiles_onnx, frames, footage, folder) as proc:
            wait_until(lambda: saved(proc) >= 2, 30, what="two captures")
            card.read_only()

            def degraded():
                status, health = captures_health(proc)
                unwritable = health["captures"].get("state") == "unwritable"
                return (status, health) if unwritable else None

            status, health = wait_until(degraded, 30, what="/healthz to report the folder")
            assert status == 503 and health["status"] == "degraded"
            assert "Read-only file system" in health["captures"]["last_error"]
            assert health["camera"]["state"] == "live"  # only the storage is degraded
            wait_until(lambda: metrics(proc.url)["edge_smw_capture_write_errors_total"] >= 3,
                       30, what="the writer retrying")
            held = 'edge_smw_captures_skipped_total{reason="unwritable"}'
            wait_until(lambda: metrics(proc.url).get(held, 0) >= 1, 30,
                       what="a new capture to be held back")
            during = metrics(proc.url)
            assert during["edge_smw_capture_storage_up"] == 0

            card.read_write()
            wait_until(lambda: captures_health(proc)[0] == 200, 30,
                       what="/healthz to be ok again")
            wait_until(lambda: saved(proc) >= during["edge_smw_captures_total"] + 3, 30,
                       what="captures to be saved again")
            assert metrics(proc.url)["edge_smw_capture_storage_up"] == 1
            assert proc.stop() == 0
        log = proc.log()
        assert log.count("cannot save into") == 1, log  # one line per change of state
        assert log.count("is writable again") == 1, log
        assert "Traceback" not in log
        names = complete_captures(folder)
        assert len(names) >= during["edge_smw_captures_total"] + 3
        assert temp_files(folder) == []
        assert not [p for p in folder.glob("*.jpg") if not p.with_suffix(".json").exists()]


def test_full_disk_holds_captures_back_and_recovers(smiles_onnx, frames, footage, tmp_path):
    with tmpfs(tmp_path / "card", size="8m") as card:
        folder = card.path / "captures"
        with serve_capturing(smiles_onnx, frames, footage, folder) as proc:
            wait_until(lambda: saved(proc) >= 1, 30, what="a capture")
            filler = card.fill()

            def degraded():
                health = captures_health(proc)[1]["captures"]
                return health if health.get("state") == "unwritable" else None

            health = wait_until(degraded, 30, what="/healthz to report the full disk")
            assert "No space left on device" in health["last_error"]
            before = saved(proc)
            filler.unlink()
            wait_until(lambda: captures_health(proc)[0] == 200, 30,
                       what="/healthz to be ok again")
            wait_until(lambda: saved(proc) >= before + 2, 30, what="captures saved again")
            assert proc.stop() == 0
        assert proc.log().count("cannot save into") == 1
        complete_captures(folder)
        assert temp_files(folder) == []  # failed writes left no temporary file


def test_unwritable_captures_folder_is_refused_at_start(smiles_onnx, frames, tmp_path, capsys):
    from edge_smw.cli.main import main

    with tmpfs(tmp_path / "card") as card:
        (card.path / "captures").mkdir()
        card.read_only()
        for folder in (card.path / "captures", card.path / "new"):
            rc = main(["serve", "--model", str(smiles_onnx), "--camera", str(frames),
                       "--captures", str(folder), "--port", "0", "--threads", "1"])
            err = capsys.readouterr().err.strip()
            assert rc == 2, err
            assert str(folder) in err and "writable" in err
            assert "\n" not in err.split("error: ", 1)[-1] and "Traceback" not in err


def test_sigterm_while_the_folder_is_read_only_exits_cleanly(smiles_onnx, frames, footage,
                                                             tmp_path):
    with tmpfs(tmp_path / "card") as card:
        folder = card.path / "captures"
        proc = serve_capturing(smiles_onnx, frames, footage, folder)
        try:
            wait_until(lambda: saved(proc) >= 1, 30, what="a capture")
            card.read_only()
            wait_until(lambda: captures_health(proc)[1]["captures"].get("state") == "unwritable",
                       30, what="the folder to be reported unwritable")
            rc = proc.stop(signal.SIGTERM, timeout=30)  # captures are waiting to be written
        finally:
            proc.stop()
        card.read_write()
        assert rc == 0, proc.log()
        assert "could not be saved before exit" in proc.log()
        assert "stopped cleanly" in proc.log()
        complete_captures(folder)
        assert temp_files(folder) == []


def test_sigterm_mid_capture_leaves_only_complete_captures(smiles_onnx, frames, footage,
                                                           tmp_path):
    folder = tmp_path / "captures"
    proc = serve_capturing(smiles_onnx, frames, footage, folder)
    try:
        wait_until(lambda: saved(proc) >= 3, 30, what="captures being written")
        rc = proc.stop(signal.SIGTERM, timeout=30)
    finally:
        proc.stop()
    assert rc == 0, proc.log()
    names = complete_captures(folder)
    assert len(names) >= 3
    assert temp_files(folder) == []
    assert not [p for p in folder.glob("*.jpg") if not p.with_suffix(".json").exists()]


def test_kill_9_mid_write_then_restart_sweeps_only_our_leftovers(smiles_onnx, frames, footage,
                                                                 tmp_path):
    folder = tmp_path / "captures"
    proc = serve_capturing(smiles_onnx, frames, footage, folder)
    try:
        wait_until(lambda: saved(proc) >= 2, 30, what="captures being written")
        proc.stop(signal.SIGKILL)  # wherever it was: between temp file and rename, or not
    finally:
        proc.stop()
    name = complete_captures(folder)[0]
    # what a kill between writing and renaming leaves, beside look-alikes that are not ours
    ours, foreign = plant_temp_leftovers(folder, [f"{name}.jpg", f"{name}.json",
                                                  "20990101-000000-000-f0000001.jpg"])
    with serve_capturing(smiles_onnx, frames, footage, folder) as again:
        listed = get_json(again.url + "/api/captures?limit=200")[1]
        assert again.stop() == 0
    assert not [p for p in ours if p.exists()], "leftover temporary captures were not swept"
    assert all(p.exists() for p in foreign), "a file that is not ours was removed"
    assert temp_files(folder) == [".holiday.jpg.abcd1234.tmp"]  # ours in form, not in name
    assert name in {c["name"] for c in listed["captures"]}
    complete_captures(folder)


# -- label: the CSV under the same faults -----------------------------------------------------
def _post(base: str, token: str, route: str, body: dict) -> tuple[int, dict]:
    status, _, data = http(f"{base}{route}", data=json.dumps(body).encode(), method="POST",
                           headers={"Content-Type": "application/json", TOKEN_HEADER: token})
    return status, json.loads(data)


def test_label_csv_on_broken_storage_refuses_the_change_and_recovers(smiles_dir, tmp_path):
    """The labels CSV on a card that turns read-only, then fills up: each change that cannot
    be saved is refused with a clear error and not half-applied; later changes save again.
    (The store, not the server: the server's lock file, open for writing beside the CSV,
    would keep a user-space remount from going read-only.)"""
    from edge_smw.errors import InputError
    from edge_smw.label.store import LabelStore

    photos = tmp_path / "photos"
    keys = copy_crops(smiles_dir, photos, 4)
    with tmpfs(tmp_path / "card", size="1m") as card:
        csv_path = card.path / "labels.csv"
        store = LabelStore(csv_path, photos, keys, ("a", "b"))
        store.set(keys[0], "b")
        card.read_only()
        with pytest.raises(InputError, match="not kept"):
            store.set(keys[1], "a")
        assert store.score(keys[1]) is None and store.summary()["labelled"] == 1
        card.read_write()
        store.set(keys[1], "a")
        filler = card.fill()
        with pytest.raises(InputError, match="No space left"):
            store.set(keys[2], "a")
        assert store.score(keys[2]) is None
        filler.unlink()
        store.set(keys[2], "b")
        rows = csv_path.read_text().splitlines()
        assert [row.rsplit("/", 1)[-1] for row in rows[1:]] == [
            f"{keys[0]},b", f"{keys[1]},a", f"{keys[2]},b"]
        assert temp_files(card.path) == []


def test_label_kill_9_then_restart_sweeps_only_our_leftovers(smiles_dir, tmp_path):
    photos = tmp_path / "photos"
    copy_crops(smiles_dir, photos, 3)
    csv_path = photos / "labels.csv"
    proc, url = start_label(str(photos), "--levels", "a,b", "--no-detect")
    try:
        base, token = url.split("/?token=")
        assert _post(base, token, "/api/label", {"path": "crop000.jpg", "score": "a"})[0] == 200
    finally:
        proc.kill()
        proc.wait(30)
    ours, foreign = plant_temp_leftovers(photos, ["labels.csv", "labels.csv"])
    lock = photos / ".labels.csv.lock"  # left by the killed process: not a temporary file
    proc, url = start_label(str(photos), "--levels", "a,b", "--no-detect")
    try:
        base, token = url.split("/?token=")
        with urllib.request.urlopen(urllib.request.Request(
                f"{base}/api/state", headers={TOKEN_HEADER: token}), timeout=30) as r:
            assert json.load(r)["labelled"] == 1  # resumed from the CSV
    finally:
        code, out = stop(proc)
    assert code == 0, out
    assert not [p for p in ours if p.exists()], out
    assert all(p.exists() for p in foreign)
    assert not lock.exists()
    assert csv_path.read_text().splitlines() == ["path,score", "crop000.jpg,a"]


def test_full_disk_is_one_line_and_keeps_the_old_output(smiles_run, tmp_path, capsys):
    """Every writer goes through atomic_path: a disk that fills up mid-write is one line
    (exit 2) naming the file, and the file it would have replaced is left as it was."""
    from edge_smw.atomic import write_json
    from edge_smw.cli.main import main
    from edge_smw.errors import InputError

    with tmpfs(tmp_path / "disk", size="1m") as disk:
        report = disk.path / "compare.md"
        report.write_text("the earlier report")
        write_json(disk.path / "old.json", {"old": 1})
        filler = disk.fill()
        with pytest.raises(InputError, match=r"old\.json: No space left on device; free some"):
            write_json(disk.path / "old.json", {"new": "x" * 100_000})
        assert json.loads((disk.path / "old.json").read_text()) == {"old": 1}
        code = main(["compare", str(smiles_run), "--out", str(report)])
        err = capsys.readouterr().err
        assert code == 2 and "No space left" in err and "Traceback" not in err, err
        assert err.count("\n") == 1 and str(report) in err
        assert report.read_text() == "the earlier report" and temp_files(disk.path) == []
        filler.unlink()
