"""Target profiles: what to build for a kind of device, as TOML files in ``export/``.

A profile sets precision, INT8 flavour(s), whether to build a TensorRT engine, the batch
range, workspace, calibration size and method. Command-line flags override it. Profiles are
found in ``$EDGE_SMW_PROFILES`` (a folder) and the project's top-level ``export/`` folder;
``--profile`` also takes a path to a .toml file.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_smw.errors import InputError

PROJECT_PROFILES = Path(__file__).resolve().parents[2] / "export"
PRECISIONS = ("fp32", "fp16", "int8")
FLAVOURS = ("cpu", "tensorrt")
_TOP = {"description", "precision", "flavours", "engine", "calibration", "int8", "tensorrt"}
_SECTIONS = {
    "calibration": {"size", "method", "num_bins", "percentile"},
    "int8": {"target_agreement", "bias_correction", "reduce_range", "max_mixed_steps",
             "aware_head"},
    "tensorrt": {"batch_min", "batch_opt", "batch_max", "workspace_mb", "dla_core"},
}


@dataclass
class Profile:
    name: str
    path: Path
    description: str = ""
    precision: str = "fp32"
    flavours: list[str] = field(default_factory=list)
    engine: bool = False
    calibration: dict[str, Any] = field(default_factory=dict)
    int8: dict[str, Any] = field(default_factory=dict)
    tensorrt: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "description": self.description,
                "precision": self.precision, "flavours": self.flavours, "engine": self.engine,
                "calibration": self.calibration, "int8": self.int8, "tensorrt": self.tensorrt}


def _toml():
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:  # Python 3.10: the same parser, from PyPI
        import tomli

        return tomli
    except ImportError:
        raise InputError("reading export profiles needs Python >= 3.11 (tomllib) or, on 3.10, "
                         "`pip install tomli`; or pass the settings as flags instead of "
                         "--profile") from None


def search_folders() -> list[Path]:
    folders = []
    if os.environ.get("EDGE_SMW_PROFILES"):
        folders.append(Path(os.environ["EDGE_SMW_PROFILES"]))
    folders.append(PROJECT_PROFILES)
    return folders


def list_profiles() -> list[Profile]:
    seen: dict[str, Profile] = {}
    for folder in search_folders():
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                seen.setdefault(path.stem, load_profile(path))
    return list(seen.values())


def resolve_profile(name_or_file: str | Path) -> Profile:
    """A profile by name (``cpu-int8``) or by .toml path."""
    path = Path(name_or_file)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise InputError(f"--profile {path}: file not found")
        return load_profile(path)
    for folder in search_folders():
        candidate = folder / f"{name_or_file}.toml"
        if candidate.is_file():
            return load_profile(candidate)
    known = ", ".join(p.name for p in list_profiles()) or "none found"
    raise InputError(f"--profile {name_or_file!r}: no such profile (known: {known}); or give a "
                     ".toml file")


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    toml = _toml()
    try:
        data = toml.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"profile {path}: cannot be read ({exc.strerror or exc})") from None
    except toml.TOMLDecodeError as exc:
        raise InputError(f"profile {path}: not valid TOML ({exc})") from None
    unknown = set(data) - _TOP
    if unknown:
        raise InputError(f"profile {path}: unknown setting(s) {sorted(unknown)}; known: "
                         f"{sorted(_TOP)}")
    for section, keys in _SECTIONS.items():
        value = data.get(section, {})
        if not isinstance(value, dict):
            raise InputError(f"profile {path}: [{section}] must be a table")
        extra = set(value) - keys
        if extra:
            raise InputError(f"profile {path}: unknown [{section}] setting(s) {sorted(extra)}; "
                             f"known: {sorted(keys)}")
    precision = str(data.get("precision", "fp32"))
    if precision not in PRECISIONS:
        raise InputError(f"profile {path}: precision {precision!r}; choose one of {PRECISIONS}")
    flavours = data.get("flavours", list(FLAVOURS) if precision == "int8" else [])
    if not isinstance(flavours, list) or any(f not in FLAVOURS for f in flavours):
        raise InputError(f"profile {path}: flavours must be a list drawn from {FLAVOURS}")
    if precision == "int8" and not flavours:
        raise InputError(f"profile {path}: an int8 profile needs at least one flavour")
    trt = dict(data.get("tensorrt", {}))
    lo, opt, hi = (int(trt.get(k, d)) for k, d in (("batch_min", 1), ("batch_opt", 1),
                                                    ("batch_max", 8)))
    if not 1 <= lo <= opt <= hi:
        raise InputError(f"profile {path}: need 1 <= batch_min <= batch_opt <= batch_max, got "
                         f"{lo}, {opt}, {hi}")
    return Profile(name=path.stem, path=path, description=str(data.get("description", "")),
                   precision=precision, flavours=list(flavours), engine=bool(data.get("engine")),
                   calibration=dict(data.get("calibration", {})), int8=dict(data.get("int8", {})),
                   tensorrt=trt)
