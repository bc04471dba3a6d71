"""The policy's trunk at the scored positions: what heads on top of the language model read (NLPO's action
mask, ILQL's Q and V heads), from the same single forward that gives the engine's log-probs.

    out    = engine(batch, return_tokens=True)            # the engine's one forward of the model body
    hidden = body output[:, :-1][select]                   # (N, D): the state before each completion token

A forward hook on the engine's body (`LogProbEngine.split.body`) reads the hidden states as the engine
computes them, with their graph, so nothing runs twice and the heads' gradients reach the trunk. Row n of
`hidden` is the state s_t in which completion token t (`labels[n]`) was chosen: the engine's alignment
(`prefopt.engine.inputs.scored_positions`). `to_tokens` puts [N] values back in the [R, T] layout of the
engine's `tokens` (value of token t at column t, 0 elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.batch import TokenBatch
from prefopt.engine import LogProbEngine, SequenceLogProbs
from prefopt.engine.inputs import scored_positions

__all__ = ["TrunkOutput", "DecoderOutput", "trunk_forward", "to_tokens"]


@dataclass(frozen=True)
class TrunkOutput:
    """The engine's output (`tokens` [R, T] included) and the body's hidden states at its scored positions.

    Attributes:
        policy: `SequenceLogProbs` of the batch with per-token `tokens`.
        hidden: [N, D] hidden states, differentiable; select: [R, T−1] bool where they sit; labels: [N] tokens.
    """

    policy: SequenceLogProbs
    hidden: Tensor
    select: Tensor
    labels: Tensor


def trunk_forward(engine: LogProbEngine, batch: TokenBatch, **engine_kwargs: Any) -> TrunkOutput:
    """Run `engine` on `batch` (`return_tokens=True`) and read its body's hidden states (module docstring).

    Raises:
        ValueError: the engine takes the logits path (no body/head split), so there is no trunk to read.
    """
    if engine.split is None:
        raise ValueError(
            f"heads on the policy's trunk need the model as body + linear head; the engine could not split it "
            f"({engine.fallback_reason})"
        )
    captured: list[Any] = []
    handle = engine.split.body.register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        policy = engine(batch, return_tokens=True, **engine_kwargs)
    finally:
        handle.remove()
    out = captured[-1]
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (R, T, D)
    select, labels, _ = scored_positions(batch)
    return TrunkOutput(policy, hidden[:, :-1][select], select, labels)


def to_tokens(values: Tensor, select: Tensor) -> Tensor:
    """Flat per-token values [N] → [R, T] aligned with input_ids (value of token t at column t; 0 elsewhere),
    differentiable: the layout of the engine's `tokens`."""
    shifted = torch.zeros(select.shape, dtype=values.dtype, device=values.device).masked_scatter(select, values)
    return torch.cat([shifted.new_zeros(select.shape[0], 1), shifted], dim=1)


@dataclass
class DecoderOutput:
    """What a causal LM's forward returns, as far as prefopt's samplers and exact KL read it: the decoders built
    on a trunk (ILQL's, NLPO's masked policy) return it."""

    logits: Tensor
    past_key_values: Any = None
