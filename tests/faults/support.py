"""Tools to inject faults for real: tmpfs mounts that fill up or turn read-only, raw sockets
that misbehave, and images built to exhaust a decoder.

``mount`` needs root (CI runs as root); tests that need it skip with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from tests.serve_support import get_footage
from tests.skips import skip_for_machine


def footage_fixture(smiles_dir, smiles_onnx, tmp_path_factory):
    """The shared face footage (one per session; see tests/serve_support.py)."""
    return get_footage(smiles_dir, smiles_onnx, lambda: tmp_path_factory.mktemp("footage"))


# -- storage -----------------------------------------------------------------------------------
def _why_no_mount() -> str | None:
    if not shutil.which("mount") or not shutil.which("umount"):
        return "mount/umount are not installed"
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root (CI runs these as root)"
    return None


class Tmpfs:
    """A small tmpfs mounted at ``path``: fill it, remount it read-only and back."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        self.size = size

    def _mount(self, *args: str) -> None:
        proc = subprocess.run(["mount", *args], capture_output=True, text=True, check=False,
                              timeout=30)
        if proc.returncode != 0:
            raise OSError(f"mount {' '.join(args)} failed: {proc.stderr.strip()}")

    def read_only(self) -> None:
        self._mount("-o", "remount,ro", str(self.path))

    def read_write(self) -> None:
        self._mount("-o", "remount,rw", str(self.path))

    def fill(self) -> Path:
        """Write a file until the disk is full (ENOSPC); return it (delete it to free)."""
        filler = self.path / "filler.bin"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for size in (1 << 20, 1 << 12, 1):  # big blocks, then the last bytes
                block = b"\0" * size
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, block)
        finally:
            os.close(fd)
        return filler


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "64m") -> Iterator[Tmpfs]:
    """Mount a tmpfs of ``size`` at ``path`` (skip the test when that is not possible);
    always unmounted at the end, read-write first so nothing keeps it busy."""
    reason = _why_no_mount()
    if reason:  # a machine without root (or a container without CAP_SYS_ADMIN)
        skip_for_machine(reason)
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(path)], capture_output=True, text=True, check=False, timeout=30)
    if proc.returncode != 0:
        skip_for_machine(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    fs = Tmpfs(path, size)
    try:
        yield fs
    finally:
        with contextlib.suppress(OSError):
            fs.read_write()
        done = subprocess.run(["umount", str(path)], capture_output=True, check=False,
                              timeout=30)
        if done.returncode != 0:  # still busy (a process we started is ending): detach it
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False,
                           timeout=30)


def temp_files(folder: Path) -> list[str]:
    """Names in ``folder`` that are temporary files of edge_smw.atomic (should be none)."""
    from edge_smw.atomic import temp_target

    return sorted(p.name for p in folder.iterdir() if temp_target(p.name) is not None)


def complete_captures(folder: Path) -> list[str]:
    """Capture names whose sidecar parses and whose JPEG decodes; fails on a half capture."""
    names = []
    for sidecar in sorted(folder.glob("*.json")):
        data = json.loads(sidecar.read_text())
        image = cv2.imread(str(sidecar.with_suffix(".jpg")))
        assert image is not None, f"{sidecar.name} lists an image that does not decode"
        assert image.shape[:2] == (data["height"], data["width"]), sidecar.name
        names.append(sidecar.stem)
    return names


def plant_temp_leftovers(folder: Path, target_names: list[str]) -> tuple[list[Path], list[Path]]:
    """What a kill -9 in the middle of atomic writes leaves, plus files that only look alike.

    Returns (ours: must be swept, foreign: must be kept).
    """
    ours = []
    for name in target_names:
        path = folder / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        path.write_bytes(b"\xff\xd8 half a JPEG")
        ours.append(path)
    foreign = [folder / "notes.tmp", folder / ".keep", folder / ".other.tmp.bak",
               folder / "holiday.jpg.abcd1234.tmp", folder / ".holiday.jpg.abcd1234.tmp"]
    for path in foreign:
        path.write_text("not edge-smw's")
    return ours, foreign


# -- sockets -----------------------------------------------------------------------------------
def raw_request(port: int, data: bytes, *, timeout: float = 10.0,
                host: str = "127.0.0.1") -> bytes:
    """Send raw bytes, return whatever comes back until the server closes or goes quiet."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, OSError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
    return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP response (0 when the server sent nothing)."""
    if not response:
        return 0
    return int(response.split(b"\r\n", 1)[0].split(b" ")[1])


# -- decoder bombs -----------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bomb(width: int, height: int, *, color_type: int = 2) -> bytes:
    """A valid PNG of ``width`` x ``height`` zero pixels (8-bit; colour type 2 = RGB,
    0 = grey), compressed row by row so it is built in little memory: 79 megapixels of RGB
    come to about 230 KB."""
    channels = {0: 1, 2: 3, 6: 4}[color_type]
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + width * channels)  # filter byte 0, then the pixels
    parts = []
    for _ in range(height):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts))
            + _chunk(b"IEND", b""))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels and carries almost no data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))


def gif_header_only(width: int, height: int) -> bytes:
    """A GIF whose screen and frame claim ``width`` x ``height`` (at most 65535 each)."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return screen + frame + b"\x02\x02\x44\x01\x00\x3b"


def jpeg_with_size(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header is patched to claim ``width`` x ``height``."""
    ok, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    at = data.index(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) height(2) width(2)
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)
