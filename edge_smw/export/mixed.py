"""Automatic mixed precision: keep the most sensitive blocks in float until INT8 agrees.

The last resort, after the exact input grid, learned rounding and bias correction. One block
at a time, in the order of ``sensitivity.unit_noise`` (the logit noise each block causes on
its own, measured on calibration crops): rebuild the int8 model without it (with every step
kept so far), measure agreement with the torch model on the validation crops, and keep the
step only if fewer crops disagree. A step that does not help is not kept (the model stays as
it was, the step is recorded) but its block stays *pending*: the next step tries it together
with the next block, because neighbouring blocks often only pay off together (the tensor
between two blocks stays int8 while either of them is int8). Stop when ``done`` says the
target is met, the step budget is spent, or no block is left. Kept steps never lower
agreement.

Units are whole blocks, never a lone Conv: onnxruntime quantizes a single float Conv between
int8 neighbours per tensor by itself (see ``quantize``), so a lone-Conv "float island" would
silently be int8 with worse scales.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from edge_smw.export.quantize import (
    BiasCorrection,
    Calibration,
    FlavourSpec,
    apply_bias_correction,
    quantize,
)
from edge_smw.export.results import Figures, Step


@dataclass
class MixedResult:
    model: onnx.ModelProto
    figures: Figures  # the kept model's
    float_units: list[str] = field(default_factory=list)
    float_nodes: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    target: float = 0.97
    met: bool = False

    def describe(self) -> dict[str, Any]:
        return {"target_agreement": self.target, "met": self.met,
                "float_units": self.float_units, "float_nodes": len(self.float_nodes),
                "steps": [s.to_dict() for s in self.steps]}


def build(fp32: onnx.ModelProto, calibration: Calibration, spec: FlavourSpec,
          correction: BiasCorrection | None, float_nodes: Sequence[str]) -> onnx.ModelProto:
    """The int8 model with ``float_nodes`` kept float (bias correction skips those Convs)."""
    source = fp32 if correction is None else apply_bias_correction(fp32, correction,
                                                                    skip=float_nodes)
    return quantize(source, calibration, spec, nodes_to_exclude=float_nodes)


def search(
    *, units: dict[str, list[str]], ranking: Sequence[str],
    build: Callable[[list[str]], onnx.ModelProto], evaluate: Callable[[onnx.ModelProto], Figures],
    done: Callable[[Figures], bool], max_steps: int = 1,
    start: tuple[onnx.ModelProto, Figures] | None = None, target: float = 0.97,
) -> MixedResult:
    """Greedy, monotone: a block goes float only if fewer crops disagree; stops at ``done``.

    ``build(float_nodes)`` makes the int8 model with those nodes float; ``start`` is the
    all-int8 model with its figures, if already measured; ``target`` is recorded only.
    """
    if start is None:
        model = build([])
        figures = evaluate(model)
    else:
        model, figures = start
    result = MixedResult(model, figures, steps=[Step("all int8", figures, True)], target=target,
                         met=done(figures))
    chosen: list[str] = []
    pending: list[str] = []
    tried = 0
    for unit in ranking:
        if result.met or tried >= max_steps:
            break
        if unit not in units:
            continue
        tried += 1
        trial = [*chosen, *pending, unit]
        candidate = build([n for u in trial for n in units[u]])
        got = evaluate(candidate)
        best = result.figures.parity.disagreements
        kept = got.parity.disagreements < best
        note = ""
        if not kept:
            note = ("lowered agreement" if got.parity.disagreements > best else "no gain in "
                    "agreement") + ": not kept; block stays pending for the next step"
        result.steps.append(Step(f"float {', '.join([*pending, unit])}", got, kept, note,
                                 {"float_units": trial}))
        if kept:
            chosen, pending = trial, []
            result.model, result.figures = candidate, got
            result.met = done(got)
        else:
            pending.append(unit)
    result.float_units = chosen
    result.float_nodes = [n for u in chosen for n in units[u]]
    return result
