"""edge-smw evaluate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_smw.cli.common import add_detect, add_json, print_json

HELP = "score a labelled data set with a run, checkpoint or exported model: the poster's table"
EXAMPLES = """
  edge-smw evaluate runs/demo --data photos/ --out runs/demo/eval
  edge-smw evaluate exports/demo/model.int8.onnx --data photos/ --no-detect --json
  edge-smw evaluate runs/demo --data labels.csv --predictions preds.csv
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run folder, checkpoint.pt, .onnx, .engine or export folder")
    p.add_argument("--data", required=True,
                   help="folder of level sub-folders or path,score CSV (every image is scored), "
                        "or 'synthetic' / 'smiles'")
    p.add_argument("--from", dest="from_dir", help="local copy of the 'smiles' data set")
    add_detect(p, mismatch=False)
    add_json(p)
    p.add_argument("--predictions",
                   help="write a CSV: path,true_level,predicted_level,p_<level>...")
    p.add_argument("--out", help="folder for the Markdown + JSON report and confusion PNG")
    p.add_argument("--backend", default="auto", help="runtime backend for exported models")


def run(args: argparse.Namespace) -> int:
    from edge_smw.atomic import check_writable_file, check_writable_folder
    from edge_smw.data.sources import resolve_data
    from edge_smw.errors import DataError
    from edge_smw.evaluate import poster_table, write_predictions_csv, write_report
    from edge_smw.predict import model_contract, predict_items

    if args.predictions:  # before the scoring, not after it
        check_writable_file(args.predictions, "--predictions")
    if args.out:
        check_writable_folder(args.out, "choose a writable --out folder")
    contract, trained_detect = model_contract(args.model)
    source = resolve_data(args.data, levels=contract.levels, from_dir=args.from_dir,
                          progress=not args.json)
    if tuple(source.dataset.levels) != contract.levels:
        raise DataError(f"data levels {list(source.dataset.levels)} differ from the model's "
                        f"{list(contract.levels)}")
    _check_missing_files(source.dataset)
    detect = source.detect_for(trained_detect, args.detect)
    preds = predict_items(args.model, source.dataset.items, detect=detect, backend=args.backend,
                          detector=args.detector,
                          progress=not args.json)
    metrics = preds.metrics()
    metrics["skipped"] = preds.skipped.to_dict()
    if args.predictions:
        write_predictions_csv(args.predictions, preds.paths, preds.true_levels, preds.probs,
                              preds.levels)
    if args.out:
        write_report(args.out, "evaluation", metrics, f"Evaluation of {args.model}")
    if args.json:
        print_json(metrics)
        return 0
    total = len(source.dataset.items)
    print(f"{args.model}: {metrics['n']} of {total} images scored (skipped: "
          f"{preds.skipped.summary()}); face detection {'on' if detect else 'off'}")
    print(poster_table(metrics))
    spearman = metrics["spearman"]
    print(f"Spearman: {'n/a' if spearman is None else f'{spearman:.3f}'}")
    if detect != trained_detect:
        print(f"note: the model was trained with face detection {'on' if trained_detect else 'off'}"
              f", evaluated with it {'on' if detect else 'off'}")
    return 0


def _check_missing_files(dataset) -> None:  # noqa: ANN001 - a LabelledDataset, lazy import
    """Rows pointing to missing files (a CSV read from the wrong folder) said loudly up front:
    an accuracy over the few rows left must not pass for the whole set's."""
    from edge_smw.errors import DataError

    items = dataset.items
    missing = [str(item.path) for item in items if not Path(item.path).exists()]
    if not missing:
        return
    first = ", ".join(missing[:2])
    source = Path(dataset.source)
    where = (f"; paths in {source} are read relative to its folder {source.parent}"
             if source.is_file() else "")
    if len(missing) == len(items):
        raise DataError(f"no usable images among {len(items)} ({len(items)} unreadable, 0 "
                        f"without a face): no file exists, first {first}{where}; fix the "
                        "paths (or put the CSV beside the images)")
    print(f"edge-smw evaluate: warning: {len(missing)} of {len(items)} rows skipped, their "
          f"files do not exist (first {first}){where}", file=sys.stderr)
