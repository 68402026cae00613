"""Target profiles: what to build for a kind of device, as TOML files shipped in the package.

A profile sets precision, INT8 flavour(s), the CPU an int8 model is built for, whether to
build a TensorRT engine, the batch range, workspace, calibration size and method: any key
``ExportSettings`` declares for profiles (``edge_smw.export.settings``), and no other.
Command-line flags override it. Profiles are found in ``$EDGE_SMW_PROFILES`` (a folder), then
in ``edge_smw/export/config/`` (package data, so an installed wheel has them);
``--profile`` also takes a path to a .toml file.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edge_smw.errors import InputError


@dataclass
class Profile:
    name: str
    path: Path
    description: str = ""
    precision: str = "fp32"
    values: dict[str, Any] = field(default_factory=dict)  # ExportSettings field -> value

    @property
    def flavours(self) -> tuple[str, ...]:
        return tuple(self.values.get("flavours", ())) if self.precision == "int8" else ()

    @property
    def engine(self) -> bool:
        return bool(self.values.get("engine", False))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "description": self.description,
                "precision": self.precision,
                "settings": {k: list(v) if isinstance(v, tuple) else v
                             for k, v in sorted(self.values.items())}}


def _toml(name: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:  # Python 3.10: the same parser, from PyPI
        import tomli

        return tomli
    except ImportError:
        raise InputError(f"reading {name} needs Python >= 3.11 (tomllib) or, on 3.10, "
                         "`pip install tomli`") from None


def read_toml(path: str | Path, what: str = "") -> dict[str, Any]:
    """A settings file (export profile, bench suite or gates) parsed: the one TOML reader, so
    every way a file can be unusable (missing, a folder, empty, not UTF-8 text, bad TOML) is
    one line naming it; ``what`` says what kind of file it is in that line."""
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    toml = _toml(name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{name} not found") from None
    except IsADirectoryError:
        raise InputError(f"{name} is a folder: give a TOML file") from None
    except OSError as exc:
        raise InputError(f"{name} cannot be read ({exc.strerror or exc})") from None
    if not data.strip():
        raise InputError(f"{name} is empty: give a TOML file with the settings")
    try:
        return toml.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{name} is not UTF-8 text, so not a TOML file: give a .toml "
                         "file") from None
    except toml.TOMLDecodeError as exc:
        raise InputError(f"{name} is not valid TOML ({exc})") from None


def packaged_folder() -> Path:
    """The profiles shipped inside the package (``edge_smw/export/config``)."""
    return Path(str(resources.files("edge_smw.export") / "config"))


def search_folders() -> list[Path]:
    folders = []
    if os.environ.get("EDGE_SMW_PROFILES"):
        folders.append(Path(os.environ["EDGE_SMW_PROFILES"]))
    folders.append(packaged_folder())
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
        return load_profile(path)
    for folder in search_folders():
        candidate = folder / f"{name_or_file}.toml"
        if candidate.is_file():
            return load_profile(candidate)
    known = ", ".join(p.name for p in list_profiles()) or "none found"
    raise InputError(f"--profile {name_or_file!r}: no such profile (known: {known}); or give a "
                     ".toml file")


def load_profile(path: str | Path) -> Profile:
    from edge_smw.export.settings import ExportSettings, profile_values

    path = Path(path)
    data = read_toml(path, "profile")
    values = profile_values(data, path)
    try:  # the profile alone must make valid settings (batch order, ranges, choices)
        ExportSettings(**values)
    except InputError as exc:
        raise InputError(f"profile {path}: {exc}") from None
    return Profile(name=path.stem, path=path, description=str(data.get("description", "")),
                   precision=str(data.get("precision", "fp32")), values=values)
