"""Training choices without torch: head kinds, losses, recipes (the CLI reads them here)."""

from __future__ import annotations

from dataclasses import dataclass

from edge_smw.errors import InputError, ModelError

LOSSES = ("ce", "emd")
# ``--loss auto``: tune both, save the one whose tuned head validates better (accuracy, then
# MAE; a tie keeps ce, the poster's). Chosen on the validation split, never on test.
AUTO_LOSS = "auto"
LOSS_CHOICES = (*LOSSES, AUTO_LOSS)
DEFAULT_PATIENCE = 5  # epochs without a better validation score before a head stops
MAX_SEED = 2**32 - 1  # numpy's legacy seeding, which training uses, takes 0..2**32-1


def check_seed(seed: int) -> int:
    """``--seed`` as every seeded generator of a run accepts it (numpy's range is narrowest)."""
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"--seed must be a whole number from 0 to {MAX_SEED}, got {seed}")
    return seed


@dataclass(frozen=True)
class HeadKind:
    """What the linear head reads (see ``edge_smw.train.model``)."""

    name: str
    stages: int  # 1: the last feature map; S: the last unit of each of the last S stages
    grid: int  # 1: global average; S: an S x S grid of regional averages
    description: str

    @property
    def cam(self) -> bool:
        """Whether CAM (head weights x head map) explains it: a global average pool only."""
        return self.grid == 1


HEAD_KINDS: dict[str, HeadKind] = {k.name: k for k in (
    HeadKind("linear", 1, 1, "the poster's: global average of the last feature map"),
    HeadKind("stages", 4, 1, "global averages of the last unit of each of the last 4 stages"),
    HeadKind("grid2", 1, 2, "the last feature map averaged over a 2x2 grid of regions"),
    HeadKind("grid3", 1, 3, "the last feature map averaged over a 3x3 grid of regions"),
)}
DEFAULT_HEAD = "linear"


def get_head_kind(name: str) -> HeadKind:
    try:
        return HEAD_KINDS[name]
    except KeyError:
        raise InputError(f"unknown head {name!r}; choose one of {list(HEAD_KINDS)}") from None


def stage_taps(unit_names: list[str], stages: int) -> list[int]:
    """Indices of the last unit of each of the last ``stages`` stages (``blocks.4.2`` is in
    stage ``blocks.4``; a unit without a dot, like ``head``, is a stage of its own)."""
    ends: dict[str, int] = {}
    for index, name in enumerate(unit_names):
        ends[name.rsplit(".", 1)[0] if "." in name else name] = index
    taps = sorted(ends.values())
    if len(taps) < stages:
        raise ModelError(f"the backbone has {len(taps)} stages, the head needs {stages}")
    return taps[-stages:]


@dataclass
class FinetuneConfig:
    """``--finetune-last``: SGD with momentum on the last units and the head."""

    # For the backbone units. Pretrained units take small steps: at 0.01 six units of
    # Lite0 collapsed to the majority class after one epoch on the shared crops (val 71.6%).
    lr: float = 0.001
    head_lr_scale: float = 0.1  # the head (already tuned) moves at lr * this
    momentum: float = 0.9
    epochs: int = 40  # a cap: early stopping decides
    batch_size: int = 64
    weight_decay: float = 1e-4
    loss: str = "ce"
    class_weight: str = "none"
    patience: int = 3  # epochs are costly here; the validation score settles fast
    # Validation scores (and the run keeps) a moving average of the weights over about this
    # many epochs (0: the last step's weights). The last step's weights jumped 0.3-2.6 points of
    # validation accuracy from epoch to epoch on the shared crops, so which epoch validation
    # picked was partly luck.
    average_epochs: float = 1.0
    threads: int | None = None  # None: torch's default (these are real convolutions)
