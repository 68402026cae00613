"""The one onnxruntime session loader (as Polygraphy's ``SessionFromOnnx``): loaders build
sessions, runners only run them.

Threads, spinning, graph optimisation (with the rewrites this CPU needs off:
``edge_smw.cpu.disabled_rewrites``), logging and providers are decided here and nowhere
else, so a measurement, a calibration pass and the camera runtime cannot drift apart by an
option one of them forgot.

Threads are bounded by the cores this process may use: far more threads than cores buys
nothing and can exhaust memory (onnxruntime gives each thread a stack and arena: 100,000
threads crashed it, 1,000,000 used 22 GB before the OOM killer), so ``check_threads`` refuses
more than ``MAX_THREADS_PER_CORE`` per usable core with a clear error. The C bridge applies
the same rule (``EDGE_SMW_MAX_THREADS_PER_CORE`` in ``firmware_bridge/include/edge_smw.h``;
a test keeps the two equal).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

from edge_smw.errors import InputError

OPTIMIZATION_LEVELS = ("none", "basic", "extended", "all")
# More inference threads than this many per usable core is refused.
MAX_THREADS_PER_CORE = 4


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), not the machine's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def max_threads() -> int:
    """The most inference threads a session may ask for on this machine."""
    return MAX_THREADS_PER_CORE * usable_cores()


def check_threads(threads: object, what: str = "threads") -> int | None:
    """``threads`` as an int (None: the default, one per usable core), or ``InputError``."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, Integral) or threads < 1:
        raise InputError(f"{what} must be a whole number >= 1 (or unset: one per usable "
                         f"core), got {threads!r}")
    cap = max_threads()
    if threads > cap:
        raise InputError(
            f"{what}={threads} is more than this machine can use: {usable_cores()} usable "
            f"core(s), and at most {MAX_THREADS_PER_CORE} threads per core ({cap}) are "
            f"allowed; use {what} <= {cap}, or leave it unset for one per usable core"
        )
    return int(threads)


@dataclass(frozen=True)
class SessionSettings:
    """How a session runs.

    ``spinning``: intra-op threads spin-wait between the parallel steps of a run instead of
    sleeping, and stop spinning the moment the run returns (onnxruntime's
    ``session.force_spinning_stop``). Spinning inside a run saves a wake-up at every layer
    (on 2 cores the EfficientNet-Lite0 int8 model ran 1.2x, fp32 1.1x faster than with
    spinning off: ``benchmarks/spinning.py``); stopping at return keeps the pool from stealing
    the cores from whatever runs next (another model, face detection, a decode thread), which
    onnxruntime's default, still spinning after the run (0.04 CPU seconds of it), does.
    ``threads`` None means every usable core; 0 leaves onnxruntime's own thread defaults (what
    a plain ``InferenceSession(path)`` gets: the bench's "theirs" baseline).
    """

    threads: int | None = None
    spinning: bool = True
    optimization: str = "all"
    providers: tuple[Any, ...] = ("CPUExecutionProvider",)
    log_severity: int = 3

    def __post_init__(self) -> None:
        if self.threads != 0:  # 0: onnxruntime's own defaults
            check_threads(self.threads)

    def options(self) -> Any:
        """The ``onnxruntime.SessionOptions`` these settings stand for."""
        import onnxruntime as ort

        if self.optimization not in OPTIMIZATION_LEVELS:
            raise InputError(f"graph optimisation {self.optimization!r}: choose one of "
                             f"{list(OPTIMIZATION_LEVELS)}")
        levels = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        options = ort.SessionOptions()
        if self.threads != 0:
            options.intra_op_num_threads = int(self.threads or usable_cores())
            options.inter_op_num_threads = 1
        options.graph_optimization_level = levels[self.optimization]
        options.log_severity_level = self.log_severity
        if self.spinning:
            options.add_session_config_entry("session.force_spinning_stop", "1")
        else:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        rewrites = this_cpus_disabled_rewrites()
        if rewrites:
            options.add_session_config_entry("optimization.disable_specified_optimizers",
                                             ",".join(rewrites))
        return options


def load_session(model: str | Path | bytes, settings: SessionSettings | None = None, *,
                 providers: Sequence[Any] | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` for a model file (or serialized bytes).

    ``providers`` overrides the settings' providers (a runner passes the GPU providers it
    resolved with their options); onnxruntime's own load errors propagate unchanged for the
    caller to word.
    """
    import onnxruntime as ort

    settings = settings or SessionSettings()
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, settings.options(),
                                providers=list(providers or settings.providers))


@functools.cache
def this_cpus_disabled_rewrites() -> tuple[str, ...]:
    """The graph rewrites every session turns off on this CPU, so an INT8 model computes what
    its Q/DQ graph says (``edge_smw.cpu.disabled_rewrites``); read once per process."""
    from edge_smw.cpu import disabled_rewrites

    return disabled_rewrites()


def read_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` through onnxruntime (present wherever edge-smw is;
    ``onnx`` may not be), with no graph optimisation: only the header is wanted."""
    session = load_session(path, SessionSettings(optimization="none", threads=1))
    return dict(session.get_modelmeta().custom_metadata_map)
