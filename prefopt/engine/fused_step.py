"""The engine's loss-fused step: the body forward once, then the head's log-probs and gradients in one pass.

    hidden = body(batch)                                         # (R, T, D), with autograd, once
    h      = head_inputs(hidden at the scored positions)         # (N, D') (LoRA on the head folded in)
    logp, sums, dH, dW, db = linear_logprobs_with_grad(h, W, y, seq, S, group = seq mod B, grad_fn)
    objective = step.attach(value)                               # a scalar: its backward sends dH into h
                                                                 # (→ the body's backward) and dW, db to the head

`grad_fn(partial, done) → g` is the loss's side (`prefopt.loss_call.fused`): `partial` is a `SequenceLogProbs`
whose sums are final at the sequences marked `done` (every sequence of each finished group) and a finite
placeholder elsewhere (−1 nat per token, −count[s]); g [S] = d objective / d sum_s is read at the finished
groups only, so it is exact when the objective is separable over the groups (`LossSpec.separable`). Groups are
those of `TokenBatch`: sequence s belongs to group s mod B, B = S / K.

Autograd does the rest: dW, db accumulate into the head's parameters (tied embeddings sum both uses), dH flows
back through the LoRA fold, the position gather and the body. The forward and the head's inputs are the
engine's own (`LogProbEngine.scored_rows`, `LogProbEngine.head_of`), as `token_logprobs` runs them;
tests/losses/test_fused_loss.py holds the two paths equal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.batch import TokenBatch
from prefopt.engine.engine import LogProbEngine
from prefopt.engine.outputs import SequenceLogProbs, sequence_sums
from prefopt.kernels.fused_head import linear_logprobs_with_grad
from prefopt.kernels.params import LogitStats

__all__ = ["FusedHeadStep", "SequenceGradFn", "fused_head_step"]

# (partial SequenceLogProbs [S], done [S] bool) → g [S] = d objective / d sum_s.
SequenceGradFn = Callable[[SequenceLogProbs, Tensor], Tensor]


class _Held:
    """The gradients between the fused step and the backward, released on first use."""

    def __init__(self, grads: tuple[Tensor | None, Tensor | None, Tensor | None]) -> None:
        self.grads: tuple[Tensor | None, ...] | None = grads

    def take(self) -> tuple[Tensor | None, ...]:
        if self.grads is None:
            raise RuntimeError(
                "the loss-fused head's objective was backpropagated twice; its gradients are formed once per step "
                "(run the step again, or use the unfused path: fused=False)"
            )
        grads, self.grads = self.grads, None
        return grads


class _HeadGradient(torch.autograd.Function):
    """value → value; backward: grad_out · (dH, dW, db) into (hidden, weight, bias), precomputed."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, held: _Held, hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.held = held
        return value.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        grads = ctx.held.take()  # the only references left: autograd may keep dW as the .grad without a copy
        scale = float(grad_out)
        if scale != 1.0:
            grads = tuple(None if g is None else g.mul_(scale) for g in grads)
        return (None, None, *grads)


@dataclass(frozen=True)
class FusedHeadStep:
    """The result of `fused_head_step`: the batch's log-probs (detached) and the gradients to attach."""

    logps: SequenceLogProbs
    held: _Held
    hidden: Tensor
    weight: Tensor
    bias: Tensor | None

    def attach(self, value: Tensor) -> Tensor:
        """`value`, the objective whose gradient `grad_fn` gave (a scalar), as a tensor whose backward runs the
        body's backward from dH and adds dW (and db) to the head. Backpropagate it once."""
        return _HeadGradient.apply(value.detach(), self.held, self.hidden, self.weight, self.bias)


def _sequence_stats(stats: LogitStats | None, seq: Tensor, num_sequences: int, temperature: float) -> dict[str, Any]:
    """`logit_sum`, `correct`, `log_sum_sq_probs` [S] of `SequenceLogProbs` from per-token stats, as the engine
    sums them (the kernel's logits are the model's divided by T; log Σ p² stays the tempered softmax's)."""
    if stats is None:
        return {}
    mean = stats.mean * temperature if temperature != 1.0 else stats.mean
    out: dict[str, Any] = {
        "logit_sum": sequence_sums(mean, seq, num_sequences),
        "correct": torch.bincount(seq[stats.correct], minlength=num_sequences),
    }
    if stats.log_sum_sq_probs is not None:
        out["log_sum_sq_probs"] = sequence_sums(stats.log_sum_sq_probs, seq, num_sequences)
    return out


def _kernel_grad_fn(
    grad_fn: SequenceGradFn, seq: Tensor, count: Tensor, group_size: int, temperature: float
) -> Callable[[Tensor, Tensor, LogitStats | None], Tensor]:
    """The kernel's (sums, done, token stats) → g from the engine's (partial SequenceLogProbs, done) → g."""

    def kernel_grad_fn(sums: Tensor, done: Tensor, stats: LogitStats | None) -> Tensor:
        partial = torch.where(done, sums, -count.to(sums.dtype))  # finite stand-ins for unfinished sequences
        extra = _sequence_stats(stats, seq, count.shape[0], temperature)
        with torch.enable_grad():  # the kernel runs under no_grad; the loss's gradient needs autograd
            return grad_fn(SequenceLogProbs(partial, count, group_size, **extra), done)

    return kernel_grad_fn


def fused_head_step(
    engine: LogProbEngine,
    batch: TokenBatch | Any,
    grad_fn: SequenceGradFn,
    *,
    return_stats: bool = False,
    max_chunk_bytes: int | None = None,
) -> FusedHeadStep:
    """Run `engine`'s body on `batch` (with autograd) and its head through the loss-fused kernel.

    Args:
        engine: a `LogProbEngine` that splits its model (`engine.fused`; the logits path has no head to fuse).
        batch: the `TokenBatch` to score.
        grad_fn: the objective's gradient per sequence, see the module docstring.
        return_stats: also `logit_sum` and `correct` on the returned log-probs (TRL's logits/*, token accuracy).
        max_chunk_bytes: budget of one chunk's kept logits (`prefopt.kernels.fused_head.CHUNK_BYTES`).
    Returns:
        `FusedHeadStep`: `logps` (sum, count, group size, stats; detached) and `attach(value)`.
    """
    if engine.split is None:
        raise ValueError(
            f"fused_head_step: the engine takes the logits path ({engine.fallback_reason}); no head to fuse"
        )
    rows = engine.scored_rows(batch)  # the body's forward, with autograd
    batch, labels, seq = rows.batch, rows.labels, rows.seq
    head = engine.head_of(rows)  # hidden (N, D') in the head's dtype, weight, bias, kernel temperature and softcap
    head_hidden = head.hidden
    assert head_hidden is not None and head.weight is not None
    num_sequences, group_size = batch.num_sequences, batch.group_size
    count = torch.bincount(seq, minlength=num_sequences)
    need = (head_hidden.requires_grad, head.weight.requires_grad, head.bias is not None and head.bias.requires_grad)
    result = linear_logprobs_with_grad(
        head_hidden,
        head.weight,
        labels,
        seq,
        num_sequences,
        seq % batch.num_groups,
        _kernel_grad_fn(grad_fn, seq, count, group_size, engine.temperature),
        bias=head.bias,
        temperature=head.temperature,
        softcap=head.softcap,
        return_stats=return_stats,
        need_grads=need,
        max_chunk_bytes=max_chunk_bytes,
    )
    stats = _sequence_stats(result.stats, seq, num_sequences, engine.temperature)
    logps = SequenceLogProbs(result.sums, count, group_size, **stats)
    held = _Held((result.grad_hidden, result.grad_weight, result.grad_bias))
    return FusedHeadStep(logps, held, head_hidden, head.weight, head.bias)
