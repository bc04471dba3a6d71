"""One call of the loss-fused head: its inputs, accumulators and per-chunk work (`FusedHeadRun`).

`prefopt.kernels.fused_head` plans the chunks and drives a run; its module docstring gives the algorithm. Kept
chunks take three matmuls (`FusedHeadRun.keep_chunk`, with softcap `_keep_capped`), groups too large to keep
the chunked backend's four (`recompute_chunk`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from prefopt.kernels.chunked import (
    _backward_block,
    _forward_block,
    _labels_in_tile,
    _logits_tile,
    _tile_buffer,
    _tile_grad,
    compute_dtype,
    tile_shape,
)
from prefopt.kernels.params import LinearLogprobsParams, LogitStats

__all__ = ["KEEP_TILE_BYTES", "SWEEP_TILE_BYTES", "UNSHIFTED", "FusedHeadResult", "FusedHeadRun", "GradFn"]

# Logits tile of a kept chunk with softcap (and its one scratch tile) or a weight of another dtype (cast per tile).
KEEP_TILE_BYTES = 8 * 2**20
# Range of Σ_v e^{z_v} per row where a kept chunk's tiles may keep e^{Z} unshifted (`FusedHeadRun._sweep`): every
# e^{z} finite, the lse within ±69 and c = e^{−lse} a normal float32.
UNSHIFTED = (1e-30, 1e30)
# Logits tile (float32 M×C) of an unshifted sweep, each with its own dH matmul: 8192 vocabulary rows at M = 256.
# On the 2-core CPU, 4 to 32 MiB took the same time within noise and 2 MiB about 3% more (docs/kernels.md).
SWEEP_TILE_BYTES = 8 * 2**20

# (sums [S] float32, done [S] bool, per-token stats so far | None) → g [S]: d objective / d sum_s, read at the
# sequences of finished groups. The stats (with return_stats) are the rows' `LogitStats`, 0 at rows not yet seen.
GradFn = Callable[[Tensor, Tensor, LogitStats | None], Tensor]


class FusedHeadResult(NamedTuple):
    """What `linear_logprobs_with_grad` returns (gradients None where not asked for)."""

    logp: Tensor  # [N] float32 per-token log-probs (detached)
    sums: Tensor  # [S] float32 per-sequence sums, accumulated in float64
    grad_hidden: Tensor | None  # [N, D] in hidden's dtype
    grad_weight: Tensor | None  # [V, D] in weight's dtype
    grad_bias: Tensor | None  # [V] in bias's dtype
    stats: LogitStats | None  # mean logit, label = argmax, log Σ p² (with return_stats)


class _Sweep(NamedTuple):
    """What sweep 1 of a kept chunk without softcap leaves (`FusedHeadRun._sweep`); per-tile rows are [tiles, M]."""

    target: Tensor  # [M] the label's logit
    tile_max: Tensor  # m_v, 0 when unshifted
    tile_sum: Tensor  # Σ e_v
    tile_sq: Tensor | None  # Σ e_v² (with return_stats)
    total: Tensor | None  # [M] Σ_v z (with return_stats)
    tiles: list[tuple[int, int, Tensor]]  # (v0, v1, e_vᵀ (C, M))
    acc: Tensor | None  # (Σ_v e_v W_v)ᵀ (D, M), formed by an unshifted sweep


class FusedHeadRun:
    """One call's inputs, accumulators and per-chunk work (see the module docstring)."""

    def __init__(
        self,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        labels: Tensor,
        sequence_ids: Tensor,
        num_sequences: int,
        grad_fn: GradFn,
        p: LinearLogprobsParams,
        need: tuple[bool, bool, bool],
    ) -> None:
        self.hidden, self.weight, self.bias, self.labels, self.seq = hidden, weight, bias, labels, sequence_ids
        self.grad_fn, self.p = grad_fn, p
        self.dtype = compute_dtype(hidden.dtype)
        n, vocab, device = hidden.shape[0], weight.shape[0], hidden.device
        self.remaining = torch.bincount(sequence_ids, minlength=num_sequences)  # tokens not yet seen, per sequence
        sum_dtype = torch.float32 if device.type == "mps" else torch.float64  # as `engine.outputs.sequence_sums`
        self.sums = torch.zeros(num_sequences, dtype=sum_dtype, device=device)
        self.logp = torch.zeros(n, dtype=self.dtype, device=device)
        self.stats = torch.zeros(3, n, dtype=self.dtype, device=device) if p.return_stats else None
        need_h, need_w, need_b = need
        self.grad_h = torch.zeros(hidden.shape, dtype=hidden.dtype, device=device) if need_h else None
        self.grad_w = torch.empty(vocab, weight.shape[1], dtype=self.dtype, device=device) if need_w else None
        self.w_written = False  # dW is written by the first chunk, accumulated into by the rest
        self.kept: Tensor | None = None  # the kept chunks' logits (`reserve`), reused from chunk to chunk
        self.unshifted = not p.return_stats  # cleared by the first chunk out of `UNSHIFTED`: one wasted sweep a call
        self.grad_b = torch.zeros(vocab, dtype=self.dtype, device=device) if (need_b and bias is not None) else None

    def reserve(self, max_rows: int) -> None:
        """The kept chunks' logits buffer, for chunks of up to max_rows rows: one allocation for all of them
        (fresh pages for every chunk cost about 5% of the call on a CPU)."""
        self.kept = torch.empty(max_rows * self.weight.shape[0], dtype=self.dtype, device=self.hidden.device)

    def _rows(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(h, hs) of the chunk in the compute dtype: hidden rows and hidden rows / T."""
        h = self.hidden.index_select(0, rows).to(self.dtype)
        return h, (h / self.p.temperature if self.p.temperature != 1.0 else h)

    def _token_stats(self) -> LogitStats | None:
        if self.stats is None:
            return None
        return LogitStats(self.stats[0].float(), self.stats[1].bool(), self.stats[2].float())

    def _gradient(
        self, rows: Tensor, target: Tensor, lse: Tensor, row_max: Tensor, extra: tuple[Tensor, Tensor] | None
    ) -> Tensor:
        """Record the chunk's log-probs, sums and stats (extra = (Σ_v z, log Σ_v p²) per row); ask the loss for
        g; return g per row [M]."""
        logp = target - lse
        self.logp[rows] = logp
        if self.stats is not None and extra is not None:
            self.stats[0, rows] = extra[0] / self.weight.shape[0]
            self.stats[1, rows] = (target >= row_max).to(self.dtype)
            self.stats[2, rows] = extra[1]
        seq = self.seq[rows]
        self.sums.index_add_(0, seq, logp.to(self.sums.dtype))
        self.remaining -= torch.bincount(seq, minlength=self.remaining.shape[0])
        g = self.grad_fn(self.sums.float(), self.remaining == 0, self._token_stats())  # [S]
        return g.detach().to(device=logp.device, dtype=self.dtype)[seq]

    def _weight_grad(self, v0: int, v1: int, lhs: Tensor, rhs: Tensor) -> None:
        """dW[v0:v1] += lhs @ rhs; the first chunk writes (dW starts uninitialised)."""
        assert self.grad_w is not None
        if self.w_written:
            self.grad_w[v0:v1].addmm_(lhs, rhs)
        else:
            torch.mm(lhs, rhs, out=self.grad_w[v0:v1])

    def _chunk_start(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor, int, Tensor]:
        """(h, hs, labels, tile width, the flat buffer of the chunk's M×V logits) of a kept chunk.

        Without softcap and with the weight in the compute dtype the chunk is one tile: the fewest and largest
        operations (on a shared 2-core CPU, many small parallel regions cost more than the cache they save).
        Otherwise tiles of `KEEP_TILE_BYTES`: softcap's scratch tile and a weight tile cast to float32 stay small.
        """
        h, hs = self._rows(rows)
        m_rows, vocab = rows.shape[0], self.weight.shape[0]
        one_tile = self.p.softcap is None and self.weight.dtype == self.dtype
        cols = vocab if one_tile else tile_shape(m_rows, vocab, tile_bytes=KEEP_TILE_BYTES)[1]
        assert self.kept is not None and self.kept.numel() >= m_rows * vocab, "reserve() the largest kept chunk"
        return h, hs, self.labels[rows], cols, self.kept[: m_rows * vocab]  # tile v at [M·v0, M·v1)

    def keep_chunk(self, rows: Tensor) -> None:
        """A chunk whose M×V logits fit the budget: three matmuls (module docstring).

        The tiles are kept transposed, Z_vᵀ (C, M) = W_v hsᵀ: each matmul then takes the chunk's M rows as its
        narrow operand untransposed, which BLAS runs faster than h W_vᵀ at M of a few hundred. Without softcap
        the tiles keep e_v = exp(Z_v − m_v) in place of the logits (`_sweep`), so sweep 2 has no element-wise
        pass over them: P_v = c_v ⊙ e_v with c_v = exp(m_v − lse) per row, folded into the matmuls' (M, D)
        operands, and the −E part of G = P − E is one row per token:

            dW_v += e_vᵀ (c_v ⊙ r ⊙ h),   dW[y_t] −= r_t h_t,   dh = r ⊙ (Σ_v c_v ⊙ (e_v W_v) − W[y_t])
        """
        if self.p.softcap is not None:
            self._keep_capped(rows)
            return
        h, hs, labels, cols, kept = self._chunk_start(rows)
        hs_t = hs.T.contiguous()  # (D, M)
        chunk = (h, hs_t, labels, cols, kept)
        swept = self._sweep(chunk, shifted=False) if self.unshifted else None
        self.unshifted = swept is not None
        target, tile_max, tile_sum, tile_sq, total, tiles, acc = swept or self._sweep(chunk, shifted=True)
        row_max = tile_max.amax(dim=0)
        shift = (tile_max - row_max).exp_()  # e^{m_v − max}
        log_s = (tile_sum * shift).sum(dim=0).log()
        lse = row_max + log_s
        extra = None
        if total is not None and tile_sq is not None:  # log Σ p² = log Σ e^{2(z − max)} − 2 log Σ e^{z − max}
            extra = (total, (tile_sq * shift.square_()).sum(dim=0).log() - 2.0 * log_s)
        r = self._gradient(rows, target, lse, row_max, extra) * -(1.0 / self.p.temperature)  # dL/da = r ⊙ (P − E)
        scale = (tile_max - lse).exp_()  # c_v [tiles, M]
        need_w, need_b, need_h = self.grad_w is not None, self.grad_b is not None, self.grad_h is not None
        product = None
        if swept is not None:  # unshifted: one c for every tile, so sweep 2 is one (V, M) tile; Σ_v e_v W_v is done
            vocab = self.weight.shape[0]
            tiles, scale = [(0, vocab, kept.view(vocab, h.shape[0]))], scale[:1]
            if acc is not None:
                acc.mul_(scale[0])
        elif need_h:
            acc = torch.zeros_like(hs_t)  # (Σ_v c_v ⊙ (e_v W_v))ᵀ
            product = torch.empty_like(hs_t)  # (e_v W_v)ᵀ = W_vᵀ e_vᵀ
        scaled = torch.empty_like(h) if need_w else None  # c_v ⊙ r ⊙ h
        for i, (v0, v1, e) in enumerate(tiles):
            cr = scale[i] * r
            if scaled is not None:
                self._weight_grad(v0, v1, e, torch.mul(h, cr[:, None], out=scaled))
            if need_b:
                self.grad_b[v0:v1].add_(e @ cr)  # type: ignore[index]
            if acc is not None and product is not None:
                acc.addcmul_(torch.mm(self.weight[v0:v1].to(self.dtype).T, e, out=product), scale[i])
        self._label_terms(rows, h, labels, r, None if acc is None else acc.T)

    def _sweep(self, chunk: tuple[Tensor, Tensor, Tensor, int, Tensor], shifted: bool) -> _Sweep | None:
        """Sweep 1 of a kept chunk without softcap (`_Sweep`).

        shifted: m_v is the row's maximum over tile v (an `amax` and a subtraction per tile). Unshifted: m_v = 0
        and e_v = exp(Z_v) needs nothing from other tiles, so the sweep goes in tiles of `SWEEP_TILE_BYTES` of
        logits and forms e_v W_v (the dH matmul) per tile, keeping e_v for sweep 2; exact wherever Σ_v e^{z} lies in
        `UNSHIFTED`, else None (nothing recorded yet) and the caller sweeps again, shifted. The statistics always
        sweep shifted.
        """
        w, b, p, dtype = self.weight, self.bias, self.p, self.dtype
        h, hs_t, labels, cols, kept = chunk
        m_rows, vocab = h.shape[0], w.shape[0]
        if not shifted:
            cols = min(cols, max(128, SWEEP_TILE_BYTES // (4 * m_rows)))
        starts = range(0, vocab, cols)
        tile_max = torch.zeros(len(starts), m_rows, dtype=dtype, device=h.device)  # m_v
        tile_sum = torch.empty_like(tile_max)  # Σ e_v
        tile_sq = torch.empty_like(tile_max) if p.return_stats else None  # Σ e_v²
        target = torch.zeros(m_rows, dtype=dtype, device=h.device)
        total = torch.zeros_like(target) if p.return_stats else None
        acc = torch.zeros_like(hs_t) if not shifted and self.grad_h is not None else None  # (Σ_v e_v W_v)ᵀ
        tiles: list[tuple[int, int, Tensor]] = []
        for i, v0 in enumerate(starts):
            v1 = min(v0 + cols, vocab)
            z, wv = kept[m_rows * v0 : m_rows * v1].view(v1 - v0, m_rows), w[v0:v1].to(dtype)  # Z_vᵀ
            torch.mm(wv, hs_t, out=z)
            if b is not None:  # added after the product: BLAS may accumulate the dot onto a large bias (lossy)
                z.add_(b[v0:v1].to(dtype).div(p.temperature).unsqueeze(1))
            hit, col = _labels_in_tile(labels, v0, v1)
            target[hit] = z[col, hit]
            if total is not None:
                total.add_(z.sum(dim=0))
            if shifted:
                tile_max[i] = z.amax(dim=0)
                z.sub_(tile_max[i])
            e = z.exp_()  # e_vᵀ in place of Z_vᵀ
            tile_sum[i] = e.sum(dim=0)
            if tile_sq is not None:  # a column norm: no tile-sized temporary
                tile_sq[i] = torch.linalg.vector_norm(e, dim=0).square_()
            if acc is not None:
                acc.addmm_(wv.T, e)
            tiles.append((v0, v1, e))
        if not shifted:
            sums = tile_sum.sum(dim=0)
            if not bool(((sums > UNSHIFTED[0]) & (sums < UNSHIFTED[1])).all()):
                return None
        return _Sweep(target, tile_max, tile_sum, tile_sq, total, tiles, acc)

    def _label_terms(self, rows: Tensor, h: Tensor, labels: Tensor, r: Tensor, acc: Tensor | None) -> None:
        """The −E part of G = P − E (one entry per row, at its label), then dH of the chunk."""
        if self.grad_w is not None:
            self.w_written = True
            self.grad_w.index_add_(0, labels, h.mul_(r[:, None]), alpha=-1.0)  # h is not needed after this
        if self.grad_b is not None:
            self.grad_b.index_add_(0, labels, r, alpha=-1.0)
        if acc is not None and self.grad_h is not None:
            acc.sub_(self.weight.index_select(0, labels).to(acc.dtype)).mul_(r[:, None])
            self.grad_h.index_copy_(0, rows, acc.to(self.grad_h.dtype))

    def _keep_capped(self, rows: Tensor) -> None:
        """`keep_chunk` with softcap: the tiles keep the capped logits Z (their slope 1 − (Z/c)² enters the
        gradient, `chunked._tile_grad`); sweep 1 exponentiates into one scratch tile."""
        w, b, p = self.weight, self.bias, self.p
        h, hs, labels, cols, kept = self._chunk_start(rows)
        m_rows, vocab = h.shape[0], w.shape[0]
        scratch = torch.empty(m_rows * cols, dtype=self.dtype, device=h.device)
        m = torch.full((m_rows,), float("-inf"), dtype=self.dtype, device=h.device)
        s, target = torch.zeros_like(m), torch.zeros_like(m)
        total = torch.zeros_like(m) if p.return_stats else None
        s2 = torch.zeros_like(m) if p.return_stats else None  # Σ e^{2(z − m)}
        tiles = []
        for v0 in range(0, vocab, cols):
            v1 = min(v0 + cols, vocab)
            z = _logits_tile(hs, w, b, v0, v1, p, kept[m_rows * v0 : m_rows * v1].view(m_rows, v1 - v0))
            hit, col = _labels_in_tile(labels, v0, v1)
            target[hit] = z[hit, col]
            if total is not None:
                total.add_(z.sum(dim=1))
            m_new = torch.maximum(m, z.amax(dim=1))
            e = torch.sub(z, m_new[:, None], out=_tile_buffer(scratch, m_rows, v1 - v0)).exp_()
            rescale = torch.exp(m - m_new)
            s.mul_(rescale).add_(e.sum(dim=1))
            if s2 is not None:
                s2.mul_(rescale.square()).add_(torch.bmm(e.unsqueeze(1), e.unsqueeze(2)).view(-1))
            m = m_new
            tiles.append((v0, v1, z, hit, col))
        del scratch
        lse = m + s.log()
        extra = None if total is None or s2 is None else (total, s2.log() - 2.0 * s.log())
        g_lp = self._gradient(rows, target, lse, m, extra)
        r = torch.full_like(g_lp, 1.0 / p.temperature)  # dL/da = dL/du / T
        rh = h * r[:, None] if self.grad_w is not None else None
        acc = torch.zeros_like(h) if self.grad_h is not None else None
        for v0, v1, z, hit, col in tiles:
            grad = _tile_grad(z, lse, hit, col, g_lp, None, None, p.softcap)  # dL/du, (M, C)
            if rh is not None:
                self._weight_grad(v0, v1, grad.T, rh)
            if self.grad_b is not None:
                self.grad_b[v0:v1].add_(grad.T @ r)
            if acc is not None:
                acc.addmm_(grad, w[v0:v1].to(acc.dtype))
        self.w_written = self.w_written or rh is not None
        if acc is not None and self.grad_h is not None:
            self.grad_h.index_copy_(0, rows, acc.mul_(r[:, None]).to(self.grad_h.dtype))

    def recompute_chunk(self, rows: Tensor) -> None:
        """The groups too large to keep: the chunked backend's forward and backward on their rows, four matmuls."""
        w, b, p = self.weight, self.bias, self.p
        block_rows, cols = tile_shape(rows.shape[0], w.shape[0])  # the chunked backend's blocks: O(R·C) memory
        storage = torch.empty(block_rows * cols, dtype=self.dtype, device=self.hidden.device)
        blocks = [rows[r0 : r0 + block_rows] for r0 in range(0, rows.shape[0], block_rows)]
        parts = []
        for block in blocks:
            _, hs = self._rows(block)
            parts.append(_forward_block(hs, w, b, self.labels[block], p, cols, storage, with_jacobian=False))
        cat = lambda name: torch.cat([getattr(part, name) for part in parts])  # noqa: E731
        lse = cat("lse")
        extra = (cat("logit_sum"), cat("log_sum_sq")) if p.return_stats else None
        g_lp = self._gradient(rows, cat("target"), lse, cat("row_max"), extra)
        need_h, at = self.grad_h is not None, 0
        for block in blocks:
            k = block.shape[0]
            h, labels, grads = self.hidden.index_select(0, block), self.labels[block], (self.grad_w, self.grad_b)
            first = not self.w_written
            dh = _backward_block(h, w, b, labels, lse[at : at + k], g_lp[at : at + k], None, None, p, cols, storage,
                                 grads, need_h, first_block=first)  # fmt: skip
            self.w_written = self.w_written or self.grad_w is not None
            if dh is not None and self.grad_h is not None:
                self.grad_h.index_copy_(0, block, dh.to(self.grad_h.dtype))
            at += k

    def result(self) -> FusedHeadResult:
        if self.grad_w is not None and not self.w_written:  # no rows at all
            self.grad_w.zero_()
        stats = self._token_stats()
        cast = lambda grad, like: None if grad is None else grad.to(like.dtype)  # noqa: E731
        return FusedHeadResult(
            self.logp.float(),
            self.sums.float(),
            self.grad_h,
            cast(self.grad_w, self.weight),
            None if self.bias is None else cast(self.grad_b, self.bias),
            stats,
        )
