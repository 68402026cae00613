"""edge-smw rank."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_smw.cli.score import add_runtime_arguments, open_runtime

HELP = "rank an album's photos by their best face's score; write a CSV and contact sheets"
EXAMPLES = """
  edge-smw rank exports/me/model.onnx ~/Pictures/party --top 10
  edge-smw rank model.onnx album/ --out album-ranking --backend onnxruntime-cpu
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_runtime_arguments(p)
    p.add_argument("album", metavar="ALBUM_DIR", help="folder of photos (searched recursively)")
    p.add_argument("--top", type=int, default=12,
                   help="photos shown on the contact sheets (default 12; the CSV lists all)")
    p.add_argument("--out", help="output folder (default: ALBUM_DIR-ranking beside the album)")


def run(args: argparse.Namespace) -> int:
    from edge_smw.errors import InputError
    from edge_smw.rank import rank_album, write_report

    album = Path(args.album)
    if not album.is_dir():
        raise InputError(f"{album} is not a folder; pass the album folder (for single files "
                         "use `edge-smw score`)")
    if args.top < 1:
        raise InputError(f"--top must be >= 1, got {args.top}")
    out = Path(args.out) if args.out else album.resolve().with_name(album.resolve().name
                                                                    + "-ranking")
    with open_runtime(args) as runtime:
        ranking = rank_album(runtime, [album], progress=True, thumbnails=True,
                             exclude=out)
    paths = write_report(ranking, out, top=args.top, title=f"{album.name}: top photos")
    for i, photo in enumerate(ranking.ranked[: args.top], 1):
        best = photo.best
        print(f"{i:>3}. {best.expected_score:.2f}  {best.level_name:<12} {photo.path}")
    for photo in ranking.no_face:
        print(f"  -  no face found: {photo.path}")
    for photo in ranking.unreadable:
        print(f"  -  unreadable: {photo.path} ({photo.error})")
    print(f"{len(ranking.ranked)} ranked, {len(ranking.no_face)} without a face, "
          f"{len(ranking.unreadable)} unreadable; wrote {paths['csv']}, {paths['html']}, "
          f"{paths['png']}")
    return 0
