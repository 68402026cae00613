"""``edge-smw export`` as a library call: checkpoint -> checked, deployable models.

Everything is built in a staging folder inside ``--out`` and moved into place only at the end,
file by file with an atomic rename, after every parity gate passed (or ``--force`` said to
write anyway): a failed, refused or interrupted export leaves no half-written model behind.

Writes ``model.onnx`` (fp32), ``model.int8.onnx`` (cpu flavour), ``model.int8-trt.onnx``
(tensorrt flavour), ``model.fp16.onnx``, ``model.<gpu>.<precision>.engine`` (+ sidecar),
``calibration/`` (onnxruntime's TensorRT calibration table and the range cache),
``quant_report.<flavour>.{md,json,png}`` and ``export.json`` (what, from what, settings,
hashes, parity figures, every INT8 step, versions).
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from edge_smw import __version__
from edge_smw.artifacts.folders import CALIBRATION_DIR, EXPORT_JSON
from edge_smw.artifacts.formats import FP16, FP32
from edge_smw.atomic import write_json
from edge_smw.cache import file_sha256
from edge_smw.errors import GateFailure, InputError
from edge_smw.export import quantize as Q
from edge_smw.export.crops import (
    CropSet,
    calibration_crops,
    find_split,
    split_items,
    validation_crops,
)
from edge_smw.export.onnx import export_fp32, model_info, save_model, set_metadata
from edge_smw.export.parity import (
    FP32_MAX_ABS_DIFF,
    INT8_MIN_AGREEMENT,
    compare,
    latency,
    runtime_probabilities,
    torch_probabilities,
)
from edge_smw.export.profiles import Profile, resolve_profile
from edge_smw.metadata import ModelInfo
from edge_smw.train.checkpoint import Checkpoint, load_checkpoint

log = logging.getLogger("edge_smw.export")


@dataclass
class ExportOptions:
    """What to build; ``None`` fields are taken from the profile, else the defaults here."""

    out: Path
    int8: bool | None = None
    fp16: bool | None = None
    engine: bool | None = None
    profile: str | None = None
    flavours: tuple[str, ...] | None = None
    calib_data: Path | None = None
    calib_size: int | None = None
    calib_method: str | None = None
    num_bins: int = Q.ENTROPY_BINS
    percentile: float = Q.PERCENTILE
    feature_map: bool = False
    force: bool = False
    report: bool = False
    target_agreement: float | None = None
    max_mixed_steps: int | None = None
    aware_head: bool | None = None
    bias_correction: bool | None = None
    reduce_range: str | None = None
    val_limit: int | None = None
    latency_runs: int = 30
    seed: int = 0
    progress: bool = True
    batch_min: int | None = None
    batch_opt: int | None = None
    batch_max: int | None = None
    workspace_mb: int | None = None
    dla_core: int | None = None


@dataclass
class Resolved:
    """Options after the profile and defaults were applied (recorded in export.json)."""

    int8: bool
    fp16: bool
    engine: bool
    flavours: list[str]
    calib_size: int
    calib_method: Q.CalibMethod
    target_agreement: float
    max_mixed_steps: int
    aware_head: bool
    bias_correction: bool
    reduce_range: str
    batch: tuple[int, int, int]
    workspace_mb: int
    dla_core: int
    profile: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["calib_method"] = self.calib_method.value
        return data


def resolve_options(options: ExportOptions) -> Resolved:
    profile: Profile | None = resolve_profile(options.profile) if options.profile else None
    p_int8 = profile is not None and profile.precision == "int8"
    p_fp16 = profile is not None and profile.precision == "fp16"
    cal = profile.calibration if profile else {}
    i8 = profile.int8 if profile else {}
    trt = profile.tensorrt if profile else {}

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    flavours = list(options.flavours or (profile.flavours if profile and profile.flavours
                                         else [f.value for f in Q.Flavour]))
    for f in flavours:
        Q.parse_enum(Q.Flavour, f, "INT8 flavour")
    resolved = Resolved(
        int8=bool(pick(options.int8, p_int8)), fp16=bool(pick(options.fp16, p_fp16)),
        engine=bool(pick(options.engine, profile.engine if profile else False)),
        flavours=flavours,
        calib_size=int(pick(options.calib_size, cal.get("size", 128))),
        calib_method=Q.parse_enum(Q.CalibMethod, pick(options.calib_method,
                                                      cal.get("method", "minmax")),
                                  "--calib-method"),
        target_agreement=float(pick(options.target_agreement,
                                    i8.get("target_agreement", INT8_MIN_AGREEMENT))),
        max_mixed_steps=int(pick(options.max_mixed_steps, i8.get("max_mixed_steps", 6))),
        aware_head=bool(pick(options.aware_head, i8.get("aware_head", False))),
        bias_correction=bool(pick(options.bias_correction, i8.get("bias_correction", True))),
        reduce_range=str(pick(options.reduce_range, i8.get("reduce_range", "auto"))),
        batch=(int(pick(options.batch_min, trt.get("batch_min", 1))),
               int(pick(options.batch_opt, trt.get("batch_opt", 1))),
               int(pick(options.batch_max, trt.get("batch_max", 8)))),
        workspace_mb=int(pick(options.workspace_mb, trt.get("workspace_mb", 1024))),
        dla_core=int(pick(options.dla_core, trt.get("dla_core", -1))),
        profile=profile.to_dict() if profile else None,
    )
    if not 0.0 < resolved.target_agreement <= 1.0:
        raise InputError(f"--int8-target-agreement {resolved.target_agreement}: give a fraction "
                         "in (0, 1], e.g. 0.98")
    if resolved.max_mixed_steps < 0:
        raise InputError("the mixed-precision step budget must be >= 0")
    if resolved.int8 and not resolved.flavours:
        raise InputError("--int8 with no flavour: choose cpu and/or tensorrt")
    if resolved.aware_head and not resolved.int8:
        raise InputError("--int8-aware-head needs --int8 (it retrains the head for the int8 "
                         "backbone)")
    if options.latency_runs < 1:
        raise InputError("latency runs must be >= 1")
    return resolved


@dataclass
class ExportResult:
    out: Path
    files: list[str]
    summary: dict[str, Any]
    forced: list[str] = field(default_factory=list)


class _Stage:
    """A staging folder inside the output folder; files move out only at ``commit``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        try:
            out.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
        except OSError as exc:
            raise InputError(f"cannot write into {out}: {exc.strerror or exc}; choose a "
                             "writable --out folder") from None
        self.files: list[str] = []

    def file(self, name: str) -> Path:
        if name not in self.files:
            self.files.append(name)
        return self.path / name

    def commit(self) -> list[str]:
        moved = []
        for name in self.files:
            src = self.path / name
            if not src.exists():
                continue
            dst = self.out / name
            if src.is_dir():
                dst.mkdir(exist_ok=True)
                for child in src.iterdir():
                    os.replace(child, dst / child.name)
            else:
                os.replace(src, dst)
            moved.append(name)
        return moved

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def export_model(source: str | Path, options: ExportOptions) -> ExportResult:
    """Export ``source`` (a run folder or checkpoint) as ``options`` say; see module doc."""
    started = time.perf_counter()
    resolved = resolve_options(options)
    checkpoint = load_checkpoint(source)
    if resolved.engine:
        from edge_smw.export.tensorrt import import_tensorrt

        import_tensorrt()  # fail now, not after minutes of calibration
    out = Path(options.out)
    stage = _Stage(out)
    try:
        result = _export(source, checkpoint, options, resolved, stage)
        result.files = stage.commit()
        result.summary["seconds"] = round(time.perf_counter() - started, 1)
        write_json(out / EXPORT_JSON, result.summary)
        result.files.append(EXPORT_JSON)
        return result
    finally:
        stage.cleanup()


def _export(source: str | Path, checkpoint: Checkpoint, options: ExportOptions,
            resolved: Resolved, stage: _Stage) -> ExportResult:
    contract = checkpoint.contract
    progress = options.progress
    forced: list[str] = []
    summary: dict[str, Any] = {
        "source": {"path": str(source), "checkpoint": str(checkpoint.path),
                   "checkpoint_sha256": checkpoint.sha256, "backbone": checkpoint.backbone,
                   "levels": list(contract.levels), "detect": checkpoint.detect,
                   "split_sha256": checkpoint.split_sha256,
                   "training_metrics": checkpoint.metrics},
        "settings": {**resolved.to_dict(), "feature_map": options.feature_map,
                     "force": options.force, "report": options.report,
                     "val_limit": options.val_limit, "seed": options.seed},
        "versions": _versions(), "machine": Q.cpu_features(), "models": {},
    }
    torch_model = checkpoint.build_model()
    fp32_path = stage.file(FP32.file_name)
    export_fp32(checkpoint, fp32_path, feature_map=options.feature_map, model=torch_model)
    fp32 = onnx.load_model(str(fp32_path))
    val = validation_crops(contract, detect=checkpoint.detect, run_or_checkpoint=source,
                           limit=options.val_limit, seed=options.seed, progress=progress)
    reference = torch_probabilities(torch_model, val, contract, progress=progress)
    summary["parity_data"] = val.describe()

    def parity(path: Path, desc: str) -> dict[str, Any]:
        return compare(runtime_probabilities(path, val, contract, progress=progress,
                                             desc=f"parity: {desc}"), reference, val.levels)

    fp32_parity = parity(fp32_path, "fp32")
    gate = {"max_abs_prob_diff": FP32_MAX_ABS_DIFF,
            "passed": fp32_parity["max_abs_prob_diff"] <= FP32_MAX_ABS_DIFF}
    summary["models"]["fp32"] = _model_entry(fp32_path, "fp32", fp32_parity, gate)
    if not gate["passed"]:
        _refuse(options, forced, f"fp32 ONNX differs from torch by "
                f"{fp32_parity['max_abs_prob_diff']:.2e} in probability (gate "
                f"{FP32_MAX_ABS_DIFF:.0e}) on {fp32_parity['n']} validation crops")

    if resolved.int8:
        summary["int8"] = _int8(source, checkpoint, fp32, fp32_path, options, resolved, stage,
                                val, reference, parity, forced, summary)
    if resolved.fp16:
        from edge_smw.export.fp16 import convert_fp16

        fp16_path = stage.file(FP16.file_name)
        fp16 = convert_fp16(fp32)
        set_metadata(fp16, model_info(checkpoint, precision="fp16",
                                      feature_map=options.feature_map))
        save_model(fp16, fp16_path)
        summary["models"]["fp16"] = _model_entry(fp16_path, "fp16", parity(fp16_path, "fp16"),
                                                 None)
    if resolved.engine:
        summary["engines"] = _engines(checkpoint, options, resolved, stage, summary)
    summary["forced"] = forced
    return ExportResult(stage.out, [], summary, forced)


def _refuse(options: ExportOptions, forced: list[str], message: str) -> None:
    if options.force:
        log.warning("--force: writing anyway: %s", message)
        forced.append(message)
        return
    raise GateFailure(message + "; nothing was written (pass --force to write it anyway)")


def _model_entry(path: Path, precision: str, parity: dict[str, Any],
                 gate: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    return {"file": path.name, "precision": precision, "sha256": file_sha256(path),
            "bytes": path.stat().st_size, "parity": parity, "gate": gate, **extra}


def _versions() -> dict[str, str]:
    import onnxruntime
    import timm

    return {"edge_smw": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


# -- INT8 ----------------------------------------------------------------------------------------
def _int8(source: str | Path, checkpoint: Checkpoint, fp32: onnx.ModelProto,
          fp32_path: Path, options: ExportOptions, resolved: Resolved, stage: _Stage,
          val: CropSet, reference: np.ndarray, parity: Callable[[Path, str], dict[str, Any]],
          forced: list[str], summary: dict[str, Any]) -> dict[str, Any]:
    from edge_smw.export import mixed
    from edge_smw.export.sensitivity import node_units, tensor_errors, unit_noise, write_report

    contract = checkpoint.contract
    progress = options.progress
    calib = calibration_crops(contract, detect=checkpoint.detect, size=resolved.calib_size,
                              run_or_checkpoint=source, calib_data=options.calib_data,
                              seed=options.seed, progress=progress)
    symmetric_only = resolved.flavours == ["tensorrt"]
    calibration = Q.calibrate(fp32_path, calib, contract, resolved.calib_method,
                              num_bins=options.num_bins, percentile=options.percentile,
                              progress=progress, activation_symmetric=symmetric_only)
    _write_calibration(calibration, calib, stage)
    info: dict[str, Any] = {"calibration": {**calibration.describe(), **calib.describe(),
                                            "paths": calib.paths},
                            "flavours": {}}
    units = node_units(fp32)
    work = Path(tempfile.mkdtemp(prefix=".int8-", dir=stage.path))
    for flavour_name in resolved.flavours:
        flavour = Q.parse_enum(Q.Flavour, flavour_name, "INT8 flavour")
        reduce_range, why = Q.decide_reduce_range(flavour, resolved.reduce_range,
                                                  summary["machine"])
        spec = Q.flavour_spec(flavour, reduce_range=reduce_range)
        counter = {"n": 0}

        def evaluate(model: onnx.ModelProto, tag: str, _f=flavour, _c=counter) -> dict[str, Any]:
            _c["n"] += 1
            path = work / f"{_f.value}-{_c['n']}.onnx"
            onnx.save_model(model, str(path))
            figures = parity(path, f"{_f.value} {tag}")
            speed = latency({"fp32": fp32_path, "int8": path}, contract.input_size,
                            runs=options.latency_runs)
            return {"agreement": figures["top1_agreement"], "accuracy": figures.get("accuracy"),
                    "latency_ms_p50": speed["int8"]["p50_ms"],
                    "fp32_latency_ms_p50": speed["fp32"]["p50_ms"], "parity": figures,
                    "path": path}

        steps: list[dict[str, Any]] = []
        naive = Q.quantize(fp32, calibration, spec)
        naive_fig = evaluate(naive, "naive")
        steps.append(_step("naive static int8 (float tail kept)", naive_fig, True))
        current, current_fig, correction = naive, naive_fig, None
        if resolved.bias_correction:
            correction = Q.measure_weight_shift(fp32, naive, calib, contract)
            corrected = Q.quantize(Q.apply_bias_correction(fp32, correction), calibration, spec)
            fig = evaluate(corrected, "bias-corrected")
            kept = fig["agreement"] >= naive_fig["agreement"]
            steps.append(_step("bias correction", fig, kept,
                               "" if kept else "lowered agreement: reverted",
                               correction=correction.describe()))
            if kept:
                current, current_fig = corrected, fig
            else:
                correction = None
        report_files: dict[str, str] = {}
        needs_mixed = (current_fig["agreement"] < resolved.target_agreement
                       and resolved.max_mixed_steps > 0)
        noise: list[dict[str, Any]] = []
        if needs_mixed or options.report:
            noise = unit_noise(fp32, calibration, spec, correction, units, calib, contract,
                               progress=progress)
        if options.report:
            errors = tensor_errors(fp32_path, current_fig["path"], calib, contract,
                                   progress=progress)
            name = f"quant_report.{flavour.value}"
            for key in ("json", "md", "png"):
                stage.file(f"{name}.{key}")
            written = write_report(errors, stage.path, name=name,
                                   title=f"INT8 sensitivity, {flavour.value} flavour",
                                   meta={"crops": min(32, len(calib)),
                                         "model": f"{flavour.file_name} with every block "
                                                  "int8 (bias-corrected, before mixed "
                                                  "precision)",
                                         "calibration": calibration.describe()},
                                   noise=noise)
            report_files = {k: v.name for k, v in written.items()}
        mixed_info = None
        float_nodes: list[str] = []
        if needs_mixed:
            result = mixed.search(
                fp32, calibration, spec, correction, units=units,
                ranking=[u["unit"] for u in noise],
                evaluate=lambda m, _e=evaluate: _e(m, "mixed"), target=resolved.target_agreement,
                max_steps=resolved.max_mixed_steps, start=(current, current_fig))
            mixed_info = result.describe()
            for s in result.steps[1:]:
                steps.append({"step": s.action, "agreement": s.agreement, "accuracy": s.accuracy,
                              "latency_ms_p50": s.latency_ms_p50, "kept": s.kept,
                              "note": s.note})
            if result.float_units:
                current, current_fig = result.model, result.figures
                float_nodes = result.float_nodes
        head_info = None
        head = (checkpoint.head_weight, checkpoint.head_bias)
        if resolved.aware_head:
            from edge_smw.export.int8_head import retrain_head, set_head

            split = find_split(source)
            if split is None:
                raise InputError(f"--int8-aware-head retrains the head on the run's training "
                                 f"split, and {source} has no split.json beside it: export "
                                 "the run folder")
            items = split_items(split, "train", contract.levels)
            weight, bias, head_info = retrain_head(current, checkpoint, items, progress=progress)
            aware = set_head(current, weight, bias)
            fig = evaluate(aware, "int8-aware head")
            head_info = {**head_info, "plain_int8": _brief(current_fig), "aware": _brief(fig)}
            steps.append(_step("int8-aware head", fig, True))
            current, current_fig, head = aware, fig, (weight, bias)
        if flavour is Q.Flavour.TENSORRT:
            problems = Q.tensorrt_problems(current)
            if problems:
                raise GateFailure("the tensorrt-flavour model is not valid explicit "
                                  "quantization: " + "; ".join(problems[:5]))
        figures = current_fig["parity"]
        passed = figures["top1_agreement"] >= INT8_MIN_AGREEMENT
        path = stage.file(flavour.file_name)
        meta = model_info(checkpoint, precision="int8", feature_map=options.feature_map,
                          int8={"flavour": flavour.value, "agreement": figures["top1_agreement"],
                                "float_units": mixed_info["float_units"] if mixed_info else [],
                                "aware_head": resolved.aware_head})
        meta.flavour = flavour.value
        meta.calibration_sha256 = calibration.crops_sha256
        if options.feature_map:
            meta.head_weight = np.asarray(head[0]).tolist()
            meta.head_bias = np.asarray(head[1]).tolist()
        set_metadata(current, meta)
        save_model(current, path)
        gate = {"min_top1_agreement": INT8_MIN_AGREEMENT, "passed": passed}
        info["flavours"][flavour.value] = {
            "file": flavour.file_name, "settings": {**spec.describe(), "reduce_range_why": why},
            "steps": steps, "mixed_precision": mixed_info, "float_nodes": float_nodes,
            "unit_logit_noise": noise,
            "aware_head": head_info, "qdq": Q.qdq_summary(current),
            "latency_ms_p50": current_fig["latency_ms_p50"],
            "fp32_latency_ms_p50": current_fig["fp32_latency_ms_p50"],
            "speedup_vs_fp32": current_fig["fp32_latency_ms_p50"] / current_fig["latency_ms_p50"],
            "report": report_files,
        }
        summary["models"][f"int8-{flavour.value}"] = _model_entry(
            path, "int8", figures, gate, flavour=flavour.value)
        if not passed:
            _refuse(options, forced, _int8_failure(flavour, figures, steps))
    shutil.rmtree(work, ignore_errors=True)
    return info


def _brief(fig: dict[str, Any]) -> dict[str, Any]:
    parity = fig["parity"]
    return {k: parity.get(k) for k in ("top1_agreement", "accuracy", "accuracy_torch",
                                       "accuracy_delta", "mae_delta", "max_abs_prob_diff")}


def _step(name: str, fig: dict[str, Any], kept: bool, note: str = "", **extra: Any
          ) -> dict[str, Any]:
    return {"step": name, "agreement": fig["agreement"], "accuracy": fig.get("accuracy"),
            "latency_ms_p50": fig.get("latency_ms_p50"),
            "fp32_latency_ms_p50": fig.get("fp32_latency_ms_p50"), "kept": kept, "note": note,
            **extra}


def _int8_failure(flavour: Q.Flavour, figures: dict[str, Any], steps: list[dict]) -> str:
    trail = ", ".join(f"{s['step']} {100 * s['agreement']:.1f}%" for s in steps)
    acc = ""
    if "accuracy" in figures:
        acc = (f", accuracy {100 * figures['accuracy']:.1f}% vs torch "
               f"{100 * figures['accuracy_torch']:.1f}%")
    return (f"int8 ({flavour.value}) agrees with the torch model on "
            f"{100 * figures['top1_agreement']:.1f}% of {figures['n']} validation crops (gate "
            f"{100 * INT8_MIN_AGREEMENT:.0f}%){acc}; steps: {trail}")


def _write_calibration(calibration: Q.Calibration, crops: CropSet, stage: _Stage) -> None:
    """onnxruntime's TensorRT calibration table (for the TensorRT EP's own INT8 mode on the
    fp32 model) and the range cache, in ``calibration/``."""
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.quant_utils import write_calibration_table

    folder = stage.file(CALIBRATION_DIR)
    folder.mkdir()
    with Q.quiet_ort():  # it logs the whole table at INFO on the root logger
        write_calibration_table(calibration.tensors_data().data, dir=str(folder))
    save_tensors_data(calibration.tensors_data(), folder / "ranges.json")
    write_json(folder / "crops.json", {"source": crops.source, "sha256": crops.sha256,
                                       "paths": crops.paths,
                                       "levels": crops.levels.tolist()})


# -- engines -------------------------------------------------------------------------------------
def _engines(checkpoint: Checkpoint, options: ExportOptions, resolved: Resolved, stage: _Stage,
             summary: dict[str, Any]) -> list[dict[str, Any]]:
    from edge_smw.export.tensorrt import EngineSettings, build_engine

    built = []
    lo, opt, hi = resolved.batch
    jobs = []
    if resolved.int8 and "tensorrt" in resolved.flavours:
        jobs.append(("int8", Q.Flavour.TENSORRT.file_name))
    if resolved.fp16 or not jobs:
        jobs.append(("fp16", FP32.file_name))
    for precision, name in jobs:
        onnx_path = stage.path / name
        info = ModelInfo.from_file(onnx_path)
        info.precision = precision
        calib = summary.get("int8", {}).get("calibration", {}).get("crops_sha256") \
            if precision == "int8" else None
        settings = EngineSettings(precision, lo, opt, hi, resolved.workspace_mb, resolved.dla_core)
        engine = build_engine(onnx_path, settings, info=info, out_dir=stage.path,
                              calibration_sha256=calib)
        stage.file(engine["file"])
        stage.file(engine["file"] + ".json")
        built.append(engine)
    return built
