"""The one CAM definition and the shared heat-map post-processing, in numpy only.

Both the torch ``cam`` method and ``runtime_cam`` (an exported model with a ``feature_map``
output, run by ``edge_smw.Runtime``) call ``class_activation_map`` and ``finish_map`` here, so
the device and the workstation draw the same map. No torch import, directly or indirectly.

What is explained is the level's *centred* score ``s_k = z_k - mean_j z_j`` (z: logits),
which equals ``log p_k - mean_j log p_j``. Why not the raw logit: softmax ignores anything
added to every logit, so a head's weights are only defined up to a vector shared by all
levels; on non-negative feature maps that shared part can make one level's raw map negative
everywhere. Centring removes it, and for two levels the two maps are exact opposites.

CAM (Zhou et al. 2016) for a global-average-pool + linear head, as a score density:
``cam(x, y) = sum_c (w_kc - mean_j w_jc) * feature_map[c, x, y] + (b_k - mean_j b_j)``, whose
mean over the image is exactly the level's centred score. The bias matters: the head folds
the training features' mean into it, so with it the map reads "more level-k than the average
training face here". Maps are shown as positive evidence for the level: ReLU, bilinear
upsampling to the crop, then scaled to peak 1 (as Grad-CAM shows them). The predicted
level's centred score is >= 0, so its map is never empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge_smw.errors import InputError, ModelError


@dataclass
class HeatMap:
    """One explained crop: what the model saw, where it looked, and what it said."""

    name: str
    pixels: np.ndarray  # uint8 HxWx3 model pixels, in the contract's colour order
    heat: np.ndarray  # float32 HxW (same H, W as pixels), >= 0, peak 1 (all 0 if no evidence)
    level: int  # 0-based level the map explains
    probabilities: np.ndarray  # the model's probabilities for this crop
    levels: tuple[str, ...]
    method: str
    color_order: str = "RGB"

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probabilities))

    def rgb(self) -> np.ndarray:
        """The crop as RGB for display."""
        return self.pixels if self.color_order == "RGB" else self.pixels[..., ::-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.name,
            "method": self.method,
            "explained_level": self.levels[self.level],
            "predicted_level": self.levels[self.predicted],
            "probabilities": {name: round(float(p), 6)
                              for name, p in zip(self.levels, self.probabilities, strict=True)},
        }


def class_activation_map(feature_map: np.ndarray, head_weight: np.ndarray | Sequence,
                         level: int, head_bias: np.ndarray | Sequence | None = None) -> np.ndarray:
    """Raw CAM (h, w) of one level's centred score, from one (C, h, w) feature map and the
    (K, C) head weights; with ``head_bias`` (K,) its mean is that score exactly. Without the
    bias it is what Grad-CAM computes on this architecture (before its ReLU)."""
    fmap = np.asarray(feature_map, dtype=np.float64)
    weight = np.asarray(head_weight, dtype=np.float64)
    if fmap.ndim != 3:
        raise InputError(f"expected one (C, h, w) feature map, got shape {fmap.shape}")
    if weight.ndim != 2 or weight.shape[1] != fmap.shape[0]:
        raise ModelError(f"head weights {weight.shape} do not fit a feature map with "
                         f"{fmap.shape[0]} channels")
    if not 0 <= level < weight.shape[0]:
        raise InputError(f"level index {level} is outside 0..{weight.shape[0] - 1}")
    cam = np.tensordot(weight[level] - weight.mean(axis=0), fmap, axes=(0, 0))
    if head_bias is not None:
        bias = np.asarray(head_bias, dtype=np.float64)
        if bias.shape != (weight.shape[0],):
            raise ModelError(f"head bias {bias.shape} does not fit {weight.shape[0]} levels")
        cam = cam + (bias[level] - bias.mean())
    return cam


def finish_map(raw: np.ndarray, size: int) -> np.ndarray:
    """Any (h, w) map -> float32 (size, size): ReLU, bilinear upsample, peak scaled to 1."""
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 2:
        raise InputError(f"expected an (h, w) map, got shape {raw.shape}")
    if not np.all(np.isfinite(raw)):
        raise ModelError("the heat map has non-finite values; the model or input is broken")
    heat = np.maximum(raw, 0.0)
    if heat.shape != (size, size):
        heat = cv2.resize(heat, (size, size), interpolation=cv2.INTER_LINEAR)
        heat = np.maximum(heat, 0.0)
    peak = float(heat.max())
    return heat / peak if peak > 0 else np.zeros_like(heat)


def runtime_cam(runtime: Any, crops_bgr: Sequence[np.ndarray], *, level: int | None = None,
                names: Sequence[str] | None = None) -> list[HeatMap]:
    """CAM from an exported model with a ``feature_map`` output: no torch, no gradient.

    ``runtime`` is an ``edge_smw.Runtime``; the head weights travel in its metadata.
    ``level`` None explains each crop's predicted level.
    """
    info = runtime.info
    if not info.has_feature_map or info.head_weight is None or info.head_bias is None:
        raise ModelError(
            f"{runtime.path} has no feature_map output and head weights; re-export with "
            "`edge-smw export --feature-map` for heat maps on the device"
        )
    weight = np.asarray(info.head_weight, dtype=np.float64)
    bias = np.asarray(info.head_bias, dtype=np.float64)
    contract = runtime.contract
    names = list(names) if names is not None else [f"crop{i}" for i in range(len(crops_bgr))]
    faces = runtime.score_batch(list(crops_bgr), feature_map=True)
    out = []
    for name, crop, face in zip(names, crops_bgr, faces, strict=True):
        chosen = face.level if level is None else level
        raw = class_activation_map(face.feature_map, weight, chosen, bias)
        out.append(HeatMap(name, contract.to_model_pixels(crop),
                           finish_map(raw, contract.input_size), chosen,
                           np.asarray(face.probabilities, dtype=np.float64), contract.levels,
                           "cam", contract.color_order))
    return out


# -- does a map point at the right place? ---------------------------------------------------
def region_mask(boxes: Sequence[Sequence[float]], shape: tuple[int, int],
                scale: float = 1.0) -> np.ndarray:
    """Boolean mask of the union of (x, y, w, h) boxes, scaled by ``scale``, clipped to shape."""
    mask = np.zeros(shape, dtype=bool)
    for x, y, w, h in boxes:
        x0, y0 = max(0, int(np.floor(x * scale))), max(0, int(np.floor(y * scale)))
        x1 = min(shape[1], int(np.ceil((x + w) * scale)))
        y1 = min(shape[0], int(np.ceil((y + h) * scale)))
        if x1 > x0 and y1 > y0:
            mask[y0:y1, x0:x1] = True
    return mask


@dataclass
class RegionScore:
    """How much of a map falls in a region, against what a flat map would put there."""

    mass_share: float  # heat inside / total heat (nan for an all-zero map)
    area_share: float  # region pixels / all pixels: what a uniform map would score
    energy_ratio: float  # mass_share / area_share; > 1 means the map favours the region
    hit: bool  # pointing game: the map's peak lies inside the region


def region_score(heat: np.ndarray, mask: np.ndarray) -> RegionScore:
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != mask.shape:
        raise InputError(f"heat map {heat.shape} and region mask {mask.shape} differ in shape")
    area = float(mask.mean())
    total = float(heat.sum())
    if total <= 0 or area <= 0:
        return RegionScore(float("nan"), area, float("nan"), False)
    mass = float(heat[mask].sum()) / total
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return RegionScore(mass, area, mass / area, bool(mask[peak]))
