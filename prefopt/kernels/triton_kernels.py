"""Triton kernels of `linear_logprobs`: tiled over tokens × vocab, online log-sum-exp, logits never stored.

Imported only by `prefopt.kernels.triton_function`, which is imported only when the triton backend is
used, so this module may import triton at the top.

Memory traffic per (BLOCK_N rows × BLOCK_V vocab) tile, compared with the reference (which writes
and re-reads N×V float32 logits and their gradient, 8·N·V bytes each way):
    forward   reads BLOCK_N×D of hidden and BLOCK_V×D of weight, writes 4 floats per row per split;
    backward  recomputes the tile the same way, then adds BLOCK_N×D into dH and BLOCK_V×D into dW
              (float32 atomics), so only O(N·D + V·D) bytes move besides the matmul operands.

Interpreter notes (TRITON_INTERPRET=1, used by the CPU tests): no autotune, no libdevice (tanh is
written with exp), and `tl.dot` on bf16 is wrong there, so DOT_FP32 casts the operands to float32.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    """tanh(x) = 1 − 2 / (e^{2x} + 1): exact limits ±1 at overflow, no libdevice."""
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _logits_tile(
    h_ptr,
    w_ptr,
    b_ptr,
    rows,
    cols,
    row_mask,
    col_mask,
    D,
    stride_hn,
    stride_hd,
    stride_wv,
    stride_wd,
    inv_temp,
    softcap,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    DOT_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """z = cap((h W^T + b) / T) for one (BLOCK_N, BLOCK_V) tile, float32; masked rows/cols read zeros."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_mask = ds < D
        h = tl.load(
            h_ptr + rows[:, None] * stride_hn + ds[None, :] * stride_hd,
            mask=row_mask[:, None] & d_mask[None, :],
            other=0.0,
        )  # (BLOCK_N, BLOCK_D)
        w = tl.load(
            w_ptr + cols[None, :] * stride_wv + ds[:, None] * stride_wd,
            mask=col_mask[None, :] & d_mask[:, None],
            other=0.0,
        )  # (BLOCK_D, BLOCK_V)
        if DOT_FP32:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, w, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    acc = acc * inv_temp
    if HAS_SOFTCAP:
        acc = softcap * _tanh(acc / softcap)
    return acc


@triton.jit
def lse_forward_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    labels_ptr,
    max_ptr,
    sum_ptr,
    sumz_ptr,
    target_ptr,
    zsum_ptr,
    sumsq_ptr,
    N,
    V,
    D,
    cols_per_split,
    stride_hn,
    stride_hd,
    stride_wv,
    stride_wd,
    inv_temp,
    softcap,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
    WITH_STATS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Grid (⌈N/BLOCK_N⌉, splits). Program (i, k) scans vocab split k for rows of block i and writes
    partial m = max z, s = Σ e^{z−m}, sz = Σ e^{z−m} z, the label's logit (0 if not in the split) and,
    WITH_STATS, Σ z and s₂ = Σ e^{2(z−m)} to [k, row] of max/sum/sumz/target/zsum/sumsq ([splits, N] float32).
    The launcher combines the splits.
    """
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    labels = tl.load(labels_ptr + rows, mask=row_mask, other=-1)
    m = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)
    sz = tl.zeros((BLOCK_N,), dtype=tl.float32)
    target = tl.zeros((BLOCK_N,), dtype=tl.float32)
    total = tl.zeros((BLOCK_N,), dtype=tl.float32)
    s2 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    v_start = pid_s * cols_per_split
    v_end = tl.minimum(v_start + cols_per_split, V)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < v_end
        z = _logits_tile(
            h_ptr,
            w_ptr,
            b_ptr,
            rows,
            cols,
            row_mask,
            col_mask,
            D,
            stride_hn,
            stride_hd,
            stride_wv,
            stride_wd,
            inv_temp,
            softcap,
            HAS_BIAS,
            HAS_SOFTCAP,
            DOT_FP32,
            DOT_PRECISION,
            BLOCK_N,
            BLOCK_V,
            BLOCK_D,
        )
        target += tl.sum(tl.where(cols[None, :] == labels[:, None], z, 0.0), axis=1)
        if WITH_STATS:
            total += tl.sum(tl.where(col_mask[None, :], z, 0.0), axis=1)
        z_masked = tl.where(col_mask[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z_masked, axis=1))  # finite: every tile has a valid column
        rescale = tl.exp(m - m_new)
        e = tl.exp(z_masked - m_new[:, None])  # 0 on masked columns
        s = s * rescale + tl.sum(e, axis=1)
        if WITH_STATS:
            s2 = s2 * rescale * rescale + tl.sum(e * e, axis=1)  # Σ e^{2(z−m)}, for log Σ p² = log s₂ − 2 log s
        if WITH_ENTROPY:
            sz = sz * rescale + tl.sum(e * z, axis=1)  # z is finite (0) on masked columns
        m = m_new
    out = pid_s * N + rows
    tl.store(max_ptr + out, m, mask=row_mask)
    tl.store(sum_ptr + out, s, mask=row_mask)
    tl.store(target_ptr + out, target, mask=row_mask)
    if WITH_ENTROPY:
        tl.store(sumz_ptr + out, sz, mask=row_mask)
    if WITH_STATS:
        tl.store(zsum_ptr + out, total, mask=row_mask)
        tl.store(sumsq_ptr + out, s2, mask=row_mask)


@triton.jit
def backward_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    labels_ptr,
    lse_ptr,
    glp_ptr,
    gent_ptr,
    mu_ptr,
    dh_ptr,
    dw_ptr,
    db_ptr,
    N,
    V,
    D,
    stride_hn,
    stride_hd,
    stride_wv,
    stride_wd,
    inv_temp,
    softcap,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    WITH_ENTROPY_GRAD: tl.constexpr,
    NEED_DH: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    DOT_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Grid (⌈N/BLOCK_N⌉, ⌈V/BLOCK_V⌉). Recompute the tile, then with p = e^{z − lse}:
        dL/dz = g (e_y − p) − g_ent p (z − μ);  softcap: × (1 − (z/c)²);  dL/da = dL/du / T
        dH[rows] += (dL/da) W[cols],  dW[cols] += (dL/da)^T H[rows],  db[cols] += Σ_rows dL/da
    dh/dw/db are float32, contiguous, zero-initialised; updates are atomic adds.
    """
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_mask = rows < N
    col_mask = cols < V
    z = _logits_tile(
        h_ptr,
        w_ptr,
        b_ptr,
        rows,
        cols,
        row_mask,
        col_mask,
        D,
        stride_hn,
        stride_hd,
        stride_wv,
        stride_wd,
        inv_temp,
        softcap,
        HAS_BIAS,
        HAS_SOFTCAP,
        DOT_FP32,
        DOT_PRECISION,
        BLOCK_N,
        BLOCK_V,
        BLOCK_D,
    )
    labels = tl.load(labels_ptr + rows, mask=row_mask, other=-1)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    g = tl.load(glp_ptr + rows, mask=row_mask, other=0.0)
    p = tl.exp(z - lse[:, None])
    dz = tl.where(cols[None, :] == labels[:, None], g[:, None], 0.0) - g[:, None] * p
    if WITH_ENTROPY_GRAD:
        g_ent = tl.load(gent_ptr + rows, mask=row_mask, other=0.0)
        mu = tl.load(mu_ptr + rows, mask=row_mask, other=0.0)
        dz -= g_ent[:, None] * p * (z - mu[:, None])
    if HAS_SOFTCAP:
        t = z / softcap
        dz = dz * (1.0 - t * t)
    da = tl.where(row_mask[:, None] & col_mask[None, :], dz * inv_temp, 0.0)  # (BLOCK_N, BLOCK_V) float32
    if NEED_DB:
        tl.atomic_add(db_ptr + cols, tl.sum(da, axis=0), mask=col_mask)
    da_dot = da if DOT_FP32 else da.to(h_ptr.dtype.element_ty)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_mask = ds < D
        if NEED_DH:
            w = tl.load(
                w_ptr + cols[:, None] * stride_wv + ds[None, :] * stride_wd,
                mask=col_mask[:, None] & d_mask[None, :],
                other=0.0,
            )  # (BLOCK_V, BLOCK_D)
            if DOT_FP32:
                w = w.to(tl.float32)
            dh = tl.dot(da_dot, w, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_D)
            tl.atomic_add(dh_ptr + rows[:, None] * D + ds[None, :], dh, mask=row_mask[:, None] & d_mask[None, :])
        if NEED_DW:
            h = tl.load(
                h_ptr + rows[:, None] * stride_hn + ds[None, :] * stride_hd,
                mask=row_mask[:, None] & d_mask[None, :],
                other=0.0,
            )  # (BLOCK_N, BLOCK_D)
            if DOT_FP32:
                h = h.to(tl.float32)
            dw = tl.dot(tl.trans(da_dot), h, input_precision=DOT_PRECISION)  # (BLOCK_V, BLOCK_D)
            tl.atomic_add(dw_ptr + cols[:, None] * D + ds[None, :], dw, mask=col_mask[:, None] & d_mask[None, :])
