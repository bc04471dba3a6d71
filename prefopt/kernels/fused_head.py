"""The loss-fused head: per-token log-probs, the loss's gradient, and dH, dW in one pass over the vocabulary.

For a loss separable over example groups (group b's loss reads only the log-prob sums of its own sequences;
`LossSpec.separable`), d objective / d logp_t = g_s for every token t of sequence s, known as soon as the sums
of s's group are. So the head takes the tokens of WHOLE groups together and forms the gradients while it
still holds their logits:

    chunk = the tokens of whole groups, M ≤ max_rows rows          h = H[chunk] (M, D), hs = h / T
    sweep 1, per vocab tile v:  Z_v = hs W_vᵀ (+ b_v/T, softcap), kept                 # matmul 1, (M, C)
                                the label's logit, stats; the tile's row max m_v and Σ e^{Z_v − m_v}
    lse, logp = z_y − lse, sum[s] += Σ_{t ∈ s} logp_t (float64);  g = grad_fn(sums, done, stats)     [S]
    sweep 2, per vocab tile v:  G_v = P_v − E_v (P = e^{Z − lse}, E = onehot(y)), r = −g_{s(t)} / T
                                dW_v += G_vᵀ (r ⊙ h)  (matmul 3),  dh += G_v W_v  (matmul 2)
    dH[chunk] = r ⊙ dh

Three N·D·V matmuls (four for any O(tile) method given a generic upstream gradient: its backward recomputes
the logits), with one chunk's M×V logits as working memory: max_rows from `CHUNK_BYTES` (160 MiB: 327 rows at
V = 128256 in float32); one vocab tile per chunk, or tiles of `KEEP_TILE_BYTES` (`_chunk_start`); `keep_chunk`
says how sweep 2 avoids element-wise passes. Groups of more than max_rows tokens are recomputed instead, all
in one chunk, four matmuls in O(R·C) memory: the chunked backend's `_forward_block` (lse), then g, then
`_backward_block` on their rows, in that backend's row blocks and tiles. With softcap the gradient takes the
chunked backend's general tile rule (`_tile_grad`). Results equal `linear_logprobs` followed by autograd
through the sums and the loss (tests/fused_kernels/test_fused_head.py).
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
from prefopt.kernels.params import LinearLogprobsParams, LogitStats, check_inputs

__all__ = ["CHUNK_BYTES", "KEEP_TILE_BYTES", "FusedHeadResult", "GradFn", "linear_logprobs_with_grad", "plan_chunks"]

# Budget of one chunk's kept logits (float32 M×V): ≤ 1/10 of the 2.1 GB of logits that a method keeping all
# N×V of them holds at N = 4096, V = 128256, and room for a pair of 2 × 160 tokens at that vocabulary.
CHUNK_BYTES = 160 * 2**20
# Logits tile of a kept chunk with softcap (and its one scratch tile) or a weight of another dtype (cast per tile).
KEEP_TILE_BYTES = 8 * 2**20

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


def plan_chunks(group_ids: Tensor, max_rows: int) -> list[tuple[Tensor, bool]]:
    """The chunks of rows: (row indices, keep), each holding whole groups.

    Consecutive groups are packed into a chunk while it holds ≤ max_rows rows (keep=True: its logits are kept).
    Groups of more rows form one chunk together, first, with keep=False: their logits are recomputed, in the
    chunked backend's large row blocks (its lse needs no g, so the groups need not be apart). Rows of one group
    keep their order (a stable sort), so per-sequence sums add their tokens in the engine's order.
    """
    order = torch.argsort(group_ids, stable=True)
    _, counts = torch.unique_consecutive(group_ids[order], return_counts=True)
    kept: list[tuple[Tensor, bool]] = []
    large: list[Tensor] = []
    start = end = 0
    for count in counts.tolist():
        if count > max_rows:  # too large to keep
            if end > start:
                kept.append((order[start:end], True))
            large.append(order[end : end + count])
            start = end = end + count
            continue
        if end + count - start > max_rows:  # close the open chunk
            kept.append((order[start:end], True))
            start = end
        end += count
    if end > start:
        kept.append((order[start:end], True))
    return ([(torch.cat(large), False)] if large else []) + kept


class _FusedHead:
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
        self.grad_b = torch.zeros(vocab, dtype=self.dtype, device=device) if (need_b and bias is not None) else None

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
        kept = torch.empty(m_rows * vocab, dtype=self.dtype, device=h.device)  # tile v at [M·v0, M·v1)
        return h, hs, self.labels[rows], cols, kept

    def keep_chunk(self, rows: Tensor) -> None:
        """A chunk whose M×V logits fit the budget: three matmuls (module docstring).

        Without softcap the tiles keep e_v = exp(Z_v − m_v) (m_v the row's maximum over tile v) in place of the
        logits, so sweep 2 has no element-wise pass over them: P_v = c_v ⊙ e_v with c_v = exp(m_v − lse) ≤ 1 per
        row, folded into the matmuls' (M, D) operands, and the −E part of G = P − E is one row per token:

            dW_v += e_vᵀ (c_v ⊙ r ⊙ h),   dW[y_t] −= r_t h_t,   dh = r ⊙ (Σ_v c_v ⊙ (e_v W_v) − W[y_t])
        """
        if self.p.softcap is not None:
            self._keep_capped(rows)
            return
        w, b, p = self.weight, self.bias, self.p
        h, hs, labels, cols, kept = self._chunk_start(rows)
        m_rows, vocab = h.shape[0], w.shape[0]
        starts = range(0, vocab, cols)
        tile_max = torch.empty(m_rows, len(starts), dtype=self.dtype, device=h.device)  # m_v
        tile_sum = torch.empty_like(tile_max)  # Σ e_v
        tile_sq = torch.empty_like(tile_max) if p.return_stats else None  # Σ e_v²
        target = torch.zeros(m_rows, dtype=self.dtype, device=h.device)
        total = torch.zeros_like(target) if p.return_stats else None
        tiles = []
        for i, v0 in enumerate(starts):
            v1 = min(v0 + cols, vocab)
            z = _logits_tile(hs, w, b, v0, v1, p, kept[m_rows * v0 : m_rows * v1].view(m_rows, v1 - v0))
            hit, col = _labels_in_tile(labels, v0, v1)
            target[hit] = z[hit, col]
            if total is not None:
                total.add_(z.sum(dim=1))
            tile_max[:, i] = z.amax(dim=1)
            e = z.sub_(tile_max[:, i, None]).exp_()  # e_v in place of Z_v
            tile_sum[:, i] = e.sum(dim=1)
            if tile_sq is not None:  # a batched dot (M, 1, C) @ (M, C, 1): no tile-sized temporary
                tile_sq[:, i] = torch.bmm(e.unsqueeze(1), e.unsqueeze(2)).view(-1)
            tiles.append((v0, v1, e))
        row_max = tile_max.amax(dim=1)
        shift = (tile_max - row_max[:, None]).exp_()  # e^{m_v − max}
        log_s = (tile_sum * shift).sum(dim=1).log()
        lse = row_max + log_s
        extra = None
        if total is not None and tile_sq is not None:  # log Σ p² = log Σ e^{2(z − max)} − 2 log Σ e^{z − max}
            extra = (total, (tile_sq * shift.square_()).sum(dim=1).log() - 2.0 * log_s)
        r = self._gradient(rows, target, lse, row_max, extra) * -(1.0 / p.temperature)  # dL/da = r ⊙ (P − E)
        scale = (tile_max - lse[:, None]).exp_()  # c_v [M, tiles]
        need_w, need_b, need_h = self.grad_w is not None, self.grad_b is not None, self.grad_h is not None
        scaled = torch.empty_like(h) if need_w else None  # c_v ⊙ r ⊙ h
        acc = torch.zeros_like(h) if need_h else None  # Σ_v c_v ⊙ (e_v W_v)
        product = torch.empty_like(h) if need_h else None  # e_v W_v
        for i, (v0, v1, e) in enumerate(tiles):
            cr = scale[:, i] * r
            if scaled is not None:
                self._weight_grad(v0, v1, e.T, torch.mul(h, cr[:, None], out=scaled))
            if need_b:
                self.grad_b[v0:v1].add_(e.T @ cr)  # type: ignore[index]
            if acc is not None and product is not None:
                acc.addcmul_(torch.mm(e, w[v0:v1].to(self.dtype), out=product), scale[:, i, None])
        self._label_terms(rows, h, labels, r, acc)

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


def linear_logprobs_with_grad(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    sequence_ids: Tensor,
    num_sequences: int,
    group_ids: Tensor,
    grad_fn: GradFn,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    return_stats: bool = False,
    need_grads: tuple[bool, bool, bool] = (True, True, True),
    max_chunk_bytes: int | None = None,
) -> FusedHeadResult:
    """Log-probs of `labels` under softmax((hidden Wᵀ + b) / T), their per-sequence sums, and the gradients of
    an objective of those sums with respect to hidden, weight and bias, without the N×V logits.

    Args:
        hidden: [N, D] the hidden states of the N scored tokens; weight [V, D], bias [V] | None as for
            `linear_logprobs`. Every label is scored: labels [N] in [0, V).
        sequence_ids: [N] the sequence s ∈ [0, S) of each token; num_sequences: S.
        group_ids: [N] the loss's example group of each token (a group's tokens are never split over chunks).
        grad_fn: (sums [S] float32, done [S] bool, stats) → g [S], d objective / d sum_s; called once per chunk
            after its sums are complete, with every sequence of a finished group marked done (`stats`: the
            per-token `LogitStats` so far with return_stats, else None); only g at the sequences of the chunk is
            read, so the objective must be separable over the groups.
        temperature, softcap, return_stats: as for `linear_logprobs`.
        need_grads: which of (hidden, weight, bias) gradients to form.
        max_chunk_bytes: budget of one chunk's kept logits (default `CHUNK_BYTES`).
    Returns:
        `FusedHeadResult`. Runs without autograd: attach the gradients yourself (`prefopt.engine.fused_step`).
    """
    params = LinearLogprobsParams(
        temperature=float(temperature), softcap=None if softcap is None else float(softcap), return_stats=return_stats
    )
    check_inputs(hidden, weight, labels, bias, params.ignore_index)
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError("linear_logprobs_with_grad: every row is a scored token; labels must lie in [0, V)")
    for name, ids in (("sequence_ids", sequence_ids), ("group_ids", group_ids)):
        if ids.shape != labels.shape:
            raise ValueError(f"linear_logprobs_with_grad: {name} must be [N] like labels, got {tuple(ids.shape)}")
    budget = CHUNK_BYTES if max_chunk_bytes is None else max_chunk_bytes
    element = torch.finfo(compute_dtype(hidden.dtype)).bits // 8
    max_rows = max(1, budget // (element * weight.shape[0]))
    # No autograd inside; and no autocast: the matmuls take the inputs' dtype, as the unfused backward does.
    with torch.no_grad(), torch.autocast(device_type=hidden.device.type, enabled=False):
        run = _FusedHead(
            hidden.detach(),
            weight.detach(),
            None if bias is None else bias.detach(),
            labels.long(),
            sequence_ids.long(),
            num_sequences,
            grad_fn,
            params,
            need_grads,
        )
        for rows, keep in plan_chunks(group_ids, max_rows):
            if keep:
                run.keep_chunk(rows)
            else:
                run.recompute_chunk(rows)
        return run.result()
