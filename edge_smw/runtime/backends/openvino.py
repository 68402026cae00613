"""OpenVINO runner: the same ONNX files on Intel's CPU runtime.

OpenVINO reads edge-smw's ONNX files as they are (fp32, and the cpu flavour's Q/DQ INT8,
which its low-precision transformations turn into integer kernels: VNNI or AMX where the CPU
has them). Two settings matter for honest numbers:

- ``INFERENCE_PRECISION_HINT`` is pinned to ``f32``: on CPUs with AMX or AVX512-BF16 OpenVINO
  would otherwise run the float parts of every model in bfloat16, and an fp32 file would no
  longer give the torch model's probabilities.
- A model with a dynamic batch is compiled once per batch size it meets (static shapes run
  about 15% faster than one dynamic compile here), up to ``STATIC_SHAPES`` sizes; further
  sizes share one dynamic compile.

The model's edge-smw metadata is read through onnxruntime (a core dependency), which keeps
``metadata_props`` as written.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from edge_smw.artifacts.sessions import check_threads, read_metadata, usable_cores
from edge_smw.errors import BackendUnavailableError, ModelError
from edge_smw.runtime.backends import Runner

INSTALL_HINT = "install it with `pip install edge-smw[openvino]` (or `pip install openvino`)"
STATIC_SHAPES = 4  # batch sizes compiled with static shapes before falling back to dynamic


def import_openvino() -> Any:
    """The ``openvino`` module, or a ``BackendUnavailableError`` saying how to get it."""
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(f"the openvino-cpu backend needs OpenVINO ({exc}); "
                                      f"{INSTALL_HINT}") from None
    return openvino


class OpenVinoRunner(Runner):
    """An ONNX model compiled by OpenVINO for the CPU, latency-first."""

    name = "openvino-cpu"

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__(path)
        self.threads = check_threads(threads)
        self._core: Any = None
        self._model: Any = None  # the read (dynamic) model, reshaped copies compile per batch
        self._compiled: dict[int | None, Any] = {}  # batch size (None: dynamic) -> compiled
        self._lock = threading.Lock()
        self._local = threading.local()  # per-thread infer requests
        self._outputs: tuple[str, ...] = ()
        self._input_name = ""
        self._input_shape: tuple[int, ...] | None = None
        self._static_batch: int | None = None  # the file's own fixed batch, where it has one
        self._metadata: dict[str, str] = {}

    def _config(self) -> dict[str, str]:
        return {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                "INFERENCE_NUM_THREADS": str(self.threads or usable_cores())}

    def activate(self) -> None:
        ov = import_openvino()
        if not self.path.is_file():
            raise ModelError(f"model {self.path} not found")
        if self.path.stat().st_size == 0:
            raise ModelError(f"model {self.path} is empty (0 bytes); re-export it with "
                             "`edge-smw export`")
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"{self.path} could not be read by OpenVINO ({reason}); it is "
                             "truncated, corrupt or not an ONNX model: re-export it with "
                             "`edge-smw export`") from None
        if len(model.inputs) != 1:
            raise ModelError(f"{self.path} takes {len(model.inputs)} inputs; a runner feeds "
                             "models with one input")
        port = model.inputs[0]
        shape = port.get_partial_shape()
        if shape.rank.is_static and len(shape) == 4 and all(d.is_static for d in shape[1:]):
            self._input_shape = tuple(d.get_length() for d in shape[1:])
            if shape[0].is_static:
                self._static_batch = shape[0].get_length()
        self._input_name = port.get_any_name()
        self._outputs = tuple(o.get_any_name() for o in model.outputs)
        self._metadata = read_metadata(self.path)
        self._core, self._model = core, model
        self._compiled = {}
        self._compile(self._static_batch)  # proves the file compiles before it is used
        self.active = True

    def _compile(self, batch: int | None) -> Any:
        """The compiled model for ``batch`` (None: the file's own shapes), made once."""
        with self._lock:
            compiled = self._compiled.get(batch)
            if compiled is not None:
                return compiled
            model = self._model
            if batch is not None and batch != self._static_batch and self._input_shape:
                model = self._model.clone()
                model.reshape({self._input_name: [batch, *self._input_shape]})
            try:
                compiled = self._core.compile_model(model, "CPU", self._config())
            except Exception as exc:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ModelError(f"OpenVINO could not compile {self.path} for the CPU "
                                 f"({reason})") from None
            self._compiled[batch] = compiled
            return compiled

    def _request(self, batch: int) -> Any:
        """This thread's infer request for a batch size."""
        requests = getattr(self._local, "requests", None)
        if requests is None or getattr(self._local, "owner", None) is not self._compiled:
            requests = self._local.requests = {}
            self._local.owner = self._compiled
        key: int | None = batch
        if self._static_batch is not None:
            key = self._static_batch
        elif batch not in self._compiled and len(self._compiled) > STATIC_SHAPES:
            key = None  # enough shapes compiled: the dynamic one serves the rest
        request = requests.get(key)
        if request is None:
            request = requests[key] = self._compile(key).create_infer_request()
        return request

    def infer(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        if not self.active:
            raise ModelError(f"the OpenVINO model for {self.path} is closed")
        request = self._request(int(inputs.shape[0]))
        try:
            results = request.infer({0: inputs})
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"OpenVINO failed to run {self.path} on input {inputs.dtype} "
                             f"{inputs.shape}: {reason}") from None
        # infer() copies the outputs out of the request (share_outputs=False): the arrays
        # stay valid after this thread's next call.
        return dict(zip(self._outputs, results.to_tuple(), strict=True))

    def deactivate(self) -> None:
        with self._lock:
            self._compiled = {}
            self._model = None
            self._core = None
        self.active = False

    def metadata(self) -> dict[str, str]:
        if not self.active:
            raise ModelError(f"the OpenVINO model for {self.path} is closed")
        return dict(self._metadata)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    @property
    def input_name(self) -> str:
        return self._input_name

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self._input_shape

    @property
    def max_batch(self) -> int | None:
        return self._static_batch
