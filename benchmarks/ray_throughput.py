"""Throughput of the Ray engine side by side with the in-process engine (photos/s), and the
per-stage costs a scaling estimate is built from.

    .venv/bin/python benchmarks/ray_throughput.py MODEL [--crops 400] [--frames 200] \
        [--phone 30] [--rounds 3] [--out benchmarks/work/ray_throughput.json]

Three workloads made from the real SMILEsmileD crops (resolved as the tests do): ``crops``
(64x64 JPEG faces scored whole, --no-detect: inference dominates), ``frames`` (each crop
enlarged onto a 640x480 JPEG, face detection on with the model's own detector:
blazeface-short for a model trained on whole crops) and ``phone`` (such frames enlarged to
4032x3024, 12 megapixels, with sensor-like noise so the JPEG is phone-sized: decoding
dominates, as in a real photo library). Four
set-ups share one local Ray started once with 2 CPUs (its start is not timed):

- ``inprocess-1`` / ``inprocess-2``: ``rank.score_photos`` in this process, one Runtime with
  1 / 2 onnxruntime threads (decode, detect and infer one after another);
- ``ray-1`` / ``ray-2``: ``engines.ray.score_library`` with 1 actor x 1 CPU / 2 actors x 0.5
  CPU (Ray's logical CPUs; decode tasks get the rest), batches of 32.

Every round runs every set-up once, in a rotated order (interleaved, so machine load hits all
alike); the table gives the median photos/s and the range over rounds. A Ray run's time
includes its per-job costs (actor start, model shipped to the actors), as a user sees it; the
rate after its first batch is what a long job settles at. The cluster estimate: the per-stage
work per photo (summed over workers) spread over ``--cluster-cores``, discounted by the share
of 2 busy CPUs Ray reached here after its first batch, and capped by the driver's own cost
per photo (one process writes every result).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edge_smw.atomic import write_json
from edge_smw.cpu import cpu_flags
from edge_smw.images import read_image
from edge_smw.rank import score_photos


def make_workloads(root: Path, crops: int, frames: int,
                   phone: int) -> dict[str, tuple[list[Path], bool]]:
    from edge_smw.data.smiles import resolve_smiles_dir

    found = resolve_smiles_dir(progress=False)
    if found is None:
        sys.exit("real face crops not found: set EDGE_SMW_SMILES_DIR or run "
                 "`edge-smw data smiles`")
    smiles = found[0]
    files = []
    for level in ("not_smiling", "smiling"):
        files += sorted((smiles / level).glob("*.jpg"))[: max(crops, frames) // 2]
    crop_files = files[: crops // 2] + files[len(files) // 2 : len(files) // 2 + crops // 2]
    frame_files = []
    for i, path in enumerate(files[: frames // 2] + files[len(files) // 2:][: frames // 2]):
        face = cv2.resize(cv2.copyMakeBorder(read_image(path), 16, 16, 16, 16,
                                             cv2.BORDER_REPLICATE), (288, 288),
                          interpolation=cv2.INTER_CUBIC)
        frame = np.full((480, 640, 3), 128, np.uint8)
        frame[96:384, 176:464] = face
        target = root / "frames" / f"frame_{i:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
        frame_files.append(target)
    rng = np.random.default_rng(0)
    phone_files = []
    for i, frame_path in enumerate(frame_files[:phone]):
        big = cv2.resize(cv2.imread(str(frame_path)), (4032, 3024),
                         interpolation=cv2.INTER_LINEAR)
        noisy = np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)
        target = root / "phone" / f"photo_{i:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), noisy, [cv2.IMWRITE_JPEG_QUALITY, 90])
        phone_files.append(target)
    return {"crops": (crop_files, False), "frames": (frame_files, True),
            "phone": (phone_files, True)}


def run_inprocess(model: Path, paths: list[Path], detect: bool, threads: int) -> dict:
    from edge_smw.runtime import Runtime

    with Runtime(model, backend="onnxruntime-cpu", threads=threads, detect_faces=detect,
                 backend_options={"allow_spinning": False}) as runtime:
        started = time.perf_counter()
        photos = list(score_photos(runtime, paths))
        seconds = time.perf_counter() - started
    return {"photos": len(photos), "seconds": seconds,
            "faces": sum(len(p.faces) for p in photos)}


def run_ray(model: Path, paths: list[Path], detect: bool, actors: int, out: Path) -> dict:
    from edge_smw.engines import RayOptions
    from edge_smw.engines.ray import score_library

    listing = out.with_suffix(".csv")
    listing.write_text("path\n" + "".join(f"{p}\n" for p in paths), encoding="utf-8")
    options = RayOptions(actors=actors, cpus_per_actor=1.0 if actors == 1 else 0.5,
                         batch_size=32, progress=False)
    summary, _ = score_library(model, [listing], out, backend="onnxruntime-cpu",
                               detect=detect, options=options)
    return {"photos": summary.scored, "seconds": summary.seconds, "faces": summary.faces,
            "steady_photos_per_s": summary.steady_photos_per_s,
            "first_result_seconds": summary.first_result_seconds,
            "stage_ms_per_photo": {k: 1000 * v / summary.scored
                                   for k, v in summary.stage_seconds.items()},
            "driver_ms_per_photo": 1000 * summary.driver_seconds / summary.scored}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, nargs="?",
                        help="exported model (.onnx or export folder)")
    parser.add_argument("--crops", type=int, default=400)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--phone", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cluster-cores", type=int, default=32,
                        help="cores of the cluster to estimate for (default 32: 8 nodes x 4)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/work/ray_throughput.json"))
    parser.add_argument("--report", type=Path,
                        help="print the tables again from a saved JSON (measures nothing)")
    args = parser.parse_args()
    if args.report:
        summarize(json.loads(args.report.read_text(encoding="utf-8")), args.cluster_cores)
        return 0

    if args.model is None:
        parser.error("MODEL is needed to measure (or --report FILE to re-print)")
    import ray

    from edge_smw.artifacts.folders import resolve_model_path

    model = resolve_model_path(args.model)
    work = Path(tempfile.mkdtemp(prefix="edge-smw-ray-bench-"))
    workloads = make_workloads(work, args.crops, args.frames, args.phone)
    sizes = {name: sum(p.stat().st_size for p in paths) / len(paths)
             for name, (paths, _) in workloads.items()}
    setups = ["inprocess-1", "inprocess-2", "ray-1", "ray-2"]
    load_start = os.getloadavg()
    ray.init(num_cpus=2, object_store_memory=500 * 1024 * 1024, include_dashboard=False,
             logging_level="ERROR")
    results: dict[str, dict[str, list[dict]]] = {w: {s: [] for s in setups} for w in workloads}
    try:
        for name, (paths, detect) in workloads.items():
            for r in range(args.rounds):
                order = setups[r % len(setups):] + setups[: r % len(setups)]
                for setup in order:
                    kind, workers = setup.split("-")
                    if kind == "inprocess":
                        res = run_inprocess(model, paths, detect, int(workers))
                    else:
                        res = run_ray(model, paths, detect, int(workers),
                                      work / f"{name}-{setup}-{r}")
                    res["photos_per_s"] = res["photos"] / res["seconds"]
                    results[name][setup].append(res)
                    print(f"{name} round {r} {setup}: {res['photos_per_s']:.1f} photos/s",
                          flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)  # the generated photos and result stores
    report = {"model": str(model), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
              "machine": platform.processor() or platform.machine(),
              "load_average_start": load_start, "load_average_end": os.getloadavg(),
              "rounds": args.rounds, "results": results, "command": " ".join(sys.argv),
              "mean_file_bytes": sizes}
    write_json(args.out, report)
    summarize(report, args.cluster_cores)
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


def summarize(report: dict, cluster_cores: int) -> None:
    """Print the side-by-side table and the cluster estimate; add the estimate to ``report``."""
    results = report["results"]
    flags = " ".join(name for name, present in report["cpu_flags"].items() if present)
    print(f"\nCPU flags {flags}, load {report['load_average_start']} -> "
          f"{report['load_average_end']}")
    print("| workload | set-up | photos/s (median) | range over rounds | after the first "
          "batch (Ray) |")
    print("|---|---|---|---|---|")
    for name, by_setup in results.items():
        for setup, runs in by_setup.items():
            rates = [r["photos_per_s"] for r in runs]
            steady = [r["steady_photos_per_s"] for r in runs if r.get("steady_photos_per_s")]
            after = (f"{statistics.median(steady):.1f} ({min(steady):.1f}-{max(steady):.1f})"
                     if steady else "-")
            print(f"| {name} ({runs[0]['photos']} photos) | {setup} | "
                  f"{statistics.median(rates):.1f} | {min(rates):.1f}-{max(rates):.1f} | "
                  f"{after} |")
    print("\nper-stage ms per photo, summed over workers (Ray runs, median over rounds and "
          "set-ups), and what a cluster would do:")
    report["estimate"] = {}
    for name, by_setup in results.items():
        runs = by_setup["ray-1"] + by_setup["ray-2"]
        stages = {k: statistics.median(r["stage_ms_per_photo"][k] for r in runs)
                  for k in runs[0]["stage_ms_per_photo"]}
        driver = statistics.median(r["driver_ms_per_photo"] for r in runs)
        start = statistics.median(r["first_result_seconds"] for r in runs)
        work_ms = sum(stages.values())
        # Ray's own overhead: its rate after the first batch against 2 CPUs busy with the
        # measured work (not measurable when the whole workload fits in one batch)
        steady = [r["steady_photos_per_s"] for r in runs if r.get("steady_photos_per_s")]
        efficiency = (min(1.0, statistics.median(steady) / (2 * 1000 / work_ms))
                      if steady else None)
        cluster = cluster_cores * 1000 / work_ms * (efficiency or 1.0)
        ceiling = 1000 / driver if driver else float("inf")
        estimate = min(cluster, ceiling)
        report["estimate"][name] = {
            "stage_ms_per_photo": stages, "driver_ms_per_photo": driver,
            "work_ms_per_photo": work_ms, "efficiency_here": efficiency,
            "first_result_seconds": start, "cluster_cores": cluster_cores,
            "photos_per_s": estimate, "driver_ceiling_photos_per_s": ceiling,
            "hours_per_million": 1e6 / estimate / 3600}
        seen = (f"Ray here reached {efficiency:.0%} of 2 busy CPUs after its first batch"
                if efficiency is not None else "one batch only: Ray's overhead not measurable")
        print(f"  {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
              + f" = {work_ms:.1f} ms of work; driver {driver:.3f} ms (ceiling "
              f"{ceiling:,.0f} photos/s); first batch after {start:.0f} s; {seen} -> "
              f"{cluster_cores} cores: about {estimate:,.0f} photos/s, "
              f"{1e6 / estimate / 3600:.1f} h per million photos")


if __name__ == "__main__":
    raise SystemExit(main())
