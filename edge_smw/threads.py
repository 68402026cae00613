"""How many CPU threads inference may ask for: the usable cores, and a sane cap above them.

``os.cpu_count()`` counts the machine's cores, not the ones this process may run on (a
container or ``taskset`` gives it fewer); ``sched_getaffinity`` says which are usable. A
thread count far above them buys nothing and can exhaust memory (onnxruntime gives each
thread a stack and arena: 100,000 threads crashed it, 1,000,000 used 22 GB before the OOM
killer), so it is refused with a clear error. The C bridge applies the same rule
(``EDGE_SMW_MAX_THREADS_PER_CORE`` in ``firmware_bridge/include/edge_smw.h``; a test keeps
the two equal).
"""

from __future__ import annotations

import os
from numbers import Integral

from edge_smw.errors import InputError

# More threads than this many per usable core is refused.
MAX_THREADS_PER_CORE = 4


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows: no affinity API
        return max(1, os.cpu_count() or 1)


def max_threads() -> int:
    return MAX_THREADS_PER_CORE * usable_cores()


def check_threads(threads: object, what: str = "threads") -> int | None:
    """``threads`` as an int (None: the default, all usable cores), or ``InputError``."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, Integral) or threads < 1:
        raise InputError(f"{what} must be a whole number >= 1 (or None), got {threads!r}")
    cap = max_threads()
    if threads > cap:
        raise InputError(
            f"{what}={threads} is more than this machine can use: {usable_cores()} usable "
            f"core(s), and at most {MAX_THREADS_PER_CORE} threads per core ({cap}) are "
            f"allowed; use {what} <= {cap}, or leave it unset for one per usable core"
        )
    return int(threads)
