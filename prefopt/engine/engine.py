"""`LogProbEngine`: a causal LM and a `TokenBatch` in, per-sequence completion log-probs out.

    hidden = body(input_ids, mask, positions)                    # (R, T, D), one forward for all rows
    h      = hidden[r, t−1]  for every completion token (r, t)   # (N, D), prompt positions dropped
    logp   = linear_logprobs(h, W_head, y, bias, T', softcap')   # (N,) float32, never (R, T, V)
    sum[s] = Σ_{tokens of s} logp                                # (S,)

The fused path never materialises the R×T×V logits: memory for the head is that of the kernel
(O(chunk·V)) instead of 4·R·T·V bytes, and prompt positions never reach the head at all. Models the
engine cannot split (see `head.split_model`) take the logits path — `model(...).logits` → fp32
log_softmax → gather, at the same positions — after a one-time warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prefopt.batch import TokenBatch
from prefopt.engine.head import ModelSplit, SplitError, split_model, unwrap_peft
from prefopt.engine.inputs import Packing, body_kwargs, check_batch, default_packing, scored_positions
from prefopt.engine.outputs import SequenceLogProbs
from prefopt.kernels import linear_logprobs

__all__ = ["LogProbEngine", "TokenLogProbs"]

Split = Literal["auto", "always", "never"]


def _linear_logprobs(hidden: Tensor, weight: Tensor, labels: Tensor, **kwargs: Any) -> Tensor:
    """`prefopt.kernels.linear_logprobs`, resolved at call time (the kernels package imports lazily)."""
    return linear_logprobs(hidden, weight, labels, **kwargs)


@dataclass(frozen=True)
class TokenLogProbs:
    """Flat per-token results: `logp` [N] float32 (and `entropy` [N] or None) of the N completion tokens,
    `select` [R, T−1] bool (where their hidden states sit: completion_mask shifted by one), `seq` [N]."""

    logp: Tensor
    entropy: Tensor | None
    select: Tensor
    seq: Tensor


def _prompt_learning(model: nn.Module) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


class LogProbEngine:
    """Per-sequence log-probs of the completion tokens of a `TokenBatch` under a causal LM.

    Args:
        model: a transformers `*ForCausalLM` (any dtype, bitsandbytes-quantised or not), or a PEFT
            model wrapping one (LoRA anywhere, lm_head included).
        backend: kernel backend for `prefopt.kernels.linear_logprobs` ("auto", "reference",
            "chunked", "triton").
        temperature: T; log-probs are those of `softmax(logits / T)` (1.0 = the model's own).
        packing: how packed batches reach the attention ("auto", "position_ids", "mask"; see
            `prefopt.engine.inputs`).
        split: "auto" splits known model types and falls back otherwise; "always" also splits unknown
            types as if their logits were `lm_head(h)`; "never" always takes the logits path.
        chunk_size: rows per chunk for the chunked kernel (None: chosen from V and a memory budget).

    Call: `engine(batch, return_tokens=False, return_entropy=False) -> SequenceLogProbs` (sum [S],
    count [S], mean [S]; per-token values [R, T] with `return_tokens`; entropies with
    `return_entropy`). Gradients flow to the model unless the call runs under `torch.no_grad()`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        backend: str = "auto",
        temperature: float = 1.0,
        packing: Packing = "auto",
        split: Split = "auto",
        chunk_size: int | None = None,
    ) -> None:
        if not temperature > 0:
            raise ValueError(f"LogProbEngine: temperature must be > 0, got {temperature}")
        if packing not in ("auto", "position_ids", "mask"):
            raise ValueError(f"LogProbEngine: packing={packing!r}; use 'auto', 'position_ids' or 'mask'")
        if split not in ("auto", "always", "never"):
            raise ValueError(f"LogProbEngine: split={split!r}; use 'auto', 'always' or 'never'")
        self.model = model
        self.backend = backend
        self.temperature = float(temperature)
        self.chunk_size = chunk_size
        inner = unwrap_peft(model)
        self.packing = default_packing(inner) if packing == "auto" else packing
        self.split: ModelSplit | None = None
        self.fallback_reason: str | None = None
        if _prompt_learning(model):
            raise ValueError(
                "LogProbEngine: PEFT prompt learning (prefix/prompt tuning) prepends virtual tokens in "
                "PeftModel.forward, which shifts every position the engine scores; use LoRA-style adapters"
            )
        if split == "never":
            self.fallback_reason = "split='never'"
        else:
            try:
                self.split = split_model(model, trust_unknown=split == "always")
            except SplitError as err:
                self.fallback_reason = str(err)
        if self.fallback_reason is not None and split != "never":
            warnings.warn(
                f"LogProbEngine: using the logits path (full R×T×V logits) for {type(inner).__name__}: "
                f"{self.fallback_reason}",
                stacklevel=2,
            )

    @property
    def fused(self) -> bool:
        """True when the engine runs body + fused kernel, False on the logits path."""
        return self.split is not None

    def _dtype(self) -> torch.dtype:
        dtype = getattr(unwrap_peft(self.model), "dtype", torch.float32)
        return dtype if dtype.is_floating_point else torch.float32

    def _check_window(self, length: int) -> None:
        config = getattr(unwrap_peft(self.model), "config", None)
        window = getattr(config, "sliding_window", None)
        if getattr(config, "use_sliding_window", True) and window is not None and length > window:
            raise ValueError(
                f"LogProbEngine(packing='mask'): packed rows of {length} tokens exceed the model's sliding_window="
                f"{window}, which an explicit 4-D mask does not apply; use packing='position_ids' (the default)"
            )

    def token_logprobs(self, batch: TokenBatch, *, return_entropy: bool = False) -> TokenLogProbs:
        """Log-probs (and optionally entropies) of every completion token, flat; see `TokenLogProbs`."""
        check_batch(batch)
        if batch.packed and self.packing == "mask":
            self._check_window(batch.input_ids.shape[1])
        kwargs = body_kwargs(batch, self.packing, self._dtype())
        select, labels, seq = scored_positions(batch)
        if self.split is None:
            logits = self.model(**kwargs).logits[:, :-1][select]  # (N, V) of the (R, T, V) logits
            logprobs = torch.log_softmax(logits.float() / self.temperature, dim=-1)
            logp = logprobs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            entropy = -(logprobs.exp() * logprobs).sum(-1) if return_entropy else None
            return TokenLogProbs(logp, entropy, select, seq)
        out = self.split.body(**kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (R, T, D)
        head = self.split.head_inputs(hidden[:, :-1][select])  # (N, D) → kernel view
        head_hidden = head.hidden.to(head.weight.dtype)  # as nn.Linear would need (e.g. fp32 norm, bf16 head)
        temperature, softcap = self.split.transform.kernel_args(self.temperature)
        result = _linear_logprobs(
            head_hidden,
            head.weight,
            labels,
            bias=head.bias,
            temperature=temperature,
            softcap=softcap,
            return_entropy=return_entropy,
            backend=self.backend,
            chunk_size=self.chunk_size,
        )
        logp, entropy = result if return_entropy else (result, None)
        return TokenLogProbs(logp, entropy, select, seq)

    def __call__(
        self, batch: TokenBatch, *, return_tokens: bool = False, return_entropy: bool = False
    ) -> SequenceLogProbs:
        """Run the model once over all rows of `batch`; see the class docstring.

        `return_entropy` adds `entropy` [S] = Σ_t H(π(·|x, y_<t)) over completion tokens (divide by
        `count` for the per-token mean that TRL logs), and `token_entropy` [R, T] with `return_tokens`.
        """
        flat = self.token_logprobs(batch, return_entropy=return_entropy)
        out = SequenceLogProbs.from_tokens(flat.logp, flat.seq, batch.num_sequences, batch.group_size)
        entropy = None
        if flat.entropy is not None:
            entropy = SequenceLogProbs.from_tokens(flat.entropy, flat.seq, batch.num_sequences).sum
        tokens = token_entropy = None
        if return_tokens:
            tokens = _unflatten(flat.logp, flat.select)
            token_entropy = None if flat.entropy is None else _unflatten(flat.entropy, flat.select)
        return SequenceLogProbs(
            out.sum,
            out.count,
            out.group_size,
            tokens,
            batch.sequence_ids if return_tokens else None,
            entropy,
            token_entropy,
        )


def _unflatten(values: Tensor, select: Tensor) -> Tensor:
    """Flat per-token values [N] → [R, T] aligned with input_ids (value of token t sits at t; 0 elsewhere)."""
    shifted = torch.zeros(select.shape, dtype=torch.float32, device=values.device).masked_scatter(select, values)
    return torch.cat([shifted.new_zeros(select.shape[0], 1), shifted], dim=1)
