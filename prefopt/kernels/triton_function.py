"""Triton backend of `linear_logprobs`: launchers and the autograd.Function around the kernels.

    forward:  lse_forward_kernel over (row blocks × vocab splits) → per-split (m, s, Σe^{z−m}z, z_y, Σz),
              combined here: lse = logsumexp_k(m_k + log s_k),  logp = z_y − lse,  μ = Σ_k e^{m_k−lse} sz_k,
              stats: mean logit = Σ_k Σz_k / V,  label = argmax ⇔ z_y = max_k m_k,
                     log Σ_v p_v² = logsumexp_k(2 m_k + log s₂_k) − 2·lse
    backward: backward_kernel over (row blocks × vocab blocks), recomputing each logits tile
              (as in Cut Cross-Entropy, Wijmans et al. 2024, arXiv:2411.09009), float32 atomics into dH, dW, db.

Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (the CPU tests). Importing this
module imports triton; `prefopt.kernels.dispatch` does so only when the triton backend is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import triton
from torch import Tensor

from prefopt.kernels.params import LinearLogprobsParams
from prefopt.kernels.triton_kernels import backward_kernel, lse_forward_kernel

__all__ = ["TritonBlocks", "TritonLinearLogprobs", "linear_logprobs_triton"]


@dataclass(frozen=True)
class TritonBlocks:
    """Tile sizes (each ≥ 16 for tl.dot) and launch settings; the CPU tests use smaller ones."""

    block_n: int = 64
    block_v: int = 128
    block_d: int = 64
    num_warps: int = 8
    min_programs: int = 512  # vocab splits in the forward are chosen to reach about this many programs


BLOCKS = TritonBlocks()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check_device(hidden: Tensor) -> None:
    if hidden.device.type != "cuda" and not _interpreting():
        raise RuntimeError(
            f"linear_logprobs: backend='triton' needs CUDA tensors, got {hidden.device}; use backend='chunked' "
            "(or set TRITON_INTERPRET=1 before importing prefopt, for tests)"
        )
    if hidden.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"linear_logprobs: backend='triton' supports float32/bfloat16/float16, got {hidden.dtype}")


def _dot_settings(dtype: torch.dtype) -> dict[str, Any]:
    """float32 inputs use IEEE dots (torch's default matmul precision); bf16 is cast to float32 only when
    interpreting, where tl.dot on bf16 is wrong."""
    return {"DOT_FP32": _interpreting() or dtype == torch.float32, "DOT_PRECISION": "ieee"}


def _common(hidden: Tensor, weight: Tensor, params: LinearLogprobsParams) -> dict[str, Any]:
    return {
        "stride_hn": hidden.stride(0),
        "stride_hd": hidden.stride(1),
        "stride_wv": weight.stride(0),
        "stride_wd": weight.stride(1),
        "inv_temp": 1.0 / params.temperature,
        "softcap": params.softcap or 1.0,
        "HAS_SOFTCAP": params.softcap is not None,
        **_dot_settings(hidden.dtype),
    }


def _forward(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    labels: Tensor,
    params: LinearLogprobsParams,
    blocks: TritonBlocks,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """(lse [N], target logit [N], μ = Σ p z [N] or None, stats [3, N] or empty), all float32."""
    (n, d), vocab = hidden.shape, weight.shape[0]
    row_blocks = triton.cdiv(n, blocks.block_n)
    vocab_blocks = triton.cdiv(vocab, blocks.block_v)
    splits = max(1, min(vocab_blocks, blocks.min_programs // row_blocks))
    cols_per_split = triton.cdiv(vocab_blocks, splits) * blocks.block_v
    splits = triton.cdiv(vocab, cols_per_split)  # no empty split
    part = torch.empty(6, splits, n, device=hidden.device, dtype=torch.float32)  # m, s, sz, target, Σz, s₂
    lse_forward_kernel[(row_blocks, splits)](
        hidden,
        weight,
        bias if bias is not None else hidden,
        labels,
        part[0],
        part[1],
        part[2],
        part[3],
        part[4],
        part[5],
        n,
        vocab,
        d,
        cols_per_split,
        **_common(hidden, weight, params),
        HAS_BIAS=bias is not None,
        WITH_ENTROPY=params.return_entropy,
        WITH_STATS=params.return_stats,
        BLOCK_N=blocks.block_n,
        BLOCK_V=blocks.block_v,
        BLOCK_D=blocks.block_d,
        num_warps=blocks.num_warps,
    )
    m, s, sz, target, total, s2 = part
    lse = torch.logsumexp(m + s.log(), dim=0)
    mu = (torch.exp(m - lse) * sz).sum(0) if params.return_entropy else None
    target = target.sum(0)  # z_y + exact zeros: the label's logit as the kernel computed it
    stats = lse.new_empty(0)
    if params.return_stats:  # [3, N]: mean logit, label = argmax (z_y is one of the values the maxima saw), log Σ p²
        log_sum_sq = torch.logsumexp(2.0 * m + s2.log(), dim=0) - 2.0 * lse
        stats = torch.stack([total.sum(0) / vocab, (target >= m.amax(0)).float(), log_sum_sq])
    return lse, target, mu, stats


class TritonLinearLogprobs(torch.autograd.Function):
    """autograd.Function: (hidden [N,D], weight [V,D], bias [V] | None, labels [N]) → (logp [N], entropy [N] | [0],
    stats [3, N] | [0]); stats (with return_stats, not differentiable) holds the mean logit, label = argmax (0/1)
    and log Σ_v p_v².
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, params: LinearLogprobsParams
    ) -> tuple[Tensor, Tensor, Tensor]:
        _check_device(hidden)
        labels = labels.contiguous()
        lse, target, mu, stats = _forward(hidden, weight, bias, labels, params, BLOCKS)
        ignored = labels == params.ignore_index
        logp = (target - lse).masked_fill_(ignored, 0.0)
        entropy = (lse - mu).masked_fill_(ignored, 0.0) if mu is not None else logp.new_empty(0)
        stats = stats.masked_fill_(ignored, 0.0) if params.return_stats else stats
        ctx.save_for_backward(hidden, weight, bias, labels, lse, mu)
        ctx.params = params
        ctx.set_materialize_grads(False)
        if mu is None:
            ctx.mark_non_differentiable(entropy)
        ctx.mark_non_differentiable(stats)
        return logp, entropy, stats

    @staticmethod
    def backward(
        ctx: Any, grad_logp: Tensor | None, grad_entropy: Tensor | None, _grad_stats: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, labels, lse, mu = ctx.saved_tensors
        params: LinearLogprobsParams = ctx.params
        (n, d), vocab = hidden.shape, weight.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        valid = labels != params.ignore_index
        g_lp = lse.new_zeros(n) if grad_logp is None else grad_logp.float().masked_fill(~valid, 0.0).contiguous()
        with_ent = grad_entropy is not None and mu is not None
        g_ent = grad_entropy.float().masked_fill(~valid, 0.0).contiguous() if with_ent else g_lp
        dh = torch.zeros(n, d, device=hidden.device, dtype=torch.float32) if need_h else g_lp
        dw = torch.zeros(vocab, d, device=hidden.device, dtype=torch.float32) if need_w else g_lp
        db = torch.zeros(vocab, device=hidden.device, dtype=torch.float32) if need_b else g_lp
        b = BLOCKS
        backward_kernel[(triton.cdiv(n, b.block_n), triton.cdiv(vocab, b.block_v))](
            hidden,
            weight,
            bias if bias is not None else hidden,
            labels,
            lse,
            g_lp,
            g_ent,
            mu if mu is not None else lse,
            dh,
            dw,
            db,
            n,
            vocab,
            d,
            **_common(hidden, weight, params),
            HAS_BIAS=bias is not None,
            WITH_ENTROPY_GRAD=with_ent,
            NEED_DH=need_h,
            NEED_DW=need_w,
            NEED_DB=need_b,
            BLOCK_N=b.block_n,
            BLOCK_V=b.block_v,
            BLOCK_D=b.block_d,
            num_warps=b.num_warps,
        )
        return (
            dh.to(hidden.dtype) if need_h else None,
            dw.to(weight.dtype) if need_w else None,
            db.to(bias.dtype) if need_b else None,
            None,
            None,
        )


def linear_logprobs_triton(
    hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None, params: LinearLogprobsParams
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton `linear_logprobs` on validated inputs: (logp [N] float32, entropy [N] float32 or empty,
    stats [3, N] float32 or empty)."""
    return TritonLinearLogprobs.apply(hidden, weight, bias, labels, params)
