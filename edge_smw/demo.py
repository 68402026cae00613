"""``edge-smw demo``: the whole pipeline on the built-in synthetic faces, offline, in minutes.

draw faces -> train (both losses, the project's own training) -> evaluate the checkpoint on
its held-out split -> export fp32 + int8 (cpu flavour, with its parity gates) -> score the
exported files through the torch-free Runtime -> bench (quick suite) -> heat maps, checked
against the known eye and mouth boxes -> a fooling image -> camera frames for
``edge-smw serve`` -> ``REPORT.md``, whose last lines give the full path of everything written
and the next command to try.

Every step is the library call the CLI makes; the demo only picks small settings
(``DemoSettings``) so that the whole run fits in a few minutes on two CPU cores.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_smw.artifacts.folders import RunDir
from edge_smw.artifacts.formats import FP32, INT8_CPU
from edge_smw.atomic import write_json, write_text
from edge_smw.errors import InputError
from edge_smw.train.settings import AUTO_LOSS

log = logging.getLogger("edge_smw.demo")

REPORT_NAME = "REPORT.md"
SETUP_SIZE_GB = 6  # .venv with torch (CUDA build), timm, onnx, onnxruntime: measured 5.8-6.2 GB
FIRST_RUN_NOTE = (
    "edge-smw demo: draws 3000 synthetic faces, trains, evaluates, exports (fp32 + int8), "
    "benches, explains and fools a model, then writes REPORT.md. The first run takes 3-4 "
    "minutes on a quiet 2-core machine (10-11 minutes when the cores were shared with other "
    "jobs), most of it backbone features for the faces and the int8 export's checks; later "
    "runs reuse the cached faces and features. The set-up before it (.venv with torch) takes about "
    f"{SETUP_SIZE_GB} GB of disk."
)
# The bench's int8 gates that judge the model's answers (not its speed).
INT8_PARITY_GATES = ("int8_top1_agreement", "int8_accuracy_drop")  # benchmarks/gates.toml
FRAME_SIZE = (640, 480)  # width, height of the camera frames written for `edge-smw serve`


@dataclass(frozen=True)
class DemoSettings:
    """How big each step is. The defaults are sized for minutes on 2 CPU cores (see
    ``FIRST_RUN_NOTE``); ``QUICK`` is the smallest run that still exercises every step (tests,
    CI)."""

    count: int = 3000  # synthetic faces: 70/15/15 train/val/test
    lrs: tuple[float, ...] = (0.003, 0.01, 0.03)
    momenta: tuple[float, ...] = (0.9,)
    epochs: int = 40
    compare_losses: bool = True  # ce (the poster's) and emd (ordinal), side by side
    # The saved head: the loss that validates better (the levels are ordinal, and on seeds
    # 0-2 emd validated better each time: 86.7-88.0% test; ce alone 84.0-89.1%).
    loss: str = AUTO_LOSS
    # Validation crops for the export's parity gates: all of them (450). The INT8 gate is a
    # claim (the lower end of a 95% interval reaches 97%): on 200 crops 99.0% observed could
    # not show it (interval 96.4-99.7%) and the gate refused a good model.
    export_val_limit: int | None = None
    calib_size: int | None = 128  # None: the smallest set the export accepts
    latency_runs: int = 10
    max_mixed_steps: int = 3  # float blocks the int8 search may try (each: one check pass)
    # None: the export's own target, the gate's claim (on 450 crops 99.1-99.3% observed for
    # the best of the 4-12 models a flavour measures, 98.7% for a lone one);
    # a point target of 98% on 200 crops had agreed on only 95% of the test crops.
    int8_target_agreement: float | None = None
    bias_correction: bool | None = None  # None: the export's default (on)
    learned_rounding: bool | None = None  # None: the export's default (on)
    bench_suite: str = "quick"
    # On top of bench_suite: the bench's parity gates on every test crop (450; 0 = all).
    bench_overrides: dict[str, Any] = field(default_factory=lambda: {"parity_max": 0})
    bench_plots: bool = True
    check_sample: int = 40  # held-out faces for the heat-map check
    fool_eps: float = 4.0  # pixel units (/255)
    fool_steps: int = 50
    faces_per_level: int = 2  # in the camera frames
    frames_per_face: int = 8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


QUICK = DemoSettings(
    count=100, lrs=(0.01,), epochs=10, compare_losses=False, loss="ce", export_val_limit=12,
    calib_size=None, latency_runs=2, max_mixed_steps=0, int8_target_agreement=None,
    bias_correction=False, learned_rounding=False,
    bench_overrides={"min_runs": 1, "max_runs": 2, "seconds_per_batch": 0.2, "theirs": False,
                     "memory": "none", "robust_n": 0, "blackbox_n": 0, "e2e_frames": 0,
                     "peak_matmul": 64, "peak_repeats": 1},
    bench_plots=False, check_sample=4, fool_steps=3, faces_per_level=1, frames_per_face=2,
)


@dataclass
class DemoResult:
    out: Path
    report: Path
    steps: dict[str, Any]
    written: dict[str, Path]
    next_command: str


def run_demo(out: str | Path, *, count: int | None = None, seed: int = 0, quick: bool = False,
             settings: DemoSettings | None = None, progress: bool = True) -> DemoResult:
    """Run every step into ``out`` and write ``REPORT.md`` there (see the module docstring)."""
    from edge_smw.bench.run import quiet_openmp

    quiet_openmp()  # before torch loads: a spinning OpenMP pool stalls a loaded 2-core machine
    settings = settings or (QUICK if quick else DemoSettings())
    if count is not None:
        settings = replace(settings, count=count)
    out = Path(out).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the demo folder {out}: {exc.strerror or exc}; "
                         "choose another --out") from None
    demo = _Demo(out, settings, seed, progress)
    return demo.run()


class _Demo:
    def __init__(self, out: Path, settings: DemoSettings, seed: int, progress: bool) -> None:
        self.out = out
        self.settings = settings
        self.seed = seed
        self.progress = progress
        self.run_dir = out / "run"
        self.export_dir = out / "export"
        self.steps: dict[str, Any] = {"settings": settings.to_dict(), "seconds": {}}
        self.written: dict[str, Path] = {}

    def _timed(self, name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        log.info("demo: %s", name)
        try:
            return fn()
        finally:
            self.steps["seconds"][name] = round(time.perf_counter() - started, 1)

    def run(self) -> DemoResult:
        started = time.perf_counter()
        source = self._timed("data", self.data)
        self._timed("train", lambda: self.train(source))
        test_items = self._test_items()
        self._timed("evaluate", lambda: self.evaluate(test_items))
        self._timed("export", self.export)
        self._timed("runtime", lambda: self.runtime(test_items))
        self._timed("bench", self.bench)
        self._timed("heatmaps", lambda: self.heatmaps(test_items))
        self._timed("fool", lambda: self.fool(test_items, source.dataset.levels))
        self._timed("frames", lambda: self.frames(test_items))
        self.steps["seconds"]["total"] = round(time.perf_counter() - started, 1)
        next_command = self.next_command()
        self.steps["next_command"] = next_command
        self.written["summary"] = write_json(self.out / "demo.json", self.steps)
        report = self.out / REPORT_NAME
        self.written = {"report": report, **self.written}
        write_text(report, self.markdown(next_command))
        return DemoResult(self.out, report, self.steps, self.written, next_command)

    # -- steps -----------------------------------------------------------------------------
    def data(self) -> Any:
        from edge_smw.data.sources import resolve_data

        source = resolve_data("synthetic", seed=self.seed, synthetic_count=self.settings.count,
                              progress=self.progress)
        counts = np.bincount([i.level for i in source.dataset.items],
                             minlength=len(source.dataset.levels))
        self.steps["data"] = {"count": len(source.dataset.items),
                              "levels": list(source.dataset.levels),
                              "level_counts": counts.tolist(),
                              "folder": str(source.dataset.source)}
        return source

    def train(self, source: Any) -> None:
        from edge_smw.train.pipeline import TrainOptions, train_run

        s = self.settings
        options = TrainOptions(seed=self.seed, progress=self.progress, lrs=s.lrs,
                               momenta=s.momenta, epochs=s.epochs, loss=s.loss,
                               compare_losses=s.compare_losses)
        result = train_run(source, self.run_dir, options)
        self.steps["train"] = {
            "run_dir": str(self.run_dir),
            "test": _brief(result.test_metrics),
            "loss": result.loss,
            "poster_table": _poster(result.test_metrics),
            "losses": {k: {"accuracy": v["test"]["accuracy"], "mae": v["test"]["mae"],
                           "val_accuracy": v["val"]["accuracy"],
                           "lr": v["lr"], "momentum": v["momentum"]}
                       for k, v in result.losses.items()},
        }
        self.written["run"] = self.run_dir

    def _test_items(self) -> list:
        from edge_smw.data.datasets import SplitManifest

        return SplitManifest.load(RunDir(self.run_dir).split).items("test")

    def evaluate(self, test_items: list) -> None:
        from edge_smw.evaluate import write_report
        from edge_smw.predict import predict_items

        metrics = predict_items(self.run_dir, test_items, progress=self.progress).metrics()
        folder = self.out / "evaluation"
        write_report(folder, "checkpoint", metrics,
                     "Checkpoint on the synthetic test split (held out from training)")
        self.steps["evaluate"] = {"checkpoint": _brief(metrics)}
        self.written["evaluation"] = folder

    def export(self) -> None:
        from edge_smw.export.crops import MIN_CALIBRATION
        from edge_smw.export.pipeline import export_model
        from edge_smw.export.settings import ExportSettings

        s = self.settings
        # force=True: a failed gate must not end the demo before it can show why; the
        # report says which gate failed and export.json records it under "forced".
        # None in the demo's settings: the export's own default
        chosen = {"target_agreement": s.int8_target_agreement,
                  "bias_correction": s.bias_correction,
                  "learned_rounding": s.learned_rounding}
        settings = ExportSettings(int8=True, flavours=("cpu",), feature_map=True, force=True,
                                  val_limit=s.export_val_limit,
                                  calib_size=s.calib_size or MIN_CALIBRATION,
                                  latency_runs=s.latency_runs,
                                  max_mixed_steps=s.max_mixed_steps, seed=self.seed,
                                  **{k: v for k, v in chosen.items() if v is not None})
        summary = export_model(self.run_dir, self.export_dir, settings,
                               progress=self.progress).summary
        models = {}
        for key, entry in summary.models.items():
            parity = entry.parity.to_dict()
            models[key] = {
                "file": entry.file, "path": str(self.export_dir / entry.file),
                "bytes": entry.bytes, "n": parity.get("n"),
                "max_abs_prob_diff": parity.get("max_abs_prob_diff"),
                "top1_agreement": parity.get("top1_agreement"),
                "accuracy": parity.get("accuracy"),
                "gate": entry.gate.to_dict() if entry.gate else None,
            }
        cpu = summary.int8.flavours.get("cpu") if summary.int8 else None
        self.steps["export"] = {
            "dir": str(self.export_dir), "models": models, "forced": summary.forced,
            "int8_steps": [st.brief() for st in (cpu.steps if cpu else [])],
            "int8_speedup_vs_fp32": cpu.speedup if cpu else None,
            "settings": summary.settings,
        }
        self.written["export"] = self.export_dir

    def _models(self) -> list[str]:
        return [m["file"] for m in self.steps["export"]["models"].values()]

    def deployable(self) -> str:
        """The int8 file when its export gate passed and the bench's agreement and accuracy
        gates on the test crops did not fail it, else the fp32 one."""
        models = self.steps["export"]["models"]
        int8 = models.get(INT8_CPU.key)
        if int8 and (int8.get("gate") or {}).get("passed") and not self._int8_failed_bench():
            return int8["file"]
        return models[FP32.key]["file"]

    def _int8_failed_bench(self) -> list[str]:
        """The bench's int8 parity gates (agreement, accuracy; not speed, which the quick
        suite measures roughly) that were judged and failed on the test crops."""
        gates = (self.steps.get("bench") or {}).get("gates") or []
        return [g["name"] for g in gates
                if g["passed"] is False and g["name"] in INT8_PARITY_GATES]

    def runtime(self, test_items: list) -> None:
        from edge_smw.evaluate import write_report
        from edge_smw.predict import predict_items

        rows = {}
        for name in self._models():
            preds = predict_items(self.export_dir / name, test_items, progress=self.progress)
            metrics = preds.metrics()
            write_report(self.out / "evaluation", Path(name).stem.replace(".", "_"), metrics,
                         f"{name} through the torch-free Runtime, synthetic test split")
            rows[name] = _brief(metrics)
        self.steps["runtime"] = rows

    def bench(self) -> None:
        from edge_smw.bench.report import summary_rows, verdict_line, write_report
        from edge_smw.bench.run import BenchOptions, run_bench

        s = self.settings
        folder = self.out / "bench"
        suite = s.bench_suite
        if s.bench_overrides:
            folder.mkdir(parents=True, exist_ok=True)
            lines = [f'base = "{s.bench_suite}"', f'name = "{s.bench_suite}-demo"']
            lines += [f"{k} = {json.dumps(v)}" for k, v in s.bench_overrides.items()]
            suite = str(write_text(folder / "suite.toml", "\n".join(lines) + "\n"))
        command = f"edge-smw bench {self.export_dir} --suite {suite} --out {folder}"
        report = run_bench(BenchOptions(export_dir=self.export_dir,
                                        checkpoint=str(self.run_dir), suite=suite,
                                        command=command))
        paths = write_report(report, folder, plots=s.bench_plots)
        latency = [{"format": r.format, "backend": r.backend, "status": r.status,
                    "size_mb": r.size_mb, "p50_ms": r.p50_ms, "fps": r.fps, "reason": r.reason}
                   for r in summary_rows(report)]
        speedups = [{"model": c.model, "versus": c.versus, "speedup": c.speedup}
                    for c in report.comparisons
                    if c.scope == "network" and c.batch == 1 and c.intended]
        # The bench's own verdicts: a gate judged on too few crops for its threshold says
        # "not judged: n too small", never FAIL (edge_smw.bench.config).
        gates = [{"name": g.name, "passed": g.passed, "not_judged": g.not_judged, "n": g.n,
                  "line": verdict_line(g).strip()} for g in report.gates]
        self.steps["bench"] = {
            "md": str(paths["md"]), "command": command, "latency": latency,
            "speedups": speedups, "gates": gates,
            "parity_n": max((r.n or 0 for r in report.parity), default=0),
            "runs": [report.suite.min_runs, report.suite.max_runs],
            "load_average": report.machine.load_average_1_5_15,
            "cpu_flags": report.machine.cpu_flags,
        }
        self.written["bench"] = paths["md"]

    def heatmaps(self, test_items: list) -> None:
        from edge_smw.explain.api import explain_images
        from edge_smw.explain.check import synthetic_check

        examples = [str(item.path) for item in _one_per_level(test_items)]
        torch_maps = explain_images(self.run_dir, examples, out=self.out / "heatmaps",
                                    method="gradcam")
        device_maps = explain_images(self.export_dir / FP32.file_name, examples,
                                     out=self.out / "heatmaps_device", method="cam")
        check = synthetic_check(self.out / "heatmaps_check", run_dir=self.run_dir,
                                sample=self.settings.check_sample, progress=self.progress)
        self.steps["heatmaps"] = {"check": check.to_dict(), "check_markdown": check.to_markdown(),
                                  "examples": examples}
        self.written["heatmaps"] = torch_maps.index
        self.written["heatmaps_device"] = device_maps.index
        self.written["heatmaps_check"] = self.out / "heatmaps_check" / "check.md"

    def fool(self, test_items: list, levels: Sequence[str]) -> None:
        from edge_smw.attacks.fool import fool_images

        lowest = next(item for item in sorted(test_items, key=lambda i: str(i.path))
                      if item.level == 0)
        s = self.settings
        report = fool_images(self.run_dir, [lowest.path], target=levels[-1],
                             out=self.out / "fooling", eps=s.fool_eps, steps=s.fool_steps)
        data = report.to_dict()
        record = data["images"][0] if data.get("images") else {}
        self.steps["fool"] = {"image": str(lowest.path), "true_level": levels[lowest.level],
                              "eps": s.fool_eps,
                              "steps": s.fool_steps, "record": record}
        if report.records:
            self.written["fooling"] = report.records[0].figure

    def frames(self, test_items: list) -> None:
        from edge_smw.runtime import Runtime

        folder = self.out / "frames"
        with Runtime(self.export_dir / self.deployable(), backend="onnxruntime-cpu",
                     warmup=False) as runtime:
            info = write_camera_frames(test_items, folder, runtime,
                                       faces_per_level=self.settings.faces_per_level,
                                       frames_per_face=self.settings.frames_per_face,
                                       seed=self.seed)
        self.steps["frames"] = info
        self.written["frames"] = folder

    # -- the report ------------------------------------------------------------------------
    def next_command(self) -> str:
        return (f"edge-smw serve --model {self.export_dir / self.deployable()} "
                f"--camera {self.out / 'frames'} --loop")

    def _loss_words(self) -> str:
        saved = self.steps["train"]["loss"]
        if self.settings.loss == AUTO_LOSS:
            return f"{saved} head, the loss that validated better"
        return f"{saved} head"

    def markdown(self, next_command: str) -> str:
        st = self.steps
        sec = st["seconds"]
        train = st["train"]
        data = st["data"]
        shares = ", ".join(f"{lv}: {n}" for lv, n in zip(data["levels"], data["level_counts"],
                                                         strict=True))
        lines = [
            "# edge-smw demo (synthetic faces)", "",
            "These faces are drawings made by `edge_smw.data.synthetic`, not photos of people: "
            "their level follows a known rule (eyes, gaze, mouth, strong blur; README, "
            "'Built-in demo data'). The figures show that every step of the pipeline works "
            "and what each one reports; they say nothing about accuracy on real photos.", "",
            "| step | result | seconds |", "|---|---|---|",
            f"| data | {data['count']} faces, levels {shares} | {sec['data']:.0f} |",
            f"| train | {_pct(train['test']['accuracy'])} test accuracy, MAE "
            f"{train['test']['mae']:.3f} (n = {train['test']['n']}; {self._loss_words()}) | "
            f"{sec['train']:.0f} |",
            f"| evaluate | checkpoint on the held-out split: "
            f"{_pct(st['evaluate']['checkpoint']['accuracy'])} | {sec['evaluate']:.0f} |",
            f"| export | {self._export_line()} | {sec['export']:.0f} |",
            f"| runtime | {self._runtime_line()} | {sec['runtime']:.0f} |",
            f"| bench (quick) | {self._bench_line()} | {sec['bench']:.0f} |",
            f"| heat maps | {self._check_line()} | {sec['heatmaps']:.0f} |",
            f"| fooling image | {self._fool_line()} | {sec['fool']:.0f} |",
            f"| camera frames | {st['frames']['count']} frames for `edge-smw serve` | "
            f"{sec['frames']:.0f} |",
            f"| total | | {sec['total']:.0f} |", "",
            "## Training (test split, the frozen backbone + linear head)", "",
            train["poster_table"], "",
            "| loss | validation accuracy | test accuracy | test MAE | lr | momentum |",
            "|---|---|---|---|---|---|",
            *[f"| {k}{' (saved)' if k == train['loss'] else ''} | "
              f"{_pct(v['val_accuracy'])} | {_pct(v['accuracy'])} | {v['mae']:.3f} | "
              f"{v['lr']} | {v['momentum']} |" for k, v in train["losses"].items()],
            "", "## Export and the parity gates", "", *self._export_section(),
            "", "## The exported files through the torch-free Runtime (same test split)", "",
            "| model | accuracy | MAE | n |", "|---|---|---|---|",
            *[f"| {m} | {_pct(v['accuracy'])} | {v['mae']:.3f} | {v['n']} |"
              for m, v in st["runtime"].items()],
            "", "## Quick bench", "", *self._bench_section(),
            "", "## Heat maps: do they look at the eyes and mouth?", "",
            "On held-out faces, where the rule that made the level is known, each method's "
            "heat inside the eye and mouth boxes over the boxes' share of the image (energy "
            "ratio; 1.0 = no preference), and how often the map's peak lands in them. The "
            "centre prior is a blob in the middle of the face: a method must beat it, not "
            "just 1.0.", "",
            st["heatmaps"]["check_markdown"].split("\n", 2)[2].strip(), "",
            "Examples, one face per level: `heatmaps/index.html` (gradcam from the "
            "checkpoint) and `heatmaps_device/index.html` (cam computed from the exported "
            "ONNX through the torch-free Runtime).", "",
            "## A fooling image (the poster's figure)", "", self._fool_line(), "",
            "## Files", "",
            *[f"- {name}: {path}" for name, path in self.written.items()], "",
            "Next: score the demo's camera frames live (a folder stands in for a camera; open "
            "http://127.0.0.1:8080 once it runs):", "", f"    {next_command}", "",
        ]
        return "\n".join(lines)

    def _export_line(self) -> str:
        parts = []
        for key, m in self.steps["export"]["models"].items():
            gate = m.get("gate") or {}
            verdict = {"pass": "gate passed", "not judged": "gate not judged"}.get(
                _outcome(gate), "GATE FAILED")
            if key == FP32.key:
                parts.append(f"{m['file']}: max prob diff {m['max_abs_prob_diff']:.1e} vs "
                             f"torch, {verdict}")
            else:
                parts.append(f"{m['file']}: {_pct(m['top1_agreement'])} agreement with torch "
                             f"on {m['n']} crops, {verdict}")
        return "; ".join(parts)

    def _export_section(self) -> list[str]:
        ex = self.steps["export"]
        lines = ["| file | size | checked on | vs torch | gate |", "|---|---|---|---|---|"]
        for key, m in ex["models"].items():
            gate = m.get("gate") or {}
            if key == FP32.key:
                figure = f"max abs probability difference {m['max_abs_prob_diff']:.1e}"
                rule = f"<= {gate.get('max_abs_prob_diff', 0):.0e}"
            else:
                figure = f"top-1 agreement {_pct(m['top1_agreement'])}"
                rule = f">= {_pct(gate.get('min_top1_agreement', 0))}"
            verdict = {"pass": "passed", "not judged": "not judged (too few crops to show "
                       "it)"}.get(_outcome(gate), "**failed**")
            lines.append(f"| {m['file']} | {m['bytes'] / 1e6:.1f} MB | {m['n']} validation "
                         f"crops | {figure} | {rule}: {verdict} |")
        if ex["int8_steps"]:
            lines += ["", "INT8 steps (agreement with torch after each): "
                      f"{', '.join(ex['int8_steps'])}."]
        if ex["forced"]:
            lines += ["", "**A gate failed**; the demo wrote the file anyway so the remaining "
                      "steps can run (a plain `edge-smw export` would have refused). Why:", ""]
            lines += [f"- {msg}" for msg in ex["forced"]]
        lines += ["", f"Files: `{ex['dir']}` (`export.json` holds every figure and setting)."]
        return lines

    def _runtime_line(self) -> str:
        return "; ".join(f"{m} {_pct(v['accuracy'])}" for m, v in self.steps["runtime"].items())

    def _bench_line(self) -> str:
        b = self.steps["bench"]
        ok = [r for r in b["latency"] if r["status"] == "ok" and r["p50_ms"]]
        return ", ".join(f"{r['format']} {r['p50_ms']:.1f} ms" for r in ok) + " (batch 1, p50)"

    def _bench_section(self) -> list[str]:
        b = self.steps["bench"]
        lines = ["| model | backend | size (MB) | p50 ms (batch 1) |", "|---|---|---|---|"]
        for r in b["latency"]:
            if r["status"] != "ok":
                continue
            size = "-" if r["size_mb"] is None else f"{r['size_mb']:.1f}"
            p50 = "-" if not r["p50_ms"] else f"{r['p50_ms']:.2f}"
            lines.append(f"| {r['format']} | {r['backend']} | {size} | {p50} |")
        absent = sorted({r["backend"] for r in b["latency"] if r["status"] != "ok"})
        if absent:
            lines += ["", f"Not run on this machine: {', '.join(absent)} (bench.md says why)."]
        if b["speedups"]:
            lines += ["", "Speed-ups at batch 1 (same process, interleaved): " + ", ".join(
                f"{c['model']} vs {c['versus']} {c['speedup']:.2f}x" for c in b["speedups"])
                + "."]
        lo, hi = b["runs"]
        lines += [
            "", f"The quick suite times each model {lo}-{hi} times on this machine as it is "
            f"now (load average {b['load_average']}): orders of size that show the bench "
            "runs, not figures to quote; `edge-smw bench EXPORT --suite full` measures those.",
        ]
        gates = b["gates"]
        if gates:
            judged = [g for g in gates if g["passed"] is not None]
            unjudged = [g for g in gates if g["not_judged"]]
            lines += [
                "", f"The bench's gates, on its {b['parity_n']} test crops (a gate is judged only "
                "on enough crops for its threshold, else \"not judged: n too small\"): "
                f"{len(judged)} judged ({sum(1 for g in judged if g['passed'])} passed), "
                f"{len(unjudged)} not judged:", "",
                *[f"    {g['line']}" for g in gates],
            ]
            int8 = self.steps["export"]["models"].get(INT8_CPU.key) or {}
            failed = self._int8_failed_bench()
            if (int8.get("gate") or {}).get("passed") and failed:
                lines += [
                    "", "The export's int8 gate passed on its validation crops but the bench "
                    f"failed it on the test crops ({', '.join(failed)}): the claim made on "
                    "validation did not hold on crops it had not seen, so the next command "
                    "below serves the fp32 file. On this synthetic model more float blocks "
                    "did not close the gap (measured: seven float blocks, 99.6% on validation, "
                    "98.0% on test).",
                ]
        lines += [
            "",
            f"Full tables and gates: `{b['md']}`; reproduce: `{b['command']}`.",
        ]
        return lines

    def _check_line(self) -> str:
        scores = self.steps["heatmaps"]["check"]["scores"]
        prior = scores[-1]
        methods = scores[:-1]
        best = max(methods, key=lambda s: s["energy_ratio"] if s["n"] else -1)
        beat = sum(1 for s in methods if s["n"] and s["energy_ratio"] > prior["energy_ratio"])
        return (f"best {best['method']} energy ratio {best['energy_ratio']:.2f} vs centre prior "
                f"{prior['energy_ratio']:.2f}; {beat} of {len(methods)} methods beat the prior")

    def _fool_line(self) -> str:
        f = self.steps["fool"]
        rec = f["record"]
        if not rec:
            return "no fooling image (the face could not be read)"
        still = "still fools" if rec.get("saved_png_still_fools") else "does not fool"
        return (f"a held-out face of level {f['true_level']}, scored {rec.get('level_before')} "
                f"by the model, pushed toward level {rec.get('target')} with changes of at most "
                f"{f['eps']:g}/255 per pixel ({f['steps']} PGD steps): scored "
                f"{rec.get('level_after')} afterwards; the saved PNG {still} "
                "(`fooling/`: original | fooling image | difference x50)")


def write_camera_frames(items: Sequence[Any], folder: Path, runtime: Any, *,
                        faces_per_level: int, frames_per_face: int, seed: int = 0
                        ) -> dict[str, Any]:
    """Held-out faces composited into ``FRAME_SIZE`` frames: a folder ``serve`` plays as a
    camera. A face is used only when ``runtime`` (with its default face detection, as
    ``serve`` runs it) finds exactly one face in its frame; each is held for
    ``frames_per_face`` frames with a small drift, so the live view can settle on it."""
    from edge_smw.images import read_image, write_image

    rng = np.random.default_rng(seed)
    by_level: dict[int, list[Any]] = {}
    for item in sorted(items, key=lambda i: str(i.path)):
        by_level.setdefault(item.level, []).append(item)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("frame-*.jpg"):
        old.unlink()
    chosen: list[dict[str, Any]] = []
    tried = 0
    index = 0
    for level in sorted(by_level):
        found = 0
        for item in by_level[level]:
            if found >= faces_per_level:
                break
            tried += 1
            face = read_image(item.path)
            frame = compose_frame(face, rng)
            if len(runtime.score(frame).faces) != 1:
                continue
            found += 1
            chosen.append({"image": str(item.path), "level": level})
            for k in range(frames_per_face):
                shifted = compose_frame(face, rng, drift=k)
                write_image(folder / f"frame-{index:04d}.jpg", shifted)
                index += 1
    return {"folder": str(folder), "count": index, "faces": chosen, "tried": tried}


def compose_frame(face: np.ndarray, rng: np.random.Generator, drift: int = 0) -> np.ndarray:
    """A face crop upscaled into the middle of a plain, lit backdrop (the frame of a webcam
    at arm's length), moved ``drift`` steps to the right."""
    import cv2

    width, height = FRAME_SIZE
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top = np.array([196, 188, 178], np.float32)
    bottom = np.array([120, 112, 104], np.float32)
    frame = top + (bottom - top) * ys
    frame = np.broadcast_to(frame, (height, width, 3)).copy()
    side = int(height * 0.6)
    crop = cv2.resize(face, (side, side), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    x0 = (width - side) // 2 + 3 * drift - 12
    y0 = (height - side) // 2
    frame[y0:y0 + side, x0:x0 + side] = crop
    frame += rng.normal(0.0, 1.5, frame.shape).astype(np.float32)
    return np.clip(frame, 0, 255).astype(np.uint8)


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in ("accuracy", "mae", "n")}


def _poster(metrics: dict[str, Any]) -> str:
    from edge_smw.evaluate import poster_table

    return poster_table(metrics)


def _outcome(gate: dict[str, Any]) -> str:
    """A written gate's verdict (``Gate.to_dict``): ``pass``, ``fail`` or ``not judged``."""
    return gate.get("outcome", "fail")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _one_per_level(items: list) -> list:
    seen: dict[int, Any] = {}
    for item in sorted(items, key=lambda i: str(i.path)):
        seen.setdefault(item.level, item)
    return [seen[k] for k in sorted(seen)]
