"""The labels CSV: one in-memory truth, serialised changes, every change saved atomically.

The file is the ``path,score`` CSV that ``edge-smw train --data FILE.csv`` reads (paths
relative to the CSV's folder; an empty score is a photo the user looked at and skipped;
a photo with no row was never looked at, which is how a restart knows where to resume).
All changes go through one lock, so two browser tabs (or many requests at once) are applied
one after another and the file is rewritten whole each time, through ``edge_smw.atomic``.
A lock file beside the CSV keeps a second ``edge-smw label`` from owning the same CSV.
"""

from __future__ import annotations

import contextlib
import csv
import os
import secrets
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_smw.atomic import atomic_open
from edge_smw.errors import EdgeSmwError, InputError

HEADER = ("path", "score")
SKIPPED = ""  # the score written for a photo the user skipped
_HISTORY_LIMIT = 100_000


class StaleRevisionError(EdgeSmwError):
    """A change was based on an older view of the labels (another tab changed them since)."""

    def __init__(self, expected: str, current: str) -> None:
        super().__init__(
            f"the labels changed since this page loaded them (revision {expected}, now "
            f"{current}); reload and try again"
        )
        self.expected = expected
        self.current = current


class UnknownPhotoError(InputError):
    """A path that is not one of the photos being labelled."""


@dataclass(frozen=True)
class Change:
    """One applied change; ``None`` means 'no row' (never looked at)."""

    path: str
    before: str | None
    after: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "before": self.before, "after": self.after}


class LabelStore:
    """Scores of the photos under ``root`` (keys: POSIX paths relative to ``root``).

    Rows of the CSV that name files outside the listing are kept as they are, so labelling
    one folder never drops labels someone put in the same CSV for another.
    """

    def __init__(self, csv_path: str | os.PathLike[str], root: str | os.PathLike[str],
                 keys: Sequence[str], levels: Sequence[str]) -> None:
        csv_path = Path(os.path.abspath(csv_path))
        # Real folders on both sides, so a symlinked route to either still matches rows.
        self.csv_path = Path(os.path.realpath(csv_path.parent)) / csv_path.name
        self.root = Path(os.path.realpath(root))
        self.levels = tuple(levels)
        self.keys = list(keys)
        self._known = set(self.keys)
        self._scores: dict[str, str] = {}
        self._foreign: list[list[str]] = []
        self._extra_header: list[str] = []
        self._extras: dict[str, list[str]] = {}
        self._history: list[Change] = []
        self._lock = threading.Lock()
        self._instance = secrets.token_hex(3)
        self._counter = 0
        self._load()

    # -- reading -------------------------------------------------------------------------
    def _load(self) -> None:
        if not self.csv_path.exists():
            return
        if not self.csv_path.is_file():
            raise InputError(f"--labels {self.csv_path} is not a file; give a .csv file path")
        allowed = set(self.levels) | {SKIPPED}
        try:
            with open(self.csv_path, newline="", encoding="utf-8-sig") as handle:
                for line_no, row in enumerate(csv.reader(handle), start=1):
                    if not row or all(not cell.strip() for cell in row):
                        continue
                    cells = [cell.strip() for cell in row]
                    if line_no == 1 and [c.lower() for c in cells[:2]] in (["path", "score"],
                                                                           ["path", "level"]):
                        self._extra_header = row[2:]
                        continue
                    if len(cells) < 2:  # another format (``file;label``): never rewrite it
                        raise InputError(
                            f"{self.csv_path}:{line_no}: expected a 'path,score' row (the CSV "
                            f"edge-smw label writes and train reads), got {row[0][:60]!r}; "
                            "give another --labels file, or convert this one to path,score")
                    path, score = cells[0], cells[1]
                    if score not in allowed:
                        raise InputError(
                            f"{self.csv_path}:{line_no}: score {score!r} is not one of the "
                            f"levels {list(self.levels)}; pass the levels this CSV uses with "
                            "--levels, or label into another file with --labels"
                        )
                    key = self._key_for(path)
                    if key in self._known:
                        self._scores[key] = score  # a repeated row: the last one wins
                        self._extras[key] = row[2:]
                    else:
                        self._foreign.append(row)
        except UnicodeDecodeError as exc:
            raise InputError(f"{self.csv_path}: not a UTF-8 text CSV ({exc}); pass another "
                             "--labels file") from exc
        except OSError as exc:
            raise InputError(f"{self.csv_path}: cannot be read ({exc.strerror or exc})") from exc

    def _key_for(self, csv_path_cell: str) -> str | None:
        path = Path(csv_path_cell)
        full = path if path.is_absolute() else self.csv_path.parent / path
        try:
            rel = os.path.relpath(os.path.normpath(full), self.root)
        except ValueError:  # another drive on Windows
            return None
        if rel == os.curdir or rel.split(os.sep, 1)[0] == os.pardir or os.path.isabs(rel):
            return None
        return Path(rel).as_posix()

    def _cell_for(self, key: str) -> str:
        full = self.root / key
        try:
            rel = os.path.relpath(full, self.csv_path.parent)
        except ValueError:  # another drive on Windows: only an absolute path reaches it
            return full.as_posix()
        return Path(rel).as_posix()

    # -- state ---------------------------------------------------------------------------
    @property
    def revision(self) -> str:
        return f"{self._instance}-{self._counter}"

    def __contains__(self, key: object) -> bool:
        return key in self._known

    def score(self, key: str) -> str | None:
        return self._scores.get(key)

    def scores(self) -> dict[str, str]:
        with self._lock:
            return dict(self._scores)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.levels, 0)
        for score in self._scores.values():
            if score != SKIPPED:
                counts[score] += 1
        return counts

    def summary(self) -> dict[str, Any]:
        """Revision, per-level counts, labelled and skipped totals (one consistent view)."""
        with self._lock:
            counts = self.counts()
            skipped = sum(1 for s in self._scores.values() if s == SKIPPED)
            return {"revision": self.revision, "counts": counts,
                    "labelled": sum(counts.values()), "skipped": skipped,
                    "can_undo": bool(self._history)}

    def resume_key(self, order: Sequence[str], *, ignore: Collection[str] = ()) -> str | None:
        """Where to carry on: the first photo never looked at, else the first skipped one
        (``ignore``: photos known to be unreadable)."""
        with self._lock:
            for key in order:
                if key not in self._scores and key not in ignore:
                    return key
            for key in order:
                if self._scores.get(key) == SKIPPED and key not in ignore:
                    return key
        return None

    # -- changing ------------------------------------------------------------------------
    def set(self, key: str, score: str, *, revision: str | None = None) -> Change:
        """Give ``key`` a level (or ``SKIPPED``) and save; the change can be undone."""
        if key not in self._known:
            raise UnknownPhotoError(f"{key!r} is not one of the photos being labelled")
        if score != SKIPPED and score not in self.levels:
            raise InputError(f"score {score!r} is not one of the levels {list(self.levels)}")
        with self._lock:
            self._check(revision)
            change = Change(key, self._scores.get(key), score)
            if change.before == change.after:
                return change
            self._apply(change.path, change.after)
            try:
                self._save()
            except BaseException:
                self._apply(change.path, change.before)
                raise
            self._history.append(change)
            del self._history[:-_HISTORY_LIMIT]
            self._counter += 1
            return change

    def undo(self, *, revision: str | None = None) -> Change | None:
        """Revert the latest change made in this session (by any tab); None if none is left."""
        with self._lock:
            self._check(revision)
            if not self._history:
                return None
            last = self._history[-1]
            self._apply(last.path, last.before)
            try:
                self._save()
            except BaseException:
                self._apply(last.path, last.after)
                raise
            self._history.pop()
            self._counter += 1
            return Change(last.path, last.after, last.before)

    def _check(self, revision: str | None) -> None:
        if revision is not None and revision != self.revision:
            raise StaleRevisionError(revision, self.revision)

    def _apply(self, key: str, score: str | None) -> None:
        if score is None:
            self._scores.pop(key, None)
        else:
            self._scores[key] = score

    def _save(self) -> None:
        rows: list[list[str]] = [list(HEADER) + self._extra_header]
        for key in self.keys:
            if key in self._scores:
                rows.append([self._cell_for(key), self._scores[key], *self._extras.get(key, [])])
        rows.extend(self._foreign)
        try:
            with atomic_open(self.csv_path, "w", newline="") as handle:
                csv.writer(handle, lineterminator="\n").writerows(rows)
        except (OSError, InputError) as exc:  # InputError: the temporary file was refused
            cause = exc if isinstance(exc, OSError) else exc.__cause__
            reason = getattr(cause, "strerror", None) or exc
            raise InputError(
                f"cannot save {self.csv_path} ({reason}); the last change was not kept: free "
                "some space, or fix the permissions or the read-only mount"
            ) from exc


class CsvOwnerLock:
    """An OS lock on ``.<csv>.lock``: one ``edge-smw label`` per CSV, or they would overwrite
    each other's labels. The lock file itself stays empty; it is removed on release."""

    def __init__(self, csv_path: str | os.PathLike[str]) -> None:
        csv_path = Path(os.path.abspath(csv_path))
        self.csv_path = csv_path
        self.path = csv_path.with_name(f".{csv_path.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> CsvOwnerLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create {self.path.parent} for the labels CSV: "
                             f"{exc.strerror or exc}; choose another --labels") from exc
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise InputError(f"cannot write beside {self.csv_path}: {exc.strerror or exc}; "
                                 "choose a writable --labels location") from exc
            try:
                _lock_fd(fd)
            except OSError:
                os.close(fd)
                raise InputError(
                    f"{self.csv_path} is being labelled by another `edge-smw label` (lock "
                    f"{self.path}); close that one first, or write to another --labels file"
                ) from None
            try:  # the previous owner may have removed the file between our open and lock
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return self
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> CsvOwnerLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_fd(fd: int) -> None:
    """Non-blocking exclusive lock; raises OSError when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
