"""One atomic-write helper used by every writer of a file (checkpoints, models, CSVs, reports).

A crash or Ctrl-C while writing leaves either the old file or nothing, never half a file:
content goes to a temporary name in the same folder and is renamed over the target.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from edge_smw.errors import InputError

log = logging.getLogger("edge_smw.atomic")

# Temporary files are named ".<target name>.<random>.tmp" beside their target: hidden, and
# recognisable, so leftovers of a crash (kill -9, power cut) can be swept at the next start.
TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]+" + re.escape(TEMP_SUFFIX) + "$")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _cannot_write(folder: Path, exc: OSError, advice: str) -> InputError:
    """One line for a folder that cannot take files; a file in the way is named as one."""
    in_the_way = next((f for f in (folder, *folder.parents) if f.exists()), None)
    if in_the_way is not None and not in_the_way.is_dir():
        reason = ("it is a file, not a folder" if in_the_way == folder
                  else f"{in_the_way} is a file, not a folder")
    else:
        reason = str(exc.strerror or exc)
    return InputError(f"cannot write into {folder}: {reason}; {advice}")


def _temp_file(folder: Path, prefix: str, advice: str) -> Path:
    """Create ``folder`` if needed and an empty temporary file in it (closed)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=folder)
    except OSError as exc:
        raise _cannot_write(folder, exc, advice) from exc
    os.close(fd)
    return Path(tmp_name)


def _not_a_folder(target: Path, option: str = "this output") -> None:
    """A file output whose path is a folder would fail only at the final rename."""
    if target.is_dir():
        raise InputError(f"{target} is a folder, not a file; give a file path for {option} "
                         "(a new name, or a name inside that folder)")


def check_writable_folder(folder: str | os.PathLike[str],
                          advice: str = "choose a writable folder") -> Path:
    """Prove before any long work that files can be written into ``folder``.

    Creates it (and missing parents) only for the probe and removes what it made, so a
    run that fails later leaves no empty folder; ``advice`` says what to do (the option).
    """
    folder = Path(folder)
    made = [f for f in (folder, *folder.parents) if not f.exists()]
    try:
        _temp_file(folder, ".write-check.", advice).unlink()
    finally:
        for path in made:  # innermost first
            with contextlib.suppress(OSError):
                path.rmdir()
    return folder


def check_writable_file(target: str | os.PathLike[str], option: str = "this output") -> Path:
    """Prove before any long work that ``atomic_path(target)`` will be able to write it;
    ``option`` names the flag that gave it."""
    target = Path(target)
    _not_a_folder(target, option)
    check_writable_folder(target.parent, f"choose a writable folder for {option}")
    return target


# a disk or quota that is full: the user's to fix, so one line, not a traceback
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``."""
    target = Path(target)
    _not_a_folder(target)
    folder = target.parent if str(target.parent) else Path(".")
    tmp = _temp_file(folder, f".{target.name}.", "choose a writable folder")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno in _FULL:
            raise InputError(f"cannot write {target}: {exc.strerror}; free some space or "
                             f"write elsewhere ({target.name} was left as it was)") from exc
        raise


@contextlib.contextmanager
def atomic_open(
    target: str | os.PathLike[str], mode: str = "w", **kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``target`` only if the block succeeds."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(target) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def write_text(target: str | os.PathLike[str], text: str) -> Path:
    with atomic_open(target) as handle:
        handle.write(text)
    return Path(target)


def write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_open(target, "wb") as handle:
        handle.write(data)
    return Path(target)


def write_json(target: str | os.PathLike[str], obj: Any) -> Path:
    return write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def temp_target(name: str) -> str | None:
    """The target name when ``name`` is one of ``atomic_path``'s temporary files, else None."""
    match = _TEMP_NAME.match(name)
    return match.group("target") if match else None


def sweep_temp_files(folder: str | os.PathLike[str], owns: Callable[[str], bool]) -> list[Path]:
    """Remove leftovers of interrupted atomic writes in ``folder`` (not its sub-folders).

    Only temporary files of this module's naming whose target name ``owns`` accepts are
    removed, so a caller sweeps its own leftovers and never anything else. Errors are logged,
    not raised: a sweep must never stop a service from starting.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        log.debug("cannot sweep %s: %s", folder, exc)
        return removed
    for entry in entries:
        target = temp_target(entry.name)
        if target is None or not owns(target):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            os.unlink(entry.path)
        except OSError as exc:
            log.warning("cannot remove the leftover temporary file %s: %s", entry.path, exc)
            continue
        removed.append(Path(entry.path))
    if removed:
        log.info("removed %d temporary file(s) left in %s by an interrupted write",
                 len(removed), folder)
    return removed
