"""Masked reductions over per-token rollout tensors, and the right-padding check GAE relies on.

Layout shared by everything in `prefopt.rl` (one row per sampled completion, right-padded):

    x     [B, T]  per-token values (log-probs, rewards, values, advantages)
    mask  [B, T]  bool, True at completion tokens; each row is a run of Trues then Falses

Positions where `mask` is False never influence a result: they are selected away with `torch.where`
(not multiplied by 0), so any finite garbage there — a log-ratio of 1e4 whose exp would overflow,
say — cannot leak into sums or gradients. (NaN at padding can still reach a gradient through an op
applied before the selection; the engine writes 0 there.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefopt.errors import LossInputError

__all__ = ["masked_sum", "masked_mean", "masked_var", "masked_whiten", "check_right_padded"]


def _check_mask(x: Tensor, mask: Tensor, where: str) -> None:
    if mask.shape != x.shape:
        raise LossInputError(f"{where}: mask has shape {tuple(mask.shape)} but the values have {tuple(x.shape)}.")
    if mask.dtype != torch.bool:
        raise LossInputError(f"{where}: mask must be a bool tensor (True = completion token), got {mask.dtype}.")


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ of `x` over positions where `mask` is True: a scalar (dim=None) or reduced along `dim`.

    Floating values narrower than float64 are accumulated in float64 and rounded once to `x`'s dtype (as the
    engine's per-sequence sums are), so a sum over a long completion does not drift; gradients are unchanged.

    Args:
        x: [B, T] (any shape) values.
        mask: bool, same shape as `x`.
    """
    _check_mask(x, mask, "masked_sum")
    kept = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    wide = x.dtype in (torch.float32, torch.bfloat16, torch.float16) and x.device.type != "mps"  # MPS: no float64
    accumulate = torch.float64 if wide else None
    total = kept.sum(dtype=accumulate) if dim is None else kept.sum(dim, dtype=accumulate)
    return total.to(x.dtype) if wide else total


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over valid positions, Σ_mask x / max(1, Σ mask); 0 where nothing is valid.

    With dim=None this is the token-level mean over the whole batch (TRL's `masked_mean`); with
    dim=1 it is the per-sequence token mean [B] used by GRPO (Shao et al. 2024, Eq. 3: 1/|o_i| Σ_t).
    """
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def masked_var(x: Tensor, mask: Tensor, *, unbiased: bool = True) -> Tensor:
    """Variance of the valid entries of `x` (a scalar), with Bessel's correction when `unbiased`.

        var = Σ_mask (x − x̄)² / (n − 1),   n = Σ mask,   x̄ = masked_mean(x, mask)

    Raises:
        LossInputError: fewer than 2 valid entries (the unbiased variance is undefined).
    """
    n = int(mask.sum())
    if unbiased and n < 2:
        raise LossInputError(
            f"masked_var: the unbiased variance needs ≥ 2 valid tokens, got {n}; whiten over a larger batch "
            f"or pass unbiased=False."
        )
    mean = masked_mean(x, mask)
    squares = masked_sum((x - mean) ** 2, mask)
    return squares / max(n - 1 if unbiased else n, 1)


def masked_whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Whiten the valid entries of `x` with their masked mean and unbiased variance; 0 at padding.

        x̂ = (x − x̄)/√(var + eps)              shift_mean=True (PPO advantages)
        x̂ = (x − x̄)/√(var + eps) + x̄          shift_mean=False (reward whitening keeps the mean)

    Statistics are taken over every valid token of the batch (Ziegler et al. 2019; TRL `masked_whiten`,
    eps = 1e-8). Args and result are [B, T]; `mask` is bool [B, T] with at least 2 valid entries.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros((), dtype=whitened.dtype, device=whitened.device))


def check_right_padded(mask: Tensor, name: str = "completion_mask") -> Tensor:
    """Check that every row of `mask` [B, T] is right-padded (Trues, then only Falses); return lengths [B].

    GAE runs backwards from the last completion token, so it needs the valid tokens of each row to be a
    prefix: a hole in the middle of a row would make V_{t+1} the value of a padding position.

    Raises:
        LossInputError: naming the first rows that are not right-padded.
    """
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise LossInputError(f"{name} must be a bool tensor [B, T], got {mask.dtype} of shape {tuple(mask.shape)}.")
    lengths = mask.sum(1)  # [B]
    positions = torch.arange(mask.shape[1], device=mask.device)
    prefix = positions.unsqueeze(0) < lengths.unsqueeze(1)  # what a right-padded row of that length is
    bad = (prefix != mask).any(1).nonzero().flatten()
    if bad.numel():
        raise LossInputError(
            f"{name} is not right-padded at rows {bad[:10].tolist()}: each row must be its completion tokens "
            f"followed only by padding. Left-padded generations must be shifted left first."
        )
    return lengths
