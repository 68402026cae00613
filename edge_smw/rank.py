"""Rank an album: score every photo, order by its best face, write a CSV and contact sheets.

The poster's "recommends top photos from an album". Torch-free (runtime side): photos are
scored by ``Runtime``; the contact sheets are an HTML page with thumbnail files beside it and
a PNG drawn with OpenCV. A photo that cannot be read, or has no face, is listed, never fatal.
"""

from __future__ import annotations

import csv
import hashlib
import html
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np

from edge_smw.atomic import atomic_open, write_text
from edge_smw.errors import ImageReadError, InputError
from edge_smw.images import is_image_path, read_image, write_image
from edge_smw.runtime.runtime import FaceScore, Runtime

THUMB_SIDE = 200  # thumbnails' long side, pixels
SHEET_COLUMNS = 5


@dataclass
class PhotoScore:
    """One photo: its faces' scores, or why it has none."""

    path: Path | str  # a URI stays a str (Path would fold its "//")
    faces: list[FaceScore] = field(default_factory=list)
    error: str | None = None  # unreadable: the reason
    thumb: np.ndarray | None = None  # small BGR thumbnail, best face boxed (for reports)

    @property
    def best(self) -> FaceScore | None:
        return max(self.faces, key=lambda f: f.expected_score) if self.faces else None

    @property
    def score(self) -> float | None:
        best = self.best
        return None if best is None else best.expected_score

    @property
    def status(self) -> str:
        if self.error is not None:
            return "unreadable"
        return "ok" if self.faces else "no face"

    def to_dict(self) -> dict:
        return {"path": str(self.path), "faces": [f.to_dict() for f in self.faces],
                "error": self.error}

    def records(self) -> list[dict]:
        """One flat record per face (``face`` counts from 1, largest first); a photo with no
        scorable face gives one record with ``face`` null, its status and error."""
        if not self.faces:
            return [{"path": str(self.path), "face": None, "status": self.status,
                     "error": self.error}]
        return [{"path": str(self.path), "face": i, **face.to_dict()}
                for i, face in enumerate(self.faces, 1)]


@dataclass
class AlbumRanking:
    """Photos with faces, best first; the rest listed by why they were left out."""

    ranked: list[PhotoScore]
    no_face: list[PhotoScore]
    unreadable: list[PhotoScore]
    levels: tuple[str, ...]

    @property
    def all(self) -> list[PhotoScore]:
        return self.ranked + self.no_face + self.unreadable

    @classmethod
    def of(cls, photos: Iterable[PhotoScore], levels: Sequence[str]) -> AlbumRanking:
        """Order scored photos: best face's expected score first; ties go to the more
        confident best face, then to the path, so the order is stable."""
        photos = list(photos)
        ranked = [p for p in photos if p.faces]
        ranked.sort(key=lambda p: (-p.score, -float(p.best.probabilities.max()), str(p.path)))
        return cls(
            ranked=ranked,
            no_face=[p for p in photos if p.error is None and not p.faces],
            unreadable=[p for p in photos if p.error is not None],
            levels=tuple(levels),
        )


def collect_images(inputs: Iterable[str | os.PathLike[str]], *,
                   exclude: str | os.PathLike[str] | None = None) -> list[Path]:
    """Files as given (whatever their suffix), plus image files found under folders.

    A name that does not exist is a user error (a typo), unlike a file that exists but
    cannot be decoded, which is reported per file later. ``exclude`` is a folder to skip (a
    report folder inside the album must not be ranked on the next run).
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(
                p for p in path.rglob("*")
                if p.is_file() and is_image_path(p) and not _hidden(p, path)
                and not (skip is not None and p.resolve().is_relative_to(skip))
            ))
        elif path.exists():
            found.append(path)
        else:
            raise InputError(f"{path} does not exist; pass image files or folders of images")
    if not found:
        raise InputError("no image files (.jpg, .png, .webp, ...) found in what was given; "
                         "pass image files or folders of images")
    return found


def _hidden(path: Path, root: Path) -> bool:
    """Dot-files and dot-folders (our own atomic temporaries among them) are not photos."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def score_photos(runtime: Runtime, paths: Sequence[Path], *, progress: bool = False,
                 thumbnails: bool = False) -> Iterator[PhotoScore]:
    """Score each photo; unreadable files yield an entry with ``error`` instead of raising.

    ``thumbnails`` keeps a small thumbnail per photo (not the photo: albums are large).
    """
    from tqdm.auto import tqdm

    for path in tqdm(paths, desc="scoring", unit="photo", disable=not progress or None,
                     leave=False):
        try:
            image = read_image(path)
        except ImageReadError as exc:
            yield PhotoScore(path, error=exc.reason)
            continue
        photo = PhotoScore(path, runtime.score(image).faces)
        if thumbnails:
            photo.thumb = make_thumbnail(image, photo.best)
        yield photo


def rank_album(runtime: Runtime, inputs: Iterable[str | os.PathLike[str]], *,
               progress: bool = False, thumbnails: bool = False,
               exclude: str | os.PathLike[str] | None = None) -> AlbumRanking:
    """Score every photo under ``inputs`` and order them by their best face's expected score."""
    photos = list(score_photos(runtime, collect_images(inputs, exclude=exclude),
                               progress=progress,
                               thumbnails=thumbnails))
    return AlbumRanking.of(photos, runtime.levels)


# -- reports --------------------------------------------------------------------------------
def write_csv(ranking: AlbumRanking, path: str | os.PathLike[str]) -> Path:
    """Every photo: ranked ones first with their best face, then the ones left out and why."""
    header = ["rank", "path", "status", "expected_score", "level", "faces", "box"]
    header += [f"p_{level}" for level in ranking.levels] + ["error"]
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i, photo in enumerate(ranking.all, 1):
            best = photo.best
            probs = ([f"{p:.6f}" for p in best.probabilities] if best is not None
                     else [""] * len(ranking.levels))
            writer.writerow([
                i if best is not None else "",
                str(photo.path),
                photo.status,
                f"{best.expected_score:.4f}" if best is not None else "",
                best.level_name if best is not None else "",
                len(photo.faces),
                " ".join(str(v) for v in best.box) if best is not None and best.box else "",
                *probs,
                photo.error or "",
            ])
    return Path(path)


def make_thumbnail(image: np.ndarray, best: FaceScore | None,
                   side: int = THUMB_SIDE) -> np.ndarray:
    """``image`` shrunk to ``side`` on its long side, the ``best`` face boxed."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    thumb = cv2.resize(image, size, interpolation=interp)
    if best is not None and best.box is not None:
        x, y, bw, bh = (round(v * scale) for v in best.box)
        cv2.rectangle(thumb, (x, y), (x + bw, y + bh), (60, 200, 60), 2)
    return thumb


def write_report(ranking: AlbumRanking, out_dir: str | os.PathLike[str], *,
                 top: int | None = None, title: str = "edge-smw album ranking") -> dict[str, Path]:
    """``ranking.csv`` (every photo), ``contact_sheet.html`` + ``thumbs/`` and
    ``contact_sheet.png`` (the ``top`` best, all if None). Every file is written atomically."""
    if top is not None and top < 1:
        raise InputError(f"--top must be >= 1, got {top}")
    out = Path(out_dir)
    shown = ranking.ranked[:top] if top else ranking.ranked
    thumbs: list[tuple[PhotoScore, np.ndarray, str]] = []
    for i, photo in enumerate(shown, 1):
        thumb = photo.thumb
        if thumb is None:
            thumb = make_thumbnail(read_image(photo.path), photo.best)
        digest = hashlib.sha1(str(photo.path).encode()).hexdigest()[:8]
        name = f"thumbs/{i:04d}_{digest}.jpg"
        write_image(out / name, thumb)
        thumbs.append((photo, thumb, name))
    _remove_stale_thumbs(out / "thumbs", {name for _, _, name in thumbs})
    paths = {
        "csv": write_csv(ranking, out / "ranking.csv"),
        "html": write_text(out / "contact_sheet.html", _html(ranking, thumbs, title)),
        "png": write_image(out / "contact_sheet.png", _sheet(thumbs, len(ranking.levels))),
    }
    return paths


_THUMB_NAME = re.compile(r"\d{4}_[0-9a-f]{8}\.jpg")


def _remove_stale_thumbs(folder: Path, keep: set[str]) -> None:
    """Thumbnails an earlier report wrote into this folder and this one does not show."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if _THUMB_NAME.fullmatch(path.name) and f"thumbs/{path.name}" not in keep:
            path.unlink(missing_ok=True)


def _html(ranking: AlbumRanking, thumbs: list[tuple[PhotoScore, np.ndarray, str]],
          title: str) -> str:
    e = html.escape
    cells = []
    for i, (photo, _, name) in enumerate(thumbs, 1):
        best = photo.best
        assert best is not None
        probs = ", ".join(f"{e(level)} {p:.2f}"
                          for level, p in zip(ranking.levels, best.probabilities, strict=True))
        cells.append(
            f'<figure><img src="{e(quote(name))}" alt="{e(Path(photo.path).name)}">'
            f"<figcaption><b>#{i}</b> score {best.expected_score:.2f} "
            f"({e(best.level_name)}; {probs})<br><span class=p>{e(str(photo.path))}</span>"
            f"</figcaption></figure>"
        )
    left_out = [f"<li>{e(str(p.path))}: no face found</li>" for p in ranking.no_face]
    left_out += [f"<li>{e(str(p.path))}: unreadable ({e(p.error or '')})</li>"
                 for p in ranking.unreadable]
    levels = " &lt; ".join(e(level) for level in ranking.levels)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
main {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; width: {THUMB_SIDE + 20}px; }}
img {{ max-width: {THUMB_SIDE}px; max-height: {THUMB_SIDE}px; display: block; }}
figcaption {{ font-size: 0.85em; }}
.p {{ color: #666; word-break: break-all; }}
</style></head><body>
<h1>{e(title)}</h1>
<p>{len(ranking.ranked)} photo(s) with faces, ranked by their best face's expected score
(levels {levels}); showing {len(thumbs)}.</p>
<main>
{chr(10).join(cells)}
</main>
<h2>Left out ({len(left_out)})</h2>
<ul>
{chr(10).join(left_out) or "<li>none</li>"}
</ul>
</body></html>
"""


def _sheet(thumbs: list[tuple[PhotoScore, np.ndarray, str]], num_levels: int) -> np.ndarray:
    """A grid of thumbnails with rank and score under each (OpenCV; ASCII captions)."""
    cell_w, cell_h, caption = THUMB_SIDE + 16, THUMB_SIDE + 52, 40
    columns = max(1, min(SHEET_COLUMNS, len(thumbs)))
    rows = max(1, -(-len(thumbs) // columns))
    sheet = np.full((rows * cell_h, columns * cell_w, 3), 255, np.uint8)
    if not thumbs:
        cv2.putText(sheet, "no faces found", (10, cell_h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (0, 0, 0), 1, cv2.LINE_AA)
        return sheet
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i, (photo, thumb, _) in enumerate(thumbs):
        row, col = divmod(i, columns)
        x0, y0 = col * cell_w + 8, row * cell_h + 4
        h, w = thumb.shape[:2]
        ox, oy = x0 + (THUMB_SIDE - w) // 2, y0 + (THUMB_SIDE - h) // 2
        sheet[oy : oy + h, ox : ox + w] = thumb
        best = photo.best
        assert best is not None
        text = f"#{i + 1} {best.expected_score:.2f}/{num_levels} {best.level_name}"
        name = Path(photo.path).name.encode("ascii", "replace").decode()
        if len(name) > 28:
            name = name[:25] + "..."
        base = y0 + THUMB_SIDE + caption // 2
        cv2.putText(sheet, _ascii(text), (x0, base), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(sheet, name, (x0, base + 16), font, 0.4, (90, 90, 90), 1, cv2.LINE_AA)
    return sheet


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode()
