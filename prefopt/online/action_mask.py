"""NLPO's action mask in the online loop (Ramamurthy et al. 2022, arXiv:2210.01241; RL4LMs): sampling and
log-probs restricted to the top-p tokens of a masking policy, a copy of the policy refreshed every μ rollouts.

For a loss that takes `mask_log_mass` (`nlpo`) the loop builds a `TopPActionMask` and

    generate    with `processor()`: a logits processor that sets the policy's logits outside M_t to −∞, so each
                rollout is sampled from π_θᴹ, the policy renormalised over M_t
    score       `score(engine, batch)`: the engine's per-token log-probs (one forward, as ever) and
                log Z_θ(s_t) = log Σ_{v ∈ M_t} π_θ(v|s_t) [R, T] from the same hidden states (no grad for π_old,
                with gradient in the minibatch), so the loss forms log π_θᴹ = log π_θ − log Z_θ
    after_step  every μ rollouts the masking policy becomes a copy of π_θ (RL4LMs `update_mask_model`)

The mask M_t is RL4LMs' "learned_top_p" (`MaskLogitsProcessorCasualLM`): sort the masking policy's next-token
logits, keep the smallest prefix whose probability reaches top_p (the token that crosses it included), at
least `min_tokens` tokens, and every special token of the tokenizer. At scoring time the sampled token is
kept too: it was sampled from M_t, so only rounding between the cached generation pass and the full
forward could drop it. Z_θ is computed in row chunks of the N completion positions, each chunk's [n, V]
logits recomputed in backward (`torch.utils.checkpoint`), so memory stays O(chunk·V) as in the engine's
kernels. The KL penalty of the reward keeps the unmasked log-probs (RL4LMs `kl_div = raw_log_probs −
ref_log_probs`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from prefopt.batch import TokenBatch
from prefopt.engine import LogProbEngine, SequenceLogProbs
from prefopt.engine.head import ModelSplit, SplitError, split_model
from prefopt.engine.inputs import body_kwargs
from prefopt.hf_compat import cache_kwarg, output_cache
from prefopt.online.trunk import to_tokens, trunk_forward
from prefopt.train.model import frozen_copy

__all__ = ["TopPActionMask", "top_p_keep", "masked_log_mass", "score_tokens"]

# Rows of completion positions whose [rows, V] logits are held at once when computing Z_θ.
CHUNK_ROWS = 1024


def top_p_keep(logits: Tensor, top_p: float, min_tokens: int, always: Tensor | None = None) -> Tensor:
    """[N, V] bool: RL4LMs' learned_top_p mask of next-token `logits` [N, V] (module docstring).

    Sorted by probability, token j (0-based) is kept when j < min_tokens or the tokens before it hold at
    most `top_p` of the mass; `always` [A] (token ids, e.g. the special tokens) are kept regardless."""
    ordered, order = torch.sort(logits.float(), dim=-1, descending=True)
    cumulative = ordered.softmax(-1).cumsum(-1)
    before = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], dim=-1)  # mass ranked above j
    rank = torch.arange(logits.shape[-1], device=logits.device)
    keep_sorted = (before <= top_p) | (rank < max(min_tokens, 1))
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    if always is not None and always.numel():
        keep[:, always.to(logits.device)] = True
    return keep


def _logits(split: ModelSplit, hidden: Tensor, temperature: float) -> Tensor:
    """The model's next-token logits / T [n, V] float32 from hidden states [n, D] (head, LoRA and the logit
    transform as the engine applies them)."""
    head = split.head_inputs(hidden)
    x = nn.functional.linear(head.hidden.to(head.weight.dtype), head.weight, head.bias).float()
    scale, cap = split.transform.kernel_args(temperature)
    z = x / scale
    return z if cap is None else cap * torch.tanh(z / cap)


def masked_log_mass(
    split: ModelSplit, hidden: Tensor, keep: Tensor, temperature: float = 1.0, chunk_rows: int = CHUNK_ROWS
) -> Tensor:
    """log Σ_{v: keep[n, v]} softmax(logits_n / T)_v → [N] float32, differentiable in `hidden` [N, D] and the
    head; each chunk's logits are recomputed in backward (module docstring)."""

    def chunk(h: Tensor, kept: Tensor) -> Tensor:
        z = _logits(split, h, temperature)
        inside = z.masked_fill(~kept, -math.inf).logsumexp(-1)
        return inside - z.logsumexp(-1)

    parts = [
        checkpoint(chunk, hidden[i : i + chunk_rows], keep[i : i + chunk_rows], use_reentrant=False)
        for i in range(0, hidden.shape[0], chunk_rows)
    ]
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def _split(model: nn.Module, what: str) -> ModelSplit:
    try:
        return split_model(model)
    except SplitError as err:  # the masked distribution needs the head's weights
        raise ValueError(f"NLPO's action mask needs {what} as body + linear head ({err})") from None


class _MaskProcessor:
    """A transformers logits processor: logits outside the masking policy's top-p set become −∞. The masking
    policy runs incrementally with its own KV cache; a call that does not extend the previous one by one
    token (a new `generate` call) starts it afresh."""

    def __init__(self, owner: TopPActionMask) -> None:
        self.owner, self.seen, self.cache = owner, None, None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        model = self.owner.mask_model
        fresh = self.seen is None or self.seen.shape != (input_ids.shape[0], input_ids.shape[1] - 1)
        if fresh or not torch.equal(self.seen, input_ids[:, :-1]):
            out = model(input_ids=input_ids, use_cache=True)
        else:
            position = torch.full_like(input_ids[:, -1:], input_ids.shape[1] - 1)
            out = model(
                input_ids=input_ids[:, -1:], position_ids=position, **cache_kwarg(model, self.cache), use_cache=True
            )
        self.seen, self.cache = input_ids, output_cache(out)
        keep = top_p_keep(out.logits[:, -1], self.owner.top_p, self.owner.min_tokens, self.owner.always)
        return scores.masked_fill(~keep.to(scores.device), -math.inf)


class TopPActionMask:
    """The masking policy of an NLPO run and what the online loop asks of it (module docstring).

    Args:
        policy: π_θ (the masking policy starts as a frozen copy of it).
        top_p, min_tokens: the mask's probability mass and least size (RL4LMs `top_mask`, `min_tokens_to_keep`).
        update_every: μ, rollouts between refreshes (RL4LMs `target_update_iterations`).
        special_ids: token ids kept at every step (the tokenizer's special tokens, EOS among them).
        temperature: the engine's temperature (Z_θ is that of the distribution the engine scores).
    """

    def __init__(
        self,
        policy: nn.Module,
        *,
        top_p: float,
        min_tokens: int,
        update_every: int,
        special_ids: Sequence[int] = (),
        temperature: float = 1.0,
    ) -> None:
        self.mask_model = frozen_copy(policy)
        self.top_p, self.min_tokens, self.update_every, self.temperature = top_p, min_tokens, update_every, temperature
        self.always = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
        self.mask_split = _split(self.mask_model, "the masking policy")

    def processor(self) -> _MaskProcessor:
        """A fresh logits processor for one `generate` call (`prefopt.online.generation.generate(…,
        logits_processor=…)`)."""
        return _MaskProcessor(self)

    def after_step(self, steps_done: int, policy: nn.Module) -> None:
        """Refresh the masking policy from π_θ after every μ-th rollout step."""
        if steps_done % self.update_every == 0:
            self.mask_model.load_state_dict(policy.state_dict())

    @torch.no_grad()
    def _keep(self, batch: TokenBatch, select: Tensor, labels: Tensor, packing: Any) -> Tensor:
        """[N, V] the masks M_t at the batch's completion tokens, the sampled token included."""
        kwargs = body_kwargs(batch, packing, _dtype(self.mask_model))
        out = self.mask_split.body(**kwargs)
        hidden = (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])[:, :-1][select]
        keep = top_p_keep(_logits(self.mask_split, hidden, 1.0), self.top_p, self.min_tokens, self.always)
        return keep.scatter(-1, labels.unsqueeze(-1), True)

    def score(self, engine: LogProbEngine, batch: TokenBatch, **engine_kwargs: Any) -> tuple[SequenceLogProbs, Tensor]:
        """(the engine's output on `batch` with `return_tokens=True`, log Z_θ [R, T] aligned with its tokens,
        0 off the completions), from the policy's one forward (`prefopt.online.trunk`)."""
        trunk = trunk_forward(engine, batch, **engine_kwargs)
        keep = self._keep(batch, trunk.select, trunk.labels, engine.packing)
        assert engine.split is not None  # trunk_forward raised otherwise
        return trunk.policy, to_tokens(
            masked_log_mass(engine.split, trunk.hidden, keep, engine.temperature), trunk.select
        )


def score_tokens(
    engine: LogProbEngine, action_mask: TopPActionMask | None, batch: TokenBatch, **engine_kwargs: Any
) -> tuple[SequenceLogProbs, Tensor | None]:
    """The engine's per-token output on `batch` (`return_tokens=True`), and log Z_θ [R, T] when the run has
    an action mask (else None)."""
    if action_mask is None:
        return engine(batch, return_tokens=True, **engine_kwargs), None
    return action_mask.score(engine, batch, **engine_kwargs)


def _dtype(model: nn.Module) -> torch.dtype:
    dtype = getattr(model, "dtype", torch.float32)
    return dtype if dtype.is_floating_point else torch.float32
