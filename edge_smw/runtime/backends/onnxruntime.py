"""onnxruntime runner: CPU, CUDA and TensorRT execution providers.

onnxruntime quietly falls back to the CPU when a GPU provider cannot start (no driver, wrong
CUDA); this runner checks which provider the session really got and reports a fallback as
``BackendUnavailableError``, so ``backend="auto"`` picks honestly and says why.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np

from edge_smw.artifacts.sessions import SessionSettings, check_threads, load_session
from edge_smw.cache import cache_root
from edge_smw.errors import BackendUnavailableError, InputError, ModelError
from edge_smw.runtime.backends import Runner

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
GPU_HINT = (
    "install the GPU build instead of the CPU one: `pip uninstall -y onnxruntime && pip install "
    "onnxruntime-gpu` (with an NVIDIA driver; on a Jetson, NVIDIA's onnxruntime-gpu wheel for "
    "your JetPack)"
)


class OnnxRuntimeRunner(Runner):
    """An ONNX model in an ``onnxruntime.InferenceSession`` on one execution provider."""

    @classmethod
    def options_not_taken(cls, provider: str) -> tuple[str, ...]:
        """Keyword options that do nothing on ``provider``: the TensorRT provider's (named
        ``trt_*`` in ``__init__``), elsewhere."""
        if provider == "tensorrt":
            return ()
        return tuple(n for n in inspect.signature(cls.__init__).parameters
                     if n.startswith("trt_"))

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
        trt_workspace_bytes: int | None = None,
        allow_spinning: bool = True,
    ) -> None:
        super().__init__(path)
        if provider not in PROVIDERS:
            raise InputError(f"unknown onnxruntime provider {provider!r}; choose one of "
                             f"{sorted(PROVIDERS)}")
        threads = check_threads(threads)  # bench and calibration come here directly
        self.provider = provider
        self.name = f"onnxruntime-{provider}"
        self.device = int(device)
        self.threads = threads
        self.trt_fp16 = trt_fp16
        self.trt_int8 = trt_int8
        self.trt_workspace_bytes = trt_workspace_bytes
        # False: intra-op threads sleep instead of spin-waiting between a run's parallel steps
        # (they never spin after a run returns: ``SessionSettings.spinning``).
        self.allow_spinning = bool(allow_spinning)
        self.trt_cache_dir = Path(trt_cache_dir) if trt_cache_dir else cache_root() / "ort-trt"
        self._session: Any = None
        self._outputs: tuple[str, ...] = ()
        self._input_name = ""
        self._input_shape: tuple[int, ...] | None = None

    def _providers(self, ort: Any) -> list:
        wanted = PROVIDERS[self.provider]
        available = ort.get_available_providers()
        if wanted not in available:
            hint = GPU_HINT if self.provider != "cpu" else "reinstall onnxruntime"
            raise BackendUnavailableError(
                f"{wanted} is not in this onnxruntime (it has {available}); {hint}"
            )
        if self.provider == "cpu":
            return ["CPUExecutionProvider"]
        cuda = ("CUDAExecutionProvider", {"device_id": self.device})
        if self.provider == "cuda":
            return [cuda, "CPUExecutionProvider"]
        self.trt_cache_dir.mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = {
            "device_id": self.device,
            "trt_fp16_enable": bool(self.trt_fp16),
            "trt_int8_enable": bool(self.trt_int8),
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(self.trt_cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(self.trt_cache_dir),
        }
        if self.trt_workspace_bytes:
            options["trt_max_workspace_size"] = int(self.trt_workspace_bytes)
        return [("TensorrtExecutionProvider", options), cuda, "CPUExecutionProvider"]

    def _settings(self) -> SessionSettings:
        return SessionSettings(threads=self.threads, spinning=self.allow_spinning)

    def activate(self) -> None:
        import onnxruntime as ort

        if not self.path.is_file():
            raise ModelError(f"model {self.path} not found")
        if self.path.stat().st_size == 0:
            raise ModelError(f"model {self.path} is empty (0 bytes); re-export it with "
                             "`edge-smw export`")
        providers = self._providers(ort)
        try:
            session = load_session(self.path, self._settings(), providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if self.provider != "cpu" and self._loads_on_cpu():
                raise BackendUnavailableError(
                    f"{PROVIDERS[self.provider]} could not start ({reason}); check the NVIDIA "
                    f"driver and CUDA/cuDNN/TensorRT versions for this onnxruntime-gpu"
                ) from None
            raise ModelError(
                f"{self.path} could not be loaded by onnxruntime ({reason}); it is truncated, "
                "corrupt or not an ONNX model: re-export it with `edge-smw export`"
            ) from None
        got = session.get_providers()
        if not got or got[0] != PROVIDERS[self.provider]:
            raise BackendUnavailableError(
                f"{PROVIDERS[self.provider]} is installed but did not start (onnxruntime fell "
                f"back to {got}); check the NVIDIA driver and CUDA/cuDNN versions"
            )
        self._session = session
        self._outputs = tuple(o.name for o in session.get_outputs())
        inputs = session.get_inputs()
        if len(inputs) != 1:
            self.deactivate()
            raise ModelError(f"{self.path} takes {len(inputs)} inputs "
                             f"{[i.name for i in inputs]}; a runner feeds models with one input")
        self._input_name = inputs[0].name
        shape = inputs[0].shape
        if len(shape) == 4 and all(isinstance(d, int) for d in shape[1:]):
            self._input_shape = tuple(shape[1:])
        self.active = True

    def _loads_on_cpu(self) -> bool:
        """Tell a broken file from a GPU provider that cannot start."""
        try:
            load_session(self.path, self._settings(), providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - any failure means the file itself is bad
            return False
        return True

    def infer(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise ModelError(f"the onnxruntime session for {self.path} is closed")
        try:
            outputs = session.run(None, {self._input_name: inputs})
        except Exception as exc:  # onnxruntime's own error types
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"onnxruntime failed to run {self.path} on input "
                             f"{inputs.dtype} {inputs.shape}: {reason}") from None
        return dict(zip(self._outputs, outputs, strict=True))

    def deactivate(self) -> None:
        self._session = None
        self.active = False

    def metadata(self) -> dict[str, str]:
        if self._session is None:
            raise ModelError(f"the onnxruntime session for {self.path} is closed")
        return dict(self._session.get_modelmeta().custom_metadata_map)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    @property
    def input_name(self) -> str:
        return self._input_name

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self._input_shape
