"""Foreign Host and Origin (DNS rebinding, cross-site requests) and the token's secrecy.

A web page on attacker.example whose name is rebound to 127.0.0.1 sends ``Host:
attacker.example:PORT``; a page on another site POSTing to the camera sends its own
``Origin``. Both must be refused by serve, and by the labelling server (whose Origin check
includes the port: another local server on another port is another origin).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.label_support import copy_crops
from tests.serve_support import ServeProcess, get_json, http, wait_until

pytestmark = pytest.mark.faults

TOKEN = "s3cret-Token_42"


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    for i in range(3):
        cv2.imwrite(str(folder / f"f{i}.png"), np.full((120, 160, 3), 40 * i, np.uint8))
    return folder


@pytest.fixture(scope="module")
def served(smiles_onnx, frames, tmp_path_factory):
    """No token (the default): the Host check is all that keeps a web page out."""
    with ServeProcess(["--model", smiles_onnx, "--camera", frames, "--loop", "--threads", 1,
                       "--allow-host", "camera.lan",
                       "--captures", tmp_path_factory.mktemp("captures")]) as proc:
        proc.port = int(proc.url.rsplit(":", 1)[1])
        yield proc


DATA_PATHS = ("/api/latest", "/api/captures", "/captures/20250101-000000-000-f0000001.jpg",
              "/stream.mjpg", "/api/events", "/healthz", "/metrics", "/")


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example.", "127.0.0.1.nip.io",
                                  "localhost.attacker.example", "evil"])
def test_a_foreign_host_name_is_refused(served, host):
    for path in DATA_PATHS:
        status, _, body = http(served.url + path, headers={"Host": f"{host}:{served.port}"})
        assert status == 421, (host, path, status, body[:200])
        assert b"--allow-host" in body


def test_bound_and_allowed_host_names_are_answered(served):
    for host in ("127.0.0.1", "localhost", "LOCALHOST", "camera.lan", "Camera.Lan."):
        status, data = get_json(served.url + "/api/latest",
                                headers={"Host": f"{host}:{served.port}"})
        assert status == 200 and "faces" in data, host


def _upload() -> bytes:
    ok, buf = cv2.imencode(".png", np.full((64, 64, 3), 128, np.uint8))
    assert ok
    return buf.tobytes()


def test_a_cross_origin_post_is_refused(served):
    url = served.url + "/api/score"
    base = {"Content-Type": "image/png"}
    for origin in ("http://attacker.example", f"http://127.0.0.1:{served.port + 1}",
                   f"https://127.0.0.1:{served.port}", "null", "file://"):
        status, _, body = http(url, data=_upload(), headers={**base, "Origin": origin})
        assert status == 403, (origin, status, body[:200])
    for origin in (f"http://127.0.0.1:{served.port}", f"http://localhost:{served.port}"):
        host = origin.split("://")[1]
        status, _, body = http(url, data=_upload(),
                               headers={**base, "Origin": origin, "Host": host})
        assert status == 200, (origin, body[:200])
    assert http(url, data=_upload(), headers=base)[0] == 200  # curl, scripts: no Origin


def test_allowed_hosts_of_a_wildcard_bind_accept_addresses_not_names():
    from edge_smw.serve.app import allowed_hosts, host_name

    hosts = allowed_hosts("0.0.0.0", ["cam.lan"])
    assert {"127.0.0.1", "localhost", "::1", "cam.lan"} <= hosts
    assert "attacker.example" not in hosts
    assert host_name("[::1]:8080") == "::1" and host_name("Cam.LAN.:80") == "cam.lan"
    assert allowed_hosts("192.168.1.20") >= {"192.168.1.20", "127.0.0.1"}


def test_token_from_a_file_or_the_environment_is_never_shown(smiles_onnx, frames, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    for args, env in ((["--token-file", token_file], {}), ([], {"EDGE_SMW_TOKEN": TOKEN})):
        with ServeProcess(["--model", smiles_onnx, "--camera", frames, "--loop", "--threads", 1,
                           "--access-log", *args], env=env) as proc:
            assert http(proc.url + "/api/latest")[0] == 401
            assert http(proc.url + f"/api/latest?token={TOKEN}",
                        headers={"Referer": f"http://x/?token={TOKEN}"})[0] == 200
            assert http(proc.url + "/api/latest",
                        headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
            cmdline = Path(f"/proc/{proc.proc.pid}/cmdline").read_bytes()
            assert TOKEN.encode() not in cmdline  # not visible in ps
            wait_until(lambda p=proc: "GET /api/latest" in p.log(), 10, what="the access log")
            assert proc.stop() == 0
        assert TOKEN not in proc.log(), "the token reached the log"


def test_token_settings_are_checked(smiles_onnx, tmp_path, capsys):
    from edge_smw.cli.main import main

    empty = tmp_path / "empty"
    empty.write_text("\n")
    for extra, words in ((["--token-file", str(tmp_path / "none")], "cannot be read"),
                         (["--token-file", str(empty)], "is empty"),
                         (["--token", "a b"], "one word"),
                         (["--token", "x", "--token-file", str(empty)], "not both")):
        rc = main(["serve", "--model", str(smiles_onnx), "--camera", str(tmp_path), "--port",
                   "0", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and words in err and "Traceback" not in err, err


# -- the labelling server ------------------------------------------------------------------------
def test_label_origin_must_match_the_port_too(smiles_dir, tmp_path):
    from edge_smw.label import LabelSession, create_app
    from edge_smw.label.server import TOKEN_HEADER

    copy_crops(smiles_dir, tmp_path / "photos", 2)

    async def scenario(session) -> dict[str, int]:
        async with TestClient(TestServer(create_app(session, scan=False))) as client:
            port = client.server.port
            out = {}
            for name, origin in (("same", f"http://127.0.0.1:{port}"),
                                 ("other port", f"http://127.0.0.1:{port + 1}"),
                                 ("localhost other port", f"http://localhost:{port + 7}"),
                                 ("no port", "http://127.0.0.1"),
                                 ("https", f"https://127.0.0.1:{port}")):
                r = await client.post("/api/skip", json={"path": "crop000.jpg"},
                                      headers={TOKEN_HEADER: session.token, "Origin": origin})
                out[name] = r.status
            return out

    with LabelSession(tmp_path / "photos") as session:
        out = asyncio.run(scenario(session))
    assert out == {"same": 200, "other port": 403, "localhost other port": 403,
                   "no port": 403, "https": 403}

