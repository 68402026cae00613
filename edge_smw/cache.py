"""The user cache folder (features, crops, backbones, downloads, engines)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_ADVICE = ("set EDGE_SMW_CACHE to a writable folder (edge-smw's cache of backbones, "
                "features and crops)")


def cache_root() -> Path:
    """``$EDGE_SMW_CACHE`` or ``~/.cache/edge-smw``."""
    return Path(os.environ.get("EDGE_SMW_CACHE", Path.home() / ".cache" / "edge-smw"))


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
