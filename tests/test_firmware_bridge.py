"""The C firmware bridge: built with the system compiler, it must score camera frames in every
pixel format exactly as ``edge_smw.Runtime`` scores the same image, and turn every bad
argument or broken install into a status code with text.

Frames are real SMILEsmileD face crops, tinted so the chroma planes carry information, and
encoded into each camera layout with OpenCV's own BGR->YUV conversions.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_smw.bridge import (
    PIXEL_FORMATS,
    decode_frame,
    encode_frame,
    face_dtype,
    frame_bytes,
    frame_view,
    nv12_planes,
)
from edge_smw.errors import InputError
from edge_smw.images import read_image
from tests.scripts import load_script
from tests.skips import skip_for_machine

REPO = Path(__file__).resolve().parents[1]
BRIDGE = REPO / "firmware_bridge"
CHANNELS = {"bgr24": 3, "rgb24": 3, "gray8": 1, "yuyv": 2, "nv12": 1}
OPENCV_DECODE = {"rgb24": cv2.COLOR_RGB2BGR, "gray8": cv2.COLOR_GRAY2BGR,
                 "yuyv": cv2.COLOR_YUV2BGR_YUYV, "nv12": cv2.COLOR_YUV2BGR_NV12}
TOLERANCE = 1e-9  # both sides run the same onnxruntime on the same pixels: no real slack
# Variables of the developer's shell that would change which Python the bridge starts.
BRIDGE_ENV = ("EDGE_SMW_PYTHON", "EDGE_SMW_PYTHONPATH", "EDGE_SMW_ENGINE", "PYTHONHOME",
              "PYTHONPATH")


# -- frames -------------------------------------------------------------------------------
def tinted(image: np.ndarray, width: int = 96, height: int = 72, seed: int = 0) -> np.ndarray:
    """A grey face crop resized to an even, non-square frame with a colour cast and gradient."""
    rng = np.random.default_rng(seed)
    frame = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    gain = rng.uniform(0.55, 1.0, 3).astype(np.float32)
    ramp = np.linspace(0, 60, width, dtype=np.float32)[None, :, None] * rng.uniform(0, 1, 3)
    return np.clip(frame * gain + ramp, 0, 255).astype(np.uint8)


def padded_stride(width: int, fmt: str) -> int:
    return width * CHANNELS[fmt] + 13  # odd padding, as some drivers use


def opencv_decode(data: bytes, width: int, height: int, fmt: str, stride: int) -> np.ndarray:
    """Plain OpenCV on a contiguous copy of the frame: the reference for the bridge."""
    rows = height + height // 2 if fmt == "nv12" else height
    plane = np.frombuffer(data, np.uint8).reshape(rows, stride)[:, : width * CHANNELS[fmt]]
    if fmt in ("bgr24", "rgb24", "yuyv"):
        plane = plane.reshape(rows, width, CHANNELS[fmt])
    plane = np.ascontiguousarray(plane)
    return plane if fmt == "bgr24" else cv2.cvtColor(plane, OPENCV_DECODE[fmt])


def paste_face(photo: np.ndarray, width: int = 320, height: int = 240,
               side: int = 150) -> np.ndarray:
    """An upscaled face crop in a 320x240 frame, edges extended so Haar sees a face."""
    face = cv2.resize(photo, (side, side), interpolation=cv2.INTER_CUBIC)
    top, left = (height - side) // 2, (width - side) // 2
    return cv2.copyMakeBorder(face, top, height - side - top, left, width - side - left,
                              cv2.BORDER_REPLICATE)


@pytest.fixture(scope="module")
def crops(smiles_dir: Path) -> list[np.ndarray]:
    paths = sorted((smiles_dir / "smiling").glob("*.jpg"))[:2]
    paths += sorted((smiles_dir / "not_smiling").glob("*.jpg"))[:2]
    return [read_image(p) for p in paths]


# -- pixel formats, in Python (no compiler needed) ------------------------------------------
@pytest.mark.parametrize("fmt", PIXEL_FORMATS)
def test_decode_equals_opencv(crops: list[np.ndarray], fmt: str) -> None:
    image = tinted(crops[0])
    height, width = image.shape[:2]
    stride = padded_stride(width, fmt)
    data = encode_frame(image, fmt, stride)
    assert len(data) == frame_bytes(width, height, fmt, stride)
    decoded = decode_frame(data, width, height, fmt, stride)
    assert decoded.shape == (height, width, 3)
    assert np.array_equal(decoded, opencv_decode(data, width, height, fmt, stride))
    if fmt in ("bgr24", "rgb24"):
        assert np.array_equal(decoded, image)  # lossless layouts come back exactly


def test_nv12_separate_planes_equal_one_buffer(crops: list[np.ndarray]) -> None:
    image = tinted(crops[1])
    height, width = image.shape[:2]
    data = encode_frame(image, "nv12", width)
    y = bytearray(data[: width * height])
    uv_rows = np.frombuffer(data[width * height :], np.uint8).reshape(height // 2, width)
    uv_stride = width + 32  # the UV plane in its own, differently padded buffer
    uv = np.zeros((height // 2, uv_stride), np.uint8)
    uv[:, :width] = uv_rows
    two = decode_frame(y, width, height, "nv12", width, uv_buffer=uv.tobytes(),
                       uv_stride=uv_stride)
    assert np.array_equal(two, decode_frame(data, width, height, "nv12", width))


@pytest.mark.parametrize("fmt", ["yuyv", "nv12"])
def test_yuv_decoding_keeps_colours(fmt: str) -> None:
    """Saturated colour blocks survive encode -> decode; a swapped chroma order would not."""
    colours = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255),
               (255, 255, 0), (40, 90, 200), (200, 160, 30)]
    image = np.concatenate([np.full((16, 16, 3), c, np.uint8) for c in colours], axis=1)
    image = np.concatenate([image, image[:, ::-1]], axis=0)
    height, width = image.shape[:2]
    data = encode_frame(image, fmt, None)
    error = np.abs(decode_frame(data, width, height, fmt).astype(int) - image).max()
    assert error <= 8, f"{fmt} colours off by {error}"
    # The same bytes read with the other chroma order (NV21 / YVYU) are far off: the check
    # above can tell a right conversion from a wrong one.
    wrong_code = cv2.COLOR_YUV2BGR_NV21 if fmt == "nv12" else cv2.COLOR_YUV2BGR_YVYU
    wrong = cv2.cvtColor(opencv_view(data, width, height, fmt), wrong_code)
    assert np.abs(wrong.astype(int) - image).max() > 100


def opencv_view(data: bytes, width: int, height: int, fmt: str) -> np.ndarray:
    rows = height + height // 2 if fmt == "nv12" else height
    shape = (rows, width) if fmt == "nv12" else (rows, width, 2)
    return np.frombuffer(data, np.uint8).reshape(shape)


def test_views_do_not_copy() -> None:
    width, height = 10, 6
    stride = width * 3 + 7
    buffer = bytearray(frame_bytes(width, height, "bgr24", stride))
    view = decode_frame(buffer, width, height, "bgr24", stride)
    assert np.shares_memory(view, np.frombuffer(buffer, np.uint8))
    buffer[stride * 2 + 3 * 4 + 1] = 200  # row 2, pixel 4, green: seen through the view
    assert view[2, 4, 1] == 200
    yuyv = bytearray(frame_bytes(width, height, "yuyv", 24))
    assert np.shares_memory(frame_view(yuyv, width, height, "yuyv", 24),
                            np.frombuffer(yuyv, np.uint8))
    nv12 = bytearray(frame_bytes(width, height, "nv12", 16))
    y, uv = nv12_planes(nv12, width, height, 16)
    assert y.shape == (6, 10) and uv.shape == (3, 5, 2)
    assert np.shares_memory(uv, np.frombuffer(nv12, np.uint8))


@pytest.mark.parametrize(("width", "height", "fmt", "stride", "size", "match"), [
    (63, 64, "yuyv", None, None, "even width"),
    (64, 63, "nv12", None, None, "even height"),
    (64, 64, "bgr24", 191, None, "stride 191"),
    (64, 64, "rgba", None, None, "unknown pixel format"),
    (0, 64, "gray8", None, None, "out of range"),
    (64, 64, "gray8", None, 100, "holds 100 bytes"),
])
def test_bad_geometry_is_an_input_error(width: int, height: int, fmt: str, stride: int | None,
                                        size: int | None, match: str) -> None:
    with pytest.raises(InputError, match=match):
        decode_frame(bytes(size or 64 * 64 * 3), width, height, fmt, stride)


def test_bridge_module_imports_no_torch() -> None:
    code = ("import sys\nfor m in ('torch', 'torchvision', 'timm'): sys.modules[m] = None\n"
            "from edge_smw.bridge import decode_frame, FrameScorer\n"
            "import numpy as np\n"
            "print(decode_frame(bytes(8 * 4 * 2), 8, 4, 'yuyv').shape)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(4, 8, 3)"


# -- the C library -------------------------------------------------------------------------
def _why_no_build() -> str | None:
    if not (shutil.which("cc") or shutil.which("gcc")):
        return "no C compiler (cc/gcc) on PATH"
    if not shutil.which("make"):
        return "make is not installed"
    libdir, library = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir or \
            not (Path(libdir) / library).exists():
        return f"this Python ({sys.executable}) has no shared libpython to embed"
    version = sysconfig.get_config_var("VERSION")
    config = Path(sys.base_prefix) / "bin" / f"python{version}-config"
    if not config.exists() and not shutil.which("python3-config"):
        return f"no {config.name} / python3-config (install the Python development files)"
    return None


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libedge_smw.so, its engine, the example and abi_check, built into a temp folder."""
    reason = _why_no_build()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("firmware_bridge")
    proc = subprocess.run(["make", "-C", str(BRIDGE), f"BUILD={out}", f"PYTHON={sys.executable}"],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("libedge_smw.so", "libedge_smw_python.so", "edge_smw_example", "abi_check"):
        assert (out / name).is_file(), name
    return out


def bridge_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in BRIDGE_ENV}
    env.update(extra)
    return env


def run_example(build: Path, model: Path, frames: list[bytes], fmt: str, width: int,
                height: int, stride: int, tmp_path: Path, *, detect: bool = False,
                workers: int = 1) -> dict[int, list[dict]]:
    path = tmp_path / f"frames.{fmt}"
    path.write_bytes(b"".join(frames))
    cmd = [str(build / "edge_smw_example"), "--model", str(model), "--frames", str(path),
           "--format", fmt, "--width", str(width), "--height", str(height),
           "--stride", str(stride), "--threads", "1", "--backend", "onnxruntime-cpu",
           "--workers", str(workers)] + ([] if detect else ["--no-detect"])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300,
                          env=bridge_env())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("backend onnxruntime-cpu levels not_smiling smiling")
    faces: dict[int, list[dict]] = {}
    for line in lines[1:]:
        parts = line.split()
        frame = int(parts[1])
        if parts[2] == "faces":
            faces[frame] = []
            continue
        at = parts.index("probs")
        faces[frame].append({"box": tuple(int(v) for v in parts[5:9]), "level": int(parts[10]),
                             "name": parts[11], "expected": float(parts[13]),
                             "probs": np.array([float(v) for v in parts[at + 1 :]])})
    return faces


def assert_same(c_faces: list[dict], py_faces: list) -> None:
    assert len(c_faces) == len(py_faces)
    for c, p in zip(c_faces, py_faces, strict=True):
        assert c["box"] == tuple(p.box)
        assert (c["level"], c["name"]) == (p.level, p.level_name)
        np.testing.assert_allclose(c["probs"], p.probabilities, rtol=0, atol=TOLERANCE)
        assert abs(c["expected"] - p.expected_score) <= TOLERANCE


@pytest.fixture(scope="module")
def runtime_whole(smiles_onnx: Path):
    from edge_smw import Runtime

    with Runtime(smiles_onnx, backend="onnxruntime-cpu", threads=1, detect_faces=False) as rt:
        yield rt


@pytest.mark.parametrize("fmt", PIXEL_FORMATS)
def test_example_scores_equal_runtime(build: Path, smiles_onnx: Path, runtime_whole,
                                      crops: list[np.ndarray], fmt: str,
                                      tmp_path: Path) -> None:
    images = [tinted(c, seed=i) for i, c in enumerate(crops)]
    height, width = images[0].shape[:2]
    stride = padded_stride(width, fmt)
    frames = [encode_frame(image, fmt, stride) for image in images]
    got = run_example(build, smiles_onnx, frames, fmt, width, height, stride, tmp_path)
    assert sorted(got) == list(range(len(frames)))
    levels = set()
    for index, data in enumerate(frames):
        expected = runtime_whole.score(opencv_decode(data, width, height, fmt, stride))
        assert_same(got[index], expected.faces)
        assert got[index][0]["box"] == (0, 0, width, height)
        levels.add(got[index][0]["level"])
    assert levels == {0, 1}, "the real crops should not all score the same level"


def test_example_detected_face_equals_runtime(build: Path, smiles_onnx: Path,
                                              smiles_test_items, tmp_path: Path) -> None:
    from edge_smw import Runtime

    with Runtime(smiles_onnx, backend="onnxruntime-cpu", threads=1,
                 detect_faces=True) as runtime:  # as the C ABI's default
        for item in smiles_test_items[:30]:
            frame = paste_face(read_image(item.path))
            stride = padded_stride(320, "yuyv")
            data = encode_frame(frame, "yuyv", stride)
            expected = runtime.score(opencv_decode(data, 320, 240, "yuyv", stride))
            if expected.faces:
                break
        else:
            pytest.fail("Haar found no face in 30 upscaled real crops")
    got = run_example(build, smiles_onnx, [data], "yuyv", 320, 240, stride, tmp_path,
                      detect=True)
    assert len(got[0]) >= 1
    assert_same(got[0], expected.faces)
    x, y, w, h = got[0][0]["box"]
    assert 40 < x + w / 2 < 280 and 30 < y + h / 2 < 210  # where the face was pasted


def test_threads_sharing_one_handle_agree(build: Path, smiles_onnx: Path,
                                          crops: list[np.ndarray], tmp_path: Path) -> None:
    images = [tinted(c, seed=s) for s in range(2) for c in crops]  # 8 frames
    frames = [encode_frame(image, "nv12", 96) for image in images]
    one = run_example(build, smiles_onnx, frames, "nv12", 96, 72, 96, tmp_path)
    four = run_example(build, smiles_onnx, frames, "nv12", 96, 72, 96, tmp_path, workers=4)
    assert len(one) == 8
    for index in one:
        assert [f["box"] for f in one[index]] == [f["box"] for f in four[index]]
        for a, b in zip(one[index], four[index], strict=True):
            np.testing.assert_allclose(a["probs"], b["probs"], rtol=0, atol=TOLERANCE)


def abi_check(build: Path, mode: str, model: Path, **env: str) -> dict[str, tuple[str, str]]:
    proc = subprocess.run([str(build / "abi_check"), mode, str(model)], capture_output=True,
                          text=True, check=False, timeout=300, env=bridge_env(**env))
    assert proc.returncode == 0, proc.stdout + proc.stderr  # no crash, whatever went wrong
    cases = {}
    for line in proc.stdout.splitlines():
        _, name, status, *text = line.split(" ")
        cases[name] = (status, " ".join(text))
    return cases


@pytest.mark.faults
def test_bad_arguments_return_errors(build: Path, smiles_onnx: Path) -> None:
    cases = abi_check(build, "args", smiles_onnx)
    expected = {
        "abi_version": "ESMW_OK", "open_null_options": "ESMW_ERR_ARGUMENT",
        "open_null_out": "ESMW_ERR_ARGUMENT", "open_bad_struct_size": "ESMW_ERR_ABI",
        "open_no_model_path": "ESMW_ERR_ARGUMENT", "open_negative_threads": "ESMW_ERR_ARGUMENT",
        "open_missing_model": "ESMW_ERR_MODEL", "open_unknown_backend": "ESMW_ERR_ARGUMENT",
        "open_threads_over_cap": "ESMW_ERR_ARGUMENT",
        "open_threads_int32_max": "ESMW_ERR_ARGUMENT",
        "open_path_too_long": "ESMW_ERR_ARGUMENT", "open_name_too_long": "ESMW_ERR_ARGUMENT",
        "open": "ESMW_OK", "score_null_handle": "ESMW_ERR_ARGUMENT",
        "score_null_data": "ESMW_ERR_ARGUMENT", "score_null_count": "ESMW_ERR_ARGUMENT",
        "score_negative_capacity": "ESMW_ERR_ARGUMENT",
        "score_null_results": "ESMW_ERR_ARGUMENT", "score_zero_width": "ESMW_ERR_ARGUMENT",
        "score_negative_height": "ESMW_ERR_ARGUMENT",
        "score_unknown_format": "ESMW_ERR_ARGUMENT",
        "score_odd_width_yuyv": "ESMW_ERR_ARGUMENT", "score_odd_width_nv12": "ESMW_ERR_ARGUMENT",
        "score_odd_height_nv12": "ESMW_ERR_ARGUMENT",
        "score_stride_too_small": "ESMW_ERR_ARGUMENT",
        "score_stride_too_small_yuyv": "ESMW_ERR_ARGUMENT",
        "score_negative_stride": "ESMW_ERR_ARGUMENT", "score_nv12_null_uv": "ESMW_ERR_ARGUMENT",
        "frame_bytes_odd_yuyv": "ESMW_ERR_ARGUMENT",
        "level_name_out_of_range": "ESMW_ERR_ARGUMENT",
        "score_after_errors": "ESMW_OK", "score_count_only": "ESMW_OK", "close": "ESMW_OK",
    }
    assert {name: status for name, (status, _) in cases.items()} == expected
    assert "not found" in cases["open_missing_model"][1]
    assert "even width" in cases["score_odd_width_yuyv"][1]
    assert "stride 191" in cases["score_stride_too_small"][1]
    assert "unknown backend" in cases["open_unknown_backend"][1]
    from edge_smw.artifacts.sessions import max_threads

    assert f"threads <= {max_threads()}" in cases["open_threads_over_cap"][1]
    assert "PATH_MAX" in cases["open_path_too_long"][1]
    assert "too long" in cases["open_name_too_long"][1]


def test_thread_cap_is_the_same_in_c_and_python() -> None:
    """One rule in two languages: the header's constant must equal the Python one."""
    from edge_smw.artifacts.sessions import MAX_THREADS_PER_CORE

    header = (BRIDGE / "include" / "edge_smw.h").read_text()
    match = re.search(r"#define EDGE_SMW_MAX_THREADS_PER_CORE (\d+)", header)
    assert match and int(match.group(1)) == MAX_THREADS_PER_CORE


def test_corrupt_model_is_a_model_error(build: Path, tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    status, text = abi_check(build, "open", bad)["open"]
    assert status == "ESMW_ERR_MODEL"
    assert str(bad) in text


def test_package_not_found_is_an_error(build: Path, smiles_onnx: Path, tmp_path: Path) -> None:
    base = getattr(sys, "_base_executable", None)
    if not base or sys.prefix == sys.base_prefix:
        skip_for_machine("tests do not run in a venv, so there is no Python without edge_smw")
    probe = subprocess.run([base, "-c", "import edge_smw"], capture_output=True,
                           env=bridge_env(), check=False, cwd=tmp_path)
    if probe.returncode == 0:
        skip_for_machine(f"edge_smw is importable by the base Python {base} too")
    status, text = abi_check(build, "open", smiles_onnx, EDGE_SMW_PYTHON=base)["open"]
    assert status == "ESMW_ERR_PACKAGE"
    assert "No module named 'edge_smw'" in text and base in text


def test_python_that_cannot_start_is_an_error(build: Path, smiles_onnx: Path,
                                              tmp_path: Path) -> None:
    missing_engine = tmp_path / "libedge_smw_python.so"
    status, text = abi_check(build, "open", smiles_onnx,
                             EDGE_SMW_ENGINE=str(missing_engine))["open"]
    assert status == "ESMW_ERR_NO_PYTHON" and str(missing_engine) in text
    status, text = abi_check(build, "open", smiles_onnx, PYTHONHOME=str(tmp_path))["open"]
    assert status == "ESMW_ERR_NO_PYTHON" and "cannot start Python" in text
    status, text = abi_check(build, "open", smiles_onnx,
                             EDGE_SMW_PYTHON=str(tmp_path / "python"))["open"]
    assert status == "ESMW_ERR_NO_PYTHON" and "does not exist" in text


def test_python_path_option_finds_the_package(build: Path, smiles_onnx: Path) -> None:
    """A bare Python plus EDGE_SMW_PYTHONPATH (the package and its site-packages) works."""
    base = getattr(sys, "_base_executable", None)
    if not base or sys.prefix == sys.base_prefix:
        skip_for_machine("tests do not run in a venv")
    site = sysconfig.get_paths()["purelib"]
    cases = abi_check(build, "open", smiles_onnx, EDGE_SMW_PYTHON=base,
                      EDGE_SMW_PYTHONPATH=f"{REPO}:{site}")
    assert cases["open"][0] == "ESMW_OK", cases["open"][1]
    assert cases["open_again"][0] == "ESMW_OK"


# -- the library called from a process that already runs Python (ctypes) ----------------------
class Options(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("model_path", ctypes.c_char_p),
                ("backend", ctypes.c_char_p), ("threads", ctypes.c_int32),
                ("detect_faces", ctypes.c_int32), ("max_faces", ctypes.c_int32),
                ("device", ctypes.c_int32), ("python", ctypes.c_char_p),
                ("python_path", ctypes.c_char_p)]


class Face(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int32), ("y", ctypes.c_int32), ("width", ctypes.c_int32),
                ("height", ctypes.c_int32), ("level", ctypes.c_int32),
                ("num_levels", ctypes.c_int32), ("expected_score", ctypes.c_double),
                ("probabilities", ctypes.c_double * 16)]


def test_ctypes_in_running_python_scores_nv12_planes(build: Path, smiles_onnx: Path,
                                                     runtime_whole,
                                                     crops: list[np.ndarray]) -> None:
    """Python firmware calling the C ABI: the running interpreter is used, not a second one;
    NV12 given as two separate plane buffers (Argus) scores like the Python Runtime."""
    assert ctypes.sizeof(Face) == face_dtype(16).itemsize
    lib = ctypes.CDLL(str(build / "libedge_smw.so"))
    lib.esmw_last_error.restype = ctypes.c_char_p
    options = Options()
    lib.esmw_options_init(ctypes.byref(options))
    assert options.struct_size == ctypes.sizeof(Options) and options.detect_faces == 1
    options.model_path = str(smiles_onnx).encode()
    options.backend = b"onnxruntime-cpu"
    options.detect_faces = 0
    options.threads = 1
    handle = ctypes.c_void_p()
    rc = lib.esmw_open(ctypes.byref(options), ctypes.byref(handle))
    assert rc == 0, lib.esmw_last_error()
    try:
        image = tinted(crops[2], seed=5)
        height, width = image.shape[:2]
        data = encode_frame(image, "nv12", width)
        y = ctypes.create_string_buffer(data[: width * height], width * height)
        uv_stride = width + 64
        uv_rows = np.zeros((height // 2, uv_stride), np.uint8)
        uv_rows[:, :width] = np.frombuffer(data[width * height :], np.uint8).reshape(-1, width)
        uv = ctypes.create_string_buffer(uv_rows.tobytes(), uv_rows.size)
        faces = (Face * 2)()
        count = ctypes.c_int32(-1)
        rc = lib.esmw_score_nv12(handle, y, width, uv, uv_stride, width, height, faces, 2,
                                 ctypes.byref(count))
        assert rc == 0, lib.esmw_last_error()
        expected = runtime_whole.score(opencv_decode(data, width, height, "nv12", width)).faces
        assert count.value == len(expected) == 1
        face = faces[0]
        assert (face.x, face.y, face.width, face.height) == (0, 0, width, height)
        assert face.level == expected[0].level and face.num_levels == 2
        np.testing.assert_allclose(list(face.probabilities)[:2], expected[0].probabilities,
                                   rtol=0, atol=TOLERANCE)
        assert list(face.probabilities)[2:] == [0.0] * 14
        rc = lib.esmw_score_nv12(handle, y, width, uv, uv_stride, width - 1, height, faces, 2,
                                 ctypes.byref(count))
        assert rc == -1 and b"even width" in lib.esmw_last_error()
    finally:
        lib.esmw_close(handle)


# -- make check ----------------------------------------------------------------------------
def test_make_check_passes_and_its_comparison_catches_a_difference(
        build: Path, smiles_onnx: Path, smiles_dir: Path, runtime_whole,
        crops: list[np.ndarray]) -> None:
    images = " ".join(str(p) for p in sorted((smiles_dir / "smiling").glob("*.jpg"))[:8])
    proc = subprocess.run(["make", "-s", "-C", str(BRIDGE), f"BUILD={build}",
                           f"PYTHON={sys.executable}", "check", f"MODEL={smiles_onnx}",
                           f"IMAGE={images}"], capture_output=True, text=True, check=False,
                          timeout=600, env=bridge_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "7/7 cases equal to the Python Runtime" in proc.stdout
    assert "detect: 0 faces" not in proc.stdout

    check = load_script(BRIDGE / "examples" / "check_parity.py")
    face = runtime_whole.score(tinted(crops[0])).faces[0]
    same = {"box": tuple(face.box), "level": face.level, "expected": face.expected_score,
            "probs": [float(p) for p in face.probabilities]}
    assert check.compare([same], [face], 1e-9) == []
    nudged = dict(same, probs=[same["probs"][0] + 1e-6, same["probs"][1] - 1e-6])
    assert check.compare([nudged], [face], 1e-9)
    assert check.compare([], [face], 1e-9)
