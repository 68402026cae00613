"""What machine the figures came from, and what it can do at most.

Ratios measured in one process survive a noisy machine; absolute figures do not, so the
report records the load, the cores this process may use and the library versions beside
them. The compute ceiling is measured, not looked up: a large float32 matrix product in the
same run, on the same cores, under the same load.
"""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from typing import Any

import numpy as np

from edge_smw.artifacts.sessions import SessionSettings, load_session, usable_cores
from edge_smw.bench.results import Machine, PeakMeasurement
from edge_smw.cpu import cpu_flags, cpu_model

ENV_KEYS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
            "CUDA_VISIBLE_DEVICES")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def current_rss_mb() -> float:
    """Resident memory now (Linux /proc); falls back to the peak elsewhere."""
    try:
        with open("/proc/self/statm", encoding="utf-8") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident memory of this process image.

    Linux: ``VmHWM`` from /proc, which starts afresh at exec; ``ru_maxrss`` would not (a
    child spawned by a big parent inherits the parent's peak). Elsewhere ``ru_maxrss`` (KiB
    on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource  # Unix only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 1024


def memory_total_mb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def describe_machine() -> Machine:
    """Everything a reader needs to judge whether figures carry over to their machine."""
    packages = ("edge-smw", "numpy", "onnxruntime", "onnxruntime-gpu", "onnx",
                "opencv-python-headless", "torch", "torchvision", "timm", "openvino")
    return Machine(
        hostname=platform.node(),
        platform=platform.platform(),
        python=platform.python_version(),
        cpu=cpu_model(),
        arch=platform.machine(),
        cores_logical=os.cpu_count(),
        cores_usable=usable_cores(),
        cpu_flags=cpu_flags(),
        memory_total_mb=memory_total_mb(),
        load_average_1_5_15=load_average(),
        versions={name: v for name in packages if (v := _version(name)) is not None},
        env={k: os.environ[k] for k in ENV_KEYS if k in os.environ},
        time_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def measure_peak_gflops(size: int = 2048, repeats: int = 10,
                        threads: int | None = None) -> PeakMeasurement:
    """Best-of-N float32 GEMM rate: the machine's practical compute ceiling right now.

    Measured twice, with numpy's BLAS and with onnxruntime's own GEMM (MLAS, the kernels the
    models run on, which may use wider vector units than the BLAS numpy ships with); the
    higher is the ceiling. Best, not median: the ceiling is what the cores do when they get
    a moment; the median would fold the other tenants' load into the "limit".
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flops = 2.0 * size**3
    out = np.empty((size, size), dtype=np.float32)
    numpy_times = _best_times(lambda: np.matmul(a, b, out=out), repeats)
    numpy_best = flops / min(numpy_times) / 1e9
    numpy_median = flops / float(np.median(numpy_times)) / 1e9
    ort_best = ort_median = ort_note = None
    try:
        run = _ort_matmul(size, threads)
        ort_times = _best_times(lambda: run(a, b), repeats)
        ort_best = flops / min(ort_times) / 1e9
        ort_median = flops / float(np.median(ort_times)) / 1e9
    except Exception as exc:  # noqa: BLE001 - onnx missing, or a provider problem: numpy alone
        ort_note = f"not measured ({exc})"
    best = max(ort_best or 0.0, numpy_best)
    source = "onnxruntime MatMul" if best == ort_best else "numpy matmul"
    median = ort_median if best == ort_best and ort_median is not None else numpy_median
    return PeakMeasurement(
        numpy_gflops=numpy_best, numpy_median_gflops=numpy_median, onnxruntime_gflops=ort_best,
        onnxruntime_median_gflops=ort_median, onnxruntime_note=ort_note, peak_gflops=best,
        median_gflops=median,
        method=f"float32 {size}x{size} matrix product, best of {repeats} ({source} was "
               "faster)")


def _best_times(fn: Any, repeats: int) -> list[float]:
    fn()  # warm-up: threads, page faults
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _ort_matmul(size: int, threads: int | None) -> Any:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "peak",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = load_session(model.SerializeToString(), SessionSettings(threads=threads or 0))
    return lambda a, b: session.run(None, {"a": a, "b": b})
