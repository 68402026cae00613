"""The training feature pass, timed: crops/s for torch eager and for edge-smw's pass.

Both read the same crop files (decode, crop, resize, normalise included) and compute the
same features for the checkpoint (the head kind's features, or a fine-tuned model's cached
entries); edge-smw's pass is ``train.features.compute_features`` with the cache off
(onnxruntime, the next batch decoded in a background thread), torch eager is the plain loop
a user would write. They alternate chunk by chunk in one process, so a busy machine slows
both alike; each candidate's figure is crops over its summed seconds, with the spread of
the per-chunk rates. Every crop is a different file, and a candidate's crops are those its
network computed: edge-smw's pass computes a file's features once however often it is
listed (it keys them by content), so repeated files would inflate its rate.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_smw.bench.results import FeaturePassRow, FeaturePassSection
from edge_smw.data.crops import SkipReport, load_crop
from edge_smw.data.datasets import LabelledImage

BATCH = 32


def measure_feature_pass(checkpoint: Any, paths: list[str], *, crops: int, rounds: int = 4,
                         threads: int | None = None) -> FeaturePassSection:
    """The ``features`` section of a bench report for ``checkpoint`` on crops from ``paths``."""
    import torch

    from edge_smw.train.backbones import get_backbone
    from edge_smw.train.features import FeaturePass, compute_features

    if crops < 1 or not paths:
        return FeaturePassSection(note="no crop files to read (suite features_crops = 0, or a "
                                       "golden file without paths)")
    distinct = list(dict.fromkeys(paths))
    items = [LabelledImage(Path(p), 0) for p in distinct[:crops]]
    rounds = min(rounds, len(items))
    fewer = (f"; the data held {len(distinct)} files, fewer than the {crops} asked for"
             if len(distinct) < crops else "")
    contract = checkpoint.contract
    detect = checkpoint.detect
    start = 0
    if checkpoint.finetune_last:
        start = len(checkpoint.build_model().feature_maps.unit_names) - checkpoint.finetune_last
    feature_pass = FeaturePass(get_backbone(checkpoint.backbone),
                               weights=checkpoint.backbone_weights, threads=threads,
                               head=checkpoint.kind, start=start)
    network = feature_pass.network.eval()

    def torch_eager(chunk: list[LabelledImage]) -> int:
        done = 0
        for i in range(0, len(chunk), BATCH):
            report = SkipReport()
            pixels = [load_crop(item.path, contract, detect=detect, report=report, cache=False)
                      for item in chunk[i : i + BATCH]]
            pixels = [p for p in pixels if p is not None]
            if pixels:
                with torch.inference_mode():
                    network(torch.from_numpy(contract.normalize(np.stack(pixels))))
                done += len(pixels)
        return done

    def ours(chunk: list[LabelledImage]) -> int:
        return int(compute_features(chunk, contract, feature_pass, detect=detect,
                                    batch_size=BATCH, progress=False,
                                    cache=False).timings["computed"])

    candidates = {"torch eager": torch_eager, "edge-smw feature pass": ours}
    torch_eager(items[:2])  # warm both (first-call allocations, onnxruntime's arena)
    ours(items[:2])
    size = -(-len(items) // rounds)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    rates: dict[str, list[float]] = {name: [] for name in candidates}
    totals = {name: [0, 0.0] for name in candidates}
    for index, chunk in enumerate(chunks):
        order = list(candidates) if index % 2 == 0 else list(candidates)[::-1]
        for name in order:
            tick = time.perf_counter()
            done = candidates[name](chunk)
            seconds = time.perf_counter() - tick
            rates[name].append(done / seconds)
            totals[name][0] += done
            totals[name][1] += seconds
    rows = []
    for name in candidates:
        done, seconds = totals[name]
        rows.append(FeaturePassRow(
            candidate=name, crops=done, seconds=round(seconds, 3),
            crops_per_s=round(done / seconds, 2), crops_per_s_min=round(min(rates[name]), 2),
            crops_per_s_max=round(max(rates[name]), 2),
            runtime="torch " + torch.__version__ if name == "torch eager"
            else "onnxruntime, decode in a background thread"))
    ratio = rows[1].crops_per_s / rows[0].crops_per_s
    return FeaturePassSection(
        rows=rows, speedup=round(ratio, 3), rounds=len(chunks),
        what=feature_pass.kind.suffix or "pooled features (the poster's head)",
        threads=threads or torch.get_num_threads(), detect=detect,
        note="decode + crop + resize + normalise + backbone, from the crop files; no "
             f"feature cache{fewer}")
