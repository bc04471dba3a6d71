"""TDPO's sequential KL from the engine: Σ_t KL(π_ref(·|x, y_<t) ‖ π_θ(·|x, y_<t)) over each completion.

    policy = HeadAt of the engine's forward (with gradient)     at the scored positions of the batch
    ref    = kl_reference.head_inputs(batch)  (no gradient)     the same positions, the reference model's head
    kl[t]  = linear_sequential_kl(policy, ref)                  [N], O(R·V) memory (`prefopt.kernels.sequential_kl`)
    seq_kl = Σ_{t ∈ completion(s)} kl[t]                        [S], `SequenceLogProbs.seq_kl`

Both models' full next-token distributions are needed at every completion position, so the KL cannot come from
log-probs or a reference cache: the reference model runs its body on the batch (no gradient) and the kernel
combines the two heads block by block, never holding N×V logits. Where either engine takes the logits path (a
model it cannot split), that side's logits [N, V] are materialised, and the KL is computed from the two logit
matrices: memory 4·N·V bytes per model plus their log-softmaxes (documented in docs/engine.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.batch import TokenBatch
from prefopt.kernels.sequential_kl import linear_sequential_kl, sequential_kl_from_logits

__all__ = ["HeadAt", "head_at", "token_kl"]


@dataclass(frozen=True)
class HeadAt:
    """A model's next-token distribution at a batch's N scored positions: the kernel's inputs (hidden [N, D],
    weight [V, D], bias [V] | None, temperature, softcap), or on the logits path `logits` [N, V] (tempered)."""

    hidden: Tensor | None = None
    weight: Tensor | None = None
    bias: Tensor | None = None
    temperature: float = 1.0
    softcap: float | None = None
    logits: Tensor | None = None

    def materialised(self) -> Tensor:
        """The [N, V] logits (tempered, capped) this head gives: computed for a kernel head (N×V memory)."""
        if self.logits is not None:
            return self.logits
        assert self.hidden is not None and self.weight is not None
        z = self.hidden @ self.weight.T + (self.bias if self.bias is not None else 0.0)
        z = z.float() / self.temperature
        return self.softcap * torch.tanh(z / self.softcap) if self.softcap is not None else z


def head_at(engine: Any, batch: TokenBatch) -> HeadAt:
    """`engine`'s (a `LogProbEngine`) head at the scored positions of `batch`, as its `token_logprobs` forms it
    (`LogProbEngine.scored_rows`, `head_of`; typed Any: the engine module imports this one); with gradient unless
    called under `torch.no_grad()` (the reference: `ReferenceLogProbs.head_inputs`)."""
    return engine.head_of(engine.scored_rows(batch))


def token_kl(policy: HeadAt, reference: HeadAt, *, chunk_size: int | None = None) -> Tensor:
    """KL(π_ref ‖ π_θ) at each of the N positions [N] float32, differentiable in the policy's head."""
    if policy.logits is None and reference.logits is None:
        assert policy.hidden is not None and policy.weight is not None
        assert reference.hidden is not None and reference.weight is not None
        return linear_sequential_kl(
            policy.hidden,
            policy.weight,
            reference.hidden,
            reference.weight,
            bias=policy.bias,
            ref_bias=reference.bias,
            temperature=policy.temperature,
            softcap=policy.softcap,
            ref_temperature=reference.temperature,
            ref_softcap=reference.softcap,
            chunk_size=chunk_size,
        ).float()
    return sequential_kl_from_logits(policy.materialised(), reference.materialised()).float()
