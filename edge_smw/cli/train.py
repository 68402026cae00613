"""edge-smw train."""

from __future__ import annotations

import argparse

from edge_smw.cli.common import (
    add_detector_settings,
    add_engine_arguments,
    add_json,
    add_no_detect,
    detector_from_args,
    print_json,
    ray_options,
)
from edge_smw.train.settings import DEFAULT_PATIENCE, HEAD_KINDS, LOSS_CHOICES, FinetuneConfig

HELP = "train a linear head on a frozen backbone from labelled face photos"
EXAMPLES = """
  edge-smw train --data synthetic --out runs/demo
  edge-smw train --data photos/ --levels 1,2,3,4,5 --out runs/me
  edge-smw train --data labels.csv --loss emd --class-weight balanced --out runs/emd
  edge-smw train --data smiles --from ~/SMILEsmileD --out runs/smiles
  edge-smw train --data photos/ --levels 1,2,3,4,5 --head stages --out runs/stages
  edge-smw train --data photos/ --levels 1,2,3,4,5 --finetune-last 1 --out runs/ft1
  edge-smw train --data big-labelled-set/ --levels 5 --engine ray --ray-address auto --out runs/big
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help="folder of level sub-folders, a path,score CSV, 'synthetic' (built-in "
                        "demo faces) or 'smiles' (SMILEsmileD)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--levels", help="level names in order (a,b,c) or a count K (1..K)")
    p.add_argument("--from", dest="from_dir", help="local copy of the 'smiles' data set")
    add_no_detect(p)
    add_detector_settings(p)
    p.add_argument("--backbone", default="efficientnet_lite0",
                   help="efficientnet_lite0 (default, offline weights) or resnet18")
    p.add_argument("--backbone-weights", help="local weights file for the backbone")
    p.add_argument("--loss", default="ce", choices=list(LOSS_CHOICES),
                   help="ce (cross-entropy, the poster's), emd (ordinal, squared EMD) or auto "
                        "(tune both, save the one that validates better)")
    p.add_argument("--no-compare", action="store_true",
                   help="train only --loss (by default the other loss is reported beside it)")
    p.add_argument("--class-weight", default="none", choices=["none", "balanced"])
    p.add_argument("--flip", action="store_true", help="add mirrored crops as extra features")
    p.add_argument("--head", default="linear", choices=list(HEAD_KINDS),
                   help="what the linear head reads: " + "; ".join(
                       f"{k.name}: {k.description}" for k in HEAD_KINDS.values()))
    p.add_argument("--finetune-last", type=int, default=0, metavar="N",
                   help="also train the backbone's last N units (on their cached inputs; "
                        "default 0: frozen backbone)")
    p.add_argument("--finetune-lr", type=float, default=FinetuneConfig.lr,
                   help=f"learning rate of the fine-tuned units (default {FinetuneConfig.lr}; "
                        f"the tuned head moves at {FinetuneConfig.head_lr_scale} of it)")
    p.add_argument("--finetune-average", type=float, default=FinetuneConfig.average_epochs,
                   metavar="EPOCHS",
                   help="validate and keep a moving average of the fine-tuned weights over "
                        f"about this many epochs (default {FinetuneConfig.average_epochs}; "
                        "0: the last step's weights)")
    p.add_argument("--epochs", type=int, default=40,
                   help="at most this many epochs (early stopping on the validation split)")
    p.add_argument("--patience", type=int, default=DEFAULT_PATIENCE,
                   help="stop after this many epochs without a better validation score")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-per-level", type=int, help="use at most N images per level (quick runs)")
    p.add_argument("--synthetic-count", type=int, default=3000)
    add_json(p)
    add_engine_arguments(p, gpus=False)


def run(args: argparse.Namespace) -> int:
    from edge_smw.data.datasets import parse_levels
    from edge_smw.data.sources import resolve_data
    from edge_smw.evaluate import poster_table
    from edge_smw.train.pipeline import TrainOptions, train_run, validate_options

    engine_options = ray_options(args, progress=not args.json)  # flag mistakes first
    options = TrainOptions(
        backbone=args.backbone, backbone_weights=args.backbone_weights, loss=args.loss,
        compare_losses=not args.no_compare, seed=args.seed, detect=not args.no_detect,
        detector=detector_from_args(args),
        class_weight=args.class_weight, flip=args.flip, epochs=args.epochs,
        patience=args.patience, max_per_level=args.max_per_level, progress=not args.json,
        head=args.head, finetune_last=args.finetune_last,
        finetune=FinetuneConfig(lr=args.finetune_lr, average_epochs=args.finetune_average),
        engine=args.engine, ray=engine_options,
    )
    validate_options(options)  # before the data: 'synthetic' is generated, folders scanned
    source = resolve_data(args.data, levels=parse_levels(args.levels), from_dir=args.from_dir,
                          seed=args.seed, synthetic_count=args.synthetic_count)
    result = train_run(source, args.out, options)
    if args.json:
        print_json({"run_dir": str(result.run_dir), "checkpoint": str(result.checkpoint),
                    "test": result.test_metrics, "loss": result.loss,
                    "losses": {k: {"lr": v["lr"], "momentum": v["momentum"], "test": v["test"]}
                               for k, v in result.losses.items()}})
        return 0
    print(poster_table(result.test_metrics))
    for loss, r in result.losses.items():
        t = r["test"]
        saved = " (saved)" if loss == result.loss else ""
        print(f"{loss:>4}: test accuracy {100 * t['accuracy']:.1f}%  MAE {t['mae']:.3f}  "
              f"(lr {r['lr']}, momentum {r['momentum']}){saved}")
    print(f"wrote {result.checkpoint} and {result.run_dir / 'report.md'}")
    return 0
