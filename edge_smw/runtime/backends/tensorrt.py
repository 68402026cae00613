"""Native TensorRT runner: a serialized engine run from pinned host buffers on a CUDA stream.

Written against TensorRT's Python API as shipped in JetPack 5/6 (TensorRT 8.5/8.6/10.x) and
NVIDIA's desktop wheels: the named-tensor API (``num_io_tensors``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) where the engine has it, the older binding API
(``execute_async_v2``) where it does not. CUDA memory and the stream come from cuda-python,
the library TensorRT's own samples use; older JetPack images that only have pycuda use that.

Every buffer is allocated once, at the engine's largest batch, in ``activate``; ``infer``
copies into the pinned input buffer, queues H2D copy + execute + D2H copy on one stream and
waits for it. One execution context serves all threads, behind a lock.

The engine's preprocessing contract and levels live in its sidecar JSON
(``edge_smw.metadata.sidecar_path``), so the plan file stays loadable by ``trtexec``.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_smw.errors import BackendUnavailableError, InputError, ModelError
from edge_smw.metadata import read_sidecar, sidecar_path
from edge_smw.runtime.backends import Runner

log = logging.getLogger("edge_smw.runtime.tensorrt")

INSTALL_HINT = (
    "on a Jetson, install JetPack (it ships TensorRT and its Python bindings, e.g. "
    "`sudo apt install nvidia-jetpack` or `python3-libnvinfer`); elsewhere install an NVIDIA "
    "driver and NVIDIA's wheels: `pip install tensorrt cuda-python`"
)
CUDA_HINT = (
    "install cuda-python (`pip install edge-smw[gpu]`, or `pip install cuda-python`), or pycuda "
    "on older JetPack images"
)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or a ``BackendUnavailableError`` saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the native TensorRT backend needs the `tensorrt` Python package ({exc}); "
            f"{INSTALL_HINT}"
        ) from None
    except OSError as exc:  # the wheel is there but libnvinfer/libcudart cannot be loaded
        raise BackendUnavailableError(
            f"`tensorrt` is installed but its libraries do not load ({exc}); {INSTALL_HINT}"
        ) from None
    return trt


# -- CUDA: device memory, pinned host memory, one stream ------------------------------------
class CudaApi:
    """What the runner needs from CUDA; one implementation per Python binding."""

    library = ""

    def make_current(self) -> None:
        """Make this runner's device current for the calling thread."""

    def release(self) -> None:
        """Undo ``make_current`` (pycuda's context stack); a no-op for the runtime API."""

    def malloc(self, nbytes: int) -> int:
        raise NotImplementedError

    def free(self, ptr: int) -> None:
        raise NotImplementedError

    def host_empty(self, size: int, dtype: np.dtype) -> np.ndarray:
        """A flat pinned (page-locked) host array of ``size`` elements."""
        raise NotImplementedError

    def host_free(self, array: np.ndarray) -> None:
        raise NotImplementedError

    def h2d(self, device_ptr: int, host: np.ndarray) -> None:
        raise NotImplementedError

    def d2h(self, host: np.ndarray, device_ptr: int) -> None:
        raise NotImplementedError

    def synchronize(self) -> None:
        raise NotImplementedError

    @property
    def stream_handle(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _import_cudart() -> Any:
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (12.6+) or ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6
    return cudart


class CudaPython(CudaApi):
    """CUDA runtime API through cuda-python (what TensorRT's own Python samples use)."""

    library = "cuda-python"

    def __init__(self, device: int) -> None:
        self.rt = _import_cudart()
        self.device = device
        self._pinned: dict[int, int] = {}  # id(array) -> host pointer
        count = self._call(self.rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if device < 0 or device >= count:
            raise BackendUnavailableError(
                f"CUDA device {device} does not exist (this machine has {count}); pass "
                "device=0..N-1"
            )
        self.make_current()
        self._stream = self._call(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def _call(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            _, name = self.rt.cudaGetErrorName(err)
            _, text = self.rt.cudaGetErrorString(err)
            message = f"{what} failed: {name.decode()} ({text.decode()})"
            if what in ("cudaGetDeviceCount", "cudaSetDevice", "cudaStreamCreate"):
                raise BackendUnavailableError(
                    f"no usable CUDA GPU: {message}; install or update the NVIDIA driver "
                    f"(on a Jetson: JetPack), or use backend='onnxruntime-cpu'"
                )
            raise ModelError(f"TensorRT runner: {message}")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else tuple(rest)

    def make_current(self) -> None:
        self._call(self.rt.cudaSetDevice(self.device), "cudaSetDevice")

    def malloc(self, nbytes: int) -> int:
        return int(self._call(self.rt.cudaMalloc(nbytes), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._call(self.rt.cudaFree(ptr), "cudaFree")

    def host_empty(self, size: int, dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(1, size * dtype.itemsize)
        ptr = int(self._call(self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        raw = (ctypes.c_byte * nbytes).from_address(ptr)
        array = np.frombuffer(raw, dtype=np.uint8)[: size * dtype.itemsize].view(dtype)
        self._pinned[id(array)] = ptr
        return array

    def host_free(self, array: np.ndarray) -> None:
        ptr = self._pinned.pop(id(array), None)
        if ptr is not None:
            self._call(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def h2d(self, device_ptr: int, host: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self.rt.cudaMemcpyAsync(device_ptr, host.ctypes.data, host.nbytes, kind,
                                           self._stream), "cudaMemcpyAsync (host to device)")

    def d2h(self, host: np.ndarray, device_ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self.rt.cudaMemcpyAsync(host.ctypes.data, device_ptr, host.nbytes, kind,
                                           self._stream), "cudaMemcpyAsync (device to host)")

    def synchronize(self) -> None:
        self._call(self.rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    @property
    def stream_handle(self) -> int:
        return int(self._stream)

    def close(self) -> None:
        for ptr in self._pinned.values():
            self.rt.cudaFreeHost(ptr)
        self._pinned.clear()
        if self._stream is not None:
            self.rt.cudaStreamDestroy(self._stream)
            self._stream = None


class PyCuda(CudaApi):
    """The driver API through pycuda, for JetPack images that have it and not cuda-python."""

    library = "pycuda"

    def __init__(self, device: int) -> None:
        import pycuda.driver as cuda

        self.cuda = cuda
        try:
            cuda.init()
            count = cuda.Device.count()
        except cuda.Error as exc:
            raise BackendUnavailableError(
                f"no usable CUDA GPU ({exc}); install or update the NVIDIA driver (on a "
                "Jetson: JetPack), or use backend='onnxruntime-cpu'"
            ) from None
        if device < 0 or device >= count:
            raise BackendUnavailableError(
                f"CUDA device {device} does not exist (this machine has {count}); pass "
                "device=0..N-1"
            )
        # The primary context is the one the CUDA runtime (and so TensorRT) uses.
        self._context = cuda.Device(device).retain_primary_context()
        self._allocations: dict[int, Any] = {}
        self.make_current()
        try:
            self._stream = cuda.Stream()
        finally:
            self.release()

    def make_current(self) -> None:
        self._context.push()

    def release(self) -> None:
        self.cuda.Context.pop()

    def malloc(self, nbytes: int) -> int:
        allocation = self.cuda.mem_alloc(max(1, nbytes))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, ptr: int) -> None:
        allocation = self._allocations.pop(ptr, None)
        if allocation is not None:
            allocation.free()

    def host_empty(self, size: int, dtype: np.dtype) -> np.ndarray:
        return self.cuda.pagelocked_empty(size, dtype)

    def host_free(self, array: np.ndarray) -> None:
        base = getattr(array, "base", None)
        if base is not None and hasattr(base, "free"):
            base.free()

    def h2d(self, device_ptr: int, host: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(device_ptr, host, self._stream)

    def d2h(self, host: np.ndarray, device_ptr: int) -> None:
        self.cuda.memcpy_dtoh_async(host, device_ptr, self._stream)

    def synchronize(self) -> None:
        self._stream.synchronize()

    @property
    def stream_handle(self) -> int:
        return int(self._stream.handle)

    def close(self) -> None:
        self.make_current()
        try:
            for allocation in self._allocations.values():
                allocation.free()
            self._allocations.clear()
            self._stream = None  # destroyed while its context is current
        finally:
            self.release()
        self._context.detach()


def open_cuda(device: int) -> CudaApi:
    """cuda-python if importable, else pycuda; ``BackendUnavailableError`` if neither works."""
    try:
        _import_cudart()
    except ImportError:
        pass
    else:
        return CudaPython(device)
    try:
        import pycuda.driver  # noqa: F401
    except ImportError:
        raise BackendUnavailableError(
            f"the native TensorRT backend needs CUDA from Python; {CUDA_HINT}"
        ) from None
    return PyCuda(device)


# -- TensorRT -------------------------------------------------------------------------------
_LOGGER: Any = None
_LOGGER_LOCK = threading.Lock()


def _logger(trt: Any) -> Any:
    """One process-wide TensorRT logger that keeps errors so our exceptions can quote them."""
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is None:

            class _Logger(trt.ILogger):
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)
                    self.errors: list[str] = []

                def log(self, severity: Any, msg: str) -> None:
                    if severity in (trt.ILogger.Severity.INTERNAL_ERROR,
                                    trt.ILogger.Severity.ERROR):
                        self.errors.append(msg)
                        del self.errors[:-20]
                        log.error("TensorRT: %s", msg)
                    elif severity == trt.ILogger.Severity.WARNING:
                        log.warning("TensorRT: %s", msg)
                    else:
                        log.debug("TensorRT: %s", msg)

            _LOGGER = _Logger()
        return _LOGGER


@dataclass
class _Tensor:
    """One engine input/output with its buffers (allocated at the largest shape)."""

    name: str
    index: int  # binding index (binding API) or I/O tensor index
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # engine shape; -1 where dynamic
    host: np.ndarray | None = None
    device: int = 0


class TensorRTRunner(Runner):
    """A serialized TensorRT engine (``.engine``/``.plan``) plus its metadata sidecar."""

    name = "tensorrt"

    def __init__(self, path: str | Path, *, device: int = 0, profile: int = 0) -> None:
        super().__init__(path)
        self.device = int(device)
        self.profile = int(profile)
        self._lock = threading.Lock()
        self._cuda: CudaApi | None = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._tensors: list[_Tensor] = []
        self._input: _Tensor | None = None
        self._bindings: list[int] = []
        self._batch_range = (1, 1)
        self._static_batch = False
        self._tensor_api = True

    # -- load ------------------------------------------------------------------------------
    def activate(self) -> None:
        trt = import_tensorrt()
        if not self.path.is_file():
            raise ModelError(f"engine {self.path} not found")
        data = self.path.read_bytes()
        if not data:
            raise ModelError(f"engine {self.path} is empty (0 bytes); rebuild it with "
                             "`edge-smw export --engine`")
        self._cuda = open_cuda(self.device)
        self._cuda.make_current()
        try:
            logger = _logger(trt)
            seen = len(logger.errors)
            self._runtime = trt.Runtime(logger)  # kept: it must outlive its engine
            self._engine = self._runtime.deserialize_cuda_engine(data)
            if self._engine is None:
                why = "; ".join(logger.errors[seen:]) or "no reason given"
                raise ModelError(
                    f"TensorRT {trt.__version__} cannot load {self.path} ({why}); an engine only "
                    "runs with the TensorRT version and GPU it was built for: rebuild it on this "
                    "device with `edge-smw export --engine` (or trtexec), or run the .onnx model"
                )
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise ModelError(f"TensorRT could not create an execution context for "
                                 f"{self.path} (out of GPU memory?)")
            self._tensor_api = hasattr(self._engine, "num_io_tensors") and hasattr(
                self._context, "execute_async_v3")
            self._describe(trt)
            self._allocate()
        except BaseException:
            self._free()
            self._cuda.release()
            self._cuda.close()
            self._cuda = None
            raise
        self._cuda.release()
        self.active = True
        log.info("tensorrt: %s on GPU %d via %s, batch %d..%d", self.path.name, self.device,
                 self._cuda.library, *self._batch_range)

    def _describe(self, trt: Any) -> None:
        """Read the engine's I/O names, modes, dtypes, shapes and batch range."""
        engine = self._engine
        if self._tensor_api:
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                self._tensors.append(_Tensor(name, i, is_input,
                                             _np_dtype(trt, engine.get_tensor_dtype(name), name),
                                             tuple(engine.get_tensor_shape(name))))
        else:  # TensorRT < 8.5: bindings
            for i in range(engine.num_bindings):
                name = engine.get_binding_name(i)
                self._tensors.append(_Tensor(name, i, engine.binding_is_input(i),
                                             _np_dtype(trt, engine.get_binding_dtype(i), name),
                                             tuple(engine.get_binding_shape(i))))
        names = [t.name for t in self._tensors]
        inputs = [t for t in self._tensors if t.is_input]
        if len(inputs) != 1:
            raise ModelError(f"{self.path} has tensors {names} with {len(inputs)} inputs; a "
                             "runner feeds engines with one input; build it from an edge-smw "
                             "ONNX export")
        self._input = inputs[0]
        shape = self._input.shape
        if len(shape) != 4 or any(d < 0 for d in shape[1:]):
            raise ModelError(f"{self.path}: input '{self._input.name}' has shape {shape}; "
                             "expected N x 3 x H x W with fixed H and W")
        if shape[0] >= 0:
            self._static_batch = True
            self._batch_range = (shape[0], shape[0])
            return
        if self._tensor_api and hasattr(engine, "get_tensor_profile_shape"):
            low, _, high = engine.get_tensor_profile_shape(self._input.name, self.profile)
        else:
            low, _, high = engine.get_profile_shape(self.profile, self._input.index)
        self._batch_range = (int(low[0]), int(high[0]))

    def _allocate(self) -> None:
        """Device + pinned host buffers for every tensor at the largest batch; bind them."""
        assert self._cuda is not None and self._input is not None
        largest = (self._batch_range[1], *self._input.shape[1:])
        self._set_input_shape(largest)
        for tensor in self._tensors:
            shape = largest if tensor.is_input else self._output_shape(tensor)
            if any(d < 0 for d in shape):
                raise ModelError(f"{self.path}: output '{tensor.name}' has unresolved shape "
                                 f"{shape} at batch {largest[0]}")
            size = int(np.prod(shape))
            tensor.host = self._cuda.host_empty(size, tensor.dtype)
            tensor.device = self._cuda.malloc(size * tensor.dtype.itemsize)
            if self._tensor_api:
                self._context.set_tensor_address(tensor.name, tensor.device)
        self._bindings = [t.device for t in sorted(self._tensors, key=lambda t: t.index)]

    def _set_input_shape(self, shape: tuple[int, ...]) -> None:
        if self._static_batch:
            return
        if self._tensor_api:
            ok = self._context.set_input_shape(self._input.name, shape)
        else:
            ok = self._context.set_binding_shape(self._input.index, shape)
        if ok is False:
            low, high = self._batch_range
            raise InputError(f"{self.path}: TensorRT refused input shape {shape} (the engine's "
                             f"profile allows batch {low}..{high})")

    def _output_shape(self, tensor: _Tensor) -> tuple[int, ...]:
        if self._tensor_api:
            return tuple(self._context.get_tensor_shape(tensor.name))
        return tuple(self._context.get_binding_shape(tensor.index))

    # -- run -------------------------------------------------------------------------------
    def infer(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:  # one execution context and one set of buffers for all threads
            if not self.active or self._input is None or self._cuda is None:
                raise ModelError(f"the TensorRT runner for {self.path} is closed")
            n = inputs.shape[0]
            low, high = self._batch_range
            if inputs.ndim != 4 or tuple(inputs.shape[1:]) != tuple(self._input.shape[1:]):
                raise InputError(f"input shape {inputs.shape} does not fit the engine's "
                                 f"{self._input.shape}")
            if not 1 <= n <= high:
                raise InputError(f"batch of {n} is outside the engine's batch range "
                                 f"{low}..{high}; split it (Runtime does this for you)")
            run_n = max(n, low)  # a static (or min > n) batch is zero-padded, then cut back
            shape = (run_n, *inputs.shape[1:])
            self._cuda.make_current()
            try:
                return self._execute(inputs, shape)
            finally:
                self._cuda.release()

    def _execute(self, inputs: np.ndarray, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        """Pinned copy, then H2D copy, execute and D2H copies queued on one stream; wait."""
        assert self._input is not None and self._cuda is not None
        n = inputs.shape[0]
        host_in = self._input.host[: int(np.prod(shape))].reshape(shape)
        np.copyto(host_in[:n], inputs, casting="same_kind")
        if shape[0] > n:
            host_in[n:] = 0
        self._set_input_shape(shape)
        self._cuda.h2d(self._input.device, host_in)
        if self._tensor_api:
            ok = self._context.execute_async_v3(self._cuda.stream_handle)
        else:
            ok = self._context.execute_async_v2(bindings=self._bindings,
                                                stream_handle=self._cuda.stream_handle)
        if not ok:
            errors = _LOGGER.errors[-3:] if _LOGGER is not None else []
            raise ModelError(f"TensorRT failed to run {self.path}: "
                             + ("; ".join(errors) or "no reason given"))
        views = {}
        for tensor in self._tensors:
            if tensor.is_input:
                continue
            out_shape = self._output_shape(tensor)
            view = tensor.host[: int(np.prod(out_shape))].reshape(out_shape)
            self._cuda.d2h(view, tensor.device)
            views[tensor.name] = view
        self._cuda.synchronize()
        # Copies, cut back to the real batch: the pinned buffers are reused by the next call.
        return {name: view[:n].astype(np.float32) for name, view in views.items()}

    # -- release ---------------------------------------------------------------------------
    def deactivate(self) -> None:
        with self._lock:
            self.active = False
            if self._cuda is None:
                return
            self._cuda.make_current()
            try:
                self._free()
            finally:
                self._cuda.release()
                self._cuda.close()
                self._cuda = None

    def _free(self) -> None:
        """Buffers, context, engine; the calling thread has the device current."""
        cuda = self._cuda
        if cuda is not None:
            for tensor in self._tensors:
                if tensor.device:
                    cuda.free(tensor.device)
                    tensor.device = 0
                if tensor.host is not None:
                    cuda.host_free(tensor.host)
                    tensor.host = None
        self._context = None  # context, engine, runtime: in that order, as TensorRT requires
        self._engine = None
        self._runtime = None
        self._tensors = []
        self._bindings = []
        self._input = None

    # -- facts -----------------------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        return read_sidecar(sidecar_path(self.path))

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self._tensors if not t.is_input)

    @property
    def input_name(self) -> str:
        return self._input.name if self._input is not None else ""

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return tuple(self._input.shape[1:]) if self._input is not None else None

    @property
    def max_batch(self) -> int | None:
        return self._batch_range[1]


def _np_dtype(trt: Any, trt_dtype: Any, name: str) -> np.dtype:
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except TypeError:
        raise ModelError(f"engine tensor '{name}' has type {trt_dtype}, which numpy cannot hold; "
                         "build the engine with float32/float16 inputs and outputs") from None
