"""edge-smw label."""

from __future__ import annotations

import argparse

from edge_smw.cli.common import add_detect

HELP = "score your own photos 1..K in a local web page; labels go to a CSV train reads"
EXAMPLES = """
  edge-smw label ~/Pictures/me                       # keys 1..5, writes ~/Pictures/me/labels.csv
  edge-smw label photos/ --levels not_smiling,smiling --labels smiles.csv
  edge-smw label photos/ --model export/ --order uncertainty   # most informative first
  edge-smw train --data ~/Pictures/me/labels.csv --levels 5 --out runs/me
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("photos_dir", metavar="PHOTOS_DIR", help="folder of photos (sub-folders too)")
    p.add_argument("--levels",
                   help="level names in order (a,b,c) or a count K (1..K); default: the "
                        "model's levels with --model, else 5 (1 hate .. 5 love)")
    p.add_argument("--labels", metavar="FILE.csv",
                   help="the path,score CSV to write and resume from (default: "
                        "PHOTOS_DIR/labels.csv)")
    p.add_argument("--model", metavar="EXPORT",
                   help="an exported model (.onnx, .engine or export folder): shows its "
                        "suggestion for each photo")
    p.add_argument("--order", default="name", choices=["name", "uncertainty", "margin"],
                   help="photo order: by file name, or (with --model) most uncertain first by "
                        "entropy ('uncertainty') or by the top-two margin ('margin')")
    p.add_argument("--backend", default="auto",
                   help="backend for --model (auto, onnxruntime-cpu, onnxruntime-cuda, ...)")
    p.add_argument("--port", type=int, default=0,
                   help="port on 127.0.0.1 (default 0: any free port)")
    p.add_argument("--no-browser", action="store_true",
                   help="do not open a browser; open the printed address yourself")
    add_detect(p, mismatch=False)


def run(args: argparse.Namespace) -> int:
    from edge_smw.errors import BackendUnavailableError, InputError

    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise BackendUnavailableError(
            "edge-smw label needs aiohttp: pip install 'edge-smw[serve]'") from None
    from edge_smw.label.server import LabelSession, serve

    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: give a port number 0..65535")
    with LabelSession(args.photos_dir, levels=args.levels, labels_csv=args.labels,
                      model=args.model, order=args.order, detect=args.detect,
                      detector=args.detector,
                      backend=args.backend, progress=True) as session:
        state = session.state()
        print(f"{state['total']} photos in {session.root}; {state['labelled']} labelled and "
              f"{state['skipped']} skipped so far in {session.labels_csv}")
        if session.outside:
            print(f"{len(session.outside)} link(s) to files outside {session.root} are not "
                  "shown: " + ", ".join(session.outside[:5]))

        def ready(url: str) -> None:
            print(f"labelling at {url}\n(keys 1..{state['keys'][-1]} score, arrows move, u "
                  "undo, s skip; Ctrl-C stops, every label is already saved)", flush=True)

        serve(session, args.port, open_browser=not args.no_browser, on_ready=ready)
        final = session.state()
        print(f"saved {final['labelled']} labels ({final['skipped']} skipped) to "
              f"{session.labels_csv}")
        for item in final["unreadable"]:
            print(f"unreadable, skipped: {item['path']}: {item['reason']}")
        print(f"train with: edge-smw train --data {session.labels_csv} --levels "
              f"{','.join(session.levels)} --out runs/mine"
              + ("" if session.detect else " --no-detect"))
    return 0
