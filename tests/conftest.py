"""Shared fixtures: real face crops from ../shared, and one small trained + exported model.

The model is trained once per session on a slice of the real SMILEsmileD crops; tests that
need it skip (with the reason) where the shared data is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_SMILES = REPO.parent / "shared" / "data" / "smilesmiled"
SMILES_LEVELS = ("not_smiling", "smiling")
# Feature and backbone caches survive between sessions here (not in the user's home).
os.environ.setdefault("EDGE_SMW_CACHE", str(REPO / ".pytest_cache" / "edge-smw-cache"))


def has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def smiles_dir() -> Path:
    if not (SHARED_SMILES / "smiling").is_dir():
        pytest.skip(f"real face crops not found at {SHARED_SMILES} (../shared/data/smilesmiled)")
    return SHARED_SMILES


@pytest.fixture(scope="session")
def smiles_run(smiles_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder trained on 300 real crops per level (about 15 s on 2 cores, cached)."""
    if not has_torch():
        pytest.skip("torch is not installed (pip install edge-smw[train])")
    from edge_smw.data.datasets import load_dataset
    from edge_smw.data.sources import DataSource
    from edge_smw.train.pipeline import TrainOptions, train_run

    out = tmp_path_factory.mktemp("smiles_run")
    dataset = load_dataset(smiles_dir, levels=SMILES_LEVELS)
    train_run(DataSource(dataset, True, "smiles-share"), out,
              TrainOptions(max_per_level=300, compare_losses=False, progress=False,
                           lrs=(0.003, 0.01), momenta=(0.5, 0.9)))
    return out


@pytest.fixture(scope="session")
def smiles_onnx(smiles_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fp32 ONNX export of ``smiles_run``, with the feature-map output."""
    from edge_smw.export.onnx import export_fp32
    from edge_smw.train.checkpoint import load_checkpoint

    out = tmp_path_factory.mktemp("smiles_export") / "model.onnx"
    return export_fp32(load_checkpoint(smiles_run), out, feature_map=True)


@pytest.fixture(scope="session")
def smiles_test_items(smiles_run: Path):
    """The run's own held-out test split (real crops the head never saw)."""
    from edge_smw.data.datasets import SplitManifest

    return SplitManifest.load(smiles_run / "split.json").items("test")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session: 2 CPUs, a 500 MB object store, no dashboard.

    The engine joins it (``ray.is_initialized()``) instead of starting its own.
    """
    try:
        import ray
    except ImportError:
        pytest.skip("ray is not installed (pip install edge-smw[ray])")
    ray.init(num_cpus=2, object_store_memory=500 * 1024 * 1024, include_dashboard=False,
             logging_level="WARNING")
    yield ray
    ray.shutdown()
