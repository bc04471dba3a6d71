"""`SequenceLogProbs`: what the engine returns, and the helpers that split it by group.

Notation (see `prefopt.batch.TokenBatch`): S sequences in group-major order, B = S // K groups of
K sequences (K = 2 for paired data: chosen block then rejected block; K completions for ranked data,
best first; K = 1 for unpaired data).

    sum[s]    = Σ_{t ∈ completion(s)} log π(y_t | x, y_<t)       [S] float32
    count[s]  = |completion(s)|                                  [S] long
    mean[s]   = sum[s] / count[s]   (0 where count[s] = 0)       [S] float32
    tokens    = per-token log-probs aligned with input_ids       [R, T] float32, 0 off-completion
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SequenceLogProbs"]


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
    """

    sum: Tensor
    count: Tensor
    group_size: int = 1
    tokens: Tensor | None = None
    token_sequence_ids: Tensor | None = None
    entropy: Tensor | None = None
    token_entropy: Tensor | None = None

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
        )

    @staticmethod
    def from_tokens(
        token_logps: Tensor, token_sequence_ids: Tensor, num_sequences: int, group_size: int = 1
    ) -> "SequenceLogProbs":
        """Reduce flat per-token log-probs [N] with their sequence index [N] to per-sequence sums [S].

        `sum[s] = Σ_{i: seq[i]=s} logp[i]` via `index_add` (differentiable), `count` via `bincount`.
        """
        total = torch.zeros(num_sequences, dtype=torch.float32, device=token_logps.device)
        total = total.index_add(0, token_sequence_ids, token_logps.float())
        count = torch.bincount(token_sequence_ids, minlength=num_sequences)
        return SequenceLogProbs(total, count, group_size)
