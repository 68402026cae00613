"""``edge-smw explain`` as a library call: model + images -> heat-map PNGs + index.html.

A run folder or checkpoint gets every method (torch, imported only then); an exported model
gets ``cam`` through ``edge_smw.Runtime`` with no torch import at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_smw.artifacts.folders import is_exported_model
from edge_smw.detect import with_detector
from edge_smw.errors import InputError
from edge_smw.explain import METHODS
from edge_smw.explain.cam_numpy import HeatMap, runtime_cam
from edge_smw.explain.inputs import load_crops, resolve_level, unique_stems
from edge_smw.explain.render import Image, heatmap_figure, probabilities_line, write_index

_CHUNK = 16


@dataclass
class ExplainReport:
    model: str
    method: str
    heatmaps: list[HeatMap]
    figures: list[Path]
    index: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "method": self.method,
            "images": [{**h.to_dict(), "figure": str(f)}
                       for h, f in zip(self.heatmaps, self.figures, strict=True)],
            "index": str(self.index),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def explain_images(
    model: str | Path,
    inputs: Sequence[str | Path],
    *,
    out: str | Path,
    method: str | None = None,
    level: str | int | None = None,
    detect: bool | None = None,
    backend: str = "auto",
    detector: str = "auto",
) -> ExplainReport:
    """Heat maps for every face in ``inputs`` (files or folders); ``level`` None = predicted;
    ``detect`` None finds faces only if the model was trained on detected faces, with
    ``detector`` (``auto``: the model's own)."""
    exported = is_exported_model(model)
    method = method or ("cam" if exported else "saliency")
    if method not in METHODS:
        raise InputError(f"unknown --method {method!r}; choose one of {list(METHODS)}")
    if exported and method != "cam":
        raise InputError(
            f"--method {method} needs gradients, which the exported model {model} does not "
            "carry; give its run folder or checkpoint.pt, or use --method cam (it needs an "
            "export made with --feature-map)"
        )
    if exported:
        heatmaps, skipped = _explain_exported(model, inputs, level, detect, backend, detector)
    else:
        heatmaps, skipped = _explain_checkpoint(model, inputs, method, level, detect, detector)
    out = Path(out)
    stems = unique_stems([Path(h.name) for h in heatmaps])
    figures = [heatmap_figure(h, out / f"{stem}.{method}.png")
               for h, stem in zip(heatmaps, stems, strict=True)]
    rows = [[h.name, h.levels[h.predicted], h.levels[h.level],
             probabilities_line(h.levels, h.probabilities), Image(f.name)]
            for h, f in zip(heatmaps, figures, strict=True)]
    notes = [f"Model: {model}. Method: {method}. Heat maps show positive evidence for the "
             "explained level (ReLU, peak scaled to 1)."]
    notes += [f"Skipped {p}: {r}" for p, r in skipped]
    index = write_index(out / "index.html", f"edge-smw explain: {method}",
                        ["image", "predicted", "explained level", "probabilities", "figure"],
                        rows, notes)
    return ExplainReport(str(model), method, heatmaps, figures, index, skipped)


Explained = tuple[list[HeatMap], list[tuple[str, str]]]  # heat maps, (skipped path, reason)


def _explain_exported(model: str | Path, inputs: Sequence[str | Path], level: str | int | None,
                      detect: bool | None, backend: str, detector: str) -> Explained:
    from edge_smw.runtime import Runtime

    # Crops come from the loader (with ``detector``): the Runtime only infers.
    with Runtime(model, backend=backend, detect_faces=False, warmup=False) as runtime:
        chosen = resolve_level(level, runtime.levels)
        batch = load_crops(inputs, with_detector(runtime.contract, detector),
                           detect=runtime.info.detect if detect is None else detect)
        heatmaps: list[HeatMap] = []
        for start in range(0, len(batch.crops), _CHUNK):
            part = batch.crops[start : start + _CHUNK]
            heatmaps += runtime_cam(runtime, [c.crop_bgr for c in part], level=chosen,
                                    names=[str(c.path) for c in part])
    return heatmaps, batch.skipped


def _explain_checkpoint(model: str | Path, inputs: Sequence[str | Path], method: str,
                        level: str | int | None, detect: bool | None,
                        detector: str) -> Explained:
    from edge_smw.explain.methods import build_method
    from edge_smw.train.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(model)
    chosen = resolve_level(level, checkpoint.levels)
    batch = load_crops(inputs, with_detector(checkpoint.contract, detector),
                       detect=checkpoint.detect if detect is None else detect)
    explainer = build_method(method, checkpoint.build_model(), checkpoint.contract)
    heatmaps = explainer.explain_crops([c.crop_bgr for c in batch.crops], level=chosen,
                                       names=[str(c.path) for c in batch.crops])
    return heatmaps, batch.skipped
