"""The results of a library scoring run, kept as Parquet so a run can stop and resume.

    OUT/run.json          the model (sha256) and settings these results belong to
    OUT/faces/part-N.parquet    one row per face: path, file_sha256, face, box, level,
                                level_index, expected_score, probabilities, model_sha256
    OUT/skipped/part-N.parquet  one row per photo without a scored face: path, file_sha256,
                                status ("unreadable" or "no face"), reason, model_sha256

Every part file is written atomically; a photo's rows are all in one part file, and each
photo is either in ``faces`` or in ``skipped``, so a run killed at any moment leaves no
half-recorded photo. A re-run skips photos whose (path, file sha256) is recorded; a photo
whose file changed is scored again and its newest part wins.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edge_smw.atomic import atomic_path, write_json
from edge_smw.errors import InputError
from edge_smw.rank import AlbumRanking, PhotoScore
from edge_smw.runtime.runtime import FaceScore

STORE_FORMAT = 1
MANIFEST = "run.json"
FACES = "faces"
SKIPPED = "skipped"
STATUS_UNREADABLE = "unreadable"
STATUS_NO_FACE = "no face"
_PART = re.compile(r"part-(\d{6,})\.parquet")

FACES_SCHEMA = pa.schema([
    ("path", pa.string()),
    ("file_sha256", pa.string()),
    ("face", pa.int32()),
    ("box", pa.list_(pa.int32())),
    ("level", pa.string()),
    ("level_index", pa.int32()),
    ("expected_score", pa.float64()),
    ("probabilities", pa.list_(pa.float64())),
    ("model_sha256", pa.string()),
])
SKIPPED_SCHEMA = pa.schema([
    ("path", pa.string()),
    ("file_sha256", pa.string()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("model_sha256", pa.string()),
])


@dataclass(frozen=True)
class StoreSettings:
    """What the recorded scores depend on: resuming with other settings would mix results."""

    model_sha256: str
    levels: tuple[str, ...]
    detect: bool
    max_faces: int

    def to_dict(self) -> dict[str, Any]:
        return {"format": STORE_FORMAT, "model_sha256": self.model_sha256,
                "levels": list(self.levels), "detect": self.detect,
                "max_faces": self.max_faces}


class ResultStore:
    """A folder of Parquet parts for one model and settings; appends, never rewrites."""

    def __init__(self, root: str | Path, settings: StoreSettings) -> None:
        self.root = Path(root)
        self.settings = settings
        manifest = self.root / MANIFEST
        if manifest.is_file():
            try:
                recorded = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InputError(f"{manifest} is not readable JSON ({exc}); remove the folder "
                                 "or choose another --out") from None
            wanted = settings.to_dict()
            differ = [k for k in wanted if recorded.get(k) != wanted[k]]
            if differ:
                key = differ[0]
                raise InputError(
                    f"{self.root} holds results made with {key}={recorded.get(key)!r}, not "
                    f"{wanted[key]!r}; choose another --out (or remove it) to score again")
        elif self.root.exists() and any(self.root.iterdir()):
            if (self.root / FACES).exists() or (self.root / SKIPPED).exists():
                raise InputError(f"{self.root} has results but no {MANIFEST}; remove it or "
                                 "choose another --out")
        write_json(manifest, settings.to_dict())
        self._next = self._last_part() + 1

    # -- writing ---------------------------------------------------------------------------
    def _last_part(self) -> int:
        numbers = [int(m.group(1)) for table in (FACES, SKIPPED)
                   for p in (self.root / table).glob("part-*.parquet")
                   if (m := _PART.fullmatch(p.name))]
        return max(numbers, default=0)

    def append(self, faces: pa.Table, skipped: pa.Table) -> int:
        """Write one part of each table (empty ones are not written); returns its number."""
        number = self._next
        self._next += 1
        for name, table, schema in ((FACES, faces, FACES_SCHEMA),
                                    (SKIPPED, skipped, SKIPPED_SCHEMA)):
            if table.num_rows:
                target = self.root / name / f"part-{number:06d}.parquet"
                with atomic_path(target) as tmp:
                    pq.write_table(table.select(schema.names).cast(schema), tmp)
        return number

    # -- reading ---------------------------------------------------------------------------
    def _read(self, table: str, schema: pa.Schema,
              columns: Sequence[str] | None = None) -> pa.Table:
        names = list(columns or schema.names)
        parts = []
        for path in sorted((self.root / table).glob("part-*.parquet")):
            match = _PART.fullmatch(path.name)
            if not match:
                continue
            try:
                part = pq.read_table(path, columns=names, schema=schema)
            except (OSError, ValueError, pa.ArrowInvalid) as exc:
                raise InputError(f"{path} is not a readable Parquet part ({exc}); remove it "
                                 "and run again to score its photos anew") from None
            parts.append(part.append_column("part", pa.array(
                np.full(part.num_rows, int(match.group(1)), np.int64))))
        if not parts:
            empty = schema.empty_table().select(names)
            return empty.append_column("part", pa.array([], pa.int64()))
        return pa.concat_tables(parts)

    def current(self, columns: Sequence[str] | None = None) -> tuple[pa.Table, pa.Table]:
        """(faces, skipped) with only each photo's newest part (a changed file scored again
        replaces its old rows)."""
        faces = self._read(FACES, FACES_SCHEMA, columns and [c for c in columns
                                                             if c in FACES_SCHEMA.names])
        skipped = self._read(SKIPPED, SKIPPED_SCHEMA, columns and [c for c in columns
                                                                   if c in SKIPPED_SCHEMA.names])
        newest: dict[str, int] = {}
        for table in (faces, skipped):
            for path, part in zip(table.column("path").to_pylist(),
                                  table.column("part").to_pylist(), strict=True):
                if part > newest.get(path, 0):
                    newest[path] = part

        def keep(table: pa.Table) -> pa.Table:
            mask = [newest[p] == n for p, n in zip(table.column("path").to_pylist(),
                                                   table.column("part").to_pylist(),
                                                   strict=True)]
            return table.filter(pa.array(mask, pa.bool_())).drop_columns(["part"])

        return keep(faces), keep(skipped)

    def recorded(self) -> dict[str, str | None]:
        """path -> file sha256 of every photo already recorded (the resume check)."""
        faces, skipped = self.current(["path", "file_sha256"])
        done: dict[str, str | None] = {}
        for table in (faces, skipped):
            done.update(zip(table.column("path").to_pylist(),
                            table.column("file_sha256").to_pylist(), strict=True))
        return done

    def ranking(self, paths: Sequence[str] | None = None) -> AlbumRanking:
        """The recorded photos (those in ``paths`` when given) as ``edge-smw rank`` orders
        them, so its CSV and contact sheets are written by the same code."""
        faces, skipped = self.current()
        wanted = None if paths is None else set(paths)
        photos: dict[str, PhotoScore] = {}
        levels = self.settings.levels
        rows = faces.sort_by([("path", "ascending"), ("face", "ascending")]).to_pylist()
        for row in rows:
            if wanted is not None and row["path"] not in wanted:
                continue
            photo = photos.setdefault(row["path"], PhotoScore(row["path"]))
            photo.faces.append(FaceScore(
                tuple(row["box"]) if row["box"] is not None else None,
                np.asarray(row["probabilities"], np.float64), int(row["level_index"]),
                row["level"], float(row["expected_score"])))
        for row in skipped.to_pylist():
            if wanted is not None and row["path"] not in wanted:
                continue
            error = row["reason"] if row["status"] == STATUS_UNREADABLE else None
            photos[row["path"]] = PhotoScore(row["path"], error=error)
        order = list(paths) if paths is not None else sorted(photos)
        return AlbumRanking.of((photos[p] for p in order if p in photos), levels)
