"""``edge-smw fool`` as a library call: photos -> targeted fooling images, PNGs and figures.

For each face: PGD toward the target level, the fooled crop saved as a lossless PNG (uint8
model pixels), read back and scored again (the saved file must still fool: when it does not,
the record says so), and the poster's figure: original | fooling image | difference x50.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_smw.atomic import write_json
from edge_smw.attacks.pgd import check_budget, pgd_attack, torch_probs_fn
from edge_smw.attacks.result import AttackResult
from edge_smw.contract import PreprocessContract
from edge_smw.detect import with_detector
from edge_smw.errors import InputError
from edge_smw.explain.inputs import load_crops, resolve_level, unique_stems
from edge_smw.explain.render import new_figure, plain, probabilities_line, save_figure
from edge_smw.images import read_image, write_image
from edge_smw.train.checkpoint import load_checkpoint
from edge_smw.train.model import PixelModel

MAGNIFY = 50.0


@dataclass
class FoolRecord:
    image: str
    result: AttackResult
    fooled_png: Path
    figure: Path
    saved_level: int  # level of the saved PNG, read back and scored again
    saved_still_fools: bool
    note: str | None = None

    def to_dict(self, levels: Sequence[str]) -> dict[str, Any]:
        return {
            "image": self.image,
            **self.result.to_dict(levels),
            "saved_level": levels[self.saved_level],
            "saved_png_still_fools": self.saved_still_fools,
            "note": self.note,
            "written": {"fooled_png": str(self.fooled_png), "figure": str(self.figure)},
        }


@dataclass
class FoolReport:
    checkpoint: str
    levels: tuple[str, ...]
    target: int
    eps: float
    steps: int
    records: list[FoolRecord]
    summary_json: Path | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return float(np.mean([r.saved_still_fools for r in self.records]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "target": self.levels[self.target],
            "eps": self.eps,
            "max_steps": self.steps,
            "success_rate": round(self.success_rate, 4),
            "images": [r.to_dict(self.levels) for r in self.records],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def fool_images(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    *,
    target: str | int,
    out: str | Path,
    eps: float = 4.0,
    steps: int = 50,
    step_size: float | None = None,
    detect: bool | None = None,
    detector: str = "auto",
) -> FoolReport:
    """Targeted fooling images for every face in ``inputs`` (files or folders); ``detector``
    finds the faces (``auto``: the model's own, from its contract)."""
    check_budget(eps, steps, names=("--eps", "--steps"))  # before the checkpoint loads
    ckpt = load_checkpoint(checkpoint)
    contract = ckpt.contract
    crops_with = with_detector(contract, detector)  # an unknown name is refused, detect or not
    target_index = resolve_level(target, contract.levels)
    if target_index is None:
        raise InputError("a fooling image needs --target LEVEL (a level name or 1-based position)")
    batch = load_crops(inputs, crops_with, detect=ckpt.detect if detect is None else detect)
    pixels = np.stack([contract.to_model_pixels(c.crop_bgr) for c in batch.crops])
    pixel_model = PixelModel(contract, ckpt.build_model()).eval()
    results = pgd_attack(pixel_model, pixels, target=target_index, eps=eps, steps=steps,
                         step_size=step_size)
    out = Path(out)
    probs_fn = torch_probs_fn(pixel_model)
    stems = unique_stems([c.path for c in batch.crops])
    records = []
    for crop, stem, original, result in zip(batch.crops, stems, pixels, results, strict=True):
        png = write_image(out / f"{stem}.fooled.png", _to_bgr(result.adversarial, contract))
        reread = contract.to_model_pixels(read_image(png))
        saved_level = int(probs_fn(reread[None])[0].argmax())
        still = saved_level == target_index
        note = None
        if result.success and not still:
            note = "the attack reached the target, but the saved PNG read back does not"
        elif result.rounding_broke:
            note = ("the unrounded attack reached the target, but rounding to uint8 pixels "
                    "undid it; try more --steps or a larger --eps")
        elif not result.success:
            note = f"did not reach the target within {steps} steps at eps {eps}"
        figure = fooling_figure(original, result, contract.levels, contract.color_order,
                                out / f"{stem}.fool.png", name=str(crop.path), eps=eps)
        records.append(FoolRecord(str(crop.path), result, png, figure, saved_level, still, note))
    report = FoolReport(str(ckpt.path), contract.levels, target_index, eps, steps, records,
                        skipped=batch.skipped)
    report.summary_json = write_json(out / "fool.json", report.to_dict())
    return report


def _to_bgr(pixels: np.ndarray, contract: PreprocessContract) -> np.ndarray:
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if contract.color_order == "RGB" else pixels


def magnified_difference(original: np.ndarray, adversarial: np.ndarray,
                         factor: float = MAGNIFY) -> np.ndarray:
    """Mid-grey where nothing changed; the change times ``factor`` around it (clipped)."""
    diff = adversarial.astype(np.float64) - original.astype(np.float64)
    return np.clip(127.5 + factor * diff, 0, 255).astype(np.uint8)


def fooling_figure(original: np.ndarray, result: AttackResult, levels: Sequence[str],
                   color_order: str, path: str | Path, *, name: str = "",
                   eps: float | None = None) -> Path:
    """The poster's figure: original | fooling image | magnified difference (50x), scored."""
    def rgb(p: np.ndarray) -> np.ndarray:
        return p if color_order == "RGB" else p[..., ::-1]

    fig = new_figure(10.0, 4.2)
    axes = fig.subplots(1, 3)
    before, after = result.level_before, result.level_after
    pb, pa = result.probabilities_before, result.probabilities_after
    axes[0].imshow(rgb(original))
    axes[0].set_title(f"original: {plain(levels[before])} ({100 * pb[before]:.0f}%)", fontsize=9)
    goal = levels[result.target] if result.target is not None else f"not {levels[result.label]}"
    axes[1].imshow(rgb(result.adversarial))
    axes[1].set_title(f"{plain(goal)} fooling image: {plain(levels[after])} "
                      f"({100 * pa[after]:.0f}%)", fontsize=9)
    axes[2].imshow(rgb(magnified_difference(original, result.adversarial)))
    axes[2].set_title(f"difference x{MAGNIFY:.0f} (Linf {result.linf:.0f}, "
                      f"L2 {result.l2:.0f})", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    outcome = "fooled" if result.success else "NOT fooled"
    budget = "" if eps is None else f" (budget Linf {eps:g})"
    fig.suptitle(
        f"{plain(Path(name).name)}: {outcome} in {result.steps} "
        f"step{'' if result.steps == 1 else 's'}{budget}\n"
        f"before  {plain(probabilities_line(levels, pb))}\n"
        f"after   {plain(probabilities_line(levels, pa))}",
        fontsize=9,
    )
    fig.tight_layout()
    return save_figure(fig, path)
