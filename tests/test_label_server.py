"""``edge-smw label``'s server: its API, the CSV it writes, and what it refuses to serve.

Driven through aiohttp's test client, and a real server on 127.0.0.1 for concurrent writes.
The CSV is always read back with the loader ``edge-smw train`` uses.
"""

from __future__ import annotations

import asyncio
import csv
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer

from edge_smw.contract import PreprocessContract
from edge_smw.data.datasets import load_dataset
from edge_smw.detect import shared_detector
from edge_smw.errors import InputError
from edge_smw.images import read_image, write_image
from edge_smw.label import SKIPPED, LabelSession, create_app, start_server
from edge_smw.label.photos import PathRejected, resolve_inside
from edge_smw.label.server import TOKEN_COOKIE, TOKEN_HEADER
from tests.label_support import copy_crops, face_photos, write_corrupt

LEVELS = ("1", "2", "3", "4", "5")


@pytest.fixture
def photos(smiles_dir: Path, tmp_path: Path) -> Path:
    """Eight real face crops, one corrupt JPEG, a sub-folder and a hidden file."""
    folder = tmp_path / "photos"
    copy_crops(smiles_dir, folder, 8)
    write_corrupt(folder / "crop004b.jpg", smiles_dir)  # sorts between crop004 and crop005
    (folder / "trip").mkdir()
    copy_crops(smiles_dir, folder / "trip", 1)
    (folder / ".hidden.jpg").write_bytes((folder / "crop000.jpg").read_bytes())
    return folder


def run_client(session: LabelSession, scenario: Callable[[TestClient], Awaitable[Any]],
               *, scan: bool = False) -> Any:
    async def main() -> Any:
        async with TestClient(TestServer(create_app(session, scan=scan))) as client:
            client.session.headers[TOKEN_HEADER] = session.token
            return await scenario(client)

    return asyncio.run(main())


def read_back(csv_path: Path) -> dict[Path, str]:
    """The labels as ``edge-smw train --data CSV`` loads them (levels from the scores seen)."""
    dataset = load_dataset(csv_path)
    return {Path(os.path.normpath(item.path)): dataset.levels[item.level]
            for item in dataset.items}


def csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_listing_covers_subfolders_and_leaves_out_hidden_files(photos: Path) -> None:
    with LabelSession(photos) as s:
        assert s.order == [*(f"crop{i:03d}.jpg" for i in range(5)), "crop004b.jpg",
                           *(f"crop{i:03d}.jpg" for i in range(5, 8)), "trip/crop000.jpg"]
        state = s.state()
    assert state["levels"] == list(LEVELS)
    assert state["hints"] == ["hate", "dislike", "neutral", "like", "love"]
    assert state["keys"] == ["1", "2", "3", "4", "5"]
    assert state["position"] == 0 and state["labelled"] == 0 and not state["finished"]


def test_set_skip_undo_write_the_csv_train_reads(photos: Path) -> None:
    csv_path = photos / "labels.csv"

    async def scenario(client: TestClient) -> list[dict]:
        answers = []
        for path, score in [("crop000.jpg", "5"), ("crop001.jpg", "1"), ("trip/crop000.jpg", "3")]:
            r = await client.post("/api/label", json={"path": path, "score": score})
            assert r.status == 200, await r.text()
            answers.append(await r.json())
        r = await client.post("/api/skip", json={"path": "crop002.jpg"})
        answers.append(await r.json())
        # the CSV already holds all of it: written after every change
        rows = csv_rows(csv_path)
        assert rows[0] == ["path", "score"]
        assert sorted(rows[1:]) == [["crop000.jpg", "5"], ["crop001.jpg", "1"],
                                    ["crop002.jpg", ""], ["trip/crop000.jpg", "3"]]
        got = read_back(csv_path)
        assert got == {photos / "crop000.jpg": "5", photos / "crop001.jpg": "1",
                       photos / "trip" / "crop000.jpg": "3"}  # the skipped photo is unlabelled
        assert all(path.is_file() for path in got)
        # undo walks back: the skip, then the sub-folder label
        r = await client.post("/api/undo", json={})
        answers.append(await r.json())
        r = await client.post("/api/undo", json={})
        answers.append(await r.json())
        return answers

    with LabelSession(photos) as session:
        answers = run_client(session, scenario)
        assert session.store.score("crop002.jpg") is None
    assert answers[0]["change"] == {"path": "crop000.jpg", "before": None, "after": "5"}
    assert answers[2]["counts"] == {"1": 1, "2": 0, "3": 1, "4": 0, "5": 1}
    assert answers[3]["skipped"] == 1 and answers[3]["labelled"] == 3
    assert answers[4]["change"] == {"path": "crop002.jpg", "before": "", "after": None}
    assert answers[5]["change"] == {"path": "trip/crop000.jpg", "before": "3", "after": None}
    assert answers[5]["labelled"] == 2 and answers[5]["skipped"] == 0
    assert len({a["revision"] for a in answers}) == len(answers)  # every change is a revision
    assert sorted(csv_rows(csv_path)[1:]) == [["crop000.jpg", "5"], ["crop001.jpg", "1"]]
    assert [p.name for p in photos.iterdir() if p.name.startswith(".labels")] == []


def test_relabel_and_undo_restore_the_previous_score(photos: Path) -> None:
    async def scenario(client: TestClient) -> None:
        for score in ("2", "4"):
            await client.post("/api/label", json={"path": "crop003.jpg", "score": score})
        r = await client.post("/api/undo", json={})
        assert (await r.json())["change"] == {"path": "crop003.jpg", "before": "4", "after": "2"}
        await client.post("/api/undo", json={})
        r = await client.post("/api/undo", json={})
        assert (await r.json())["change"] is None  # nothing left to undo

    with LabelSession(photos) as session:
        run_client(session, scenario)
    assert csv_rows(photos / "labels.csv") == [["path", "score"]]


def test_bad_scores_and_bodies_are_refused(photos: Path) -> None:
    async def scenario(client: TestClient) -> list[tuple[int, str]]:
        out = []
        for body in ({"path": "crop000.jpg", "score": "6"}, {"path": "crop000.jpg", "score": ""},
                     {"path": "crop000.jpg", "score": 3}, {"path": "crop000.jpg"}, ["x"]):
            r = await client.post("/api/label", json=body)
            out.append((r.status, (await r.json())["error"]))
        r = await client.post("/api/label", data=b"{not json",
                              headers={"Content-Type": "application/json"})
        out.append((r.status, (await r.json())["error"]))
        return out

    with LabelSession(photos) as session:
        answers = run_client(session, scenario)
    assert [status for status, _ in answers] == [400] * 6
    assert "score '6' is not one of the levels" in answers[0][1]
    assert "'score' must be one of the levels" in answers[1][1]
    assert "JSON object" in answers[4][1]
    assert "not valid JSON" in answers[-1][1]
    assert not (photos / "labels.csv").exists()  # nothing was changed, nothing written


def test_restart_resumes_where_the_user_stopped(photos: Path) -> None:
    async def first(client: TestClient) -> None:
        await client.post("/api/label", json={"path": "crop000.jpg", "score": "4"})
        await client.post("/api/label", json={"path": "crop001.jpg", "score": "2"})
        await client.post("/api/skip", json={"path": "crop002.jpg"})

    with LabelSession(photos) as session:
        run_client(session, first)

    with LabelSession(photos) as session:
        state = session.state()
        assert state["position"] == session.order.index("crop003.jpg")
        assert {p["path"]: p["score"] for p in state["photos"]}["crop002.jpg"] == ""
        assert state["labelled"] == 2 and state["skipped"] == 1
        assert state["counts"]["4"] == 1 and state["counts"]["2"] == 1

        async def label_rest(client: TestClient) -> None:
            r = await client.get("/api/photo", params={"path": "crop004b.jpg"})
            assert (await r.json())["error"]  # the corrupt photo is now known unreadable
            for key in session.order:
                if session.store.score(key) is None and key != "crop004b.jpg":
                    r = await client.post("/api/label", json={"path": key, "score": "3"})
                    assert r.status == 200

        run_client(session, label_rest)
        state = session.state()
        # only the skipped photo is left (the unreadable one does not count): resume there
        assert not state["finished"] and state["position"] == session.order.index("crop002.jpg")

        run_client(session, lambda c: c.post("/api/label",
                                             json={"path": "crop002.jpg", "score": "1"}))
        state = session.state()
        assert state["finished"]
        assert state["labelled"] == state["total"] - 1 and state["skipped"] == 0
    labels = read_back(photos / "labels.csv")
    assert len(labels) == 9 and photos / "crop004b.jpg" not in labels


def test_labels_csv_elsewhere_keeps_foreign_rows_and_extra_columns(photos: Path,
                                                                   tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "old.jpg"
    other.parent.mkdir()
    other.write_bytes((photos / "crop000.jpg").read_bytes())
    csv_path = tmp_path / "labels" / "mine.csv"
    csv_path.parent.mkdir()
    csv_path.write_text("path,score,note\n../elsewhere/old.jpg,2,kept\n"
                        "../photos/crop001.jpg,5,nice one\n", encoding="utf-8")

    with LabelSession(photos, labels_csv=csv_path) as session:
        assert session.store.score("crop001.jpg") == "5"
        run_client(session, lambda c: c.post("/api/label",
                                             json={"path": "crop000.jpg", "score": "4"}))
    rows = csv_rows(csv_path)
    assert rows[0] == ["path", "score", "note"]
    assert sorted(rows[1:]) == [["../elsewhere/old.jpg", "2", "kept"],
                                ["../photos/crop000.jpg", "4"],
                                ["../photos/crop001.jpg", "5", "nice one"]]
    assert read_back(csv_path) == {other: "2", photos / "crop000.jpg": "4",
                                   photos / "crop001.jpg": "5"}


def test_csv_with_other_levels_is_refused_with_what_to_do(photos: Path) -> None:
    (photos / "labels.csv").write_text("path,score\ncrop000.jpg,smiling\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"labels\.csv:2: score 'smiling' .*--levels"):
        LabelSession(photos)
    with LabelSession(photos, levels="not_smiling,smiling") as session:
        state = session.state()
    assert state["counts"] == {"not_smiling": 0, "smiling": 1}
    assert state["hints"] == ["", ""]  # the poster's words belong to the 1..5 scale only


def test_labels_file_in_another_format_is_refused_untouched(photos: Path) -> None:
    """A ``file;label`` CSV would turn into a mixed file train rejects after the first label."""
    other = photos / "semi.csv"
    text = "crop000.jpg;smiling\ncrop001.jpg;not_smiling\n"
    other.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=r"semi\.csv:1: expected a 'path,score' row"):
        LabelSession(photos, labels_csv=other, levels="not_smiling,smiling")
    assert other.read_text(encoding="utf-8") == text
    assert not list(photos.glob(".*.lock"))


@pytest.mark.parametrize("levels", ["a,,b", "a,b,", ",a,b", ["a", "", "b"]])
def test_empty_level_names_are_refused(photos: Path, levels: str | list[str]) -> None:
    with pytest.raises(InputError, match="a level name is empty"):
        LabelSession(photos, levels=levels)


@pytest.mark.parametrize("kwargs, message", [
    ({"levels": "11"}, "at most 10"),
    ({"order": "uncertainty"}, "--model"),
    ({"order": "random"}, "--order"),
    ({"labels_csv": "labels.txt"}, ".csv"),
])
def test_bad_options_are_refused(photos: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        LabelSession(photos, **kwargs)
    assert not list(photos.glob(".*.lock"))  # a refused session leaves no lock behind


def test_folder_without_photos_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no photos in"):
        LabelSession(tmp_path)
    with pytest.raises(InputError, match="is not a folder"):
        LabelSession(tmp_path / "missing")


def test_a_second_labeller_on_the_same_csv_is_refused(photos: Path) -> None:
    first = LabelSession(photos)
    try:
        with pytest.raises(InputError, match="another `edge-smw label`"):
            LabelSession(photos)
        with LabelSession(photos, labels_csv=photos / "other.csv"):
            pass  # another CSV is fine
    finally:
        first.close()
    assert not (photos / ".labels.csv.lock").exists()
    with LabelSession(photos):
        pass


def test_unreadable_photo_is_listed_and_not_served(photos: Path) -> None:
    async def scenario(client: TestClient) -> tuple:
        info = await (await client.get("/api/photo", params={"path": "crop004b.jpg"})).json()
        image = await client.get("/api/image", params={"path": "crop004b.jpg"})
        state = await (await client.get("/api/state")).json()
        return info, image.status, (await image.json())["error"], state

    with LabelSession(photos) as session:
        info, status, error, state = run_client(session, scenario)
    assert "truncated or corrupt" in info["error"]
    assert status == 422 and "crop004b.jpg" in error
    assert state["unreadable"] == [{"path": "crop004b.jpg", "reason": info["error"]}]


def test_background_check_finds_every_unreadable_photo(photos: Path) -> None:
    async def scenario(client: TestClient) -> dict:
        for _ in range(600):
            state = await (await client.get("/api/state")).json()
            if state["checked"] == state["total"]:
                return state
            await asyncio.sleep(0.05)
        raise AssertionError(f"background check stopped at {state['checked']}/{state['total']}")

    with LabelSession(photos) as session:
        state = run_client(session, scenario, scan=True)
    assert [u["path"] for u in state["unreadable"]] == ["crop004b.jpg"]


def test_face_box_and_crop_follow_the_contract(smiles_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, photo in enumerate(face_photos(smiles_dir, 2)):
        write_image(folder / f"face{i}.png", photo)
    contract = PreprocessContract(levels=LEVELS)  # no model: the contract's defaults

    async def scenario(client: TestClient) -> tuple:
        info = await (await client.get("/api/photo", params={"path": "face0.png"})).json()
        face = await (await client.get("/api/image",
                                       params={"path": "face0.png", "kind": "face"})).read()
        photo = await (await client.get("/api/image",
                                        params={"path": "face0.png", "kind": "photo"})).read()
        return info, face, photo

    with LabelSession(folder) as session:
        info, face, photo = run_client(session, scenario)
    image = read_image(folder / "face0.png")
    detection = shared_detector(contract.detector).detect(image)[0]
    box = detection.box
    assert info["faces"] == 1 and info["box"] == list(box)
    assert info["square"] == list(contract.face_square(box, image.shape))
    assert (info["width"], info["height"]) == (image.shape[1], image.shape[0])
    crop = contract.crop_face(image, box, detection.eyes)
    expected = cv2.cvtColor(contract.to_model_pixels(crop), cv2.COLOR_RGB2BGR)
    shown = cv2.imdecode(np.frombuffer(face, np.uint8), cv2.IMREAD_COLOR)
    assert shown.shape == expected.shape
    assert np.abs(shown.astype(int) - expected.astype(int)).mean() < 4  # JPEG-close
    shown_photo = cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR)
    assert shown_photo.shape == image.shape


def test_no_detect_shows_the_whole_photo_as_the_crop(photos: Path) -> None:
    async def scenario(client: TestClient) -> tuple:
        info = await (await client.get("/api/photo", params={"path": "crop000.jpg"})).json()
        face = await client.get("/api/image", params={"path": "crop000.jpg", "kind": "face"})
        return info, face.status

    with LabelSession(photos, detect=False) as session:
        info, status = run_client(session, scenario)
    assert info["box"] is None and status == 200
    with LabelSession(photos) as session:  # tight crops: Haar finds no face in them
        info, status = run_client(session, scenario)
    assert info["faces"] == 0 and status == 404


# -- what the server refuses ----------------------------------------------------------------
def test_paths_outside_the_folder_are_rejected(photos: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes((photos / "crop000.jpg").read_bytes())
    (photos / "link_out.jpg").symlink_to(secret)
    (photos / "link_in.jpg").symlink_to(photos / "crop001.jpg")
    bad = ["../secret.jpg", "trip/../../secret.jpg", str(secret), "/etc/passwd",
           "link_out.jpg", ".hidden.jpg", "crop000.jpg\x00.png", "trip\\..\\..\\secret.jpg",
           "C:/secret.jpg", "", "trip", "labels.csv", "missing.jpg"]

    async def scenario(client: TestClient) -> list[tuple[str, int, int, int]]:
        out = []
        for path in bad:
            a = await client.get("/api/photo", params={"path": path})
            b = await client.get("/api/image", params={"path": path, "kind": "photo"})
            c = await client.post("/api/label", json={"path": path, "score": "3"})
            out.append((path, a.status, b.status, c.status))
        for raw in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fstore.py",
                    "/api/image?path=..%2Fsecret.jpg"):
            r = await client.get(raw)
            out.append((raw, r.status, 0, 0))
        r = await client.get("/api/image", params={"path": "link_in.jpg"})
        out.append(("link_in.jpg", r.status, 200, 200))
        return out

    with LabelSession(photos) as session:
        assert "link_in.jpg" in session.order and "link_out.jpg" not in session.order
        assert session.outside == ["link_out.jpg"]
        results = run_client(session, scenario)
    for path, *statuses in results[: len(bad)]:
        assert statuses == [404, 404, 404], path
    for raw, status, _, _ in results[len(bad):-1]:
        assert status in (403, 404), raw
    assert results[-1][1] == 200  # a link to a photo inside the folder is fine
    assert not (photos / "labels.csv").exists()


def test_a_link_swapped_to_point_outside_is_not_followed(photos: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"not for the page")
    link = photos / "swap.jpg"
    link.symlink_to(photos / "crop001.jpg")

    async def scenario(client: TestClient) -> list[int]:
        before = await client.get("/api/image", params={"path": "swap.jpg"})
        link.unlink()
        link.symlink_to(secret)  # after the listing was made and the photo was shown
        statuses = [before.status]
        for kind in ("photo", "face"):
            r = await client.get("/api/image", params={"path": "swap.jpg", "kind": kind})
            assert b"not for the page" not in await r.read()
            statuses.append(r.status)
        return statuses

    with LabelSession(photos, detect=False) as session:
        assert "swap.jpg" in session.order
        assert run_client(session, scenario) == [200, 404, 404]
        with pytest.raises(PathRejected):
            session.analyser.path("swap.jpg")
    root = Path(os.path.realpath(photos))
    for bad in ("../secret.jpg", str(secret), "a\\..\\b.jpg", "x\x00.jpg", "swap.jpg", "trip",
                "", "C:/x.jpg"):
        with pytest.raises(PathRejected):
            resolve_inside(root, bad)
    assert resolve_inside(root, "trip/crop000.jpg") == root / "trip" / "crop000.jpg"


def test_token_host_and_origin_are_checked(photos: Path) -> None:
    async def scenario(client: TestClient) -> dict[str, int]:
        token = client.session.headers.pop(TOKEN_HEADER)
        out = {}
        out["no token"] = (await client.get("/api/state")).status
        out["wrong token"] = (await client.get("/api/state",
                                               headers={TOKEN_HEADER: token + "x"})).status
        h = {TOKEN_HEADER: token}
        out["token"] = (await client.get("/api/state", headers=h)).status
        out["evil host"] = (await client.get("/api/state",
                                             headers={**h, "Host": "evil.example:80"})).status
        out["evil origin"] = (await client.post(
            "/api/label", json={"path": "crop000.jpg", "score": "1"},
            headers={**h, "Origin": "http://evil.example"})).status
        out["form post"] = (await client.post(
            "/api/label", data="path=crop000.jpg&score=1",
            headers={**h, "Content-Type": "application/x-www-form-urlencoded"})).status
        out["page without token"] = (await client.get("/")).status
        out["page wrong token"] = (await client.get("/", params={"token": "nope"})).status
        r = await client.get("/", params={"token": token}, allow_redirects=False)
        out["page with token"] = r.status
        out["cookie set"] = int(r.cookies[TOKEN_COOKIE].value == token)
        out["cookie httponly"] = int(bool(r.cookies[TOKEN_COOKIE]["httponly"]))
        page = await client.get("/", cookies={TOKEN_COOKIE: token})
        out["page with cookie"] = page.status
        out["csp"] = int("default-src 'self'" in page.headers["Content-Security-Policy"])
        out["api with cookie"] = (await client.get("/api/state",
                                                   cookies={TOKEN_COOKIE: token})).status
        out["static"] = (await client.get("/static/label.js")).status
        return out

    with LabelSession(photos) as session:
        out = run_client(session, scenario)
    assert out == {"no token": 403, "wrong token": 403, "token": 200, "evil host": 403,
                   "evil origin": 403, "form post": 415, "page without token": 403,
                   "page wrong token": 403, "page with token": 302, "cookie set": 1,
                   "cookie httponly": 1, "page with cookie": 200, "csp": 1,
                   "api with cookie": 200, "static": 200}
    assert not (photos / "labels.csv").exists()


# -- two tabs, many requests ----------------------------------------------------------------
def test_stale_revision_is_a_conflict_and_changes_nothing(photos: Path) -> None:
    async def scenario(client: TestClient) -> tuple:
        state = await (await client.get("/api/state")).json()
        tab_a = tab_b = state["revision"]
        r = await client.post("/api/label",
                              json={"path": "crop000.jpg", "score": "5", "revision": tab_a})
        assert r.status == 200
        r = await client.post("/api/label",
                              json={"path": "crop000.jpg", "score": "1", "revision": tab_b})
        conflict = (r.status, await r.json())
        r = await client.post("/api/undo", json={"revision": tab_b})
        return conflict, r.status

    with LabelSession(photos) as session:
        (status, answer), undo_status = run_client(session, scenario)
        assert session.store.score("crop000.jpg") == "5"
        assert answer["revision"] == session.store.revision
    assert status == 409 and "changed since" in answer["error"]
    assert undo_status == 409
    assert csv_rows(photos / "labels.csv")[1:] == [["crop000.jpg", "5"]]


def test_concurrent_writes_on_a_real_server_keep_every_label(smiles_dir: Path,
                                                              tmp_path: Path) -> None:
    folder = tmp_path / "many"
    names = copy_crops(smiles_dir, folder, 40)
    wanted = {name: LEVELS[i % 5] for i, name in enumerate(names)}

    async def main(session: LabelSession) -> tuple[list[int], list[str]]:
        runner, url = await start_server(session, 0, scan=False)
        base = url.split("/?", 1)[0]
        assert base.startswith("http://127.0.0.1:")
        try:
            async with ClientSession(headers={TOKEN_HEADER: session.token}) as http:
                async def label(name: str, score: str) -> int:
                    async with http.post(f"{base}/api/label",
                                         json={"path": name, "score": score}) as r:
                        return r.status

                # every photo gets a wrong score, then its right one once the wrong one is
                # answered, while more tasks send the right one again at the same time
                async def both(name: str) -> list[int]:
                    wrong = "1" if wanted[name] != "1" else "2"
                    return [await label(name, wrong), await label(name, wanted[name])]

                pairs = await asyncio.gather(*(both(n) for n in names),
                                             *(label(n, wanted[n]) for n in names[:10]))
                statuses = [s for p in pairs for s in (p if isinstance(p, list) else [p])]
                async with http.get(f"{base}/api/state") as r:
                    state = await r.json()
        finally:
            await runner.cleanup()
        return statuses, [p["score"] for p in state["photos"]]

    with LabelSession(folder) as session:
        statuses, scores = asyncio.run(main(session))
    assert statuses == [200] * 90
    assert scores == [wanted[n] for n in names]
    rows = csv_rows(folder / "labels.csv")
    assert rows[0] == ["path", "score"] and len(rows) == 41
    assert {r[0]: r[1] for r in rows[1:]} == wanted
    dataset = load_dataset(folder / "labels.csv", levels=LEVELS)
    assert {item.path.name: LEVELS[item.level] for item in dataset.items} == wanted
    assert [p.name for p in folder.iterdir() if p.suffix == ".tmp"] == []


# -- with a model -----------------------------------------------------------------------------
@pytest.mark.slow
def test_model_suggestions_and_uncertainty_order(smiles_onnx: Path, smiles_dir: Path,
                                                 tmp_path: Path) -> None:
    from edge_smw.runtime.runtime import Runtime

    folder = tmp_path / "scored"
    names = copy_crops(smiles_dir, folder, 12)
    with Runtime(smiles_onnx, backend="onnxruntime-cpu", detect_faces=False) as runtime:
        probs = {n: runtime.score_crop(read_image(folder / n)).probabilities for n in names}
        levels = runtime.levels
    p = {n: np.clip(v, 1e-12, 1.0) for n, v in probs.items()}
    entropy = {n: float(-(v * np.log(v)).sum() / np.log(len(v))) for n, v in p.items()}
    margin = {n: float(np.sort(v)[-1] - np.sort(v)[-2]) for n, v in probs.items()}
    assert len({round(e, 6) for e in entropy.values()}) > 1  # the order means something

    with LabelSession(folder, model=smiles_onnx, order="uncertainty", detect=False,
                      backend="onnxruntime-cpu") as session:
        assert session.levels == levels  # the model's levels, not the default 1..5
        assert session.order == sorted(names, key=lambda n: (-entropy[n], n))
        first = session.order[0]

        async def scenario(client: TestClient) -> tuple[dict, dict]:
            info = await (await client.get("/api/photo", params={"path": first})).json()
            state = await (await client.get("/api/state")).json()
            return info, state

        info, state = run_client(session, scenario)
    suggestion = info["suggestion"]
    assert suggestion["level"] == levels[int(np.argmax(probs[first]))]
    assert np.allclose(suggestion["probabilities"], probs[first], atol=1e-5)
    assert info["entropy"] == pytest.approx(entropy[first], abs=1e-5)
    assert state["model"]["backend"] == "onnxruntime-cpu" and state["order"] == "uncertainty"
    assert [ph["path"] for ph in state["photos"]] == session.order

    with LabelSession(folder, model=smiles_onnx, order="margin", detect=False,
                      backend="onnxruntime-cpu") as session:
        assert session.order == sorted(names, key=lambda n: (margin[n], n))
    with pytest.raises(InputError, match="differ from the model's levels"):
        LabelSession(folder, model=smiles_onnx, levels="5", backend="onnxruntime-cpu")


def test_store_serialises_writers_from_many_threads(smiles_dir: Path, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from edge_smw.label import LabelStore

    folder = tmp_path / "threads"
    names = copy_crops(smiles_dir, folder, 24)
    store = LabelStore(folder / "labels.csv", folder, names, LEVELS)
    wanted = {name: LEVELS[i % 5] for i, name in enumerate(names)}

    def work(name: str) -> None:
        store.set(name, SKIPPED)
        store.set(name, wanted[name])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, names))
    assert store.revision.endswith(f"-{2 * len(names)}")  # every change applied, none lost
    assert {r[0]: r[1] for r in csv_rows(folder / "labels.csv")[1:]} == wanted
    reread = LabelStore(folder / "labels.csv", folder, names, LEVELS)
    assert reread.scores() == wanted
