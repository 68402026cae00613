"""edge-smw rank."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_smw.cli.common import add_engine_arguments, ray_options
from edge_smw.cli.score import add_runtime_arguments, open_runtime, run_on_ray, verdict

HELP = "rank an album's photos by their best face's score; write a CSV and contact sheets"
EXAMPLES = """
  edge-smw rank exports/me/model.onnx ~/Pictures/party --top 10
  edge-smw rank model.onnx album/ --out album-ranking --backend onnxruntime-cpu
  edge-smw rank exports/me gs://bucket/album/ --engine ray --out album-ranking --top 50
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_runtime_arguments(p)
    p.add_argument("album", metavar="ALBUM_DIR",
                   help="folder of photos (searched recursively); with --engine ray also a "
                        "glob, a CSV/Parquet list or an s3:// / gs:// prefix")
    p.add_argument("--top", type=int, default=12,
                   help="photos shown on the contact sheets (default 12; the CSV lists all)")
    p.add_argument("--out", help="output folder (default: ALBUM_DIR-ranking beside the album); "
                                 "--engine ray keeps its Parquet results there and resumes")
    add_engine_arguments(p)


def run(args: argparse.Namespace) -> int:
    from edge_smw.atomic import check_writable_folder
    from edge_smw.errors import InputError
    from edge_smw.rank import rank_album, write_report

    options = ray_options(args, progress=True)
    album = Path(args.album)
    if not album.is_dir() and (options is None or args.out is None):
        raise InputError(f"{album} is not a folder; pass the album folder (for single files "
                         "use `edge-smw score`; --engine ray with --out also takes a glob, a "
                         "list or an s3:// / gs:// prefix)")
    if args.top < 1:
        raise InputError(f"--top must be >= 1, got {args.top}")
    out = Path(args.out) if args.out else album.resolve().with_name(album.resolve().name
                                                                    + "-ranking")
    title = f"{album.name}: top photos"
    if options is not None:
        summary, ranking = run_on_ray(args, options, [args.album], str(out),
                                      thumbnails=args.top, exclude=str(out))
        if not ranking.ranked:  # as score: a failure, and the last good report stays
            print("\n".join(summary.lines()))
            return verdict(ranking.all, 0, False, "rank")
        paths = write_report(ranking, out, top=args.top, title=title)
        _print_top(ranking, args.top)
        print("\n".join(summary.lines()))
        print(f"wrote {paths['csv']}, {paths['html']}, {paths['png']}; every face in "
              f"{out / 'faces'}, photos left out (and why) in {out / 'skipped'}")
        return 0
    check_writable_folder(out, "choose a writable --out folder")  # before the scoring
    with open_runtime(args) as runtime:
        ranking = rank_album(runtime, [album], progress=True, thumbnails=True,
                             exclude=out)
        detect = runtime.detect
    for photo in ranking.no_face:
        print(f"  -  no face found: {photo.path}")
    for photo in ranking.unreadable:
        print(f"  -  unreadable: {photo.path} ({photo.error})")
    if not ranking.ranked:  # as score: a failure, and the last good report stays
        return verdict(ranking.all, 0, detect, "rank")
    paths = write_report(ranking, out, top=args.top, title=title)
    _print_top(ranking, args.top)
    print(f"{len(ranking.ranked)} ranked, {len(ranking.no_face)} without a face, "
          f"{len(ranking.unreadable)} unreadable; wrote {paths['csv']}, {paths['html']}, "
          f"{paths['png']}")
    return 0


def _print_top(ranking, top: int) -> None:  # noqa: ANN001 - an AlbumRanking
    for i, photo in enumerate(ranking.ranked[:top], 1):
        best = photo.best
        print(f"{i:>3}. {best.expected_score:.2f}  {best.level_name:<12} {photo.path}")
