"""Labelled data sets: a folder of level sub-folders, or a CSV of ``path,score``.

Levels are ordered. A folder's levels are its sub-folder names (numeric names sorted as
numbers, others alphabetically) unless ``levels`` gives the order explicitly.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge_smw.errors import DataError


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    level: int  # 0-based index into the data set's levels


@dataclass
class LabelledDataset:
    items: list[LabelledImage]
    levels: tuple[str, ...]
    source: Path

    def counts(self) -> dict[str, int]:
        counter = Counter(item.level for item in self.items)
        return {name: counter.get(i, 0) for i, name in enumerate(self.levels)}

    def __len__(self) -> int:
        return len(self.items)


def parse_levels(text: str | None) -> tuple[str, ...] | None:
    """``"a,b,c"`` -> ("a", "b", "c"); a bare number K -> ("1", ..., "K")."""
    if text is None or text == "":
        return None
    text = text.strip()
    if text.isdigit():
        k = int(text)
        if k < 2:
            raise DataError(f"--levels {text}: need at least 2 levels")
        return tuple(str(i) for i in range(1, k + 1))
    levels = tuple(part.strip() for part in text.split(","))
    if "" in levels and len(levels) > 1:  # "a,,b": dropping it would shift every later level
        raise DataError(f"--levels {text!r}: a level name is empty (two commas in a row, or one "
                        "at an end); give names such as not_smiling,smiling")
    if len(levels) < 2:
        raise DataError(f"--levels {text!r}: give at least 2 comma-separated level names")
    if len(set(levels)) != len(levels):
        raise DataError(f"--levels {text!r}: level names repeat")
    return levels


def sort_level_names(names: Sequence[str]) -> tuple[str, ...]:
    """Numeric names sort as numbers (2 < 10); otherwise alphabetically."""
    names = list(names)
    try:
        return tuple(sorted(names, key=float))
    except ValueError:
        return tuple(sorted(names))


def load_dataset(source: str | Path, *, levels: Sequence[str] | None = None) -> LabelledDataset:
    """Load a folder of level sub-folders or a ``path,score`` CSV; validate it."""
    source = Path(source)
    if not source.exists():
        raise DataError(f"data set {source} not found; give a folder with one sub-folder per "
                        "level, or a CSV with path,score rows")
    if source.is_dir():
        dataset = _load_folder(source, levels)
    elif source.suffix.lower() == ".csv":
        dataset = _load_csv(source, levels)
    else:
        raise DataError(f"{source}: a data set is a folder of level sub-folders or a .csv file")
    _validate(dataset)
    return dataset


def _load_folder(root: Path, levels: Sequence[str] | None) -> LabelledDataset:
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if levels is None:
        order = sort_level_names(subdirs)
    else:
        order = tuple(levels)
        missing = [name for name in order if name not in subdirs]
        if missing:
            raise DataError(
                f"{root}: no sub-folder for level(s) {missing}; found {subdirs}. Each level "
                "needs a sub-folder of its images"
            )
    items: list[LabelledImage] = []
    for index, name in enumerate(order):
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                items.append(LabelledImage(path, index))
    return LabelledDataset(items, order, root)


def _load_csv(csv_path: Path, levels: Sequence[str] | None) -> LabelledDataset:
    rows: list[tuple[str, str]] = []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            for line_no, row in enumerate(csv.reader(handle), start=1):
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) < 2:
                    raise DataError(f"{csv_path}:{line_no}: expected 'path,score', got {row}")
                path, score = row[0].strip(), row[1].strip()
                if line_no == 1 and (path.lower(), score.lower()) in {("path", "score"),
                                                                      ("path", "level")}:
                    continue
                if not score:
                    continue  # unlabelled row (e.g. skipped in the labelling tool)
                rows.append((path, score))
    except UnicodeDecodeError as exc:
        raise DataError(f"{csv_path}: not a UTF-8 text CSV ({exc})") from exc
    seen = {score for _, score in rows}
    if levels is None:
        order = sort_level_names(sorted(seen))
    else:
        order = tuple(levels)
        unknown = sorted(seen - set(order))
        if unknown:
            raise DataError(f"{csv_path}: scores {unknown} are not among the levels {list(order)}")
    index = {name: i for i, name in enumerate(order)}
    base = csv_path.parent
    items = [
        LabelledImage(Path(p) if Path(p).is_absolute() else base / p, index[s]) for p, s in rows
    ]
    return LabelledDataset(items, order, csv_path)


def _validate(dataset: LabelledDataset) -> None:
    if len(dataset.levels) < 2:
        raise DataError(
            f"{dataset.source}: found {len(dataset.levels)} level(s) {list(dataset.levels)}; "
            "a data set needs at least 2 ordered levels"
        )
    empty = [name for name, n in dataset.counts().items() if n == 0]
    if empty:
        raise DataError(
            f"{dataset.source}: level(s) {empty} have no images; add images or drop the level"
        )


# -- the split manifest -------------------------------------------------------------------
SPLITS = ("train", "val", "test")


@dataclass
class SplitManifest:
    """Which image is in which split; saved beside a run so every later step reuses it.

    Paths are kept as the data set gave them (relative ones stay readable and move with the
    data); ``base`` records the folder they were relative to, so a later step finds them from
    any working folder.
    """

    levels: tuple[str, ...]
    seed: int
    entries: list[dict]  # {"path": str, "level": int, "split": str}
    base: Path | None = None  # absolute folder relative paths were written from
    location: Path | None = field(default=None, compare=False)  # the file it was loaded from

    def items(self, split: str) -> list[LabelledImage]:
        """One split's images, each relative path resolved where it exists (``resolve``)."""
        return [LabelledImage(self.resolve(e["path"]), e["level"]) for e in self.entries
                if e["split"] == split]

    def resolve(self, listed: str) -> Path:
        """A listed path as it exists here: relative ones are read against the folder the
        split was made in, then the working folder, then the run folder; the first that
        exists wins, else the path as listed (so a message names it as written)."""
        path = Path(listed)
        if path.is_absolute():
            return path
        roots = [self.base, Path.cwd(), self.location.parent if self.location else None]
        for root in roots:
            if root is not None and (root / path).exists():
                return root / path
        return path

    def to_dict(self) -> dict:
        """The split's identity (``sha256``): levels, seed and entries, not where it lives."""
        return {"levels": list(self.levels), "seed": self.seed, "entries": self.entries}

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        from edge_smw.atomic import write_json

        base = {} if self.base is None else {"base": str(self.base)}
        return write_json(path, {**self.to_dict(), **base})

    @classmethod
    def load(cls, path: str | Path) -> SplitManifest:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            base = Path(data["base"]) if data.get("base") else None
            return cls(tuple(data["levels"]), int(data["seed"]), list(data["entries"]),
                       base, Path(path).absolute())
        except FileNotFoundError:
            raise DataError(f"split manifest {path} not found") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"split manifest {path} is corrupt ({exc})") from exc


def make_split(
    dataset: LabelledDataset,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> SplitManifest:
    """Deterministic stratified split: each level is shuffled with ``seed`` and cut by fraction.

    Every level with at least 3 images puts at least one in each split.
    """
    entries: list[dict] = []
    for level in range(len(dataset.levels)):
        paths = sorted(str(item.path) for item in dataset.items if item.level == level)
        random.Random(f"{seed}-{level}").shuffle(paths)
        n = len(paths)
        n_val = max(1, round(n * fractions[1])) if n >= 3 else 0
        n_test = max(1, round(n * fractions[2])) if n >= 3 else 0
        n_train = n - n_val - n_test
        for i, path in enumerate(paths):
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            entries.append({"path": path, "level": level, "split": split})
    entries.sort(key=lambda e: (e["split"], e["level"], e["path"]))
    return SplitManifest(dataset.levels, seed, entries, Path.cwd().absolute())


def stratified_indices(levels: Sequence[int], size: int, seed: int = 0, *,
                       keys: Sequence[str] | None = None) -> list[int]:
    """Indices of ``size`` items, each level's share as in ``levels`` (largest remainder;
    every level keeps at least one), fixed by ``seed``: the one sampler for calibration,
    parity and bench subsets.

    Items are ordered by (level, key) before each level's seeded shuffle, so the choice does
    not depend on the order they came in. ``size`` <= 0 or >= their number: all of them.
    """
    n = len(levels)
    order = sorted(range(n), key=lambda i: (int(levels[i]), keys[i] if keys else "", i))
    if size <= 0 or size >= n:
        return order
    by_level: dict[int, list[int]] = {}
    for i in order:
        by_level.setdefault(int(levels[i]), []).append(i)
    quotas = {lvl: size * len(g) / n for lvl, g in by_level.items()}
    take = {lvl: int(q) for lvl, q in quotas.items()}
    for lvl in sorted(quotas, key=lambda k: quotas[k] - take[k], reverse=True):
        if sum(take.values()) >= size:
            break
        take[lvl] += 1
    chosen: list[int] = []
    for lvl, group in by_level.items():
        random.Random(f"calib-{seed}-{lvl}").shuffle(group)
        chosen += group[: max(1, take[lvl])]
    return chosen


def stratified_items(items: Sequence[LabelledImage], size: int,
                     seed: int = 0) -> list[LabelledImage]:
    """``stratified_indices`` over labelled images (ordered by path within a level)."""
    picked = stratified_indices([i.level for i in items], size, seed,
                                keys=[str(i.path) for i in items])
    return [items[i] for i in picked]

