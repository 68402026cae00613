"""The scoring model: frozen backbone -> head map -> pooled features -> linear head.

The poster's head (``linear``) reads the global average of the backbone's last feature map.
The stronger heads stay linear and exportable, and differ only in what they pool:

- ``stages``: the last unit of each of the last four stages, average-pooled down to the
  last map's size and stacked along channels (local detail from earlier stages, generic
  ImageNet semantics from the last), then globally averaged.
- ``grid2`` / ``grid3``: the last map averaged over a 2x2 / 3x3 grid of regions (where things
  are, which a global average throws away), one weight per channel and region.

Every head is ``Gemm(pool(head_map))``: the export is one graph whose float tail (pool ->
Gemm -> softmax) the INT8 pipeline finds by walking back from the logits to a ReduceMean;
the head map (what CAM explains) is the tensor that ReduceMean reads.
"""

from __future__ import annotations

import torch
from torch import nn

from edge_smw.contract import PreprocessContract
from edge_smw.errors import ModelError
from edge_smw.train.settings import (  # noqa: F401 - re-exported for torch-side callers
    DEFAULT_HEAD,
    HEAD_KINDS,
    HeadKind,
    get_head_kind,
    stage_taps,
)


class HeadMap(nn.Module):
    """Tapped maps (earliest first, the last feature map last) -> one (N, C, h, w) map at the
    last map's resolution: earlier maps average-pooled down (exact means), then stacked."""

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        last = maps[-1]
        if len(maps) == 1:
            return last
        size = int(last.shape[-1])
        parts = []
        for m in maps:
            side = int(m.shape[-1])
            if side % size or int(m.shape[-2]) != side // size * int(last.shape[-2]):
                raise ModelError(f"a {tuple(m.shape[-2:])} map does not pool evenly onto the "
                                 f"last map's {tuple(last.shape[-2:])}")
            ratio = side // size
            parts.append(m if ratio == 1 else nn.functional.avg_pool2d(m, ratio))
        return torch.cat(parts, dim=1)


class HeadPool(nn.Module):
    """Head map (N, C, h, w) -> features (N, C * grid^2): global or per-region averages.

    Regions follow adaptive average pooling (7 -> 2: rows 0-3 and 3-6); they are gathered
    and averaged with one ReduceMean, so the export's float tail starts at a ReduceMean for
    every head. Regions must be of equal size (true for 7x7 maps and grids of 1, 2, 3).
    """

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if self.grid == 1:
            return maps.mean(dim=(2, 3))
        n, c, h, w = (int(s) for s in maps.shape)
        index = torch.as_tensor(region_index(h, w, self.grid), device=maps.device)
        regions = maps.flatten(2).index_select(2, index.flatten())
        return regions.view(-1, c, index.shape[0], index.shape[1]).mean(dim=3).flatten(1)


def region_index(h: int, w: int, grid: int) -> list[list[int]]:
    """Flat positions (row * w + col) of each of the grid x grid regions, row-major."""

    def bins(size: int) -> list[range]:
        return [range(i * size // grid, -(-(i + 1) * size // grid)) for i in range(grid)]

    rows, cols = bins(h), bins(w)
    if len({len(r) for r in rows}) > 1 or len({len(c) for c in cols}) > 1:
        raise ModelError(f"a {h}x{w} map does not split into {grid}x{grid} equal regions")
    return [[r * w + col for r in rr for col in cc] for rr in rows for cc in cols]


class HeadInputs(nn.Module):
    """Backbone -> head map -> the features the linear head reads."""

    def __init__(self, feature_maps: nn.Module, kind: HeadKind | None = None) -> None:
        super().__init__()
        self.feature_maps = feature_maps
        self.kind = kind or HEAD_KINDS[DEFAULT_HEAD]
        names = feature_maps.unit_names
        self.taps = stage_taps(names, self.kind.stages) if self.kind.stages > 1 else []
        self.head_map = HeadMap()
        self.pool = HeadPool(self.kind.grid)

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """The head map (what the pool reads and CAM explains)."""
        if self.taps:
            outputs = self.feature_maps.tap_units(x, self.taps)[0]
        else:
            outputs = [self.feature_maps(x)]  # the backbone's own forward, as exported before
        return self.head_map(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.maps(x))


class ScoreModel(HeadInputs):
    """Input: network input NCHW (already normalised by the contract). Output: logits."""

    def __init__(self, feature_maps: nn.Module, head: nn.Linear,
                 kind: HeadKind | None = None) -> None:
        super().__init__(feature_maps, kind)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.maps(x)))

    def forward_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.maps(x)
        return self.head(self.pool(maps)), maps


class PooledFeatures(HeadInputs):
    """Backbone + global average pool: what the poster's feature pass computes."""

    def __init__(self, feature_maps: nn.Module) -> None:
        super().__init__(feature_maps)


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
