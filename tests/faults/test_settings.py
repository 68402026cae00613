"""Absurd settings and misuse: each is one clear error naming the value, before anything is
started or allocated, never a crash, a traceback or a runaway process.

(The C bridge's cases, an absurd thread count and over-long model paths, are in
tests/test_firmware_bridge.py::test_bad_arguments_return_errors, marked ``faults``.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_smw import Runtime
from edge_smw.errors import InputError, ModelError

pytestmark = pytest.mark.faults


def test_runtime_threads_beyond_the_usable_cores_are_refused(smiles_onnx):
    from edge_smw.artifacts.sessions import max_threads, usable_cores

    cap = max_threads()
    # the first one alone is safe to try on a runtime without the check; the rest are the
    # values that crashed onnxruntime (100,000) or ran to 22 GB (1,000,000)
    for threads in (cap + 1, 100_000, 1_000_000, 2**40):
        with pytest.raises(InputError) as info:
            Runtime(smiles_onnx, backend="onnxruntime-cpu", threads=threads, warmup=False)
        message = str(info.value)
        assert f"threads={threads}" in message and f"{usable_cores()} usable core" in message
        assert f"threads <= {cap}" in message
    for bad in (0, -3, True, 2.5, "4"):
        with pytest.raises(InputError, match="whole number"):
            Runtime(smiles_onnx, backend="onnxruntime-cpu", threads=bad, warmup=False)
    with Runtime(smiles_onnx, backend="onnxruntime-cpu", threads=cap) as rt:  # the cap is fine
        assert rt.score_crop(np.full((64, 64, 3), 120, np.uint8)).probabilities.size == 2


@pytest.mark.parametrize("path", ["/tmp/" + "m" * 300 + ".onnx", "/" + "d/" * 3000 + "m.onnx",
                                  "model\0.onnx"])
def test_absurd_model_paths_are_input_errors(path):
    with pytest.raises(InputError, match="too long|NUL"):
        Runtime(path)


def test_bad_colour_and_a_closed_runtime(smiles_onnx):
    rt = Runtime(smiles_onnx, backend="onnxruntime-cpu", threads=1, detect_faces=True)
    frame = np.zeros((120, 160, 3), np.uint8)  # no face in it
    for color in (None, 3, b"bgr", "hsv"):
        with pytest.raises(InputError, match="color"):
            rt.score(frame, color=color)
    assert rt.score(frame).faces == []
    rt.close()
    size = rt.contract.input_size
    calls = {"score": lambda: rt.score(frame),  # would have found no face: still an error
             "score_crop": lambda: rt.score_crop(frame),
             "score_batch": lambda: rt.score_batch([frame]),
             "score_batch empty": lambda: rt.score_batch([]),
             "infer": lambda: rt.infer(np.zeros((1, 3, size, size), np.float32))}
    for name, call in calls.items():
        with pytest.raises(ModelError, match="closed"):
            call()
            pytest.fail(f"{name} on a closed Runtime did not raise")


def _serve_args(model: Path, camera: Path, *extra: str) -> list[str]:
    return ["serve", "--model", str(model), "--camera", str(camera), "--port", "0", *extra]


SERVE_SETTINGS = [
    (["--threads", "100000"], "usable core"),
    (["--threads", "0"], "--threads must be a whole number"),
    (["--port", "70000"], "--port"),
    (["--width", "100000"], "--width must be 1..8192"),
    (["--height", "-1"], "--height"),
    (["--fps", "-2"], "--fps"),
    (["--max-upload-mb", "1e9"], "--max-upload-mb"),
    (["--max-upload-mb", "0"], "--max-upload-mb"),
    (["--stream-max-side", "1"], "--stream-max-side"),
    (["--max-faces", "0"], "--max-faces must be"),
    (["--smooth-alpha", "5"], "--smooth-alpha"),
    (["--smooth-window", "0"], "--smooth-window"),
    (["--threshold", "3"], "--threshold needs --captures"),
    (["--captures", "CAPS", "--threshold", "99"], "--threshold 99"),
    (["--captures", "CAPS", "--cooldown", "-1"], "--cooldown"),
    (["--captures", "CAPS", "--max-captures", "0"], "--max-captures"),
    (["--captures", "CAPS", "--capture-frames", "0"], "--capture-frames"),
    (["--captures", "CAPS", "--min-free-mb", "-1"], "--min-free-mb"),
    (["--captures", "CAPTURES_IS_A_FILE"], "is not a folder"),
]


@pytest.mark.parametrize(("extra", "words"), SERVE_SETTINGS,
                         ids=[" ".join(e) for e, _ in SERVE_SETTINGS])
def test_absurd_serve_settings_are_one_line_errors(smiles_onnx, tmp_path, capsys, extra, words):
    from edge_smw.cli.main import main

    camera = tmp_path / "frames"
    camera.mkdir()
    (tmp_path / "a-file").write_text("x")
    extra = [str(tmp_path / "caps") if e == "CAPS" else
             str(tmp_path / "a-file") if e == "CAPTURES_IS_A_FILE" else e for e in extra]
    rc = main(_serve_args(smiles_onnx, camera, *extra))
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert words in err and "\n" not in err and "Traceback" not in err, err


def test_absurd_score_and_label_settings_are_one_line_errors(smiles_onnx, tmp_path, capsys):
    from edge_smw.cli.main import main

    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG not really")
    for argv, words in ((["score", str(smiles_onnx), str(image), "--threads", "100000"],
                         "usable core"),
                        (["score", str(smiles_onnx), str(image), "--max-faces", "-1"],
                         "--max-faces must be"),
                        (["label", str(tmp_path), "--port", "99999"], "--port")):
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and words in err and "\n" not in err, err
