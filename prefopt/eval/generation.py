"""Generation metrics: sample completions of held-out prompts from the policy and the reference, score them.

For n prompts x_i, one completion y_i ~ π_θ(·|x_i) and one independent ỹ_i ~ π_ref(·|x_i):

    reward          mean r(x_i, y_i)         r: any `RewardFunction` (the synthetic gold reward, a reward model)
    win rate        mean 1[r(y_i) > r(ỹ_i)] + ½·1[=]                  (`prefopt.eval.winrate`)
    LC win rate     σ(a) of the length-controlled fit (AlpacaEval 2, arXiv:2404.04475)
    mean length     completion tokens of y_i (EOS not counted; = words on the synthetic task)
    KL(π_θ ‖ π_ref) per sequence, averaged over the policy's samples:
        exact  Σ_t KL(π_θ(·|s_t) ‖ π_ref(·|s_t)) over the vocabulary (`prefopt.sampling.sequence_kl`)
        k1     Σ_t log π_θ(y_t|s_t) − log π_ref(y_t|s_t)                               unbiased, can be < 0
        k3     Σ_t (u_t − 1 − log u_t),  u_t = π_ref(y_t|s_t)/π_θ(y_t|s_t)             unbiased, ≥ 0
    (k1/k3: Schulman 2020, "Approximating KL Divergence"; each token's term is unbiased for that position's
    KL given the prefix, so by the chain rule the sums are unbiased for the sequence KL.)

Every mean carries a bootstrap CI over prompts. `generation_metrics` is the pure part (arrays in, metrics
out); `evaluate_generations` samples, scores and runs the engine for the log-probs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from prefopt.engine import LogProbEngine
from prefopt.engine.reference import eval_mode
from prefopt.eval.stats import BootstrapMethod, MeanCI, bootstrap_mean
from prefopt.eval.winrate import length_controlled_win_rate, pairwise_outcomes
from prefopt.sampling import sample, sequence_kl
from prefopt.threads import torch_threads

__all__ = [
    "GenerationMetrics",
    "kl_estimates",
    "completion_lengths",
    "generation_metrics",
    "evaluate_generations",
    "EXACT_KL_MAX_VOCAB",
]

# `kl="auto"` computes the exact KL when the vocabulary is at most this large: it materialises
# (batch, T, V) float32 log-probs for both models (64 × 128 × 4096 × 4 B ≈ 134 MB per model).
EXACT_KL_MAX_VOCAB = 4096

KLMethod = Literal["auto", "exact", "sampled"]


@dataclass(frozen=True)
class GenerationMetrics:
    """Metrics of the policy's samples on n held-out prompts (see the module docstring).

    Attributes:
        reward, reference_reward: mean reward of the policy's and of the reference's samples.
        win_rate, lc_win_rate: policy versus reference samples, raw and length-controlled.
        kl: the headline KL, `kl_exact` when computed, else `kl_k3`; kl_method says which.
        kl_k1, kl_k3, kl_exact: the estimates (None where not computed).
        mean_length, reference_mean_length: completion tokens, EOS excluded.
        finished_rate: share of policy samples that ended with EOS (not cut by max_new_tokens).
        num_prompts: n.
        rewards, reference_rewards, lengths, reference_lengths: per-prompt values (for ratings across
            algorithms and for re-analysis); completions, reference_completions: the two models' texts
            (may be empty); kls: the per-prompt values of the headline KL (empty without a KL).
    """

    reward: MeanCI
    reference_reward: MeanCI
    win_rate: MeanCI
    lc_win_rate: MeanCI
    kl: MeanCI | None
    kl_method: str
    kl_k1: MeanCI | None
    kl_k3: MeanCI | None
    kl_exact: MeanCI | None
    mean_length: MeanCI
    reference_mean_length: MeanCI
    finished_rate: float | None
    num_prompts: int
    rewards: list[float] = field(repr=False, default_factory=list)
    reference_rewards: list[float] = field(repr=False, default_factory=list)
    lengths: list[float] = field(repr=False, default_factory=list)
    reference_lengths: list[float] = field(repr=False, default_factory=list)
    completions: list[str] = field(repr=False, default_factory=list)
    reference_completions: list[str] = field(repr=False, default_factory=list)
    kls: list[float] = field(repr=False, default_factory=list)

    def to_dict(self, *, per_prompt: bool = False) -> dict[str, Any]:
        """JSON-ready dict of the summaries; `per_prompt=True` adds the per-prompt lists and completions."""
        out: dict[str, Any] = {}
        for name in (
            "reward",
            "reference_reward",
            "win_rate",
            "lc_win_rate",
            "kl",
            "kl_k1",
            "kl_k3",
            "kl_exact",
            "mean_length",
            "reference_mean_length",
        ):
            value = getattr(self, name)
            out[name] = None if value is None else value.to_dict()
        out.update(kl_method=self.kl_method, finished_rate=self.finished_rate, num_prompts=self.num_prompts)
        if per_prompt:
            out.update(
                rewards=self.rewards,
                reference_rewards=self.reference_rewards,
                lengths=self.lengths,
                reference_lengths=self.reference_lengths,
                completions=self.completions,
                reference_completions=self.reference_completions,
                kls=self.kls,
            )
        return out


def kl_estimates(policy_token_logps: Tensor, ref_token_logps: Tensor, completion_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sequence sampled KL estimates (k1 [S], k3 [S]) from per-token log-probs of samples of π_θ.

    Args:
        policy_token_logps, ref_token_logps: [S, T] log π_θ(y_t|s_t) and log π_ref(y_t|s_t) of the sampled
            tokens (`SequenceLogProbs.tokens`), any values off the completion.
        completion_mask: [S, T] bool, True on the sampled completion tokens.
    Returns:
        k1 = Σ_t (log π_θ − log π_ref) and k3 = Σ_t (e^{x_t} − 1 − x_t) with x_t = log π_ref − log π_θ,
        float64.
    """
    same_shape = policy_token_logps.shape == ref_token_logps.shape == completion_mask.shape
    if not same_shape or policy_token_logps.dim() != 2:
        raise ValueError(
            f"kl_estimates: policy_token_logps {tuple(policy_token_logps.shape)}, ref_token_logps "
            f"{tuple(ref_token_logps.shape)} and completion_mask {tuple(completion_mask.shape)} must "
            "share one [S, T] shape"
        )
    mask = completion_mask.bool()
    zero = torch.zeros((), dtype=torch.float64)
    log_u = torch.where(mask, ref_token_logps.double() - policy_token_logps.double(), zero)
    k1 = (-log_u).sum(1)
    k3 = torch.expm1(log_u).sub(log_u).sum(1)  # (e^x − 1) − x ≥ 0, accurate for small x
    return k1, k3


def completion_lengths(completion_mask: Tensor, finished: Tensor | None = None) -> Tensor:
    """[S] completion tokens per row of a samples layout, minus the EOS where `finished` [S] is True."""
    lengths = completion_mask.long().sum(1)
    return lengths - finished.long() if finished is not None else lengths


def generation_metrics(
    rewards: Any,
    reference_rewards: Any,
    lengths: Any,
    reference_lengths: Any,
    *,
    kl_k1: Any = None,
    kl_k3: Any = None,
    kl_exact: Any = None,
    finished: Any = None,
    completions: Sequence[str] = (),
    reference_completions: Sequence[str] = (),
    confidence: float = 0.95,
    method: BootstrapMethod = "percentile",
    n_resamples: int = 2000,
    seed: int = 0,
) -> GenerationMetrics:
    """The metrics from per-prompt arrays (pure): rewards [n] and lengths [n] of the policy's samples and of
    the reference's on the same n prompts, optional per-sample KL estimates [n] and `finished` [n] flags;
    `completions` and `reference_completions` (the texts) are kept as given."""
    arrays = {
        name: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=np.float64).reshape(-1)
        for name, v in (
            ("rewards", rewards),
            ("reference_rewards", reference_rewards),
            ("lengths", lengths),
            ("reference_lengths", reference_lengths),
        )
    }
    n = arrays["rewards"].size
    for name, a in arrays.items():
        if a.size != n or n == 0:
            raise ValueError(
                f"generation_metrics: {name} has {a.size} values, rewards {n}; pass one value per "
                "prompt for each (same prompts, same order, n ≥ 1)"
            )

    def summary(values: Any) -> MeanCI:
        values = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)
        if values.size != n:
            raise ValueError(
                f"generation_metrics: a KL estimate has {values.size} values, expected one per prompt (n = {n})"
            )
        return bootstrap_mean(values, confidence=confidence, method=method, n_resamples=n_resamples, seed=seed)

    def optional(values: Any) -> MeanCI | None:
        return None if values is None else summary(values)

    outcomes = pairwise_outcomes(arrays["rewards"], arrays["reference_rewards"])
    lc = length_controlled_win_rate(
        outcomes,
        arrays["lengths"] - arrays["reference_lengths"],
        confidence=confidence,
        method=method,
        n_resamples=n_resamples,
        seed=seed,
    )
    k1, k3, exact = optional(kl_k1), optional(kl_k3), optional(kl_exact)
    headline, kl_method = (exact, "exact") if exact is not None else (k3, "k3") if k3 is not None else (k1, "k1")
    per_prompt_kl = next((v for v in (kl_exact, kl_k3, kl_k1) if v is not None), None)
    return GenerationMetrics(
        reward=summary(arrays["rewards"]),
        reference_reward=summary(arrays["reference_rewards"]),
        win_rate=lc.win_rate,
        lc_win_rate=lc.lc_win_rate,
        kl=headline,
        kl_method=kl_method if headline is not None else "none",
        kl_k1=k1,
        kl_k3=k3,
        kl_exact=exact,
        mean_length=summary(arrays["lengths"]),
        reference_mean_length=summary(arrays["reference_lengths"]),
        finished_rate=None if finished is None else float(np.asarray(finished, dtype=np.float64).mean()),
        num_prompts=n,
        rewards=arrays["rewards"].tolist(),
        reference_rewards=arrays["reference_rewards"].tolist(),
        lengths=arrays["lengths"].tolist(),
        reference_lengths=arrays["reference_lengths"].tolist(),
        completions=list(completions),
        reference_completions=list(reference_completions),
        kls=[] if per_prompt_kl is None else _floats(per_prompt_kl),
    )


def _floats(values: Any) -> list[float]:
    """Per-prompt values (a tensor, array or list) as a list of floats."""
    return np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64).tolist()


def _use_exact_kl(kl: KLMethod, model: Any) -> bool:
    if kl not in ("auto", "exact", "sampled"):
        raise ValueError(f"evaluate_generations: kl={kl!r}; use 'auto', 'exact' or 'sampled'")
    if kl != "auto":
        return kl == "exact"
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    return vocab is not None and vocab <= EXACT_KL_MAX_VOCAB


@torch.no_grad()
def evaluate_generations(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    reward: Any,
    seed: int = 0,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    kl: KLMethod = "auto",
    reference_samples: Any = None,
    sampler: Callable[..., Any] | None = None,
    num_threads: int | None = None,
    sampled_kl: bool = True,
    confidence: float = 0.95,
    method: BootstrapMethod = "percentile",
    n_resamples: int = 2000,
) -> GenerationMetrics:
    """Sample one completion per prompt from `policy` and `reference`, score them, and compute the metrics.

    Args:
        policy, reference: causal LMs over the same tokenizer (put in eval mode for the call).
        tokenizer: their tokenizer (BOS/EOS conventions of `sampler`).
        prompts: n held-out prompt strings (repeat a prompt for several samples of it).
        reward: a `RewardFunction` (`score(prompts, completions) -> [n]`), e.g. `synthetic.GoldReward()`.
        seed: policy samples use `torch.Generator().manual_seed(seed)`, reference samples `seed + 1`.
        kl: "exact" (`prefopt.sampling.sequence_kl`, full vocabulary), "sampled" (k1/k3 only) or "auto" (exact when
            the vocabulary has ≤ EXACT_KL_MAX_VOCAB tokens). k1 and k3 are reported too, unless `sampled_kl`
            is False and the exact KL is computed (which saves a forward pass of each model).
        reference_samples: the reference's `Samples` on the same prompts, to reuse across policies (then
            the reference is not sampled again).
        sampler: `sampler(model, tokenizer, prompts, generator=, max_new_tokens=, temperature=) -> Samples`;
            default `prefopt.sampling.sample` (ancestral sampling with a KV cache).
        num_threads: torch threads while sampling (None: unchanged).
    """
    if not prompts:
        raise ValueError("evaluate_generations: no prompts; pass the held-out prompts")
    draw = sampler or sample
    exact = _use_exact_kl(kl, policy)
    with eval_mode(policy), eval_mode(reference), torch_threads(num_threads):
        mine = draw(
            policy,
            tokenizer,
            list(prompts),
            generator=torch.Generator().manual_seed(seed),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
        )
        if reference_samples is None:
            reference_samples = draw(
                reference,
                tokenizer,
                list(prompts),
                generator=torch.Generator().manual_seed(seed + 1),
                max_new_tokens=max_new_tokens,
                temperature=temperature,
            )
        elif list(reference_samples.prompts) != list(prompts):
            raise ValueError(
                "evaluate_generations: reference_samples were drawn for other prompts; pass the "
                "same prompts in the same order"
            )
        k1 = k3 = kl_exact = None
        if sampled_kl or not exact:
            batch = mine.token_batch()
            policy_tokens = LogProbEngine(policy, temperature=temperature)(batch, return_tokens=True).tokens
            ref_tokens = LogProbEngine(reference, temperature=temperature)(batch, return_tokens=True).tokens
            k1, k3 = kl_estimates(policy_tokens.cpu(), ref_tokens.cpu(), mine.completion_mask)
        if exact:
            if temperature != 1.0:
                raise ValueError(
                    "evaluate_generations: the exact KL compares the models at temperature 1; sample "
                    f"at temperature 1 or use kl='sampled' (got temperature={temperature})"
                )
            kl_exact = sequence_kl(policy, reference, mine.input_ids, mine.attention_mask, mine.completion_mask)
    scores = reward.score(list(prompts), mine.completions)
    ref_scores = reward.score(list(prompts), reference_samples.completions)
    return generation_metrics(
        scores,
        ref_scores,
        completion_lengths(mine.completion_mask, mine.finished),
        completion_lengths(reference_samples.completion_mask, reference_samples.finished),
        kl_k1=k1,
        kl_k3=k3,
        kl_exact=kl_exact,
        finished=mine.finished,
        completions=mine.completions,
        reference_completions=reference_samples.completions,
        confidence=confidence,
        method=method,
        n_resamples=n_resamples,
        seed=seed,
    )
