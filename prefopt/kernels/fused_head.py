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
V = 128256 in float32), kept transposed (Z_vᵀ, `FusedHeadRun.keep_chunk`, which says how sweep 2 avoids
element-wise passes). Usually m_v = 0 (`FusedHeadRun._sweep`, unshifted): then sweep 1 goes in 8 MiB
tiles and forms dh's matmul per tile, and sweep 2 is one dW matmul. Groups of more than max_rows tokens are
recomputed instead, all in one chunk, four matmuls in O(R·C) memory: the chunked backend's `_forward_block` (lse),
then g, then `_backward_block` on their rows, in that backend's row blocks and tiles. With softcap the gradient
takes the chunked backend's general tile rule (`_tile_grad`). Results equal `linear_logprobs` followed by autograd
through the sums and the loss (tests/fused_kernels/test_fused_head.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefopt.kernels.chunked import compute_dtype
from prefopt.kernels.fused_head_run import KEEP_TILE_BYTES, FusedHeadResult, FusedHeadRun, GradFn
from prefopt.kernels.params import LinearLogprobsParams, check_inputs

__all__ = ["CHUNK_BYTES", "KEEP_TILE_BYTES", "FusedHeadResult", "GradFn", "linear_logprobs_with_grad", "plan_chunks"]

# Budget of one chunk's kept logits (float32 M×V): ≤ 1/10 of the 2.1 GB of logits that a method keeping all
# N×V of them holds at N = 4096, V = 128256, and room for a pair of 2 × 160 tokens at that vocabulary.
CHUNK_BYTES = 160 * 2**20


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
        run = FusedHeadRun(
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
        plan = plan_chunks(group_ids, max_rows)
        run.reserve(max((rows.shape[0] for rows, keep in plan if keep), default=0))
        for rows, keep in plan:
            if keep:
                run.keep_chunk(rows)
            else:
                run.recompute_chunk(rows)
        return run.result()
