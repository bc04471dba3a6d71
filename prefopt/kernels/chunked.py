"""Chunked backend of `linear_logprobs`: a torch `autograd.Function` that never builds the N×V logits.

Rows are split into blocks of R rows and the vocabulary into tiles of C columns; only one R×C float32
tile of logits exists at a time, so peak extra memory is O(R·C) ≤ O(chunk·V) plus the gradients.

    forward, per row block:   for each vocab tile v:   Z = H W_v^T / T (+ b_v / T, softcap)    # (R, C)
                              online log-sum-exp:      m ← max(m, max_v Z),  s ← s·e^{m_old−m} + Σ_v e^{Z−m}
                              logp = z_y − (m + log s);  saved for backward: lse = m + log s   (N floats)
                              with return_stats also Σ_v Z (one more pass over the tile, in cache),
                              correct = (z_y = m): the label is an argmax, and s₂ ← s₂·e^{2(m_old−m)} + Σ_v e^{2(Z−m)}
                              (the squared row norm of the tile's e^{Z−m}): log Σ_v p_v² = log s₂ − 2 log s
    backward, per row block:  recompute Z per tile;    P = e^{Z − lse}                           # (R, C)
                              dL/dz = g (e_y − P)  (+ entropy and softcap terms, see `_tile_grad`)
                              dW_v  = (dL/du)^T H / T   written once per tile (vocab-major loop)
                              dH   += (dL/du) W_v / T    accumulated in an R×D buffer that stays in cache

Why vocab tiles rather than row chunks over the full V: a row chunk of 512 rows × 128256 columns is
263 MB of logits (plus temporaries) that stream through DRAM several times, and the V×D weight
gradient is read and rewritten once per chunk. With tiles of ~32 MB the element-wise work stays in
the last-level cache, and each slice of the weight gradient is produced by one matmul.

Fast path (no softcap, no entropy gradient): dL/dz = −g ⊙ (P − E) with a per-row scale −g/T that
factors out of both matmuls, so the tile work is one in-place `exp` and a sparse `−1` at the labels.

Cost: 4 matmuls of 2·N·D·V flops (forward, recompute, dH, dW) against 3 for an implementation that
stores the logits — the price of O(R·C) memory. With a frozen weight and bias (LoRA, a frozen
lm_head) the forward also accumulates ∂logp/∂h = (W_y − Σ_v p_v W_v)/T online, flash-attention
style, and the backward is a row scaling: 2 matmuls instead of 3. Without any gradient: 1.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from prefopt.kernels.params import LinearLogprobsParams

__all__ = ["TILE_BYTES", "ChunkedLinearLogprobs", "linear_logprobs_chunked", "tile_shape"]

# One float32 logits tile of about this size: large enough for efficient matmuls, small enough to stay
# in a server CPU's last-level cache between the matmul and the element-wise passes.
TILE_BYTES = 32 * 2**20
_MAX_ROWS = 4096
_MIN_COLS = 128


def tile_shape(
    num_rows: int, vocab: int, chunk_size: int | None = None, tile_bytes: int | None = None
) -> tuple[int, int]:
    """(rows per block R, vocab columns per tile C) with R·C·4 ≈ tile_bytes (default `TILE_BYTES`).

    R = chunk_size if given, else min(N, 4096); C = tile_bytes / (4R) rounded down to a multiple of
    128, at least 128 and at most V.
    """
    tile_bytes = TILE_BYTES if tile_bytes is None else tile_bytes
    rows = max(1, min(num_rows, chunk_size if chunk_size is not None else _MAX_ROWS))
    cols = max(_MIN_COLS, (tile_bytes // (4 * rows)) // 128 * 128)
    return rows, min(cols, vocab)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the softmax math: float64 for float64 inputs (gradcheck), float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tile_buffer(storage: Tensor, rows: int, cols: int) -> Tensor:
    """A contiguous (rows, cols) view on the front of a preallocated flat float32 buffer."""
    return storage[: rows * cols].view(rows, cols)


def _logits_tile(
    hs: Tensor, w: Tensor, b: Tensor | None, v0: int, v1: int, p: LinearLogprobsParams, out: Tensor
) -> Tensor:
    """Z = hs W[v0:v1]^T (+ b[v0:v1]/T), capped: float32 (R, C). `hs` is hidden/T in float32."""
    wv = w[v0:v1].to(hs.dtype)
    if b is None:
        torch.mm(hs, wv.T, out=out)
    else:
        torch.addmm(b[v0:v1].to(hs.dtype).div(p.temperature).unsqueeze(0), hs, wv.T, out=out)
    if p.softcap is not None:
        out.div_(p.softcap).tanh_().mul_(p.softcap)
    return out


def _labels_in_tile(labels: Tensor, v0: int, v1: int) -> tuple[Tensor, Tensor]:
    """(rows whose label lies in [v0, v1), their column inside the tile)."""
    rows = ((labels >= v0) & (labels < v1)).nonzero().squeeze(1)
    return rows, labels[rows] - v0


class _Block(NamedTuple):
    """What the forward keeps of one row block (R rows)."""

    lse: Tensor  # [R] log Σ_v e^{z_v}
    target: Tensor  # [R] z_y
    row_max: Tensor  # [R] max_v z_v
    mu: Tensor | None  # [R] Σ_v p_v z_v (with return_entropy)
    logit_sum: Tensor | None  # [R] Σ_v z_v (with return_stats)
    log_sum_sq: Tensor | None  # [R] log Σ_v p_v² (with return_stats)
    jacobian: Tensor | None  # [R, D] ∂logp/∂h (frozen weight and bias)


def _forward_block(
    hs: Tensor,
    w: Tensor,
    b: Tensor | None,
    labels: Tensor,
    p: LinearLogprobsParams,
    cols: int,
    storage: Tensor,
    with_jacobian: bool,
) -> _Block:
    """One row block by an online log-sum-exp (see `_Block`).

    J = ∂logp/∂h, only with_jacobian (frozen weight and bias): with u = the logits before the softcap,
    ∂logp/∂u_v = (δ_vy − p_v) f_v, f_v = 1 − (z_v/c)² (1 without softcap), so
    J = (f_y W_y − Σ_v p_v f_v W_v) / T, the sum accumulated flash-attention style with the running max.
    """
    rows, vocab = hs.shape[0], w.shape[0]
    m = torch.full((rows,), float("-inf"), device=hs.device, dtype=hs.dtype)
    s = torch.zeros(rows, device=hs.device, dtype=hs.dtype)
    sz = torch.zeros_like(s) if p.return_entropy else None  # Σ e^{z−m} z
    total = torch.zeros_like(s) if p.return_stats else None  # Σ z
    s2 = torch.zeros_like(s) if p.return_stats else None  # Σ e^{2(z−m)}
    acc = torch.zeros(rows, hs.shape[1], device=hs.device, dtype=hs.dtype) if with_jacobian else None  # Σ e^{z−m} f W
    target = torch.zeros_like(s)
    for v0 in range(0, vocab, cols):
        v1 = min(v0 + cols, vocab)
        z = _logits_tile(hs, w, b, v0, v1, p, _tile_buffer(storage, rows, v1 - v0))
        hit, col = _labels_in_tile(labels, v0, v1)
        target[hit] = z[hit, col]
        if total is not None:
            total.add_(z.sum(dim=1))
        m_new = torch.maximum(m, z.amax(dim=1))
        rescale = torch.exp(m - m_new)  # e^{−inf} = 0 on the first tile
        if sz is not None:
            sz.mul_(rescale).add_((z - m_new[:, None]).exp_().mul_(z).sum(dim=1))
        cap_slope = 1.0 - (z / p.softcap).square_() if (acc is not None and p.softcap is not None) else None
        e = z.sub_(m_new[:, None]).exp_()  # e^{z−m}, in place
        s.mul_(rescale).add_(e.sum(dim=1))
        if s2 is not None:  # Σ e^{2(z−m)} = ‖e‖²: a row norm is one fast reduction, no tile-sized temporary
            s2.mul_(rescale.square()).add_(torch.linalg.vector_norm(e, dim=1).square_())
        if acc is not None:
            e = e.mul_(cap_slope) if cap_slope is not None else e
            acc.mul_(rescale[:, None]).addmm_(e, w[v0:v1].to(acc.dtype))
        m = m_new
    lse = m + s.log()
    jacobian = None
    if acc is not None:
        w_y = w[labels.clamp(0, vocab - 1)].to(acc.dtype)  # (R, D)
        if p.softcap is not None:
            w_y.mul_((1.0 - (target / p.softcap).square())[:, None])
        jacobian = (w_y - acc / s[:, None]) / p.temperature
    log_sum_sq = None if s2 is None else s2.log() - 2.0 * s.log()  # log Σ p² = log s₂ − 2 log s
    return _Block(lse, target, m, (None if sz is None else sz / s), total, log_sum_sq, jacobian)


def _tile_grad(
    z: Tensor,
    lse: Tensor,
    hit: Tensor,
    col: Tensor,
    g_lp: Tensor,
    g_ent: Tensor | None,
    mu: Tensor | None,
    softcap: float | None,
) -> Tensor:
    """General tile gradient dL/du in place of z (float32, (R, C)), u = the logits before the softcap.

    With p = e^{z − lse} and μ = Σ p z:  ∂logp/∂z = e_y − p,  ∂H/∂z = −p (z − μ)  (H = lse − μ),
    so dL/dz = g_lp (e_y − p) − g_ent p (z − μ);  softcap z = c·tanh(u/c): dz/du = 1 − (z/c)².
    """
    p = (z - lse[:, None]).exp_()
    coef = g_lp[:, None].expand_as(z) if g_ent is None else g_lp[:, None] + g_ent[:, None] * (z - mu[:, None])
    dz = p.mul_(coef).neg_()
    dz.index_put_((hit, col), g_lp[hit], accumulate=True)
    if softcap is not None:
        dz.mul_(1.0 - (z / softcap).square_())
    return dz


def _backward_block(
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    labels: Tensor,
    lse: Tensor,
    g_lp: Tensor,
    g_ent: Tensor | None,
    mu: Tensor | None,
    p: LinearLogprobsParams,
    cols: int,
    storage: Tensor,
    grads: tuple[Tensor | None, Tensor | None],
    need_h: bool,
    first_block: bool,
) -> Tensor | None:
    """One row block: returns dL/dh [R, D] float32 (None unless need_h); writes/adds into grads = (dW, db).

    With a = h W^T + b and u = a / T, every path writes dL/da = r ⊙ M (r a per-row scale):
    fast path M = P − E, r = −g/T;  general path M = dL/du (`_tile_grad`), r = 1/T.  Then
    dW = M^T (r ⊙ h),  dh = r ⊙ (M W),  db = M^T r.
    """
    grad_w, grad_b = grads
    rows, vocab = h.shape[0], w.shape[0]
    inv_t = 1.0 / p.temperature
    h32 = h.to(compute_dtype(h.dtype))
    hs = h32 * inv_t if p.temperature != 1.0 else h32  # (R, D) float32 (float64 for float64 inputs)
    fast = p.softcap is None and g_ent is None
    r = g_lp * -inv_t if fast else torch.full((rows,), inv_t, device=h.device, dtype=h32.dtype)
    rh = h32 * r[:, None] if grad_w is not None else None  # (R, D)
    acc = torch.zeros(rows, h.shape[1], device=h.device, dtype=h32.dtype) if need_h else None  # Σ_v M_v W_v
    for v0 in range(0, vocab, cols):
        v1 = min(v0 + cols, vocab)
        z = _logits_tile(hs, w, b, v0, v1, p, _tile_buffer(storage, rows, v1 - v0))
        hit, col = _labels_in_tile(labels, v0, v1)
        if fast:
            m = z.sub_(lse[:, None]).exp_()  # P, in place
            m.index_put_(
                (hit, col), torch.full(hit.shape, -1.0, device=m.device, dtype=m.dtype), accumulate=True
            )  # P − E
        else:
            m = _tile_grad(z, lse, hit, col, g_lp, g_ent, mu, p.softcap)
        if rh is not None:
            if first_block:
                torch.mm(m.T, rh, out=grad_w[v0:v1])
            else:
                grad_w[v0:v1].addmm_(m.T, rh)
        if grad_b is not None:
            grad_b[v0:v1].add_(m.T @ r)
        if acc is not None:
            acc.addmm_(m, w[v0:v1].to(acc.dtype))
    return None if acc is None else acc.mul_(r[:, None])


def _row_blocks(n: int, rows: int) -> list[tuple[int, int]]:
    return [(r0, min(r0 + rows, n)) for r0 in range(0, n, rows)]


class ChunkedLinearLogprobs(torch.autograd.Function):
    """autograd.Function: (hidden [N,D], weight [V,D], bias [V] | None, labels [N]) → (logp [N], entropy [N] | [0],
    stats [3, N] | [0]); stats (with return_stats, not differentiable) holds the mean logit, label = argmax (0/1)
    and log Σ_v p_v².

    Saves hidden, weight, bias, labels and the per-row lse (and μ = Σ p z when entropy is returned).
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, params: LinearLogprobsParams
    ) -> tuple[Tensor, Tensor, Tensor]:
        n = hidden.shape[0]
        dtype = compute_dtype(hidden.dtype)
        rows, cols = tile_shape(n, weight.shape[0], params.chunk_size)
        storage = torch.empty(rows * cols, device=hidden.device, dtype=dtype)
        valid = labels != params.ignore_index
        lse = torch.zeros(n, device=hidden.device, dtype=dtype)
        logp = torch.zeros_like(lse)
        mu = torch.zeros_like(lse) if params.return_entropy else None
        stats = torch.zeros(3, n, device=hidden.device, dtype=dtype) if params.return_stats else lse.new_empty(0)
        # Frozen weight and bias (LoRA, a frozen lm_head): ∂logp/∂h is computed now, 2 matmuls in all, not 3.
        need = ctx.needs_input_grad
        early = need[0] and not need[1] and not (bias is not None and need[2]) and not params.return_entropy
        jacobian = torch.empty(hidden.shape, device=hidden.device, dtype=dtype) if early else None
        for r0, r1 in _row_blocks(n, rows):
            hs = hidden[r0:r1].to(dtype)
            hs = hs / params.temperature if params.temperature != 1.0 else hs
            block = _forward_block(hs, weight, bias, labels[r0:r1], params, cols, storage, with_jacobian=early)
            lse[r0:r1] = block.lse
            logp[r0:r1] = block.target - block.lse
            if mu is not None:
                mu[r0:r1] = block.mu
            if block.logit_sum is not None:  # [3, R]: mean logit, label = argmax as 0/1, log Σ p²
                stats[0, r0:r1] = block.logit_sum / weight.shape[0]
                stats[1, r0:r1] = block.target >= block.row_max
                stats[2, r0:r1] = block.log_sum_sq
            if jacobian is not None:
                jacobian[r0:r1] = block.jacobian
        logp = logp.masked_fill_(~valid, 0.0)
        entropy = (lse - mu).masked_fill_(~valid, 0.0) if mu is not None else logp.new_empty(0)
        stats = stats.masked_fill_(~valid, 0.0) if params.return_stats else stats
        if jacobian is not None:  # backward needs only J and the labels
            hidden, weight, bias = hidden.new_empty(0), weight.new_empty(0), None
        ctx.save_for_backward(hidden, weight, bias, labels, lse, mu, jacobian)
        ctx.params = params
        ctx.hidden_dtype = hidden.dtype
        ctx.set_materialize_grads(False)
        if mu is None:
            ctx.mark_non_differentiable(entropy)
        ctx.mark_non_differentiable(stats)
        return logp, entropy, stats

    @staticmethod
    def backward(
        ctx: Any, grad_logp: Tensor | None, grad_entropy: Tensor | None, _grad_stats: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, labels, lse, mu, jacobian = ctx.saved_tensors
        params: LinearLogprobsParams = ctx.params
        if jacobian is not None:  # frozen weight: dL/dh = g ⊙ ∂logp/∂h, no matmul
            if grad_logp is None:
                return None, None, None, None, None
            g = grad_logp.to(jacobian.dtype).masked_fill(labels == params.ignore_index, 0.0)
            return (g[:, None] * jacobian).to(ctx.hidden_dtype), None, None, None, None
        need_h, need_w, need_b = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )
        if not (need_h or need_w or need_b):
            return None, None, None, None, None
        n, vocab = hidden.shape[0], weight.shape[0]
        valid = labels != params.ignore_index
        dtype = compute_dtype(hidden.dtype)
        g_lp = lse.new_zeros(n) if grad_logp is None else grad_logp.to(dtype).masked_fill(~valid, 0.0)
        g_ent = None if (grad_entropy is None or mu is None) else grad_entropy.to(dtype).masked_fill(~valid, 0.0)
        rows, cols = tile_shape(n, vocab, params.chunk_size)
        storage = torch.empty(rows * cols, device=hidden.device, dtype=dtype)
        grad_w = torch.empty(vocab, weight.shape[1], device=weight.device, dtype=dtype) if need_w else None
        grad_b = torch.zeros(vocab, device=weight.device, dtype=dtype) if need_b else None
        grad_h = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if need_h else None
        for i, (r0, r1) in enumerate(_row_blocks(n, rows)):
            block = _backward_block(
                hidden[r0:r1],
                weight,
                bias,
                labels[r0:r1],
                lse[r0:r1],
                g_lp[r0:r1],
                None if g_ent is None else g_ent[r0:r1],
                None if mu is None else mu[r0:r1],
                params,
                cols,
                storage,
                (grad_w, grad_b),
                need_h,
                first_block=i == 0,
            )
            if grad_h is not None and block is not None:
                grad_h[r0:r1] = block
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None


def linear_logprobs_chunked(
    hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None, params: LinearLogprobsParams
) -> tuple[Tensor, Tensor, Tensor]:
    """Chunked `linear_logprobs` on validated inputs: (logp [N] float32, entropy [N] float32 or empty,
    stats [3, N] float32 or empty)."""
    return ChunkedLinearLogprobs.apply(hidden, weight, bias, labels, params)
