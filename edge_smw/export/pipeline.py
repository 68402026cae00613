"""``edge-smw export`` as a library call: checkpoint -> checked, deployable models.

Everything is built in a staging folder inside ``--out`` and moved into place only at the end,
file by file with an atomic rename, after every parity gate passed (or ``--force`` said to
write anyway): a failed, refused or interrupted export leaves no half-written model behind.

Writes ``model.onnx`` (fp32), ``model.int8.onnx`` (cpu flavour), ``model.int8-trt.onnx``
(tensorrt flavour), ``model.fp16.onnx``, ``model.<gpu>.<precision>.engine`` (+ sidecar),
``calibration/`` (onnxruntime's TensorRT calibration table and the range cache),
``quant_report.<flavour>.{md,json,png}`` and ``export.json`` (what, from what, settings,
hashes, parity figures, every INT8 step, versions). Figures travel as the typed objects of
``edge_smw.export.results`` and become JSON only there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from edge_smw import __version__
from edge_smw.artifacts.folders import CALIBRATION_DIR, EXPORT_JSON, ExportDir, quant_report_name
from edge_smw.artifacts.formats import FP16, FP32, int8_format
from edge_smw.atomic import write_json
from edge_smw.cache import file_sha256
from edge_smw.cpu import cpu_features
from edge_smw.errors import GateFailure, InputError
from edge_smw.export import int8, layout
from edge_smw.export import quantize as Q
from edge_smw.export.crops import (
    MIN_CALIBRATION,
    CropSet,
    calibration_crops,
    folder_items,
    validation_crops,
)
from edge_smw.export.onnx import export_fp32, model_info, save_model, set_metadata
from edge_smw.export.parity import FP32_MAX_ABS_DIFF, runtime_probabilities, torch_probabilities
from edge_smw.export.results import ExportSummary, Gate, Int8Result, ModelEntry, Parity
from edge_smw.export.settings import ExportSettings
from edge_smw.metadata import ModelInfo
from edge_smw.train.checkpoint import Checkpoint, load_checkpoint

log = logging.getLogger("edge_smw.export")


@dataclass
class ExportResult:
    out: Path
    files: list[str]
    summary: ExportSummary
    removed: list[str] = field(default_factory=list)  # an earlier export's files, removed

    @property
    def forced(self) -> list[str]:
        return self.summary.forced


class _Stage:
    """A staging folder inside the output folder; files move out only at ``commit``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        # the folders mkdir below makes (out and any missing parents), innermost first
        self.made = [folder for folder in (out, *out.parents) if not folder.exists()]
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
        # A failed export into new folders leaves no empty folder behind; rmdir refuses once
        # anything was written.
        for folder in self.made:
            with contextlib.suppress(OSError):
                folder.rmdir()


def export_model(source: str | Path, out: str | Path, settings: ExportSettings | None = None,
                 *, progress: bool = True) -> ExportResult:
    """Export ``source`` (a run folder or checkpoint) into ``out``; see the module doc.

    ``settings``: what to build (``resolve_settings`` layers a profile and overrides over the
    defaults); None builds the fp32 model only.
    """
    started = time.perf_counter()
    settings = settings or ExportSettings()
    checkpoint = load_checkpoint(source)
    if settings.int8 and settings.calib_data is not None:  # now, not after parity
        found = folder_items(settings.calib_data, checkpoint.contract.levels)
        if len(found) < MIN_CALIBRATION:
            raise InputError(f"--calib-data {settings.calib_data}: {len(found)} photos, fewer "
                             f"than the {MIN_CALIBRATION} face crops INT8 calibration needs; "
                             "add face photos")
    if settings.engine:
        from edge_smw.export.tensorrt import import_tensorrt

        import_tensorrt()  # fail now, not after minutes of calibration
    out = Path(out)
    stage = _Stage(out)
    try:
        summary = _export(Path(source), checkpoint, settings, stage, progress)
        files = [*stage.commit(), EXPORT_JSON]
        summary.seconds = round(time.perf_counter() - started, 1)
        write_json(out / EXPORT_JSON, summary.to_dict())
        # Only now, with this export in place: models an earlier export left (another
        # checkpoint's, or formats this one did not build) would be picked in its stead.
        removed = ExportDir(out).remove_stale(files)
        return ExportResult(out, files, summary, removed)
    finally:
        stage.cleanup()


def _export(source: Path, checkpoint: Checkpoint, settings: ExportSettings, stage: _Stage,
            progress: bool) -> ExportSummary:
    contract = checkpoint.contract
    summary = ExportSummary(
        source={"path": str(source), "checkpoint": str(checkpoint.path),
                "checkpoint_sha256": checkpoint.sha256, "backbone": checkpoint.backbone,
                "levels": list(contract.levels), "detect": checkpoint.detect,
                "split_sha256": checkpoint.split_sha256,
                "training_metrics": checkpoint.metrics},
        settings=settings.to_dict(), versions=_versions(), machine=cpu_features())
    torch_model = checkpoint.build_model()
    fp32_path = stage.file(FP32.file_name)
    export_fp32(checkpoint, fp32_path, feature_map=settings.feature_map, model=torch_model)
    fp32 = onnx.load_model(str(fp32_path))
    val = validation_crops(contract, detect=checkpoint.detect, run_or_checkpoint=source,
                           limit=settings.val_limit, seed=settings.seed, progress=progress)
    reference = torch_probabilities(torch_model, val, contract, progress=progress)
    summary.parity_data = val.describe()

    def parity(path: Path, desc: str) -> Parity:
        return Parity.measure(runtime_probabilities(path, val, contract, progress=progress,
                                                    desc=f"parity: {desc}"),
                              reference, val.levels)

    fp32_parity = parity(fp32_path, "fp32")
    fp32_gate = Gate.max_diff(fp32_parity, FP32_MAX_ABS_DIFF)
    summary.models[FP32.key] = _model_entry(fp32_path, "fp32", fp32_parity, fp32_gate)
    if fp32_gate.refused:
        _refuse(settings, summary, f"fp32 ONNX differs from torch: {fp32_gate.claim} on the "
                                  "validation split")
    if settings.int8:
        summary.int8 = _int8(source, checkpoint, fp32, fp32_path, settings, stage, val,
                             reference, summary, progress)
    if settings.fp16:
        from edge_smw.export.fp16 import convert_fp16

        fp16_path = stage.file(FP16.file_name)
        fp16 = convert_fp16(fp32)
        set_metadata(fp16, model_info(checkpoint, precision="fp16",
                                      feature_map=settings.feature_map))
        save_model(fp16, fp16_path)
        summary.models[FP16.key] = _model_entry(fp16_path, "fp16", parity(fp16_path, "fp16"))
    if settings.engine:
        calibration = summary.int8.calibration_sha256 if summary.int8 else None
        summary.engines = _engines(checkpoint, settings, stage, calibration)
    return summary


def _refuse(settings: ExportSettings, summary: ExportSummary, message: str) -> None:
    if settings.force:
        log.warning("--force: writing anyway: %s", message)
        summary.forced.append(message)
        return
    raise GateFailure(message + "; nothing was written (pass --force to write it anyway)")


def _model_entry(path: Path, precision: str, parity: Parity, gate: Gate | None = None,
                 flavour: str | None = None) -> ModelEntry:
    return ModelEntry(path.name, precision, file_sha256(path), path.stat().st_size, parity,
                      gate, flavour)


def _versions() -> dict[str, str]:
    import onnxruntime
    import timm

    return {"edge_smw": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


# -- INT8 ----------------------------------------------------------------------------------------
def _int8(source: Path, checkpoint: Checkpoint, fp32: onnx.ModelProto, fp32_path: Path,
          settings: ExportSettings, stage: _Stage, val: CropSet, reference: np.ndarray,
          summary: ExportSummary, progress: bool) -> Int8Result:
    """Calibrate once, then every flavour's steps (``edge_smw.export.int8``); write each
    model with its figures and gate."""
    contract = checkpoint.contract
    calib = calibration_crops(contract, detect=checkpoint.detect, size=settings.calib_size,
                              run_or_checkpoint=source, calib_data=settings.calib_data,
                              seed=settings.seed, progress=progress)
    calibration = int8.calibrate(fp32_path, calib, contract, settings, progress)
    _write_calibration(calibration, calib, stage)
    result = Int8Result({**calibration.describe(), **calib.describe(), "paths": calib.paths})
    work = int8.scratch(stage.path)
    try:
        ctx = int8.Int8Context(checkpoint, source, fp32, fp32_path, calib, val, reference,
                               calibration, settings, work, progress)
        for name in settings.flavours:
            flavour = Q.parse_enum(Q.Flavour, name, "INT8 flavour")
            run = int8.run_flavour(ctx, flavour)
            report = _int8_report(ctx, run, stage) if settings.report else {}
            verdict = int8.gate(run)
            path = stage.file(flavour.file_name)
            _write_int8(run, checkpoint, calibration, settings, verdict, path)
            result.flavours[flavour.value] = int8.result_of(run, report,
                                                            int8.speed_rounds(ctx, run))
            summary.models[int8_format(flavour.value).key] = _model_entry(
                path, "int8", run.figures.parity, verdict, flavour.value)
            if verdict.refused:
                _refuse(settings, summary, int8.failure_message(run, verdict))
    finally:
        int8.cleanup(work)
    return result


def _write_int8(run: int8.FlavourRun, checkpoint: Checkpoint, calibration: Q.Calibration,
                settings: ExportSettings, verdict: Gate, path: Path) -> None:
    """The kept model with its metadata: contract, flavour, weight width and target CPU (the
    runtime checks them against the CPU it runs on), the agreement claim."""
    parity = run.figures.parity
    meta = model_info(checkpoint, precision="int8", feature_map=settings.feature_map,
                      int8={"flavour": run.flavour.value,
                            "agreement": parity.top1_agreement,
                            "agreement_interval": list(verdict.interval
                                                       or parity.agreement.interval),
                            "models_compared": verdict.compared,
                            "gate": verdict.outcome, "float_units": run.float_units,
                            "steps": [s.name for s in run.steps if s.kept],
                            "aware_head": settings.aware_head,
                            "stem_input_channels": next(
                                (s.detail["stem"]["input_channels"] for s in run.steps
                                 if s.kept and s.name == layout.STEP
                                 and isinstance(s.detail["stem"], dict)), None),
                            "reduce_range": run.recipe.spec.reduce_range,
                            "target_cpu": (settings.target_cpu if run.flavour is Q.Flavour.CPU
                                           else None)})
    meta.flavour = run.flavour.value
    meta.calibration_sha256 = calibration.crops_sha256
    if settings.feature_map and run.head is not None:
        meta.head_weight = np.asarray(run.head[0]).tolist()
        meta.head_bias = np.asarray(run.head[1]).tolist()
    set_metadata(run.model, meta)
    save_model(run.model, path)


def _int8_report(ctx: int8.Int8Context, run: int8.FlavourRun, stage: _Stage) -> dict[str, str]:
    """The per-tensor sensitivity report of the all-int8 model (before any float island)."""
    from edge_smw.export.sensitivity import tensor_errors, write_report

    figures = run.all_int8 or run.figures
    # Against the float model it was quantized from: a kept equalization rescales channels.
    reference = ctx.work / f"source.{run.flavour.value}.onnx"
    onnx.save_model(run.recipe.source(ctx).model, str(reference))
    errors = tensor_errors(reference, figures.path, ctx.calib, ctx.contract,
                           progress=ctx.progress)
    name = quant_report_name(run.flavour.value)
    for key in ("json", "md", "png"):
        stage.file(f"{name}.{key}")
    kept = ", ".join(s.name for s in run.steps if s.kept and s.name != "all int8")
    written = write_report(errors, stage.path, name=name,
                           title=f"INT8 sensitivity, {run.flavour.value} flavour",
                           meta={"crops": min(32, len(ctx.calib)),
                                 "model": f"{run.flavour.file_name} with every block int8 "
                                          f"({kept}; before mixed precision)",
                                 "calibration": run.recipe.source(ctx).calibration.describe()},
                           noise=run.noise)
    return {k: v.name for k, v in written.items()}


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
def _engines(checkpoint: Checkpoint, settings: ExportSettings, stage: _Stage,
             calibration_sha256: str | None) -> list[dict[str, Any]]:
    from edge_smw.export.tensorrt import EngineSettings, build_engine

    built = []
    jobs = []
    if settings.int8 and "tensorrt" in settings.flavours:
        jobs.append(("int8", Q.Flavour.TENSORRT.file_name))
    if settings.fp16 or not jobs:
        jobs.append(("fp16", FP32.file_name))
    for precision, name in jobs:
        onnx_path = stage.path / name
        info = ModelInfo.from_file(onnx_path)
        info.precision = precision
        engine_settings = EngineSettings(precision, settings.batch_min, settings.batch_opt,
                                         settings.batch_max, settings.workspace_mb,
                                         settings.dla_core)
        engine = build_engine(onnx_path, engine_settings, info=info, out_dir=stage.path,
                              calibration_sha256=calibration_sha256 if precision == "int8"
                              else None)
        stage.file(engine["file"])
        stage.file(engine["file"] + ".json")
        built.append(engine)
    return built
