"""Heat-map methods on a checkpoint's torch model, one small class each behind one interface.

Shaped like pytorch-grad-cam's ``BaseCAM``: ``HeatMapMethod`` does the shared work (pixels
in, probabilities, which level to explain, post-processing to a crop-sized map) and each
subclass overrides only ``raw_maps``. All work in the contract's pixel space (uint8 0-255,
colour order, input size), the space fooling images use too.

Every method explains the level's centred score ``z_k - mean_j z_j`` (z: logits), the part
of the logit that softmax can see (see ``cam_numpy``). Grad-CAM and CAM look at the *head
map*, the map the head pools (``ScoreModel.head_map``): the backbone's last feature map for
the poster's head, the stacked stage maps for ``--head stages``. With a global average pool
+ linear head, Grad-CAM's channel weights are the centred head weights divided by h*w:
``gradcam`` is ``cam`` without the bias term, before the ReLU; the tests check exactly that,
which checks the grad-cam wiring and the CAM definition. CAM needs that global pool; for the
region-pooling heads (``grid2``, ``grid3``) it refuses and Grad-CAM and saliency remain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from edge_smw.contract import PreprocessContract
from edge_smw.errors import BackendUnavailableError, InputError
from edge_smw.explain.cam_numpy import HeatMap, class_activation_map, finish_map
from edge_smw.train.model import PixelModel, ScoreModel

BATCH = 8  # crops per forward/backward pass: bounds memory on small devices


class HeatMapMethod:
    """Pixels -> one heat map per crop. Subclasses implement ``raw_maps`` only."""

    name: ClassVar[str] = ""

    def __init__(self, model: ScoreModel, contract: PreprocessContract) -> None:
        self.model = model.eval()
        self.contract = contract
        self.device = next(iter(self.model.parameters())).device
        self.pixel_model = PixelModel(contract, self.model).to(self.device).eval()

    def raw_maps(self, pixels: torch.Tensor, levels: list[int]) -> np.ndarray:
        """(N, h, w) maps, any resolution, larger = more evidence for ``levels[i]``."""
        raise NotImplementedError

    def explain(self, pixels_uint8_nhwc: np.ndarray, *, level: int | None = None,
                names: Sequence[str] | None = None) -> list[HeatMap]:
        """Heat maps for model pixels (N, H, W, 3) uint8; ``level`` None: the predicted one."""
        pixels = np.asarray(pixels_uint8_nhwc)
        size = self.contract.input_size
        if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3) or pixels.dtype != np.uint8:
            raise InputError(f"expected uint8 model pixels (N, {size}, {size}, 3), got "
                             f"{pixels.dtype} {pixels.shape}; use contract.to_model_pixels")
        k = self.contract.num_levels
        if level is not None and not 0 <= level < k:
            raise InputError(f"level index {level} is outside 0..{k - 1}")
        names = list(names) if names is not None else [f"crop{i}" for i in range(len(pixels))]
        out: list[HeatMap] = []
        for start in range(0, len(pixels), BATCH):
            chunk = pixels[start : start + BATCH]
            x = torch.from_numpy(chunk).permute(0, 3, 1, 2).float().to(self.device)
            with torch.no_grad():
                probs = self.pixel_model(x).softmax(1).double().cpu().numpy()
            levels = [int(p.argmax()) if level is None else level for p in probs]
            raw = self.raw_maps(x, levels)
            for i, (lvl, p) in enumerate(zip(levels, probs, strict=True)):
                out.append(HeatMap(names[start + i], chunk[i], finish_map(raw[i], size), lvl, p,
                                   self.contract.levels, self.name, self.contract.color_order))
        return out

    def explain_crops(self, crops_bgr: Sequence[np.ndarray], *, level: int | None = None,
                      names: Sequence[str] | None = None) -> list[HeatMap]:
        """Face crops (BGR, any size) -> heat maps, through the contract's pixels."""
        pixels = np.stack([self.contract.to_model_pixels(c) for c in crops_bgr])
        return self.explain(pixels, level=level, names=names)


class Saliency(HeatMapMethod):
    """Simonyan et al. 2014, as in the poster: |d score(level) / d pixel|, max over colours.

    Each map is clipped at its 99th percentile (as Captum's visualisation does), so a few
    extreme pixels do not black out the rest once the peak is scaled to 1.
    """

    name = "saliency"
    clip_percentile = 99.0

    def raw_maps(self, pixels: torch.Tensor, levels: list[int]) -> np.ndarray:
        x = pixels.detach().clone().requires_grad_(True)
        scores = centred_scores(self.pixel_model(x), levels)
        (grad,) = torch.autograd.grad(scores.sum(), x)
        maps = grad.abs().amax(dim=1).cpu().numpy()
        top = np.percentile(maps.reshape(len(maps), -1), self.clip_percentile, axis=1)
        return np.minimum(maps, top[:, None, None])


class GradCAM(HeatMapMethod):
    """Selvaraju et al. 2017 on the backbone's last feature map, by the grad-cam package."""

    name = "gradcam"

    def raw_maps(self, pixels: torch.Tensor, levels: list[int]) -> np.ndarray:
        try:
            from pytorch_grad_cam import GradCAM as _GradCAM
        except ImportError as exc:
            raise BackendUnavailableError(
                "gradcam needs the grad-cam package: pip install 'edge-smw[train]' (or "
                "pip install grad-cam); saliency and cam work without it"
            ) from exc
        cam = _GradCAM(model=self.pixel_model, target_layers=[self.model.head_map])
        try:  # the backbone is frozen: the input must ask for gradients to reach the maps
            return cam(input_tensor=pixels.detach().clone().requires_grad_(True),
                       targets=[CentredScore(lvl) for lvl in levels])
        finally:
            cam.activations_and_grads.release()


class CentredScore:
    """A grad-cam target (like its ClassifierOutputTarget): one crop's centred level score."""

    def __init__(self, level: int) -> None:
        self.level = level

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[..., self.level] - logits.mean(dim=-1)


def centred_scores(logits: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """(N,) ``z[i, levels[i]] - mean_j z[i, j]``: what every method explains."""
    index = torch.as_tensor(list(levels), dtype=torch.long, device=logits.device).view(-1, 1)
    return logits.gather(1, index).view(-1) - logits.mean(dim=1)


class CAM(HeatMapMethod):
    """Zhou et al. 2016: head weights x last feature map; no gradient (runs on the device)."""

    name = "cam"

    def __init__(self, model: ScoreModel, contract: PreprocessContract) -> None:
        if not model.kind.cam:
            raise InputError(f"cam weighs one map by the head's weights, which needs a head on "
                             f"globally pooled features; this model's '{model.kind.name}' head "
                             "pools regions: use --method gradcam or saliency")
        super().__init__(model, contract)

    def raw_maps(self, pixels: torch.Tensor, levels: list[int]) -> np.ndarray:
        with torch.no_grad():
            _, maps = self.model.forward_with_maps(self.pixel_model.normalize(pixels))
        weight = self.model.head.weight.detach().cpu().numpy()
        bias = self.model.head.bias.detach().cpu().numpy()
        return np.stack([class_activation_map(m, weight, lvl, bias)
                         for m, lvl in zip(maps.cpu().numpy(), levels, strict=True)])


METHOD_CLASSES: dict[str, type[HeatMapMethod]] = {
    cls.name: cls for cls in (Saliency, GradCAM, CAM)
}


def build_method(name: str, model: ScoreModel, contract: PreprocessContract) -> HeatMapMethod:
    try:
        cls = METHOD_CLASSES[name]
    except KeyError:
        raise InputError(f"unknown heat-map method {name!r}; choose one of "
                         f"{list(METHOD_CLASSES)}") from None
    return cls(model, contract)
