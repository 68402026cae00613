"""``--data DIR|CSV|synthetic|smiles`` -> a loaded data set, and whether faces must be found."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_smw.data.datasets import LabelledDataset, load_dataset

SYNTHETIC_DEFAULT_COUNT = 3000


@dataclass
class DataSource:
    dataset: LabelledDataset
    precropped: bool  # built-in sets are face crops already: no detection
    name: str

    def detect_for(self, model_detect: bool, override: bool | None = None) -> bool:
        """Find faces in this data? The user's choice, else never for the built-in crop sets,
        else what the model was trained on."""
        if override is not None:
            return override
        return False if self.precropped else model_detect


def resolve_data(
    spec: str | Path,
    *,
    levels: tuple[str, ...] | None = None,
    from_dir: str | Path | None = None,
    seed: int = 0,
    synthetic_count: int = SYNTHETIC_DEFAULT_COUNT,
    progress: bool = True,
) -> DataSource:
    if str(spec) == "synthetic":
        from edge_smw.data.synthetic import default_synthetic_dir, generate_synthetic

        folder = default_synthetic_dir(synthetic_count, 128, seed)
        generate_synthetic(folder, count=synthetic_count, size=128, seed=seed, progress=progress)
        return DataSource(load_dataset(folder), True, "synthetic")
    if str(spec) == "smiles":
        from edge_smw.data.smiles import SMILES_LEVELS, fetch_smiles, resolve_smiles_dir

        if from_dir is not None:
            folder = fetch_smiles(from_dir=from_dir, progress=progress)
        else:
            found = resolve_smiles_dir(download=True, progress=progress)
            assert found is not None  # download=True returns a copy or raises
            folder = found[0]
        return DataSource(load_dataset(folder, levels=SMILES_LEVELS), True, "smiles")
    return DataSource(load_dataset(spec, levels=levels), False, str(spec))
