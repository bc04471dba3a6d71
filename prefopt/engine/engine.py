"""`LogProbEngine`: a causal LM and a `TokenBatch` in, per-sequence completion log-probs out.

    hidden = body(input_ids, mask, positions)                    # (R, T, D), one forward for all rows
    h      = hidden[r, t−1]  for every completion token (r, t)   # (N, D), prompt positions dropped
    logp   = linear_logprobs(h, W_head, y, bias, T', softcap')   # (N,) float32, never (R, T, V)
    sum[s] = Σ_{tokens of s} logp                                # (S,) accumulated in float64

The fused path never materialises the R×T×V logits: memory for the head is that of the kernel
(O(chunk·V)) instead of 4·R·T·V bytes, and prompt positions never reach the head (unless `score_prompt` asks
for them: `prefopt.engine.prompt_scoring`). Models the engine cannot split (see `head.split_model`) take the
logits path — `model(...).logits` → fp32 log_softmax → gather, at the same positions — after a one-time warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prefopt.batch import TokenBatch
from prefopt.data.collate import unshare_prompts
from prefopt.engine.head import ModelSplit, SplitError, split_model, unwrap_peft
from prefopt.engine.inputs import Packing, as_token_batch, body_kwargs, check_batch, default_packing, scored_positions
from prefopt.engine.outputs import SequenceLogProbs, sequence_sums
from prefopt.engine.prompt_scoring import ScorePrompt, prompt_flags, split_prompt_tokens, with_prompt_scored
from prefopt.engine.prompt_sharing import PromptSharing, head_rows
from prefopt.engine.sequential_kl import HeadAt, token_kl
from prefopt.errors import BatchError
from prefopt.kernels import LogitStats, linear_logprobs

__all__ = ["LogProbEngine", "ScoredRows", "TokenLogProbs"]

Split = Literal["auto", "always", "never"]


def _linear_logprobs(hidden: Tensor, weight: Tensor, labels: Tensor, **kwargs: Any) -> Any:
    """`prefopt.kernels.linear_logprobs`, resolved at call time (the kernels package imports lazily)."""
    return linear_logprobs(hidden, weight, labels, **kwargs)


@dataclass(frozen=True)
class ScoredRows:
    """One forward of a batch, cut to its N scored positions (`LogProbEngine.scored_rows`): the batch as it ran
    (a prefix-shared batch unshared where `share_prompt` says so), `select` [R, T−1] bool (where the scored
    tokens' states sit), `labels` [N], `seq` [N], and `states` at those positions: the body's hidden states
    (N, D) on the split path, the model's logits (N, V) on the logits path. With autograd unless run under
    `torch.no_grad()`."""

    batch: TokenBatch
    select: Tensor
    labels: Tensor
    seq: Tensor
    states: Tensor


@dataclass(frozen=True)
class TokenLogProbs:
    """Flat per-token results: `logp` [N] float32 (and `entropy` [N] or None) of the N completion tokens,
    `select` [R, T−1] bool (where their hidden states sit: completion_mask shifted by one), `seq` [N], and
    with `return_stats` the `LogitStats` of the model's logits (mean over the vocabulary, label = argmax)."""

    logp: Tensor
    entropy: Tensor | None
    select: Tensor
    seq: Tensor
    stats: LogitStats | None = None
    kl: Tensor | None = None  # [N] KL(π_ref ‖ π) per token, with `kl_reference` (TDPO's sequential KL)


def _logits_stats(logits: Tensor, labels: Tensor, logprobs: Tensor) -> LogitStats:
    """`LogitStats` of materialised logits (N, V) and their tempered log-softmax (the logits path): what the
    kernels compute on their tiles (log Σ_v p_v² of the engine's distribution, the tempered one)."""
    logits = logits.detach().float()
    target = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return LogitStats(logits.mean(-1), target >= logits.amax(-1), torch.logsumexp(2.0 * logprobs.detach(), dim=-1))


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
        share_prompt: how prefix-shared batches (`TokenBatch.shared_prefix`) run: "auto" as they are (each
            prompt once) on a model whose attention takes the block mask, unshared first otherwise; True as
            they are, refusing a model that cannot take the mask (BatchError naming why); False always unshared
            first (exact, without the saving). Other batches are unaffected.

    Call: `engine(batch, return_tokens=False, return_entropy=False, return_stats=False) -> SequenceLogProbs`
    (sum [S], count [S], mean [S]; per-token values [R, T] with `return_tokens`; entropies with
    `return_entropy`; `logit_sum`, `correct` with `return_stats`). Gradients flow to the model unless the
    call runs under `torch.no_grad()`.
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
        share_prompt: bool | Literal["auto"] = "auto",
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
        if share_prompt not in (True, False, "auto"):
            raise ValueError(f"LogProbEngine: share_prompt={share_prompt!r}; use 'auto', True or False")
        self.share_prompt = share_prompt
        self.prompt_sharing = PromptSharing.of(inner)
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

    def _layout(self, batch: TokenBatch) -> TokenBatch:
        """A prefix-shared batch as it will run: as it is, or unshared (`share_prompt`, the model's attention)."""
        if not batch.shared_prefix:
            return batch
        refusal = None
        if self.share_prompt is not False:
            refusal = self.prompt_sharing.refusal(batch, type(unwrap_peft(self.model)).__name__)
        if refusal is not None and self.share_prompt is True:
            raise BatchError(
                f"LogProbEngine: {refusal}; collate with share_prompt=False, or give LogProbEngine "
                "share_prompt='auto' or False (it unshares the batch)"
            )
        return batch if self.share_prompt is not False and refusal is None else unshare_prompts(batch)

    def scored_rows(self, batch: TokenBatch | Mapping[str, Any]) -> ScoredRows:
        """Run the model once over `batch` in the layout it runs in (`_layout`, `check_batch`, the body's
        arguments for padded, packed or prefix-shared rows) and keep the states at its scored positions: the one
        forward of `token_logprobs`, the loss-fused step (`prefopt.engine.fused_step`) and TDPO's reference head
        (`prefopt.engine.sequential_kl.head_at`)."""
        batch = self._layout(as_token_batch(batch))
        check_batch(batch)
        if batch.shared_prefix:
            kwargs = self.prompt_sharing.body_kwargs(batch, self._dtype())
        else:
            if batch.packed and self.packing == "mask":
                self._check_window(batch.input_ids.shape[1])
            kwargs = body_kwargs(batch, self.packing, self._dtype())
        select, labels, seq = scored_positions(batch)
        if self.split is None:
            states = self.model(**kwargs).logits  # (R, T, V)
        else:
            out = self.split.body(**kwargs)
            states = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (R, T, D)
        return ScoredRows(batch, select, labels, seq, head_rows(states, batch, select))

    def head_of(self, rows: ScoredRows) -> HeadAt:
        """The next-token distribution at `rows`: the kernel's inputs on the split path (the head's view, LoRA on
        the head folded in, hidden cast to the head's dtype as nn.Linear would need; the kernel's temperature and
        softcap), the tempered float32 logits (N, V) on the logits path."""
        if self.split is None:
            return HeadAt(logits=rows.states.float() / self.temperature)
        head = self.split.head_inputs(rows.states)  # (N, D) → kernel view
        temperature, softcap = self.split.transform.kernel_args(self.temperature)
        return HeadAt(head.hidden.to(head.weight.dtype), head.weight, head.bias, temperature, softcap)

    def token_logprobs(
        self,
        batch: TokenBatch | Mapping[str, Any],
        *,
        return_entropy: bool = False,
        return_stats: bool = False,
        kl_reference: Any = None,
    ) -> TokenLogProbs:
        """Log-probs (and optionally entropies, logit statistics, the KL from `kl_reference`) of every completion
        token, flat; see `TokenLogProbs`."""
        rows = self.scored_rows(batch)
        batch, select, labels, seq = rows.batch, rows.select, rows.labels, rows.seq
        head = self.head_of(rows)
        if head.logits is not None:  # the logits path: rows.states are the (N, V) logits
            logprobs = torch.log_softmax(head.logits, dim=-1)
            logp = logprobs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            entropy = -(logprobs.exp() * logprobs).sum(-1) if return_entropy else None
            stats = _logits_stats(rows.states, labels, logprobs) if return_stats else None
            kl = _kl(head, kl_reference, batch, self.chunk_size)
            return TokenLogProbs(logp, entropy, select, seq, stats, kl)
        assert head.hidden is not None and head.weight is not None
        result = _linear_logprobs(
            head.hidden,
            head.weight,
            labels,
            bias=head.bias,
            temperature=head.temperature,
            softcap=head.softcap,
            return_entropy=return_entropy,
            return_stats=return_stats,
            backend=self.backend,
            chunk_size=self.chunk_size,
        )
        logp, *rest = result if (return_entropy or return_stats) else (result,)
        entropy = rest[0] if return_entropy else None
        stats = rest[-1] if return_stats else None
        if stats is not None and self.temperature != 1.0:  # the kernel's logits are the model's divided by T
            stats = stats._replace(mean=stats.mean * self.temperature)  # log Σ p² stays the tempered softmax's
        kl = _kl(head, kl_reference, batch, self.chunk_size)
        return TokenLogProbs(logp, entropy, select, seq, stats, kl)

    def __call__(
        self,
        batch: TokenBatch | Mapping[str, Any],
        *,
        return_tokens: bool = False,
        return_entropy: bool = False,
        return_stats: bool = False,
        kl_reference: Any = None,
        score_prompt: ScorePrompt = False,
    ) -> SequenceLogProbs:
        """Run the model once over all rows of `batch`; see the class docstring.

        `return_entropy` adds `entropy` [S] = Σ_t H(π(·|x, y_<t)) over completion tokens (divide by
        `count` for the per-token mean that TRL logs), and `token_entropy` [R, T] with `return_tokens`.
        `return_stats` adds, detached, `logit_sum` [S] (Σ_t of the mean over the vocabulary of the model's
        logits), `correct` [S] (completion tokens that are an argmax of the logits) and `log_sum_sq_probs` [S]
        (Σ_t log Σ_v π(v)², WPO's alignment), read from the logits tiles the kernel computes anyway.
        `kl_reference` (a `ReferenceLogProbs` of a model, or anything with `head_inputs(batch)`) adds `seq_kl` [S]
        = Σ_t KL(π_ref(·|x, y_<t) ‖ π(·|x, y_<t)), with gradient (TDPO; `prefopt.engine.sequential_kl`). `batch`
        may be a mapping of TokenBatch's field names (`TokenBatch.from_dict` reads it and names a missing key);
        convert TRL's batches with `prefopt.data.from_trl_batch`. `score_prompt` (True, "chosen": the first block of
        each group, or a bool tensor [S]) also scores the prompt tokens of those sequences, in the same forward, and
        adds `prompt_sum` [S] (with gradient) and `prompt_count` [S] (`prefopt.engine.prompt_scoring`).
        """
        batch = self._layout(as_token_batch(batch))  # per-token outputs follow the layout that ran
        options = dict(return_entropy=return_entropy, return_stats=return_stats, kl_reference=kl_reference)
        prompt = None
        if score_prompt is not False:  # prompt tokens too, split off after the one kernel call
            batch, scoring, prompt_mask = with_prompt_scored(batch, prompt_flags(batch, score_prompt))
            flat, prompt_logp, prompt_seq = split_prompt_tokens(
                self.token_logprobs(scoring, **options), prompt_mask, batch.completion_mask
            )
            prompt = SequenceLogProbs.from_tokens(prompt_logp, prompt_seq, batch.num_sequences)
        else:
            flat = self.token_logprobs(batch, **options)
        out = SequenceLogProbs.from_tokens(flat.logp, flat.seq, batch.num_sequences, batch.group_size)
        entropy = None
        if flat.entropy is not None:
            entropy = sequence_sums(flat.entropy, flat.seq, batch.num_sequences)
        tokens = token_entropy = None
        if return_tokens:
            tokens = _unflatten(flat.logp, flat.select)
            token_entropy = None if flat.entropy is None else _unflatten(flat.entropy, flat.select)
        logit_sum = correct = log_sum_sq = None
        if flat.stats is not None:
            logit_sum = sequence_sums(flat.stats.mean, flat.seq, batch.num_sequences)
            correct = torch.bincount(flat.seq[flat.stats.correct], minlength=batch.num_sequences)
            if flat.stats.log_sum_sq_probs is not None:
                log_sum_sq = sequence_sums(flat.stats.log_sum_sq_probs, flat.seq, batch.num_sequences)
        return SequenceLogProbs(
            out.sum,
            out.count,
            out.group_size,
            tokens,
            batch.sequence_ids if return_tokens else None,
            entropy,
            token_entropy,
            logit_sum=logit_sum,
            correct=correct,
            log_sum_sq_probs=log_sum_sq,
            seq_kl=None if flat.kl is None else sequence_sums(flat.kl, flat.seq, batch.num_sequences),
            prompt_sum=None if prompt is None else prompt.sum,
            prompt_count=None if prompt is None else prompt.count,
        )


def _kl(policy: HeadAt, kl_reference: Any, batch: TokenBatch, chunk_size: int | None) -> Tensor | None:
    """KL(π_ref ‖ π) per scored token [N] from the policy's head and `kl_reference.head_inputs(batch)`, or None."""
    if kl_reference is None:
        return None
    if not callable(getattr(kl_reference, "head_inputs", None)):
        raise TypeError(
            f"LogProbEngine: kl_reference must give the reference model's head (ReferenceLogProbs.from_model or "
            f".from_disabled_adapter), got {type(kl_reference).__name__}"
        )
    return token_kl(policy, kl_reference.head_inputs(batch), chunk_size=chunk_size)


def _unflatten(values: Tensor, select: Tensor) -> Tensor:
    """Flat per-token values [N] → [R, T] aligned with input_ids (value of token t sits at t; 0 elsewhere)."""
    shifted = torch.zeros(select.shape, dtype=torch.float32, device=values.device).masked_scatter(select, values)
    return torch.cat([shifted.new_zeros(select.shape[0], 1), shifted], dim=1)
