"""edge-smw: score face photos for social-media worthiness, from torch training to a camera.

Importing the package never imports torch: ``Runtime`` is loaded lazily and is torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from edge_smw.runtime import Runtime, ScoreResult

__all__ = ["Runtime", "ScoreResult", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Runtime", "ScoreResult", "FaceScore"):
        from edge_smw import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'edge_smw' has no attribute {name!r}")
