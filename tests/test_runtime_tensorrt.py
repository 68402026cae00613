"""The native TensorRT runner.

Where TensorRT and a GPU are present: an engine is built from the real fp32 export and must
match onnxruntime-cpu on real crops. Everywhere: the errors a camera without TensorRT, a GPU
or an engine's sidecar gets must say what to install or do.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from edge_smw.atomic import write_bytes, write_json
from edge_smw.errors import BackendUnavailableError, ModelError
from edge_smw.metadata import sidecar_path
from edge_smw.runtime import Runtime
from tests.runtime_helpers import crops_by_level
from tests.skips import machine_reason, skip_for_machine

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _gpu_reason() -> str | None:
    """Why the GPU tests cannot run here (None: they can)."""
    if not HAS_TRT:
        return ("tensorrt is not installed: on a Jetson install JetPack; elsewhere an NVIDIA "
                "driver and `pip install tensorrt cuda-python`")
    from edge_smw.runtime.backends.tensorrt import open_cuda

    try:
        open_cuda(0).close()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def onnx_info(smiles_onnx: Path):
    with Runtime(smiles_onnx, backend="onnxruntime-cpu", threads=1, warmup=False) as rt:
        return rt.info


def test_engine_without_its_sidecar_is_a_model_error(tmp_path: Path) -> None:
    engine = write_bytes(tmp_path / "model.engine", b"\x00" * 64)
    with pytest.raises(ModelError, match="sidecar"):
        Runtime(engine)
    write_json(sidecar_path(engine), {"something": "else"})
    with pytest.raises(ModelError, match="not a valid edge-smw engine sidecar"):
        Runtime(engine)


@pytest.mark.skipif(HAS_TRT, reason=machine_reason("tensorrt is installed here; the GPU tests "
                                                   "cover it"))
def test_missing_tensorrt_says_what_to_install(tmp_path: Path, onnx_info) -> None:
    engine = write_bytes(tmp_path / "model.engine", b"\x00" * 64)
    write_json(sidecar_path(engine), onnx_info.to_sidecar())
    for backend in ("tensorrt", "auto"):
        with pytest.raises(BackendUnavailableError, match="JetPack") as info:
            Runtime(engine, backend=backend)
        assert "pip install tensorrt" in str(info.value)


def test_cuda_without_a_gpu_is_backend_unavailable() -> None:
    if importlib.util.find_spec("cuda") is None and importlib.util.find_spec("pycuda") is None:
        skip_for_machine("neither cuda-python nor pycuda is installed")
    from edge_smw.runtime.backends.tensorrt import open_cuda

    try:
        cuda = open_cuda(0)
    except BackendUnavailableError as exc:
        assert "driver" in str(exc) or "does not exist" in str(exc)
        return
    try:  # a GPU is here: the buffers must round-trip through it
        host = cuda.host_empty(1000, np.dtype(np.float32))
        back = cuda.host_empty(1000, np.dtype(np.float32))
        host[:] = np.arange(1000, dtype=np.float32)
        cuda.make_current()
        ptr = cuda.malloc(host.nbytes)
        cuda.h2d(ptr, host)
        cuda.d2h(back, ptr)
        cuda.synchronize()
        cuda.free(ptr)
        cuda.release()
        np.testing.assert_array_equal(back, host)
    finally:
        cuda.close()


# -- on a GPU with TensorRT ---------------------------------------------------------------
def _build_engine(onnx_path: Path, engine_path: Path, info, max_batch: int = 8) -> Path:
    """fp32 engine with a dynamic-batch profile 1..max_batch (TF32 off, for parity)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(
        trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes()), [parser.get_error(i)
                                                  for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    size = info.contract.input_size
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, size, size), (4, 3, size, size),
                      (max_batch, 3, size, size))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    write_bytes(engine_path, bytes(plan))
    write_json(sidecar_path(engine_path), info.to_sidecar())
    return engine_path


@pytest.fixture(scope="module")
def engine(smiles_onnx: Path, onnx_info, tmp_path_factory) -> Path:
    reason = _gpu_reason()
    if reason:
        skip_for_machine(reason)
    return _build_engine(smiles_onnx, tmp_path_factory.mktemp("trt") / "model.engine",
                         onnx_info)


def test_tensorrt_matches_onnxruntime_on_real_crops(engine: Path, smiles_onnx: Path,
                                                    smiles_test_items) -> None:
    crops = crops_by_level(smiles_test_items, 10)  # 20 crops: split into batches of <= 8
    with Runtime(engine, backend="auto", detect_faces=False) as trt_rt, \
            Runtime(smiles_onnx, backend="onnxruntime-cpu", detect_faces=False) as cpu_rt:
        assert trt_rt.backend == "tensorrt" and trt_rt.max_batch == 8
        assert trt_rt.levels == cpu_rt.levels
        got = np.stack([f.probabilities for f in trt_rt.score_batch(crops)])
        want = np.stack([f.probabilities for f in cpu_rt.score_batch(crops)])
        one = trt_rt.score_crop(crops[3]).probabilities
        maps = trt_rt.score_crop(crops[0], feature_map=True).feature_map
    assert np.abs(got - want).max() <= 1e-4
    assert np.array_equal(got.argmax(1), want.argmax(1))
    np.testing.assert_allclose(one, got[3], atol=1e-5)
    assert maps is not None and maps.ndim == 3


def test_tensorrt_is_thread_safe(engine: Path, smiles_test_items) -> None:
    import threading

    crops = crops_by_level(smiles_test_items, 4)
    with Runtime(engine, backend="tensorrt", detect_faces=False) as rt:
        expected = [f.probabilities for f in rt.score_batch(crops)]
        got: dict[int, list[np.ndarray]] = {}

        def work(k: int) -> None:
            got[k] = [rt.score_crop(crops[(k + i) % len(crops)]).probabilities
                      for i in range(len(crops))]

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for k in range(8):
        for i, probs in enumerate(got[k]):
            np.testing.assert_allclose(probs, expected[(k + i) % len(crops)], atol=1e-5)


def test_an_engine_that_is_not_one_is_a_model_error(engine: Path, tmp_path: Path) -> None:
    bad = write_bytes(tmp_path / "model.engine", engine.read_bytes()[:1000])
    write_json(sidecar_path(bad), json.loads(sidecar_path(engine).read_text()))
    with pytest.raises(ModelError, match="rebuild it"):
        Runtime(bad, backend="tensorrt")
