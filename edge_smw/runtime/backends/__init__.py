"""Inference backends behind one small interface (like Polygraphy's runners).

A backend module defines a ``Runner`` subclass; ``open_runner`` picks it by name and imports
its library only then, so a missing optional library (TensorRT, CUDA) costs nothing until
asked for, and then fails with a clear ``BackendUnavailableError``.
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from edge_smw.artifacts.formats import BACKENDS

__all__ = ["BACKENDS", "Runner", "open_runner"]


class Runner(abc.ABC):
    """load (``__init__`` + ``activate``), ``infer``, ``deactivate``."""

    name: str = "runner"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.active = False

    @abc.abstractmethod
    def activate(self) -> None:
        """Load the model onto its device; after this ``infer`` may be called."""

    @abc.abstractmethod
    def infer(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Network input NCHW float32 -> named outputs. Safe to call from several threads."""

    @abc.abstractmethod
    def deactivate(self) -> None:
        """Release the model and its device memory."""

    @abc.abstractmethod
    def metadata(self) -> dict[str, str]:
        """The model's edge-smw metadata properties (ONNX metadata or engine sidecar)."""

    @property
    @abc.abstractmethod
    def output_names(self) -> tuple[str, ...]:
        """Names of the outputs ``infer`` returns."""

    @property
    @abc.abstractmethod
    def input_name(self) -> str:
        """The name of the model's one input (edge-smw scorers call it ``input``)."""

    @property
    def max_batch(self) -> int | None:
        """Largest batch the model accepts (None: unbounded)."""
        return None

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """Per-sample input shape (C, H, W) the model declares, where it declares one."""
        return None


def open_runner(backend: str, path: str | Path, *, device: int = 0,
                threads: int | None = None, options: dict | None = None) -> Runner:
    """Create (not yet activate) the runner for ``backend``."""
    from edge_smw.errors import InputError

    options = options or {}
    if backend.startswith("onnxruntime-"):
        from edge_smw.runtime.backends.onnxruntime import OnnxRuntimeRunner

        provider = backend.split("-", 1)[1]
        _check_options(OnnxRuntimeRunner, backend, options,
                       not_taken=OnnxRuntimeRunner.options_not_taken(provider))
        return OnnxRuntimeRunner(path, provider=provider, device=device, threads=threads,
                                 **options)
    if backend == "openvino-cpu":
        from edge_smw.runtime.backends.openvino import OpenVinoRunner

        _check_options(OpenVinoRunner, backend, options)
        return OpenVinoRunner(path, threads=threads, **options)
    if backend == "tensorrt":
        from edge_smw.runtime.backends.tensorrt import TensorRTRunner

        _check_options(TensorRTRunner, backend, options)
        return TensorRTRunner(path, device=device, **options)
    raise InputError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)} or 'auto'")


def _check_options(cls: type[Runner], backend: str, options: dict,
                   not_taken: tuple[str, ...] = ()) -> None:
    """Name an unknown ``backend_options`` key instead of failing with a bare TypeError, or
    silently ignoring one this backend's runner would not use (``not_taken``)."""
    import inspect

    from edge_smw.errors import InputError

    params = inspect.signature(cls.__init__).parameters
    allowed = sorted(n for n, p in params.items()
                     if p.kind is p.KEYWORD_ONLY
                     and n not in ("device", "threads", "provider", *not_taken))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InputError(f"backend {backend!r} does not take option(s) {unknown}; it takes "
                         f"{allowed}")
