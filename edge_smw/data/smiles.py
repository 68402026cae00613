"""SMILEsmileD: a public, human-labelled set of real face crops (smiling / not smiling).

Why it is here: the toolkit needs real faces (not synthetic ones) to check INT8
calibration, export parity and robustness. ``fetch_smiles`` returns a folder with one
sub-folder per level (``not_smiling/``, ``smiling/``) that the folder data loader reads
with ``levels=SMILES_LEVELS``.

Where it comes from, in order:

* ``from_dir``: a copy the user brought (``--from DIR``), either already in level layout
  or the original repository layout (a clone / unpacked archive with
  ``SMILEs/positives/positives7`` and ``SMILEs/negatives/negatives7``);
* the cache, when an earlier download was verified there;
* a download of the pinned GitHub archive.

Every copy is checked the same way: a few pinned files must exist in the right level with
the right SHA-256 (GitHub archive zips are not byte-stable, so the content is checked, not
the zip), and each level must hold a minimum number of images.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path

from tqdm import tqdm

from edge_smw.atomic import atomic_path, write_json
from edge_smw.errors import DataError, OfflineError

__all__ = [
    "KNOWN_FILES",
    "MIN_PER_LEVEL",
    "SMILES_COMMIT",
    "SMILES_LEVELS",
    "SMILES_REPO_URL",
    "SMILES_URL",
    "fetch_smiles",
    "find_shared_smiles",
    "install_smiles",
    "resolve_smiles_dir",
    "verify_smiles",
]

SMILES_REPO_URL = "https://github.com/hromi/SMILEsmileD"
# Pinned commit of hromi/SMILEsmileD. It is the commit at which an index of the repository's
# files records every image under SMILEs/ (each image has a single stored version there), so
# the images are present at it. It could not be checked against GitHub itself from the
# machine this was written on (no access); the content check below is what guards the data.
SMILES_COMMIT = "d086cf70c8918ac71da012d948b207abc4b11478"
SMILES_URL = f"{SMILES_REPO_URL}/archive/{SMILES_COMMIT}.zip"

# Ordered: not_smiling < smiling.
SMILES_LEVELS: tuple[str, ...] = ("not_smiling", "smiling")

# Where each level's images live in the original repository.
REPO_LEVEL_DIRS: dict[str, tuple[str, ...]] = {
    "not_smiling": ("SMILEs", "negatives", "negatives7"),
    "smiling": ("SMILEs", "positives", "positives7"),
}

# Minimum images per level. The full repository is published with 9475 negatives and 3690
# positives; the floor is the size of the smaller curated share of it (7112 / 2817) so both
# pass, while a truncated download or half-finished copy does not.
MIN_PER_LEVEL: dict[str, int] = {"not_smiling": 7112, "smiling": 2817}

# A few pinned files: name -> (level, sha256 of the file's bytes). Every name is present in
# the repository under the matching folder (positives7 -> smiling, negatives7 -> not_smiling).
KNOWN_FILES: dict[str, tuple[str, str]] = {
    "3.jpg": ("smiling", "1fb919c58d076b1fa6eb9714691ded4e35a927193f53687f0408ac1c534e96e1"),
    "100.jpg": ("smiling", "31c97d4ffc043daa15e9786304e6ff0feea34224a569c36e50d05cc527847faa"),
    "1000.jpg": ("smiling", "9115cf6c8b44985fdb7fe0621d958d04e7b45d345143a7c0b392336409e5e6eb"),
    "10007.jpg": (
        "smiling", "c0011a98c6091c598b51e871bbf3c51271fb08b04f529f98995c5f303b20e74f"
    ),
    "4.jpg": ("not_smiling", "2e8231ef9949374af7c8e71fc8b8792a8a91f9cdea8f2a0fa853365769fcea7a"),
    "1001.jpg": (
        "not_smiling", "1aca48dc58c5fc1965eab8bbe87d8c07ec49e10ae0a294e8823e5632e84dc8f5"
    ),
    "10000.jpg": (
        "not_smiling", "c1b0a52e05d344dc17f98269180af03fbcced672b7cdb2e9139b26204e5ccea4"
    ),
    "10001.jpg": (
        "not_smiling", "59716ed5619bb6bccfb6a87f0139b1ad64b0b6e0b5d4c8f546ff47fe6f0c1697"
    ),
}

DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK = 1 << 16
_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg"})
_MARKER_SUFFIX = ".verified.json"

# level -> {file name -> path}
LevelFiles = dict[str, dict[str, Path]]


SMILES_DIR_ENV = "EDGE_SMW_SMILES_DIR"
GET_SMILES_COMMAND = "edge-smw data smiles"
LOCAL_COPY_NAME = "SMILEsmileD-local"


def default_cache_dir() -> Path:
    """The cache root: ``$EDGE_SMW_CACHE`` or ``~/.cache/edge-smw``, plus ``smiles``."""
    from edge_smw.cache import cache_root

    return cache_root() / "smiles"


def find_shared_smiles() -> Path | None:
    """The development share at ``../shared/data/smilesmiled`` beside a source checkout."""
    project_root = Path(__file__).resolve().parents[2]
    shared = project_root.parent / "shared" / "data" / "smilesmiled"
    return shared if shared.is_dir() else None


def resolve_smiles_dir(*, download: bool = False, progress: bool = True,
                       cache_dir: str | Path | None = None) -> tuple[Path, str] | None:
    """The one resolver for real faces: (verified level folder, where it came from), or None.

    In order: ``$EDGE_SMW_SMILES_DIR``; ``../shared/data/smilesmiled`` beside a source
    checkout; a verified copy in the user cache (a download, or one installed with
    ``edge-smw data smiles --from DIR``); and, with ``download``, the pinned archive fetched and
    verified now. A variable that names a bad copy is an error, never silently skipped.
    ``cache_dir`` overrides the user cache's ``smiles`` folder.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    env = os.environ.get(SMILES_DIR_ENV)
    if env:
        try:
            return fetch_smiles(from_dir=env, cache_dir=cache, progress=progress), SMILES_DIR_ENV
        except DataError as exc:
            reason = str(exc).replace(f"--from {env}: ", "")
            raise DataError(f"${SMILES_DIR_ENV}={env}: {reason}") from None
    shared = find_shared_smiles()
    if shared is not None:
        verify_smiles(shared)
        return shared, "../shared/data/smilesmiled"
    for name in (LOCAL_COPY_NAME, _cache_name(SMILES_URL)):
        folder = cache / name
        if (cache / f"{name}{_MARKER_SUFFIX}").is_file() and _collect_level_layout(folder):
            return folder, f"the user cache ({folder})"
    if download:
        return fetch_smiles(cache_dir=cache, progress=progress), f"a download of {SMILES_URL}"
    return None


def install_smiles(from_dir: str | Path, *, progress: bool = True) -> Path:
    """Verify a copy the user brought and copy it into the user cache in level layout, where
    the resolver finds it from then on (no network needed)."""
    cache = default_cache_dir()
    source = fetch_smiles(from_dir=from_dir, cache_dir=cache, progress=progress)
    files = _collect_level_layout(source)
    assert files is not None  # fetch_smiles returns level layout
    target = cache / LOCAL_COPY_NAME
    marker = cache / f"{LOCAL_COPY_NAME}{_MARKER_SUFFIX}"
    _mkdir(cache)
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()
    work = Path(tempfile.mkdtemp(prefix=f".{LOCAL_COPY_NAME}.", dir=cache))
    try:
        for level in SMILES_LEVELS:
            (work / level).mkdir()
            for name, src in tqdm(sorted(files[level].items()), desc=f"copy {level}",
                                  disable=not progress, leave=False):
                shutil.copyfile(src, work / level / name)
        _swap_into_place(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    write_json(marker, {"dataset": "SMILEsmileD", "source": str(Path(from_dir).resolve()),
                        "counts": {level: len(files[level]) for level in SMILES_LEVELS},
                        "known_files_verified": len(KNOWN_FILES),
                        "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return target


def fetch_smiles(
    *,
    from_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    url: str | None = None,
    min_per_level: int | Mapping[str, int] | None = None,
) -> Path:
    """Return a verified folder with one sub-folder per level of ``SMILES_LEVELS``.

    ``from_dir`` is used instead of the network (level layout is returned as is, repository
    layout gets a level view in the cache). Without it, a verified cached copy is reused or
    the pinned archive is downloaded. ``min_per_level`` overrides ``MIN_PER_LEVEL`` (a number
    for every level, or a mapping). Raises ``DataError`` or ``OfflineError``.
    """
    minimum = _minimums(min_per_level)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if from_dir is not None:
        return _from_dir(Path(from_dir), cache_root, minimum)
    return _from_download(url or SMILES_URL, cache_root, minimum, progress)


def verify_smiles(
    folder: str | Path, *, min_per_level: int | Mapping[str, int] | None = None
) -> dict[str, int]:
    """Verify a folder in level layout; return the image count per level."""
    folder = Path(folder)
    files = _collect_level_layout(folder)
    if files is None:
        raise DataError(f"{folder}: expected sub-folders {list(SMILES_LEVELS)}")
    _verify(files, _minimums(min_per_level), folder, _recopy_hint(folder))
    return {level: len(files[level]) for level in SMILES_LEVELS}


# -- from a folder the user brought --------------------------------------------------------
def _from_dir(from_dir: Path, cache_root: Path, minimum: dict[str, int]) -> Path:
    if not from_dir.is_dir():
        raise DataError(f"--from {from_dir}: no such folder; {_layouts_text()}")
    files = _collect_level_layout(from_dir)
    if files is not None:
        extra = sorted(
            p.name
            for p in from_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name not in SMILES_LEVELS
        )
        if extra:
            raise DataError(
                f"--from {from_dir}: besides {list(SMILES_LEVELS)} it has other sub-folders "
                f"{extra}; a level folder must hold only the level sub-folders, so move them out"
            )
        _verify(files, minimum, from_dir, _recopy_hint(from_dir))
        return from_dir
    repo_root = _find_repo_root(from_dir)
    if repo_root is None:
        raise DataError(f"--from {from_dir}: not a SMILEsmileD copy; {_layouts_text()}")
    files = _collect_repo_layout(repo_root)
    _verify(files, minimum, repo_root, _recopy_hint(repo_root))
    key = hashlib.sha256(str(repo_root.resolve()).encode()).hexdigest()[:16]
    return _build_view(files, cache_root / f"view-{key}")


def _layouts_text() -> str:
    return (
        f"give either a folder with sub-folders {list(SMILES_LEVELS)} of jpgs, or a clone / "
        f"unpacked archive of {SMILES_REPO_URL} (with SMILEs/positives/positives7 and "
        "SMILEs/negatives/negatives7)"
    )


def _recopy_hint(folder: Path) -> str:
    return f"copy {folder} again from {SMILES_REPO_URL} (or the share it came from)"


def _build_view(files: LevelFiles, target: Path) -> Path:
    """Build a level folder of symlinks (copies where symlinks fail) and swap it in whole."""
    _mkdir(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        use_links = True
        for level in SMILES_LEVELS:
            (tmp / level).mkdir()
            for name, src in files[level].items():
                dst = tmp / level / name
                if use_links:
                    try:
                        os.symlink(src.resolve(), dst)
                        continue
                    except OSError:
                        use_links = False
                shutil.copy2(src, dst)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _swap_into_place(new: Path, target: Path) -> None:
    """Replace ``target`` by the finished folder ``new`` (renames only)."""
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.rename(target, old / "x")
    os.rename(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- download and cache --------------------------------------------------------------------
def _from_download(url: str, cache_root: Path, minimum: dict[str, int], progress: bool) -> Path:
    final = cache_root / _cache_name(url)
    marker = cache_root / f"{final.name}{_MARKER_SUFFIX}"
    if marker.is_file() and all((final / level).is_dir() for level in SMILES_LEVELS):
        return final
    _mkdir(cache_root)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache_root))
    try:
        archive = work / "archive.zip"
        _download(url, archive, progress)
        unpacked = work / "unpacked"
        _unpack(archive, unpacked, url)
        archive.unlink()
        repo_root = _find_repo_root(unpacked)
        if repo_root is None:
            raise DataError(
                f"the archive from {url} holds no SMILEs/positives/positives7 and "
                f"SMILEs/negatives/negatives7; {_manual_hint()}"
            )
        files = _collect_repo_layout(repo_root)
        hint = f"the download from {url} is not the expected content; {_manual_hint()}"
        _verify(files, minimum, repo_root, hint)
        levels = work / "levels"
        for level in SMILES_LEVELS:
            (levels / level).mkdir(parents=True)
            for name, src in files[level].items():
                os.replace(src, levels / level / name)
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()  # a marker without its folder, or a stale one
        _swap_into_place(levels, final)
        write_json(marker, {
            "dataset": "SMILEsmileD",
            "url": url,
            "commit": SMILES_COMMIT if url == SMILES_URL else None,
            "counts": {level: len(files[level]) for level in SMILES_LEVELS},
            "known_files_verified": len(KNOWN_FILES),
            "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _cache_name(url: str) -> str:
    """Folder name of a cached copy: the pinned commit, or a hash of a custom URL."""
    if url == SMILES_URL:
        return f"SMILEsmileD-{SMILES_COMMIT}"
    return f"SMILEsmileD-url-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def _manual_hint() -> str:
    return (
        f"on a machine with internet, clone or download {SMILES_REPO_URL} (git clone "
        f"{SMILES_REPO_URL}.git, or the zip {SMILES_URL}), copy it over and pass --from DIR"
    )


def _offline_error(url: str, exc: BaseException) -> OfflineError:
    if isinstance(exc, urllib.error.HTTPError):
        reason = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        reason = str(exc.reason)
    else:
        reason = str(exc) or type(exc).__name__
    return OfflineError(f"downloading SMILEsmileD from {url} failed ({reason}); {_manual_hint()}")


def _download(url: str, target: Path, progress: bool) -> None:
    """Stream ``url`` into ``target`` atomically, with a progress bar."""
    request = urllib.request.Request(url, headers={"User-Agent": "edge-smw"})
    try:
        response = urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S)
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
        raise _offline_error(url, exc) from exc
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    with (
        response,
        atomic_path(target) as tmp,
        open(tmp, "wb") as out,
        tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
             desc="SMILEsmileD", disable=not progress) as bar,
    ):
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _offline_error(url, exc) from exc
            if not chunk:
                break
            out.write(chunk)
            bar.update(len(chunk))


def _unpack(archive: Path, dest: Path, url: str) -> None:
    """Extract only the image folders (zipfile strips absolute and ``..`` member paths)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.namelist() if "SMILEs/" in m and not m.endswith("/")]
            zf.extractall(dest, members=members)
    except zipfile.BadZipFile as exc:
        raise DataError(f"the file downloaded from {url} is not a zip archive ({exc}); "
                        f"try again, or {_manual_hint()}") from exc


# -- layouts and verification --------------------------------------------------------------
def _images_in(folder: Path) -> dict[str, Path]:
    return {
        p.name: p
        for p in folder.iterdir()
        if p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    }


def _collect_level_layout(root: Path) -> LevelFiles | None:
    if not all((root / level).is_dir() for level in SMILES_LEVELS):
        return None
    return {level: _images_in(root / level) for level in SMILES_LEVELS}


def _find_repo_root(folder: Path) -> Path | None:
    """``folder`` itself or one sub-folder of it (an unpacked ``SMILEsmileD-<ref>/``)."""
    candidates = [folder] + sorted(p for p in folder.iterdir() if p.is_dir())
    for candidate in candidates:
        if all(candidate.joinpath(*parts).is_dir() for parts in REPO_LEVEL_DIRS.values()):
            return candidate
    return None


def _collect_repo_layout(repo_root: Path) -> LevelFiles:
    return {level: _images_in(repo_root.joinpath(*REPO_LEVEL_DIRS[level]))
            for level in SMILES_LEVELS}


def _minimums(min_per_level: int | Mapping[str, int] | None) -> dict[str, int]:
    if min_per_level is None:
        return dict(MIN_PER_LEVEL)
    if isinstance(min_per_level, int):
        return {level: min_per_level for level in SMILES_LEVELS}
    return {level: int(min_per_level.get(level, MIN_PER_LEVEL[level])) for level in SMILES_LEVELS}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(files: LevelFiles, minimum: dict[str, int], source: Path, hint: str) -> None:
    """Pinned files present, in the right level, with the pinned SHA-256; enough per level."""
    for name, (level, expected) in KNOWN_FILES.items():
        path = files[level].get(name)
        if path is None:
            elsewhere = [other for other in SMILES_LEVELS if name in files[other]]
            where = f"it is under {elsewhere[0]!r} instead (labels swapped?)" if elsewhere else (
                "it is missing")
            raise DataError(f"{source}: SMILEsmileD file {name} should be under level "
                            f"{level!r} but {where}; {hint}")
        actual = _sha256(path)
        if actual != expected:
            raise DataError(f"{path}: content differs from the SMILEsmileD original (sha256 "
                            f"{actual}, expected {expected}); the copy is damaged or altered; "
                            f"{hint}")
    for level in SMILES_LEVELS:
        count = len(files[level])
        if count < minimum[level]:
            raise DataError(f"{source}: only {count} images for level {level!r}, expected at "
                            f"least {minimum[level]}; the copy is incomplete; {hint}")


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the cache folder {folder}: {exc.strerror or exc}; "
                        "set EDGE_SMW_CACHE or pass a writable cache folder") from exc
