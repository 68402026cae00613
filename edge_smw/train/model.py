"""The scoring model: frozen backbone feature maps -> global average pool -> linear head."""

from __future__ import annotations

import torch
from torch import nn

from edge_smw.contract import PreprocessContract


class ScoreModel(nn.Module):
    """Input: network input NCHW (already normalised by the contract). Output: logits."""

    def __init__(self, feature_maps: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.feature_maps = feature_maps
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feature_maps(x).mean(dim=(2, 3)))

    def forward_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.feature_maps(x)
        return self.head(maps.mean(dim=(2, 3))), maps


class PooledFeatures(nn.Module):
    """Backbone + global average pool: what the training feature pass computes."""

    def __init__(self, feature_maps: nn.Module) -> None:
        super().__init__()
        self.feature_maps = feature_maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_maps(x).mean(dim=(2, 3))


class TorchNormalize(nn.Module):
    """The contract's photometric step in torch: pixels NCHW (0-255, colour order) -> input.

    Built from ``PreprocessContract.affine`` so there is one definition; used where gradients
    must reach the pixels (saliency, fooling images). A test checks it equals the numpy path.
    """

    def __init__(self, contract: PreprocessContract) -> None:
        super().__init__()
        mul, add = contract.affine()
        self.register_buffer("mul", torch.from_numpy(mul).view(1, 3, 1, 1))
        self.register_buffer("add", torch.from_numpy(add).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels * self.mul + self.add


class PixelModel(nn.Module):
    """Pixels NCHW float (0-255) -> logits: for attacks and saliency in pixel space."""

    def __init__(self, contract: PreprocessContract, model: ScoreModel) -> None:
        super().__init__()
        self.normalize = TorchNormalize(contract)
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(pixels))
