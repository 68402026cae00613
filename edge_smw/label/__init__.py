"""``edge-smw label``: score one's own photos in a local web page, for training.

Torch-free. The labels go to the ``path,score`` CSV that ``edge-smw train`` reads.
"""

from __future__ import annotations

from edge_smw.label.photos import PathRejected, PhotoAnalyser, PhotoInfo, list_photos
from edge_smw.label.server import LabelSession, create_app, serve, start_server
from edge_smw.label.store import SKIPPED, CsvOwnerLock, LabelStore, StaleRevisionError

__all__ = [
    "SKIPPED",
    "CsvOwnerLock",
    "LabelSession",
    "LabelStore",
    "PathRejected",
    "PhotoAnalyser",
    "PhotoInfo",
    "StaleRevisionError",
    "create_app",
    "list_photos",
    "serve",
    "start_server",
]
