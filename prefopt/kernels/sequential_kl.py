"""Per-token KL(π_ref(·|t) ‖ π_θ(·|t)) over the vocabulary from both models' hidden states: TDPO's sequential KL.

    z   = cap((h W^T + b) / T)          policy logits of one row block        (R, V), with gradient
    z'  = cap((h' W'^T + b') / T')      reference logits of the same rows     (R, V), no gradient
    kl  = Σ_v p'_v (log p'_v − log p_v)  p = softmax(z), p' = softmax(z')      (R,)
    backward:  dkl/dz = p − p'  (× (1 − (z/c)²) under a softcap),  dL/da = g·dkl/dz / T
               dh = (dL/da) W,  dW += (dL/da)^T h,  db += Σ_rows dL/da     recomputing z, z' per block

Why not the fused `linear_logprobs`: a log-prob needs one model's logits (an online log-sum-exp and the label's
logit); the KL needs both models' full distributions at every position, Σ_v p'_v log p_v, so each row block
holds its two R×V logit tiles at once. Memory: O(R·V) per block (R rows chosen so one float32 R×V tile is about
`BLOCK_BYTES`), never N×V; the backward recomputes both tiles (2 extra matmuls of 2·R·D·V flops per block,
3 more for the gradients). `sequential_kl_from_logits` is the plain formula on materialised logits: the truth
in tests, and the engine's logits path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["BLOCK_BYTES", "linear_sequential_kl", "sequential_kl_from_logits"]

# One float32 R×V logits tile of about this size per model (the forward keeps ~4 such tiles at once).
BLOCK_BYTES = 8 * 2**20


def sequential_kl_from_logits(logits: Tensor, ref_logits: Tensor) -> Tensor:
    """KL(softmax(ref_logits) ‖ softmax(logits)) per row [N] in float32 (float64 for float64 inputs), from
    materialised [N, V] logits (already tempered and capped); differentiable in `logits`, not in `ref_logits`."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    log_p = torch.log_softmax(logits.to(dtype), dim=-1)
    log_ref = torch.log_softmax(ref_logits.detach().to(dtype), dim=-1)
    return (log_ref.exp() * (log_ref - log_p)).sum(-1)


def _logits(h: Tensor, w: Tensor, b: Tensor | None, temperature: float, softcap: float | None, dtype: Any) -> Tensor:
    """cap((h W^T + b)/T) in `dtype`, (R, V): the matmul in the inputs' dtype, like an lm_head."""
    z = h @ w.T
    if b is not None:
        z = z + b
    z = z.to(dtype) / temperature
    return softcap * torch.tanh(z / softcap) if softcap is not None else z


class _SequentialKL(torch.autograd.Function):
    """(hidden [N,D], weight [V,D], bias [V] | None, ref_hidden [N,D'], ref_weight [V,D'], ref_bias | None, settings)
    → kl [N]; gradients for hidden, weight and bias only."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        ref_hidden: Tensor,
        ref_weight: Tensor,
        ref_bias: Tensor | None,
        settings: tuple[float, float | None, float, float | None, int],
    ) -> Tensor:
        temperature, softcap, ref_temperature, ref_softcap, rows = settings
        dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        kl = torch.empty(hidden.shape[0], dtype=dtype, device=hidden.device)
        with torch.no_grad():
            for r0 in range(0, hidden.shape[0], rows):
                r1 = min(r0 + rows, hidden.shape[0])
                z = _logits(hidden[r0:r1], weight, bias, temperature, softcap, dtype)
                z_ref = _logits(ref_hidden[r0:r1], ref_weight, ref_bias, ref_temperature, ref_softcap, dtype)
                kl[r0:r1] = sequential_kl_from_logits(z, z_ref)
        ctx.save_for_backward(hidden, weight, bias, ref_hidden, ref_weight, ref_bias)
        ctx.settings = settings
        return kl

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        hidden, weight, bias, ref_hidden, ref_weight, ref_bias = ctx.saved_tensors
        temperature, softcap, ref_temperature, ref_softcap, rows = ctx.settings
        need_h, need_w, need_b = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )
        dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        grad_h = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=dtype, device=weight.device) if need_b else None
        for r0 in range(0, hidden.shape[0], rows):
            r1 = min(r0 + rows, hidden.shape[0])
            z = _logits(hidden[r0:r1], weight, bias, temperature, softcap, dtype)
            z_ref = _logits(ref_hidden[r0:r1], ref_weight, ref_bias, ref_temperature, ref_softcap, dtype)
            dz = torch.softmax(z, dim=-1) - torch.softmax(z_ref, dim=-1)  # dkl/dz, (R, V)
            if softcap is not None:
                dz = dz * (1.0 - (z / softcap) ** 2)
            da = dz * (grad[r0:r1].to(dtype) / temperature)[:, None]  # dL/d(h W^T + b)
            if grad_h is not None:
                grad_h[r0:r1] = da @ weight.to(dtype)
            if grad_w is not None:
                grad_w += da.T @ hidden[r0:r1].to(dtype)
            if grad_b is not None:
                grad_b += da.sum(0)
        return (
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None,
            None,
            None,
            None,
        )


def linear_sequential_kl(
    hidden: Tensor,
    weight: Tensor,
    ref_hidden: Tensor,
    ref_weight: Tensor,
    *,
    bias: Tensor | None = None,
    ref_bias: Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    ref_temperature: float = 1.0,
    ref_softcap: float | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Per-row KL(π_ref ‖ π_θ) [N] float32 of the policy head (hidden [N, D], weight [V, D], bias) and the reference
    head (ref_hidden [N, D'], ref_weight [V, D'], ref_bias) at the same N positions (module docstring).

    Differentiable in hidden, weight and bias; the reference tensors get no gradient. `chunk_size`: rows per block
    (None: a float32 R×V tile of about `BLOCK_BYTES`). Temperatures divide and softcaps cap each model's logits
    as `linear_logprobs`'s do.
    """
    if hidden.dim() != 2 or ref_hidden.dim() != 2 or hidden.shape[0] != ref_hidden.shape[0]:
        raise ValueError(
            f"linear_sequential_kl: hidden {tuple(hidden.shape)} and ref_hidden {tuple(ref_hidden.shape)} must be "
            f"[N, D] and [N, D'] for the same N positions"
        )
    if weight.shape[0] != ref_weight.shape[0] or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"linear_sequential_kl: weight {tuple(weight.shape)} and ref_weight {tuple(ref_weight.shape)} must share "
            f"the vocabulary V (and weight's D must be hidden's); the two models need the same tokenizer"
        )
    rows = chunk_size or max(1, min(hidden.shape[0], BLOCK_BYTES // (4 * weight.shape[0])))
    settings = (float(temperature), softcap, float(ref_temperature), ref_softcap, int(rows))
    ref = [t.detach() if t is not None else None for t in (ref_hidden, ref_weight, ref_bias)]
    return _SequentialKL.apply(hidden, weight, bias, ref[0], ref[1], ref[2], settings)
