"""SMILEsmileD access: verification of brought copies, level views, offline behaviour.

Network traffic goes only to 127.0.0.1. Tests that need the real share skip where it is absent.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_smw.data.smiles import (
    KNOWN_FILES,
    SMILES_LEVELS,
    _cache_name,
    fetch_smiles,
    verify_smiles,
)
from edge_smw.errors import DataError, OfflineError

REPO_DIRS = {
    "smiling": ("SMILEs", "positives", "positives7"),
    "not_smiling": ("SMILEs", "negatives", "negatives7"),
}
EXTRA_PER_LEVEL = 3


@pytest.fixture(scope="module")
def share(smiles_dir: Path) -> Path:
    """A verified copy in level layout, found by the project's resolver."""
    return smiles_dir


def _pick(share: Path) -> dict[str, list[Path]]:
    """The pinned files plus a few more per level, taken from the share."""
    picked: dict[str, list[Path]] = {}
    for level in SMILES_LEVELS:
        known = [share / level / name for name, (lvl, _) in KNOWN_FILES.items() if lvl == level]
        others = sorted(p for p in (share / level).glob("*.jpg") if p.name not in KNOWN_FILES)
        picked[level] = known + others[:EXTRA_PER_LEVEL]
    return picked


def _fake_repo(share: Path, root: Path) -> tuple[Path, dict[str, list[Path]]]:
    """A tiny clone-like tree: SMILEs/positives/positives7, SMILEs/negatives/negatives7."""
    picked = _pick(share)
    for level, paths in picked.items():
        folder = root.joinpath(*REPO_DIRS[level])
        folder.mkdir(parents=True)
        for path in paths:
            shutil.copyfile(path, folder / path.name)
    (root / "README").write_text("SMILEsmileD\n")
    return root, picked


def test_share_layout_is_verified_and_returned_as_is(share: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert fetch_smiles(from_dir=share, cache_dir=cache, progress=False) == share
    assert not cache.exists()  # nothing built for a folder already in level layout
    counts = verify_smiles(share)
    assert counts == {"not_smiling": 7112, "smiling": 2817}


def test_repository_layout_gets_a_level_view(share: Path, tmp_path: Path) -> None:
    repo, picked = _fake_repo(share, tmp_path / "SMILEsmileD")
    view = fetch_smiles(from_dir=repo, cache_dir=tmp_path / "cache", progress=False,
                        min_per_level=2)
    assert view.is_relative_to(tmp_path / "cache")
    assert sorted(p.name for p in view.iterdir()) == sorted(SMILES_LEVELS)
    for level, paths in picked.items():
        names = sorted(p.name for p in (view / level).iterdir())
        assert names == sorted(p.name for p in paths)
        for path in paths:
            assert (view / level / path.name).read_bytes() == path.read_bytes()
    # Asking again rebuilds the view in place without leftovers beside it.
    again = fetch_smiles(from_dir=repo, cache_dir=tmp_path / "cache", progress=False,
                         min_per_level=2)
    assert again == view
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [view.name]


def test_unpacked_archive_folder_is_accepted(share: Path, tmp_path: Path) -> None:
    """A folder holding ``SMILEsmileD-master/`` (an unpacked zip) works like the clone."""
    _fake_repo(share, tmp_path / "download" / "SMILEsmileD-master")
    view = fetch_smiles(from_dir=tmp_path / "download", cache_dir=tmp_path / "cache",
                        progress=False, min_per_level=2)
    assert all((view / level).is_dir() for level in SMILES_LEVELS)


def test_too_few_images_is_refused(share: Path, tmp_path: Path) -> None:
    repo, _ = _fake_repo(share, tmp_path / "repo")
    with pytest.raises(DataError, match="only .* images for level"):
        fetch_smiles(from_dir=repo, cache_dir=tmp_path / "cache", progress=False)


def test_tampered_file_is_named(share: Path, tmp_path: Path) -> None:
    repo, _ = _fake_repo(share, tmp_path / "repo")
    name = next(n for n, (lvl, _) in KNOWN_FILES.items() if lvl == "not_smiling")
    victim = repo.joinpath(*REPO_DIRS["not_smiling"], name)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(DataError, match=name) as info:
        fetch_smiles(from_dir=repo, cache_dir=tmp_path / "cache", progress=False,
                     min_per_level=2)
    assert "sha256" in str(info.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_tampered_file_in_level_layout_is_named(share: Path, tmp_path: Path) -> None:
    picked = _pick(share)
    for level, paths in picked.items():
        (tmp_path / "levels" / level).mkdir(parents=True)
        for path in paths:
            shutil.copyfile(path, tmp_path / "levels" / level / path.name)
    name = next(n for n, (lvl, _) in KNOWN_FILES.items() if lvl == "smiling")
    victim = tmp_path / "levels" / "smiling" / name
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    with pytest.raises(DataError, match=name):
        fetch_smiles(from_dir=tmp_path / "levels", progress=False, min_per_level=2)


def test_swapped_label_is_refused(share: Path, tmp_path: Path) -> None:
    repo, _ = _fake_repo(share, tmp_path / "repo")
    name = next(n for n, (lvl, _) in KNOWN_FILES.items() if lvl == "smiling")
    src = repo.joinpath(*REPO_DIRS["smiling"], name)
    src.rename(repo.joinpath(*REPO_DIRS["not_smiling"], name))
    with pytest.raises(DataError, match="labels swapped"):
        fetch_smiles(from_dir=repo, cache_dir=tmp_path / "cache", progress=False,
                     min_per_level=2)


def test_folder_of_neither_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "photos" / "happy").mkdir(parents=True)
    with pytest.raises(DataError, match="not_smiling") as info:
        fetch_smiles(from_dir=tmp_path / "photos", cache_dir=tmp_path / "cache", progress=False)
    message = str(info.value)
    assert str(tmp_path / "photos") in message
    assert "SMILEs/positives/positives7" in message


def test_missing_from_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such folder"):
        fetch_smiles(from_dir=tmp_path / "nope", cache_dir=tmp_path / "cache", progress=False)


def test_offline_download_says_how_to_bring_a_copy(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(OfflineError) as info:
        fetch_smiles(cache_dir=cache, progress=False, url="http://127.0.0.1:9/nothing.zip")
    message = str(info.value)
    assert "--from" in message
    assert "failed" in message
    assert "https://github.com/hromi/SMILEsmileD" in message
    leftovers = [p for p in cache.rglob("*") if not p.is_dir()] if cache.exists() else []
    assert leftovers == []


def test_verified_cache_is_reused_without_network(share: Path, tmp_path: Path) -> None:
    """A cached copy with its marker is returned even when the URL is unreachable."""
    url = "http://127.0.0.1:9/nothing.zip"
    cache = tmp_path / "cache"
    with pytest.raises(OfflineError):
        fetch_smiles(cache_dir=cache, progress=False, url=url)
    # Plant a finished copy under the name a successful download would have used.
    final = cache / _cache_name(url)
    for level, paths in _pick(share).items():
        (final / level).mkdir(parents=True)
        for path in paths:
            shutil.copyfile(path, final / level / path.name)
    with pytest.raises(OfflineError):  # no marker yet: not trusted, so it tries to download
        fetch_smiles(cache_dir=cache, progress=False, url=url)
    (cache / f"{final.name}.verified.json").write_text("{}\n")
    assert fetch_smiles(cache_dir=cache, progress=False, url=url) == final


@pytest.fixture()
def local_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A throwaway HTTP server on 127.0.0.1 serving ``tmp_path / 'www'``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_download_unpacks_verifies_and_caches(
    share: Path, tmp_path: Path, local_server: tuple[str, Path]
) -> None:
    base, www = local_server
    repo, picked = _fake_repo(share, tmp_path / "src" / "SMILEsmileD-abc")
    with zipfile.ZipFile(www / "smiles.zip", "w") as zf:
        for path in sorted(repo.rglob("*")):
            zf.write(path, path.relative_to(repo.parent).as_posix())
    url = f"{base}/smiles.zip"
    cache = tmp_path / "cache"
    got = fetch_smiles(cache_dir=cache, progress=True, url=url, min_per_level=2)
    assert got == cache / _cache_name(url)
    assert sorted(p.name for p in got.iterdir()) == sorted(SMILES_LEVELS)
    for level, paths in picked.items():
        assert sorted(p.name for p in (got / level).iterdir()) == sorted(p.name for p in paths)
    marker = got.name + ".verified.json"
    assert sorted(p.name for p in cache.iterdir()) == sorted([got.name, marker])
    (www / "smiles.zip").unlink()  # a second call must not need the server
    assert fetch_smiles(cache_dir=cache, progress=False, url=url, min_per_level=2) == got


def test_download_of_wrong_content_leaves_nothing(
    share: Path, tmp_path: Path, local_server: tuple[str, Path]
) -> None:
    base, www = local_server
    (www / "junk.zip").write_bytes(b"not a zip at all")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="not a zip"):
        fetch_smiles(cache_dir=cache, progress=False, url=f"{base}/junk.zip", min_per_level=2)
    repo, _ = _fake_repo(share, tmp_path / "src" / "SMILEsmileD-abc")
    victim = next(repo.joinpath(*REPO_DIRS["smiling"]).glob("*.jpg"))
    victim.write_bytes(b"\xff\xd8" + victim.read_bytes()[2:-1])
    with zipfile.ZipFile(www / "bad.zip", "w") as zf:
        for path in sorted(repo.rglob("*")):
            zf.write(path, path.relative_to(repo.parent).as_posix())
    with pytest.raises(DataError):
        fetch_smiles(cache_dir=cache, progress=False, url=f"{base}/bad.zip", min_per_level=2)
    with pytest.raises(OfflineError, match="404"):
        fetch_smiles(cache_dir=cache, progress=False, url=f"{base}/missing.zip")
    assert [p for p in cache.rglob("*")] == []


def test_view_falls_back_to_copies_without_symlinks(
    share: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_symlinks(*args: object, **kwargs: object) -> None:
        raise OSError("symlinks not permitted here")

    monkeypatch.setattr("edge_smw.data.smiles.os.symlink", no_symlinks)
    repo, picked = _fake_repo(share, tmp_path / "repo")
    view = fetch_smiles(from_dir=repo, cache_dir=tmp_path / "cache", progress=False,
                        min_per_level=2)
    for level, paths in picked.items():
        for path in paths:
            copied = view / level / path.name
            assert not copied.is_symlink()
            assert copied.read_bytes() == path.read_bytes()


def test_cache_root_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_SMW_CACHE", str(tmp_path / "c"))
    with pytest.raises(OfflineError):
        fetch_smiles(progress=False, url="http://127.0.0.1:9/nothing.zip")
    assert (tmp_path / "c" / "smiles").is_dir()


# -- the one resolver --------------------------------------------------------------------------
def test_resolver_order_env_then_share_then_cache(share: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_smw.data.smiles as smiles

    cache = tmp_path / "cache"
    monkeypatch.setenv(smiles.SMILES_DIR_ENV, str(share))
    assert smiles.resolve_smiles_dir(cache_dir=cache, progress=False) == (
        share, smiles.SMILES_DIR_ENV)
    monkeypatch.setenv(smiles.SMILES_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"\$EDGE_SMW_SMILES_DIR=.*nowhere: no such folder"):
        smiles.resolve_smiles_dir(cache_dir=cache, progress=False)
    monkeypatch.delenv(smiles.SMILES_DIR_ENV)
    monkeypatch.setattr(smiles, "find_shared_smiles", lambda: None)
    assert smiles.resolve_smiles_dir(cache_dir=cache, progress=False) is None
    monkeypatch.setenv("EDGE_SMW_CACHE", str(tmp_path / "user"))
    installed = smiles.install_smiles(share, progress=False)
    assert installed == tmp_path / "user" / "smiles" / smiles.LOCAL_COPY_NAME
    assert smiles.verify_smiles(installed) == smiles.verify_smiles(share)
    folder, source = smiles.resolve_smiles_dir(progress=False)
    assert folder == installed and "user cache" in source


def _data_smiles(cache: Path, smiles_dir: Path) -> subprocess.CompletedProcess[str]:
    """`edge-smw data smiles --no-download` in a fresh process, with this cache and
    $EDGE_SMW_SMILES_DIR."""
    env = {**os.environ, "EDGE_SMW_CACHE": str(cache), "EDGE_SMW_SMILES_DIR": str(smiles_dir)}
    return subprocess.run([sys.executable, "-m", "edge_smw.cli.main", "data", "smiles",
                           "--no-download"], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_data_command_reports_where_the_crops_are(tmp_path: Path) -> None:
    done = _data_smiles(tmp_path / "empty-cache", tmp_path / "missing")
    assert done.returncode == 2 and "EDGE_SMW_SMILES_DIR" in done.stderr
    assert "Traceback" not in done.stderr


def test_data_command_names_the_crops_it_found_and_where_from(share: Path,
                                                              tmp_path: Path) -> None:
    done = _data_smiles(tmp_path / "empty-cache", share)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith(str(share)) and "(EDGE_SMW_SMILES_DIR;" in line
    for level in SMILES_LEVELS:
        count = len(list((share / level).glob("*.jpg")))
        assert f"{level} {count}" in line
