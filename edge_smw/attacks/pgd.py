"""Projected gradient descent (Madry et al. 2018) in the contract's pixel space, batched.

Why hand-written rather than torchattacks: torchattacks' PGD works in [0, 1] with a fixed
number of steps and a random start, reports neither steps nor per-image success, and pins
an old ``requests``; here each crop stops as soon as its *uint8* image reaches the goal
(so the saved PNG is what was checked), and everything is in 0-255 pixel units.

Each step: forward the uint8-rounded iterate (success is judged on what would be saved),
then a signed-gradient step on the float iterate, projected onto the L-infinity ball of
radius ``eps`` around the original and onto [0, 255].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_smw.attacks.result import AttackResult, check_pixels, goal_levels, perturbation_norms
from edge_smw.errors import InputError

BATCH = 8  # crops per forward/backward pass


MAX_EPS = 255.0  # the whole 0-255 pixel range: a larger budget is no budget at all


def check_budget(eps: float, steps: int, *, names: tuple[str, str] = ("eps", "steps")) -> None:
    """The attack's budget: ``eps`` whole grey levels within the pixel range, at least one
    step (``names``: how the caller spells them, e.g. the CLI's --eps, --steps)."""
    if not (math.isfinite(eps) and 1 <= eps <= MAX_EPS):
        raise InputError(f"{names[0]} must be at least 1 and at most {MAX_EPS:g} pixel units of "
                         f"0-255 (uint8 images move in whole grey levels; 4 = 4/255 is nearly "
                         f"invisible), got {eps:g}")
    if steps < 1:
        raise InputError(f"{names[1]} must be at least 1 gradient step, got {steps}")


def default_step_size(eps: float, steps: int) -> float:
    """Big enough to cross the ball in a few steps, small enough to stop near the boundary,
    and at least one grey level (the image is judged after rounding to uint8)."""
    return min(eps, max(1.0, eps / 8.0, 2.5 * eps / max(steps, 1)))


def pgd_attack(
    pixel_model: nn.Module,
    pixels_uint8_nhwc: np.ndarray,
    *,
    target: int | Sequence[int] | None,
    eps: float,
    steps: int,
    step_size: float | None = None,
    labels: Sequence[int] | None = None,
    batch_size: int = BATCH,
) -> list[AttackResult]:
    """Attack every crop; one ``AttackResult`` per crop, in order.

    ``pixel_model``: float NCHW pixels 0-255 (contract colour order) -> logits, e.g.
    ``edge_smw.train.model.PixelModel``. ``pixels_uint8_nhwc``: (N, H, W, 3) uint8 model
    pixels. ``target``: a level index (or one per crop) to reach, or None for untargeted
    (move away from ``labels``, default each crop's predicted level). ``eps``: L-infinity
    budget in pixel units (4 = 4/255); ``steps``: most gradient steps per crop.
    """
    pixels = check_pixels(pixels_uint8_nhwc)
    check_budget(eps, steps)
    step = default_step_size(eps, steps) if step_size is None else float(step_size)
    if not step > 0:
        raise InputError(f"step size must be positive, got {step_size}")
    pixel_model = pixel_model.eval()
    results: list[AttackResult] = []
    n = len(pixels)
    try:
        target_seq = None if target is None else np.broadcast_to(
            np.asarray(target, dtype=np.int64), (n,))
        label_seq = None if labels is None else np.broadcast_to(
            np.asarray(labels, dtype=np.int64), (n,))
    except ValueError:
        raise InputError(f"target and labels must be one level index or {n} of them") from None
    for start in range(0, len(pixels), batch_size):
        sl = slice(start, start + batch_size)
        results += _pgd_chunk(
            pixel_model, pixels[sl], None if target_seq is None else target_seq[sl],
            None if label_seq is None else label_seq[sl], eps, steps, step)
    return results


def _pgd_chunk(model: nn.Module, chunk: np.ndarray, target: np.ndarray | None,
               labels: np.ndarray | None, eps: float, steps: int,
               step: float) -> list[AttackResult]:
    n = len(chunk)
    device = model_device(model)
    x0 = torch.from_numpy(chunk).permute(0, 3, 1, 2).float().to(device)
    lo = (x0 - eps).clamp(min=0.0)
    hi = (x0 + eps).clamp(max=255.0)
    lo_int, hi_int = lo.ceil(), hi.floor()  # rounding never leaves the ball
    with torch.no_grad():
        probs0 = model(x0).softmax(1).double()
    before = probs0.argmax(1).cpu().numpy()
    tgt, label = goal_levels(n, target, labels, before, probs0.shape[1])
    goal = torch.from_numpy(tgt if tgt is not None else label).to(device)
    sign = -1.0 if tgt is not None else 1.0  # descend CE to the target, ascend it from the label

    x = x0.clone()
    adv = x0.clone()
    probs_after = probs0.clone()
    used = np.zeros(n, dtype=np.int64)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    for t in range(steps + 1):
        active = (~done).nonzero().flatten()
        if len(active) == 0:
            break
        xr = torch.minimum(torch.maximum(x[active].round(), lo_int[active]), hi_int[active])
        xr.requires_grad_(True)
        logits = model(xr)
        with torch.no_grad():
            pred = logits.argmax(1)
            ok = pred == goal[active] if tgt is not None else pred != goal[active]
            adv[active] = xr.detach()
            probs_after[active] = logits.softmax(1).double()
            used[active.cpu().numpy()] = t
            done[active[ok]] = True
        if t == steps or bool(ok.all()):
            break
        loss = F.cross_entropy(logits, goal[active], reduction="sum")
        (grad,) = torch.autograd.grad(loss, xr)
        with torch.no_grad():
            moving = active[~ok]
            stepped = x[moving] + sign * step * grad[~ok].sign()
            x[moving] = torch.minimum(torch.maximum(stepped, lo[moving]), hi[moving])

    float_ok = _float_success(model, x, done, goal, tgt is not None)
    adv_np = adv.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    probs_before = probs0.cpu().numpy()
    probs_final = probs_after.cpu().numpy()
    succeeded = done.cpu().numpy()
    out = []
    for i in range(n):
        linf, l2 = perturbation_norms(chunk[i], adv_np[i])
        p_after = probs_final[i]
        out.append(AttackResult(
            success=bool(succeeded[i]), steps=int(used[i]), linf=linf, l2=l2,
            level_before=int(before[i]), level_after=int(p_after.argmax()),
            probabilities_before=probs_before[i], probabilities_after=p_after,
            target=None if tgt is None else int(tgt[i]), label=int(label[i]),
            adversarial=adv_np[i], rounding_broke=bool(float_ok[i]),
            queries=int(used[i]) + 1,
        ))
    return out


def _float_success(model: nn.Module, x: torch.Tensor, done: torch.Tensor, goal: torch.Tensor,
                   targeted: bool) -> np.ndarray:
    """For crops that failed: would the unrounded iterate have reached the goal?"""
    flags = np.zeros(len(x), dtype=bool)
    failed = (~done).nonzero().flatten()
    if len(failed):
        with torch.no_grad():
            pred = model(x[failed]).argmax(1)
        ok = pred == goal[failed] if targeted else pred != goal[failed]
        flags[failed.cpu().numpy()] = ok.cpu().numpy()
    return flags


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights live: attack tensors are made there (CPU or a GPU)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def torch_probs_fn(pixel_model: nn.Module,
                   batch_size: int = 32) -> Callable[[np.ndarray], np.ndarray]:
    """A ``probs_fn`` (uint8 NHWC -> probabilities) over a torch pixel model, for black-box
    attacks and for re-checking saved images the way the attack judged them."""
    pixel_model = pixel_model.eval()
    device = model_device(pixel_model)

    def probs(pixels: np.ndarray) -> np.ndarray:
        pixels = check_pixels(pixels)
        parts = []
        with torch.no_grad():
            for start in range(0, len(pixels), batch_size):
                x = torch.from_numpy(pixels[start : start + batch_size]).permute(0, 3, 1, 2)
                x = x.float().to(device)
                parts.append(pixel_model(x).softmax(1).double().cpu().numpy())
        return np.concatenate(parts)

    return probs
