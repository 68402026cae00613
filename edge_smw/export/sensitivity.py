"""Where INT8 loses the signal: per-tensor float-vs-quantized error on calibration crops.

For every activation the QDQ model quantizes, two signal-to-quantization-noise ratios (dB,
higher is better), both against the float model's own activation on the same crop:

- ``local``: the tensor's own rounding and clipping, i.e. float activation -> its Q/DQ (scale,
  zero point) -> back. A low value means that tensor's range is too wide for 8 bits.
- ``model``: the QDQ model's activation (everything upstream quantized too), as in
  onnxruntime's ``qdq_loss_debug``; it shows where the accumulated error becomes large.

Tensors are named as in the ONNX graph (and the producing node, as Netron shows it) and
grouped in *units* (a residual block, the stem, the head): the granularity at which mixed
precision keeps layers in float.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization.qdq_loss_debug import (
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)

from edge_smw.artifacts.sessions import load_session
from edge_smw.atomic import atomic_path, write_json, write_text
from edge_smw.contract import PreprocessContract
from edge_smw.export.crops import CropSet
from edge_smw.export.quantize import UNOPTIMIZED, float_tail
from edge_smw.metadata import INPUT_NAME

_SAVED = "_ReshapedSavedOutput"  # qdq_loss_debug's suffix for saved activations
_BLOCK = re.compile(r"(blocks\.\d+\.\d+|layer\d+\.\d+|body\.\d+\.\d+|features\.\d+)")


@dataclass
class TensorError:
    tensor: str
    node: str  # the float model's node producing it (as Netron names it)
    op_type: str
    unit: str
    local_sqnr_db: float
    model_sqnr_db: float
    scale: float
    zero_point: int

    @property
    def rank_key(self) -> float:
        return self.local_sqnr_db


def block_of(node_name: str) -> str | None:
    """The block a node belongs to by its module path (``blocks.3.1``, ``layer2.0``), if any."""
    match = _BLOCK.search(node_name)
    return match.group(1) if match else None


def node_units(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Quantizable nodes (float tail excluded) grouped by unit, in graph order: each block,
    ``stem`` (before the first block) and ``head`` (after the last)."""
    tail = set(float_tail(model))
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    blocks = [i for n, i in order.items() if block_of(n)]
    last = max(blocks) if blocks else -1
    units: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.name in tail or node.op_type == "Constant":
            continue
        unit = block_of(node.name) or ("head" if blocks and order[node.name] > last else "stem")
        units.setdefault(unit, []).append(node.name)
    return units


def _qparams(qdq: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """tensor -> (scale, zero point, element type) of the QuantizeLinear that takes it."""
    init = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    out = {}
    for node in qdq.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in init:
            zp = init.get(node.input[2]) if len(node.input) > 2 else np.array(0, np.uint8)
            out[node.input[0]] = (init[node.input[1]], zp, zp.dtype)
    return out


def _fake_quant(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    q = np.clip(np.rint(x / scale) + zp.astype(np.float64), info.min, info.max)
    return (q - zp.astype(np.float64)) * scale


def tensor_errors(
    fp32_path: str | Path, qdq_path: str | Path, crops: CropSet, contract: PreprocessContract,
    *, limit: int = 32, batch_size: int = 4, progress: bool = True,
) -> list[TensorError]:
    """Per quantized activation: local and accumulated SQNR over ``limit`` calibration crops,
    lowest local SQNR first. Runs both models unfused (as ``qdq_loss_debug`` does) and
    accumulates energies batch by batch, so memory stays flat."""
    from tqdm.auto import tqdm

    fp32 = onnx.load_model(str(fp32_path))
    qdq = onnx.load_model(str(qdq_path))
    params = _qparams(qdq)
    producers = {out: node for node in fp32.graph.node for out in node.output}
    units = {name: unit for unit, names in node_units(fp32).items() for name in names}
    n = min(limit, len(crops))
    energy: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="edge-smw-sens-") as scratch:
        # onnxruntime writes a shape-inferred copy beside the model it augments: the models go
        # to this private folder first, never touching (or clashing in) the export folder.
        aug_f, aug_q = Path(scratch) / "float.onnx", Path(scratch) / "qdq.onnx"
        for model, augmented in ((fp32, aug_f), (qdq, aug_q)):
            source = augmented.with_name(f"source-{augmented.name}")
            onnx.save_model(model, str(source))
            modify_model_output_intermediate_tensors(str(source), str(augmented))
        sessions = (load_session(aug_f, UNOPTIMIZED), load_session(aug_q, UNOPTIMIZED))
        for start in tqdm(range(0, n, batch_size), desc="sensitivity", unit="batch",
                          disable=not progress, leave=False):
            feed = {INPUT_NAME: crops.inputs(contract, start, min(start + batch_size, n))}
            float_acts, qdq_acts = ({o.name[: -len(_SAVED)]: [v] for o, v in zip(
                s.get_outputs(), s.run(None, feed), strict=True) if o.name.endswith(_SAVED)}
                for s in sessions)
            matched = create_activation_matching(qdq_acts, float_acts)
            for name, match in matched.items():
                if "float" not in match or name not in params:
                    continue
                ref = match["float"][0].astype(np.float64)
                post = match["post_qdq"][0].astype(np.float64)
                scale, zp, dtype = params[name]
                local = _fake_quant(ref, scale.astype(np.float64), zp, dtype)
                acc = energy.setdefault(name, np.zeros(3))
                acc += [float((ref**2).sum()), float(((ref - local) ** 2).sum()),
                        float(((ref - post) ** 2).sum())]
    errors = []
    for name, (signal, local_noise, model_noise) in energy.items():
        node = producers.get(name)
        node_name = node.name if node is not None else name
        errors.append(TensorError(
            tensor=name, node=node_name, op_type=node.op_type if node is not None else "Input",
            unit=units.get(node_name, "stem"),
            local_sqnr_db=_db(signal, local_noise), model_sqnr_db=_db(signal, model_noise),
            scale=float(np.asarray(params[name][0]).ravel()[0]),
            zero_point=int(np.asarray(params[name][1]).ravel()[0]),
        ))
    errors.sort(key=lambda e: e.rank_key)
    return errors


def _db(signal: float, noise: float) -> float:
    if noise <= 0:
        return 120.0
    if signal <= 0:
        return -120.0
    return round(10.0 * math.log10(signal / noise), 3)


def unit_ranking(errors: Sequence[TensorError]) -> list[dict[str, Any]]:
    """Units, most sensitive first: by their worst local SQNR, ties by their worst model SQNR."""
    units: dict[str, list[TensorError]] = {}
    for e in errors:
        units.setdefault(e.unit, []).append(e)
    ranked = [{"unit": unit,
               "worst_local_sqnr_db": min(e.local_sqnr_db for e in group),
               "worst_model_sqnr_db": min(e.model_sqnr_db for e in group),
               "tensors": [e.tensor for e in group]}
              for unit, group in units.items()]
    ranked.sort(key=lambda u: (u["worst_local_sqnr_db"], u["worst_model_sqnr_db"]))
    return ranked


def write_report(errors: Sequence[TensorError], folder: str | Path, *, name: str,
                 title: str, meta: dict[str, Any],
                 noise: Sequence[dict[str, Any]] | None = None) -> dict[str, Path]:
    """``<name>.json``, ``<name>.md`` (ranked table) and ``<name>.png`` (bar chart);
    ``noise`` (from ``unit_noise``) adds the per-unit logit-noise ranking."""
    folder = Path(folder)
    ranking = unit_ranking(errors)
    data = {"title": title, **meta, "ranked_by": "local SQNR (dB), lowest first",
            "tensors": [asdict(e) for e in errors], "units": ranking,
            "unit_logit_noise": list(noise or [])}
    png = folder / f"{name}.png"
    _plot(errors, png, title)
    lines = [f"# {title}", "",
             "SQNR = 10 log10(signal / quantization noise) in dB over "
             f"{meta.get('crops', '?')} calibration crops; higher is better. *local*: this "
             "tensor's own 8-bit rounding/clipping; *model*: the quantized model's activation "
             "against the float model's (all upstream error included). Names are the ONNX "
             "tensor and node names (search them in Netron).", "",
             f"![SQNR per tensor]({png.name})", "",
             "| rank | tensor | node (op) | unit | local SQNR dB | model SQNR dB | scale |",
             "|---|---|---|---|---|---|---|"]
    for i, e in enumerate(errors, 1):
        lines.append(f"| {i} | `{e.tensor}` | `{e.node}` ({e.op_type}) | {e.unit} | "
                     f"{e.local_sqnr_db:.1f} | {e.model_sqnr_db:.1f} | {e.scale:.4g} |")
    if noise:
        lines += ["", "## Logit noise per unit (only that unit int8), largest first", "",
                  "What mixed precision ranks by: how much of a unit's quantization noise "
                  "reaches the logits (RMSE against the float model, logits centred per crop).",
                  "", "| unit | logit RMSE | nodes |", "|---|---|---|"]
        lines += [f"| {u['unit']} | {u['logit_rmse']:.3f} | {u['nodes']} |" for u in noise]
    lines += ["", "## Units by their worst tensor SQNR", "",
              "| unit | worst local SQNR dB | worst model SQNR dB | tensors |", "|---|---|---|---|"]
    for u in ranking:
        lines.append(f"| {u['unit']} | {u['worst_local_sqnr_db']:.1f} | "
                     f"{u['worst_model_sqnr_db']:.1f} | {len(u['tensors'])} |")
    return {"json": write_json(folder / f"{name}.json", data),
            "md": write_text(folder / f"{name}.md", "\n".join(lines) + "\n"), "png": png}


def _plot(errors: Sequence[TensorError], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(errors)[:40]
    labels = [_short(e.tensor) for e in shown]
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.22 * len(shown)))
    y = np.arange(len(shown))
    ax.barh(y - 0.2, [e.local_sqnr_db for e in shown], height=0.4, label="local")
    ax.barh(y + 0.2, [e.model_sqnr_db for e in shown], height=0.4, label="model (accumulated)")
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("SQNR (dB), higher is better")
    ax.set_title(title + (f" (40 lowest of {len(errors)})" if len(errors) > 40 else ""),
                 fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _short(name: str, width: int = 60) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def report_for_export(export_dir: str | Path, *, out: str | Path | None = None, limit: int = 32,
                      progress: bool = True) -> dict[str, dict[str, Path]]:
    """The sensitivity report for every INT8 model in an export folder (``quant-report``).

    Uses the export's own calibration crops (``calibration/crops.json``) and the contract and
    face-detection flag stored in ``model.onnx``: the report sees what the quantizer saw.
    """
    import json

    from edge_smw.artifacts.folders import ExportDir, quant_report_name
    from edge_smw.artifacts.formats import FP32
    from edge_smw.errors import InputError, ModelError
    from edge_smw.export.crops import load_crops
    from edge_smw.export.quantize import Flavour

    folder = ExportDir(Path(export_dir))
    fp32 = folder.path / FP32.file_name
    if not folder.path.is_dir():
        state = "is not a folder" if folder.path.exists() else "not found"
        raise InputError(f"{folder.path} {state}: give a folder written by `edge-smw export`")
    if not fp32.is_file():
        raise InputError(f"{folder.path} holds no {FP32.file_name}: give a folder written by "
                         "`edge-smw export`")
    models = {f.value: folder.path / f.file_name for f in Flavour
              if (folder.path / f.file_name).is_file()}
    if not models:
        names = " / ".join(f.file_name for f in Flavour)
        raise InputError(f"{folder.path} holds no INT8 model ({names}): export with --int8 first")
    info = folder.model_info(fp32)  # each model readable and of this export, before any work
    for path in models.values():
        folder.model_info(path)
    crops_json = folder.calibration / "crops.json"
    try:
        listed = json.loads(crops_json.read_text(encoding="utf-8"))
        paths = [Path(p) for p in listed["paths"]]
    except FileNotFoundError:
        raise InputError(f"{crops_json} not found: the export's calibration list is needed "
                         "(re-export with --int8)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{crops_json} is corrupt ({exc}); re-export with --int8") from None
    detect = info.detect
    crops = load_crops(paths[:limit], info.contract, detect=detect, source=str(crops_json),
                       progress=progress, desc="calibration crops")
    if len(crops) == 0:
        raise InputError(f"none of the calibration images listed in {crops_json} can be read "
                         f"here ({crops.skipped.summary()})")
    target = Path(out) if out else folder.path
    written = {}
    moved = _moved_tensors(folder.export_json)
    for flavour, path in models.items():
        if flavour in moved:
            logging.getLogger("edge_smw.export").warning(
                "%s: %s changed some tensors' values (same float function), so their SQNR "
                "against %s is not meaningful here (the export's own quant_report compares "
                "with its transformed source)", path.name, " and ".join(moved[flavour]),
                FP32.file_name)
        errors = tensor_errors(fp32, path, crops, info.contract, limit=limit, progress=progress)
        written[flavour] = write_report(
            errors, target, name=quant_report_name(flavour),
            title=f"INT8 sensitivity, {flavour} flavour ({path.name})",
            meta={"crops": len(crops), "model": path.name, "export": str(folder.path)})
    return written


def unit_noise(
    fp32: onnx.ModelProto, units: dict[str, list[str]], crops: CropSet,
    contract: PreprocessContract, *, build: Callable[[list[str]], onnx.ModelProto],
    limit: int = 48, progress: bool = True,
) -> list[dict[str, Any]]:
    """Per unit: the logit noise (RMSE against the float model ``fp32``, logits centred per
    crop) when ONLY that unit runs int8; ``build(float_nodes)`` makes the int8 model with
    those nodes float. Largest first: the ranking mixed precision follows.

    This is the decision-relevant measure. A tensor's SQNR says how well 8 bits hold *it*;
    what matters for the score is how much of its noise reaches the logits. On
    EfficientNet-Lite0 the stem and first block (5% of the MACs, 112x112 maps) hold ~40 dB
    SQNR yet put most of the int8 noise into the logits, while the lowest-SQNR tensors
    (late linear bottlenecks) barely move them.
    """
    from tqdm.auto import tqdm

    n = min(limit, len(crops))
    every = [name for names in units.values() for name in names]

    def logits(model: onnx.ModelProto, folder: Path) -> np.ndarray:
        path = folder / "unit.onnx"
        onnx.save_model(model, str(path))
        session = load_session(path)
        out = [session.run(["logits"], {INPUT_NAME: crops.inputs(contract, s, min(s + 16, n))})[0]
               for s in range(0, n, 16)]
        values = np.concatenate(out).astype(np.float64)
        return values - values.mean(axis=1, keepdims=True)

    results = []
    with tempfile.TemporaryDirectory(prefix="edge-smw-units-") as scratch:
        folder = Path(scratch)
        reference = logits(fp32, folder)
        for unit, nodes in tqdm(units.items(), desc="unit noise", unit="unit",
                                disable=not progress, leave=False):
            others = [name for name in every if name not in set(nodes)]
            got = logits(build(others), folder)
            rmse = float(np.sqrt(np.mean((got - reference) ** 2)))
            results.append({"unit": unit, "logit_rmse": rmse, "nodes": len(nodes)})
    results.sort(key=lambda r: -r["logit_rmse"])
    return results


def _moved_tensors(export_json: Path) -> dict[str, list[str]]:
    """Per flavour, the kept steps of its export (export.json) that rewrite tensors of the
    float model (range equalization rescales channels, centring shifts ReLU outputs)."""
    import json

    from edge_smw.export.int8 import CENTRING, STREAM_KINDS

    try:
        flavours = json.loads(export_json.read_text(encoding="utf-8"))["int8"]["flavours"]
        moved = {name: [s["step"] for s in info.get("steps", [])
                        if s.get("step") in (*STREAM_KINDS, CENTRING) and s.get("kept")]
                 for name, info in flavours.items()}
        return {name: steps for name, steps in moved.items() if steps}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
