"""`SequenceLogProbs`: what the engine returns, and the helpers that split it by group.

Notation (see `prefopt.batch.TokenBatch`): S sequences in group-major order, B = S // K groups of
K sequences (K = 2 for paired data: chosen block then rejected block; K completions for ranked data,
best first; K = 1 for unpaired data).

    sum[s]    = Σ_{t ∈ completion(s)} log π(y_t | x, y_<t)       [S] float32
    count[s]  = |completion(s)|                                  [S] long
    mean[s]   = sum[s] / count[s]   (0 where count[s] = 0)       [S] float32
    tokens    = per-token log-probs aligned with input_ids       [R, T] float32, 0 off-completion

Per-sequence sums are accumulated in float64 and rounded once to float32 (`sequence_sums`): a float32
running sum over a long completion drifts by many float32 steps of the result (docs/engine.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SequenceLogProbs", "sequence_sums"]


def sequence_sums(values: Tensor, token_sequence_ids: Tensor, num_sequences: int) -> Tensor:
    """[S] float32 `Σ_{i: seq[i]=s} values[i]` of per-token `values` [N], differentiable.

    Accumulated in float64 (float32 on MPS, which has no float64) and rounded once, so each sum is the float64
    sum of the float32 values to float32 rounding of the result, however long the sequence. The backward is
    unchanged: each value's gradient is its sequence's (a float32 → float64 → float32 round trip is exact).
    """
    dtype = torch.float32 if values.device.type == "mps" else torch.float64
    total = torch.zeros(num_sequences, dtype=dtype, device=values.device)
    return total.index_add(0, token_sequence_ids, values.to(dtype)).float()


@dataclass(frozen=True)
class SequenceLogProbs:
    """Per-sequence completion log-probabilities of one `TokenBatch`.

    Attributes:
        sum: [S] float32, Σ of completion-token log-probs per sequence (what most losses use).
        count: [S] long, number of completion tokens per sequence (|y|).
        group_size: K, copied from the batch so that `chosen`/`rejected`/`grouped` need no batch.
        tokens: [R, T] float32 per-token log-probs at completion positions (0 elsewhere), where
            `tokens[r, t] = log π(input_ids[r, t] | earlier tokens of the same sequence)`;
            None unless the engine was called with `return_tokens=True`.
        token_sequence_ids: [R, T] long, the batch's `sequence_ids` (with `tokens` only).
        entropy: [S] float32, Σ over completion tokens of the entropy of π(·|x, y_<t); None unless the
            engine was called with `return_entropy=True`. `entropy / count` is the per-token mean.
        token_entropy: [R, T] float32 per-token entropies (with `return_tokens` and `return_entropy`).
        logit_sum: [S] float32, Σ over completion tokens of the mean over the vocabulary of the model's
            logits at that position (before the engine's temperature); None unless the engine was called
            with `return_stats=True`. `logit_sum / count` is the per-token mean that TRL logs as `logits/*`.
        correct: [S] long, how many completion tokens are an argmax of the model's logits (a tie for the
            maximum counts); `correct / count` is the token accuracy. None unless `return_stats=True`.
        log_sum_sq_probs: [S] float32, Σ over completion tokens of log Σ_v π(v|x, y_<t)² (the log-probability
            that two samples of the position agree; WPO's weight alignment), detached; None unless
            `return_stats=True`.
        seq_kl: [S] float32, Σ over completion tokens of KL(π_ref(·|x, y_<t) ‖ π(·|x, y_<t)) (TDPO's sequential
            KL), differentiable in π; None unless the engine was called with `kl_reference=`.
        prompt_sum: [S] float32, Σ of the log-probs of the prompt tokens (all but the sequence's first) of the
            sequences named by the engine's `score_prompt` (0 elsewhere), with gradient; None without it
            (`prefopt.engine.prompt_scoring`; ORPO's NLL over the whole chosen sequence, `orpo_seq`).
        prompt_count: [S] long, how many prompt tokens `prompt_sum` adds up (0 where not scored).
    """

    sum: Tensor
    count: Tensor
    group_size: int = 1
    tokens: Tensor | None = None
    token_sequence_ids: Tensor | None = None
    entropy: Tensor | None = None
    token_entropy: Tensor | None = None
    logit_sum: Tensor | None = None
    correct: Tensor | None = None
    log_sum_sq_probs: Tensor | None = None
    seq_kl: Tensor | None = None
    prompt_sum: Tensor | None = None
    prompt_count: Tensor | None = None

    @property
    def mean(self) -> Tensor:
        """[S] length-normalised log-prob `sum / count` (the "avg" of IPO/SimPO/ORPO); 0 where count is 0."""
        return self.sum / self.count.clamp(min=1).to(self.sum.dtype)

    @property
    def num_sequences(self) -> int:
        """S, the number of sequences."""
        return int(self.sum.shape[0])

    def grouped(self, values: Tensor | None = None) -> Tensor:
        """Reshape per-sequence values from group-major [S] = [K·B] to [B, K] (column k = k-th block).

        Args:
            values: [S] tensor in the batch's sequence order; defaults to `self.sum`.
        Returns:
            [B, K] where row b holds the K completions of group b, in block order (best first for
            ranked data).
        """
        values = self.sum if values is None else values
        if values.shape[0] != self.num_sequences:
            raise ValueError(f"grouped: values has {values.shape[0]} entries, expected S={self.num_sequences}")
        k = self.group_size
        return values.reshape(k, self.num_sequences // k).transpose(0, 1)  # (K, B) -> (B, K)

    def _paired_block(self, values: Tensor | None, index: int) -> Tensor:
        if self.group_size != 2:
            raise ValueError(
                f"chosen/rejected need paired data (group_size=2), this batch has group_size={self.group_size}; "
                "use .grouped() for ranked data"
            )
        return self.grouped(values)[:, index]

    def chosen(self, values: Tensor | None = None) -> Tensor:
        """[B] values of the chosen completions (block 0 of a paired batch); defaults to `sum`."""
        return self._paired_block(values, 0)

    def rejected(self, values: Tensor | None = None) -> Tensor:
        """[B] values of the rejected completions (block 1 of a paired batch); defaults to `sum`."""
        return self._paired_block(values, 1)

    def detach(self) -> "SequenceLogProbs":
        """A copy with every tensor detached (for reference log-probs and logging)."""
        detach = lambda t: None if t is None else t.detach()  # noqa: E731
        return SequenceLogProbs(
            self.sum.detach(),
            self.count,
            self.group_size,
            detach(self.tokens),
            self.token_sequence_ids,
            detach(self.entropy),
            detach(self.token_entropy),
            detach(self.logit_sum),
            self.correct,
            detach(self.log_sum_sq_probs),
            detach(self.seq_kl),
            detach(self.prompt_sum),
            self.prompt_count,
        )

    @staticmethod
    def from_tokens(
        token_logps: Tensor, token_sequence_ids: Tensor, num_sequences: int, group_size: int = 1
    ) -> "SequenceLogProbs":
        """Reduce flat per-token log-probs [N] with their sequence index [N] to per-sequence sums [S].

        `sum[s] = Σ_{i: seq[i]=s} logp[i]` by `sequence_sums` (float64 accumulation, differentiable),
        `count` via `bincount`.
        """
        total = sequence_sums(token_logps, token_sequence_ids, num_sequences)
        count = torch.bincount(token_sequence_ids, minlength=num_sequences)
        return SequenceLogProbs(total, count, group_size)
