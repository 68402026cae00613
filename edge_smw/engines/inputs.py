"""What to score: folders, globs, lists of paths (CSV/Parquet) and object-store URIs.

Every photo has two names: ``path``, as the user gave it (what the outputs report, as
``edge-smw rank`` does), and ``source``, where a worker on any node reads it (an absolute
local path or a URI). Object stores (``s3://``, ``gs://``, ...) go through ``pyarrow.fs``,
which takes credentials from the environment as the cloud SDKs do.
"""

from __future__ import annotations

import csv
import glob
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_smw.errors import ImageReadError, InputError
from edge_smw.images import is_image_path

LIST_SUFFIXES = (".csv", ".parquet")
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Photo:
    path: str  # as reported
    source: str  # where it is read: an absolute local path or a URI


def is_uri(text: str) -> bool:
    return "://" in text


def list_photos(inputs: Iterable[str | os.PathLike[str]], *,
                exclude: str | os.PathLike[str] | None = None) -> list[Photo]:
    """Every photo named by ``inputs``, in a stable order, duplicates dropped.

    An input is a folder (searched recursively for image files, dot-files skipped), an image
    file, a glob (``photos/**/*.jpg``), a ``.csv`` or ``.parquet`` list with a ``path``
    column (relative paths are relative to the list), or a URI of a file or a prefix
    (``s3://bucket/photos/``). ``exclude`` is a local folder to leave out (a report folder
    inside the album).
    """
    from edge_smw.rank import collect_images

    found: list[Photo] = []
    for item in inputs:
        text = os.fspath(item)
        if is_uri(text):
            found.extend(_list_uri(text))
        elif Path(text).is_file() and Path(text).suffix.lower() in LIST_SUFFIXES:
            found.extend(_read_list(Path(text)))
        elif not Path(text).exists() and _GLOB_CHARS & set(text):
            matches = sorted(m for m in glob.glob(text, recursive=True) if Path(m).is_file())
            if not matches:
                raise InputError(f"{text} matches no files; check the pattern (quote it so the "
                                 "shell does not expand it)")
            found.extend(_local(m) for m in matches)
        else:
            found.extend(_local(p) for p in collect_images([text], exclude=exclude))
    unique = list(dict.fromkeys(found))
    if not unique:
        raise InputError("no photos found in what was given; pass folders, image files, a "
                         "glob, a CSV/Parquet list of paths or an s3:// / gs:// prefix")
    return unique


def _local(path: str | os.PathLike[str]) -> Photo:
    return Photo(str(path), str(Path(path).resolve()))


def _read_list(path: Path) -> list[Photo]:
    """A CSV or Parquet file listing photos in a ``path`` column."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
            if "path" not in schema.names:
                raise InputError(f"{path} has no 'path' column (columns: {schema.names}); list "
                                 "one photo per row in a column named path")
            names = pq.read_table(path, columns=["path"]).column("path").to_pylist()
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    else:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise InputError(f"{path} has no 'path' header (found {reader.fieldnames}); "
                                 "list one photo per row under a header named path")
            names = [row["path"] for row in reader]
    photos = []
    for name in names:
        if not name:
            continue
        name = str(name).strip()
        if is_uri(name):
            photos.append(Photo(name, name))
        else:
            full = Path(name) if Path(name).is_absolute() else path.parent / name
            photos.append(Photo(name, str(full.resolve())))
    return photos


def _list_uri(uri: str) -> list[Photo]:
    """A file or every image file under a prefix, through ``pyarrow.fs``."""
    import pyarrow.fs as pafs

    filesystem, root = _filesystem(uri)
    try:
        info = filesystem.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"{uri} does not exist (or the credentials in the environment "
                             "cannot see it)")
        if info.type == pafs.FileType.File:
            return [Photo(uri, uri)]
        entries = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    except OSError as exc:
        raise InputError(f"cannot list {uri}: {exc}") from None
    prefix = uri[: uri.index("://") + 3]
    photos = []
    for entry in sorted(entries, key=lambda e: e.path):
        relative = entry.path[len(root.rstrip("/")) + 1:]
        if (entry.type == pafs.FileType.File and is_image_path(entry.path)
                and not any(part.startswith(".") for part in relative.split("/"))):
            full = prefix + entry.path  # s3:// + bucket/key, file:// + /path
            photos.append(Photo(full, full))
    return photos


_filesystems: dict[str, Any] = {}
_filesystems_lock = threading.Lock()


def _filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it); one filesystem per bucket per process, since
    building one can cost a network round trip (S3 region lookup)."""
    import pyarrow.fs as pafs

    scheme, rest = uri.split("://", 1)
    key = f"{scheme}://{rest.split('/', 1)[0]}"
    with _filesystems_lock:
        filesystem = _filesystems.get(key)
    if filesystem is None:
        try:
            filesystem, _ = pafs.FileSystem.from_uri(uri)
        except (OSError, ValueError) as exc:
            raise InputError(f"{uri}: pyarrow.fs cannot open this location ({exc}); use s3://, "
                             "gs:// or file:// URIs, with credentials in the environment") \
                from None
        with _filesystems_lock:
            _filesystems[key] = filesystem
    return filesystem, rest  # s3/gs: bucket/key; file: /absolute/path


def read_source(photo: Photo) -> bytes:
    """A photo's bytes, or ``ImageReadError`` with the reason ``read_image`` would give."""
    source = photo.source
    try:
        if is_uri(source):
            import pyarrow.fs as pafs

            filesystem, path = _filesystem(source)
            info = filesystem.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise ImageReadError(photo.path, "file not found")
            if info.type == pafs.FileType.Directory:
                raise ImageReadError(photo.path, "is a folder, not an image")
            with filesystem.open_input_stream(path) as handle:
                return handle.read()
        if os.path.isdir(source):
            raise ImageReadError(photo.path, "is a folder, not an image")
        with open(source, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ImageReadError(photo.path, "file not found") from None
    except InputError:
        raise
    except OSError as exc:
        raise ImageReadError(photo.path, f"cannot be read ({exc.strerror or exc})") from None
