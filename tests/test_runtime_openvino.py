"""The OpenVINO runner: the same ONNX files on Intel's CPU runtime.

fp32 must give onnxruntime's probabilities (OpenVINO would run it in bfloat16 on an AMX CPU
unless the runner pins f32); the cpu-flavour INT8 file must pick the same levels as on
onnxruntime; every batch size must give the same numbers whichever compile serves it.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_smw.errors import BackendUnavailableError, InputError, ModelError
from edge_smw.runtime import Runtime
from edge_smw.runtime.backends import open_runner
from edge_smw.runtime.backends.openvino import STATIC_SHAPES
from tests.runtime_helpers import crops_by_level, detectable_frames, with_int8_settings

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None,
    reason="openvino is not installed (the [openvino] extra that scripts/setup.sh installs)")


def _inputs(runtime: Runtime, items, per_level: int) -> np.ndarray:
    crops = crops_by_level(items, per_level)
    contract = runtime.contract
    return contract.normalize(np.stack([contract.to_model_pixels(c) for c in crops]))


@pytest.fixture(scope="module")
def fp32_pair(smiles_onnx: Path):
    with Runtime(smiles_onnx, backend="onnxruntime-cpu", detect_faces=False) as ort_rt, \
            Runtime(smiles_onnx, backend="openvino-cpu", detect_faces=False) as ov_rt:
        yield ort_rt, ov_rt


def test_fp32_gives_onnxruntime_probabilities(fp32_pair, smiles_test_items) -> None:
    ort_rt, ov_rt = fp32_pair
    assert ov_rt.backend == "openvino-cpu"
    x = _inputs(ort_rt, smiles_test_items, 24)
    want = ort_rt.infer(x)
    got = ov_rt.infer(x)
    assert set(got) == set(want)
    diff = np.abs(got["probabilities"] - want["probabilities"]).max()
    assert diff <= 1e-4, diff  # the fp32 parity tolerance: f32 kept, no bfloat16
    assert np.array_equal(got["probabilities"].argmax(1), want["probabilities"].argmax(1))


def test_every_batch_size_gives_the_same_numbers(fp32_pair, smiles_test_items) -> None:
    """More sizes than get static compiles: the dynamic compile serves the rest, the same."""
    _, ov_rt = fp32_pair
    x = _inputs(ov_rt, smiles_test_items, 6)
    whole = ov_rt.infer(x)["probabilities"]
    sizes = list(range(1, STATIC_SHAPES + 4))
    for size in sizes:
        part = ov_rt.infer(x[:size])["probabilities"]
        np.testing.assert_allclose(part, whole[:size], atol=1e-5)
    first = ov_rt.infer(x[:2])["probabilities"]
    ov_rt.infer(x[2:4])  # the next call on this thread must not overwrite the first's output
    np.testing.assert_allclose(first, whole[:2], atol=1e-5)


def test_threads_share_one_runner(fp32_pair, smiles_test_items) -> None:
    _, ov_rt = fp32_pair
    x = _inputs(ov_rt, smiles_test_items, 4)
    want = ov_rt.infer(x[:1])["probabilities"]
    got: list[np.ndarray] = []

    def work() -> None:
        for _ in range(5):
            got.append(ov_rt.infer(x[:1])["probabilities"])

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 15
    for g in got:
        np.testing.assert_allclose(g, want, atol=1e-6)


def test_int8_agrees_with_fp32_as_on_onnxruntime(smiles_int8: Path, smiles_onnx: Path,
                                                 smiles_test_items) -> None:
    """Two integer implementations of one Q/DQ graph round differently (about 2% of decisions
    differ between them on a 7-bit model's test crops); each must agree with fp32 about as
    well as the other."""
    with Runtime(smiles_onnx, backend="onnxruntime-cpu", detect_faces=False) as fp32_rt, \
            Runtime(smiles_int8, backend="onnxruntime-cpu", detect_faces=False) as ort_rt, \
            Runtime(smiles_int8, backend="openvino-cpu", detect_faces=False) as ov_rt:
        assert ov_rt.info.precision == "int8"
        x = _inputs(fp32_rt, smiles_test_items, 150)
        levels = fp32_rt.infer(x)["probabilities"].argmax(1)
        ort = ort_rt.infer(x)["probabilities"]
        ov = ov_rt.infer(x)["probabilities"]
    ort_agreement = float(np.mean(ort.argmax(1) == levels))
    ov_agreement = float(np.mean(ov.argmax(1) == levels))
    assert ov_agreement >= ort_agreement - 0.03, (ov_agreement, ort_agreement)
    assert float(np.abs(ov - ort).mean()) < 0.02


def test_frames_are_scored_with_the_detector_on_onnxruntime(smiles_onnx: Path,
                                                            smiles_test_items) -> None:
    paths = [item.path for item in smiles_test_items]
    frames = [frame for _, frame in detectable_frames(paths[:10] + paths[-10:], 2)]
    with Runtime(smiles_onnx, backend="openvino-cpu") as ov_rt, \
            Runtime(smiles_onnx, backend="onnxruntime-cpu") as ort_rt:
        assert ov_rt.detector is not None and ov_rt.detector.backend in ("onnxruntime-cpu",
                                                                         "opencv")
        for frame in frames:
            got, want = ov_rt.score(frame), ort_rt.score(frame)
            assert len(got.faces) == len(want.faces) >= 1
            assert got.faces[0].box == want.faces[0].box
            np.testing.assert_allclose(got.faces[0].probabilities, want.faces[0].probabilities,
                                       atol=1e-4)


def test_auto_never_picks_openvino(smiles_onnx: Path) -> None:
    with Runtime(smiles_onnx, detect_faces=False, warmup=False) as rt:
        assert rt.backend == "onnxruntime-cpu"


def test_broken_files_say_what_to_do(tmp_path: Path) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        Runtime(empty, backend="openvino-cpu", detect_faces=False)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model" * 100)
    with pytest.raises(ModelError, match="could not be read by OpenVINO.*re-export"):
        Runtime(junk, backend="openvino-cpu", detect_faces=False)
    with pytest.raises(ModelError, match="not found"):
        Runtime(tmp_path / "missing.onnx", backend="openvino-cpu", detect_faces=False)


def test_onnxruntime_options_are_refused_by_name(smiles_onnx: Path) -> None:
    with pytest.raises(InputError, match="allow_spinning"):
        open_runner("openvino-cpu", smiles_onnx, options={"allow_spinning": False})


def test_without_openvino_the_error_says_how_to_install(smiles_onnx: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(BackendUnavailableError, match=r"edge-smw\[openvino\]"):
        Runtime(smiles_onnx, backend="openvino-cpu", detect_faces=False)


def test_eight_bit_weights_on_a_cpu_without_vnni_are_warned_about(
        smiles_int8: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    """oneDNN's U8S8 kernels saturate without VNNI as onnxruntime's do: an 8-bit-weight model
    under OpenVINO restricted to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2) flipped 157 of 1,490 test
    decisions against 8 with VNNI (benchmarks/RESULTS.md). The runtime says so."""
    import edge_smw.cpu as cpu
    from edge_smw.runtime import runtime as runtime_module

    # the same model, said to have 8-bit weights
    eight_bit = with_int8_settings(smiles_int8, tmp_path / "model.int8.onnx",
                                   reduce_range=False, target_cpu="x86-vnni")
    monkeypatch.setattr(cpu, "cpu_kind", lambda features=None: "x86-avx2")
    monkeypatch.setattr(runtime_module, "_CPU_WARNED", set())
    with caplog.at_level("WARNING", logger="edge_smw.runtime"):
        Runtime(eight_bit, backend="openvino-cpu", detect_faces=False, warmup=False).close()
    warned = [r.getMessage() for r in caplog.records if "no VNNI" in r.getMessage()]
    assert len(warned) == 1 and "OpenVINO" in warned[0] and "x86-avx2" in warned[0]


def test_a_stem_padded_for_onnxruntime_is_noted_on_openvino_only(
        smiles_int8: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    """The export pads the stem's channels for onnxruntime's int8 kernels; OpenVINO ran the
    3-channel stem faster (benchmarks/RESULTS.md): the runtime says how to export for it, once,
    and says nothing on onnxruntime."""
    from edge_smw.runtime import runtime as runtime_module

    padded = with_int8_settings(smiles_int8, tmp_path / "model.int8.onnx",
                                stem_input_channels=[3, 4])
    monkeypatch.setattr(runtime_module, "_CPU_WARNED", set())

    def notes(backend: str) -> list[str]:
        caplog.clear()
        with caplog.at_level("INFO", logger="edge_smw.runtime"):
            Runtime(padded, backend=backend, detect_faces=False, warmup=False).close()
        return [r.getMessage() for r in caplog.records if "--no-pad-stem" in r.getMessage()]

    assert notes("onnxruntime-cpu") == []
    first = notes("openvino-cpu")
    assert len(first) == 1 and "4 input channels (1 of zeros)" in first[0]
    assert notes("openvino-cpu") == []  # once per model
