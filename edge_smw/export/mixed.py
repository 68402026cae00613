"""Automatic mixed precision: keep the most sensitive blocks in float until INT8 agrees.

One block at a time, in the order of ``sensitivity.unit_noise`` (the logit noise each block
causes on its own, measured on calibration crops): quantize without it, measure top-1
agreement with the torch model on the validation crops, and keep the step only if agreement
went *up*. A step that does not raise agreement is not kept (the model stays as it was, the
step is recorded) but its block stays *pending*: the next step tries it together with the
next block. Neighbouring blocks often only pay off together, because the tensor between two
blocks stays int8 while either of them is int8 (measured: stem alone or block 0 alone in
float change nothing; both together halve the logit noise). Stop when the target is met,
the step budget is spent, or no block is left. Every step's agreement, accuracy and latency
is recorded, so the chosen point on the accuracy/speed curve is visible and reproducible
from export.json; kept steps never lower agreement.

Units are whole blocks, never a lone Conv: onnxruntime quantizes a single float Conv between
int8 neighbours per tensor by itself (see ``quantize``), so a lone-Conv "float island" would
silently be int8 with worse scales.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from edge_smw.export.quantize import (
    BiasCorrection,
    Calibration,
    FlavourSpec,
    apply_bias_correction,
    quantize,
)


@dataclass
class Step:
    index: int
    action: str  # "all int8", "float <unit>"
    float_units: list[str]
    agreement: float
    accuracy: float | None
    latency_ms_p50: float | None
    kept: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MixedResult:
    model: onnx.ModelProto
    float_units: list[str]
    float_nodes: list[str]
    steps: list[Step] = field(default_factory=list)
    target: float = 0.98
    met: bool = False
    figures: dict[str, Any] = field(default_factory=dict)  # the kept model's evaluation

    def describe(self) -> dict[str, Any]:
        return {"target_agreement": self.target, "met": self.met,
                "float_units": self.float_units, "float_nodes": len(self.float_nodes),
                "steps": [s.to_dict() for s in self.steps]}


Evaluate = Callable[[onnx.ModelProto], dict[str, Any]]


def build(fp32: onnx.ModelProto, calibration: Calibration, spec: FlavourSpec,
          correction: BiasCorrection | None, float_nodes: Sequence[str]) -> onnx.ModelProto:
    """The int8 model with ``float_nodes`` kept float (bias correction skips those Convs)."""
    source = fp32 if correction is None else apply_bias_correction(fp32, correction,
                                                                    skip=float_nodes)
    return quantize(source, calibration, spec, nodes_to_exclude=float_nodes)


def search(
    fp32: onnx.ModelProto, calibration: Calibration, spec: FlavourSpec,
    correction: BiasCorrection | None, *, units: dict[str, list[str]], ranking: Sequence[str],
    evaluate: Evaluate, target: float, max_steps: int = 6,
    start: tuple[onnx.ModelProto, dict[str, Any]] | None = None,
) -> MixedResult:
    """Greedy, monotone: a block goes float only if agreement rises; stops at ``target``.

    ``evaluate(model)`` returns at least ``agreement`` (and ``accuracy``, ``latency_ms_p50``
    where measured). ``start`` is the all-int8 model with its figures, if already measured.
    """
    model, figures = start if start is not None else (None, None)
    if model is None:
        model = build(fp32, calibration, spec, correction, [])
        figures = evaluate(model)
    steps = [Step(0, "all int8", [], figures["agreement"], figures.get("accuracy"),
                  figures.get("latency_ms_p50"), True)]
    chosen: list[str] = []
    pending: list[str] = []
    best = figures["agreement"]
    result = MixedResult(model, [], [], steps, target, best >= target, figures)
    tried = 0
    for unit in ranking:
        if best >= target or tried >= max_steps:
            break
        if unit not in units:
            continue
        tried += 1
        trial = [*chosen, *pending, unit]
        nodes = [n for u in trial for n in units[u]]
        candidate = build(fp32, calibration, spec, correction, nodes)
        got = evaluate(candidate)
        kept = got["agreement"] > best
        if kept:
            note = ""
        elif got["agreement"] < best:
            note = "lowered agreement: not kept; block stays pending for the next step"
        else:
            note = "no gain in agreement: not kept; block stays pending for the next step"
        steps.append(Step(len(steps), f"float {unit}", trial, got["agreement"],
                          got.get("accuracy"), got.get("latency_ms_p50"), kept, note))
        if kept:
            chosen, pending = trial, []
            best = got["agreement"]
            result.model = candidate
            result.figures = got
        else:
            pending.append(unit)
    result.float_units = chosen
    result.float_nodes = [n for u in chosen for n in units[u]]
    result.met = best >= target
    return result
