"""Where batch work runs: in this process (the default) or on Ray Data (the ``[ray]`` extra).

The in-process engine is the library itself (``edge_smw.rank`` for scoring, the training
feature pass for features). The Ray engine (``edge_smw.engines.ray``) runs the same steps as a
Ray Data pipeline on a local Ray or a cluster. Nothing here imports Ray until it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

ENGINE_INPROCESS = "inprocess"
ENGINE_RAY = "ray"
ENGINES = (ENGINE_INPROCESS, ENGINE_RAY)
RAY_EXTRA_HINT = "pip install 'edge-smw[ray]'"


def require_ray() -> ModuleType:
    """``import ray`` with Ray Data's own needs, or a ``ModuleNotFoundError`` naming the extra
    (the CLI turns it into its one line: ``cli.main.EXTRA_FOR_MODULE`` maps ray to [ray])."""
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"--engine ray needs Ray Data (no module {exc.name!r} here): install the [ray] "
            f"extra: {RAY_EXTRA_HINT}", name=exc.name) from None
    return ray


@dataclass(frozen=True, kw_only=True)
class RayOptions:
    """How the Ray engine uses the cluster; the defaults suit a laptop and a cluster alike.

    ``address``: None starts a local Ray in this process (or joins one already started);
    ``"auto"`` or ``"ray://head:10001"`` joins a cluster. ``batch_size`` photos go to one
    ``Runtime.score_batch`` call. ``actors``: model replicas, one ``Runtime`` each (None: a pool
    that Ray grows from 1 up to one per GPU for GPU backends, else one per two CPUs of the
    cluster, while batches wait for the model). ``cpus_per_actor`` is also each replica's
    onnxruntime thread count.
    ``gpus_per_actor``: None gives 1 for GPU backends (and ``auto`` on a cluster with GPUs).
    """

    address: str | None = None
    batch_size: int = 32
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None
    part_photos: int = 5000  # photos per Parquet part the driver writes (resume granularity)
    progress: bool = True

    def __post_init__(self) -> None:
        from edge_smw.errors import InputError

        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.actors is not None and self.actors < 1:
            raise InputError(f"--actors must be >= 1, got {self.actors}")
        inf = float("inf")  # the comparisons below also refuse NaN
        if not 0 < self.cpus_per_actor < inf:
            raise InputError(f"--cpus-per-actor must be a number > 0, got "
                             f"{self.cpus_per_actor}")
        if self.gpus_per_actor is not None and not 0 <= self.gpus_per_actor < inf:
            raise InputError(f"--gpus-per-actor must be a number >= 0, got "
                             f"{self.gpus_per_actor}")
        if self.part_photos < 1:
            raise InputError(f"part_photos must be >= 1, got {self.part_photos}")
