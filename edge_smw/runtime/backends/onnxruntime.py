"""onnxruntime runner: CPU, CUDA and TensorRT execution providers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge_smw.cache import cache_root
from edge_smw.errors import BackendUnavailableError, ModelError
from edge_smw.metadata import INPUT_NAME
from edge_smw.runtime.backends import Runner

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class OnnxRuntimeRunner(Runner):
    def __init__(
        self,
        path: str | Path,
        *,
        provider: str = "cpu",
        device: int = 0,
        threads: int | None = None,
        trt_fp16: bool = False,
        trt_int8: bool = False,
        trt_cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(path)
        if provider not in PROVIDERS:
            raise BackendUnavailableError(f"unknown onnxruntime provider {provider!r}")
        self.provider = provider
        self.name = f"onnxruntime-{provider}"
        self.device = device
        self.threads = threads
        self.trt_fp16 = trt_fp16
        self.trt_int8 = trt_int8
        self.trt_cache_dir = Path(trt_cache_dir) if trt_cache_dir else cache_root() / "ort-trt"
        self._session = None

    def _providers(self) -> list:
        import onnxruntime as ort

        wanted = PROVIDERS[self.provider]
        available = ort.get_available_providers()
        if wanted not in available:
            hint = ("pip uninstall -y onnxruntime && pip install onnxruntime-gpu (with a CUDA "
                    "driver)" if self.provider != "cpu" else "reinstall onnxruntime")
            raise BackendUnavailableError(
                f"{wanted} is not available in this onnxruntime (has {available}); {hint}"
            )
        if self.provider == "cpu":
            return ["CPUExecutionProvider"]
        cuda = ("CUDAExecutionProvider", {"device_id": self.device})
        if self.provider == "cuda":
            return [cuda, "CPUExecutionProvider"]
        self.trt_cache_dir.mkdir(parents=True, exist_ok=True)
        trt = ("TensorrtExecutionProvider", {
            "device_id": self.device,
            "trt_fp16_enable": self.trt_fp16,
            "trt_int8_enable": self.trt_int8,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(self.trt_cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(self.trt_cache_dir),
        })
        return [trt, cuda, "CPUExecutionProvider"]

    def activate(self) -> None:
        import onnxruntime as ort

        if not self.path.is_file():
            raise ModelError(f"model {self.path} not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        providers = self._providers()
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(
                f"{self.path} could not be loaded by onnxruntime ({str(exc).splitlines()[0]}); "
                "it may be truncated or not an ONNX model: re-export it"
            ) from None
        self.active = True

    def infer(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self._session.run(None, {INPUT_NAME: inputs})
        return dict(zip(self.output_names, outputs, strict=True))

    def deactivate(self) -> None:
        self._session = None
        self.active = False

    def metadata(self) -> dict[str, str]:
        return dict(self._session.get_modelmeta().custom_metadata_map)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self._session.get_outputs())
