"""Run and export folders as objects that know their files.

A run folder is what ``edge-smw train`` writes (the checkpoint, the split manifest every later
step reuses, the reports); an export folder is what ``edge-smw export`` writes (models from the
formats table, ``export.json``, the calibration folder). Every module asks these objects for a
path instead of spelling a file name, and ``is_exported_model`` is the one rule for telling an
exported model from a training run.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_smw.artifacts.formats import (
    CHECKPOINT,
    ENGINE_SUFFIXES,
    FORMATS,
    MODEL_SUFFIXES,
    ONNX_SUFFIX,
    offered_models,
)
from edge_smw.errors import InputError, ModelError

if TYPE_CHECKING:
    from edge_smw.metadata import ModelInfo

CHECKPOINT_NAME = CHECKPOINT.file_name
SPLIT_NAME = "split.json"
TRAIN_JSON = "train.json"
SKIPPED_JSON = "skipped.json"
EXPORT_JSON = "export.json"
CALIBRATION_DIR = "calibration"
QUANT_REPORT = "quant_report"


def quant_report_name(flavour: str) -> str:
    """The stem of an INT8 flavour's sensitivity report (``.json``, ``.md``, ``.png``)."""
    return f"{QUANT_REPORT}.{flavour}"


@dataclass(frozen=True)
class RunDir:
    """A training run folder (or the folder of a checkpoint file given directly)."""

    path: Path

    @classmethod
    def of(cls, run_or_checkpoint: str | Path) -> RunDir:
        """The run a folder or a checkpoint file belongs to."""
        path = Path(run_or_checkpoint)
        return cls(path if path.is_dir() or path.suffix != CHECKPOINT.suffix else path.parent)

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_NAME

    @property
    def split(self) -> Path:
        return self.path / SPLIT_NAME

    @property
    def train_json(self) -> Path:
        return self.path / TRAIN_JSON

    @property
    def skipped_json(self) -> Path:
        return self.path / SKIPPED_JSON

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def find_split(self) -> Path | None:
        """``split.json`` of the run, or None where there is none."""
        return self.split if self.split.is_file() else None


def checkpoint_file(run_or_checkpoint: str | Path) -> Path:
    """A run folder's checkpoint, or the checkpoint file itself (not checked to exist)."""
    path = Path(run_or_checkpoint)
    return RunDir(path).checkpoint if path.is_dir() else path


@dataclass(frozen=True)
class ExportDir:
    """An export folder: models named by the formats table, ``export.json``, calibration."""

    path: Path

    @property
    def export_json(self) -> Path:
        return self.path / EXPORT_JSON

    @property
    def calibration(self) -> Path:
        return self.path / CALIBRATION_DIR

    def model_files(self) -> list[Path]:
        """Every model-like file (by suffix), sorted by name; hidden staging files excluded."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir()
                      if p.is_file() and not p.name.startswith(".")
                      and p.suffix in MODEL_SUFFIXES)

    def default_model(self) -> Path:
        """The model ``Runtime`` takes from this folder: the most deployable one present
        (refused when it is a stale model of an earlier export, see ``model_info``)."""
        for fmt in offered_models():
            candidate = self.path / fmt.file_name
            if candidate.is_file():
                if self.source_checkpoint():
                    self.model_info(candidate)
                return candidate
        names = ", ".join(f.file_name for f in offered_models())
        raise ModelError(f"{self.path} holds no exported model ({names}); run `edge-smw export "
                         "RUN_DIR --out DIR` first")

    def read_export_json(self) -> dict[str, Any] | None:
        """``export.json`` as a dict, None where absent; a corrupt one is a clear error."""
        path = self.export_json
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path} is not valid JSON ({exc}); re-export the folder") from None
        return data if isinstance(data, dict) else None

    def source_checkpoint(self) -> str | None:
        """The sha256 of the checkpoint ``export.json`` says this folder was exported from."""
        source = (self.read_export_json() or {}).get("source")
        digest = source.get("checkpoint_sha256") if isinstance(source, dict) else None
        return digest if isinstance(digest, str) and digest else None

    def check_source(self, model: str | Path, checkpoint_sha256: str | None) -> None:
        """Refuse a model exported from another checkpoint than ``export.json`` says: a file
        an earlier export of another run left here, whose figures belong to that run."""
        expected = self.source_checkpoint()
        if expected and checkpoint_sha256 and checkpoint_sha256 != expected:
            raise ModelError(f"{self.path / Path(model).name} was exported from checkpoint "
                             f"{checkpoint_sha256[:12]}, but {self.export_json} from "
                             f"{expected[:12]}: it is a stale model of an earlier export; "
                             f"re-export the folder (`edge-smw export RUN_DIR --out {self.path}`)")

    def model_info(self, model: str | Path) -> ModelInfo:
        """A model's metadata, read the one way (a corrupt file is a clear error) and checked
        to come from this export's checkpoint (``check_source``)."""
        from edge_smw.metadata import ModelInfo

        info = ModelInfo.from_file(model)
        self.check_source(model, info.checkpoint_sha256)
        return info

    def format_files(self) -> list[Path]:
        """The files here that the formats table names (every model an export writes, and
        each engine's sidecar), sorted; a user's own files are not among them."""
        from edge_smw.metadata import sidecar_path

        found: set[Path] = set()
        for fmt in FORMATS:
            if fmt is CHECKPOINT:
                continue
            for path in self.path.glob(fmt.file_name.format(gpu="*")):
                found.add(path)
                if fmt.kind == "engine":
                    found.add(sidecar_path(path))
        return sorted(p for p in found if p.is_file())

    def report_files(self) -> list[Path]:
        """The INT8 sensitivity reports here (an export's or ``quant-report``'s), sorted."""
        return sorted(p for p in self.path.glob(f"{QUANT_REPORT}.*") if p.is_file())

    def remove_stale(self, written: Collection[str]) -> list[str]:
        """Remove what an earlier export left and this one did not write (``written``: the
        names it did): format-table models, INT8 reports, the calibration folder, so the
        folder describes only this export; returns the names removed."""
        removed = []
        stale = [p for p in (*self.format_files(), *self.report_files(), self.calibration)
                 if p.name not in written and p.exists()]
        for path in stale:
            try:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ModelError(f"cannot remove {path}, left by an earlier export "
                                 f"({exc.strerror or exc}): delete it by hand") from None
            removed.append(path.name)
        return removed


def is_exported_model(model: str | Path) -> bool:
    """An .onnx/.engine file, or a folder holding one but no training checkpoint.

    The one rule every command uses to choose between the torch path (a run folder or
    checkpoint) and the torch-free ``Runtime`` path (an exported model).
    """
    path = Path(model)
    if path.is_dir():
        return not RunDir(path).has_checkpoint() and bool(ExportDir(path).model_files())
    return path.suffix in MODEL_SUFFIXES


def resolve_model_path(model: str | Path) -> Path:
    """An .onnx or .engine file, or an export folder (its most deployable model)."""
    path = Path(model)
    _check_path(path)
    if path.is_dir():
        return ExportDir(path).default_model()
    if not path.is_file():
        raise ModelError(f"model {path} not found; give an export folder or the .onnx / .engine "
                         "file `edge-smw export` wrote")
    if path.suffix not in MODEL_SUFFIXES:
        raise ModelError(f"{path}: expected an .onnx or .engine model (or an export folder); a "
                         "training checkpoint must be exported first with `edge-smw export`")
    return path


def _check_path(path: Path) -> None:
    """A path the system cannot even look up is the caller's argument error (the C bridge
    turns it into ESMW_ERR_ARGUMENT), not an OSError; a missing file is reported by the
    caller in its own words."""
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise InputError(f"model path is too long for this system ({len(str(path))} "
                             f"characters: {str(path)[:60]}...); use a shorter path") from None
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise ModelError(f"model {path} cannot be read ({exc.strerror or exc})") from None
    except ValueError:  # an embedded NUL byte
        raise InputError(f"model path {str(path)!r} holds a NUL character; give a file "
                         "path") from None


def is_engine(path: str | Path) -> bool:
    return Path(path).suffix in ENGINE_SUFFIXES


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix == ONNX_SUFFIX
