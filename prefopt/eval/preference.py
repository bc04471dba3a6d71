"""Held-out preference metrics from the log-prob engine: does the policy rank the preferred completion higher?

For a prompt with K completions ordered best first (paired data: K = 2, chosen then rejected) and every
ordered pair (j, k), j better than k:

    r̂(y)      = β·(log π_θ(y|x) − log π_ref(y|x))    implicit reward (DPO, Rafailov et al. 2023, Eq. 5);
                 β·log π_θ(y|x) without a reference (the CPO/SimPO convention)
    reward accuracy   = mean over pairs of 1[r̂(y_j) > r̂(y_k)]
    reward margin     = mean over pairs of r̂(y_j) − r̂(y_k)
    log-prob accuracy = mean over pairs of 1[log π_θ(y_j) > log π_θ(y_k)]             (summed log-probs)
    normalised        = mean over pairs of 1[log π_θ(y_j)/|y_j| > log π_θ(y_k)/|y_k|]  (per-token means)

Each metric is first averaged over the pairs of one prompt (for K = 2 there is one pair; for ranked data
this is the pairwise ranking accuracy), then over prompts with a bootstrap CI. Ties count as wrong (the
strict `>` of the logged `rewards/accuracies`). Pairs of completions that the data itself ranks equal
(`extras["ranks"]` from `ties="keep"`) are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from prefopt.engine import LogProbEngine
from prefopt.engine.reference import eval_mode
from prefopt.eval.stats import BootstrapMethod, MeanCI, bootstrap_mean
from prefopt.registry import BoundLoss, loss_spec

__all__ = ["PreferenceMetrics", "resolve_beta", "preference_metrics", "evaluate_preferences"]


@dataclass(frozen=True)
class PreferenceMetrics:
    """Held-out preference metrics, each a mean over prompts with a bootstrap CI (see the module docstring).

    Attributes:
        reward_accuracy, reward_margin: of the implicit reward β·ρ.
        chosen_reward, rejected_reward: mean r̂ of the best and of the worst completion of each prompt.
        logp_accuracy, logp_accuracy_normalized: ranking by summed and by per-token log-probs.
        num_examples: prompts (B summed over batches); group_size: K; beta: the β used;
        reference_free: True when no reference was given (r̂ = β·log π_θ).
        values: the per-prompt values behind `reward_accuracy` and `reward_margin` (the prompts kept, in
            order), for CIs that pool several runs (`prefopt.eval.hierarchical_bootstrap_mean`).
    """

    reward_accuracy: MeanCI
    reward_margin: MeanCI
    chosen_reward: MeanCI
    rejected_reward: MeanCI
    logp_accuracy: MeanCI
    logp_accuracy_normalized: MeanCI
    num_examples: int
    group_size: int
    beta: float
    reference_free: bool
    values: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def to_dict(self, *, per_example: bool = False) -> dict[str, Any]:
        """JSON-ready dict: every metric as `MeanCI.to_dict()`, plus the counts and β (`per_example=True`: and
        `values`)."""
        out: dict[str, Any] = {}
        for name in (
            "reward_accuracy",
            "reward_margin",
            "chosen_reward",
            "rejected_reward",
            "logp_accuracy",
            "logp_accuracy_normalized",
        ):
            out[name] = getattr(self, name).to_dict()
        out.update(
            num_examples=self.num_examples,
            group_size=self.group_size,
            beta=self.beta,
            reference_free=self.reference_free,
        )
        if per_example:
            out["values"] = self.values
        return out


def resolve_beta(beta: float | None = None, loss: Any = None) -> float:
    """The β of the implicit reward: `beta` if given, else the `beta` hyper-parameter of `loss`.

    `loss` is a registered name (its paper default is used) or a `BoundLoss` (its bound value). For a loss
    whose `beta` means something else (IPO's τ, SLiC's δ) or that has none, pass `beta` explicitly.
    """
    if beta is None and loss is not None:
        if isinstance(loss, BoundLoss):
            hparams = {**loss.spec.defaults(), **loss.hparams}
        else:
            hparams = loss_spec(str(loss)).defaults()
        beta = hparams.get("beta")
        if beta is None:
            raise ValueError(
                f"resolve_beta: loss {getattr(loss, 'name', loss)!r} has no 'beta' hyper-parameter; "
                "pass beta= (the implicit-reward scale, e.g. 0.1)"
            )
    if beta is None:
        raise ValueError(
            "resolve_beta: pass beta= (e.g. 0.1) or loss= (a registered loss with a 'beta' hyper-parameter)"
        )
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"resolve_beta: beta={beta!r} must be a number > 0")
    return float(beta)


def _check_grouped(name: str, t: Tensor | None, shape: torch.Size) -> None:
    if t is not None and (not isinstance(t, Tensor) or t.shape != shape):
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(
            f"preference_metrics: {name} has shape {got}; expected {tuple(shape)} like policy_logps "
            "([B, K], completions of a prompt best first)"
        )


def _pair_means(values: Tensor, pairs: Tensor, op: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """[B] mean over the valid ordered pairs (j, k) of op(values[:, j], values[:, k]); NaN with no pair."""
    diff = op(values[:, :, None], values[:, None, :]).double()  # (B, K, K), [b, j, k] = op(v_j, v_k)
    count = pairs.sum((1, 2))
    total = torch.where(pairs, diff, torch.zeros_like(diff)).sum((1, 2))
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def preference_metrics(
    policy_logps: Tensor,
    lengths: Tensor,
    ref_logps: Tensor | None = None,
    *,
    beta: float,
    ranks: Tensor | None = None,
    confidence: float = 0.95,
    method: BootstrapMethod = "percentile",
    n_resamples: int = 2000,
    seed: int = 0,
) -> PreferenceMetrics:
    """Preference metrics from per-sequence log-probs (pure tensor code; see the module docstring).

    Args:
        policy_logps: [B, K] summed completion log-probs under π_θ, column 0 the best (`SequenceLogProbs.grouped()`).
        lengths: [B, K] completion token counts (> 0).
        ref_logps: [B, K] the same under π_ref, or None for reference-free rewards β·log π_θ.
        beta: β > 0 of the implicit reward.
        ranks: [B, K] dense ranks (0 = best, equal = tied; `extras["ranks"]`), or None: strictly best first.
        confidence, method, n_resamples, seed: of the bootstrap over prompts (`bootstrap_mean`).
    """
    is_grouped = isinstance(policy_logps, Tensor) and policy_logps.dim() == 2
    if not is_grouped or policy_logps.shape[1] < 2 or policy_logps.shape[0] == 0:
        got = tuple(policy_logps.shape) if isinstance(policy_logps, Tensor) else type(policy_logps).__name__
        raise ValueError(
            f"preference_metrics: policy_logps has shape {got}; expected [B, K] with B ≥ 1, K ≥ 2 "
            "(paired data: K = 2, chosen first)"
        )
    shape = policy_logps.shape
    for name, t in (("lengths", lengths), ("ref_logps", ref_logps), ("ranks", ranks)):
        _check_grouped(name, t, shape)
    if bool((lengths <= 0).any()):
        rows = (lengths <= 0).any(1).nonzero()[:10, 0].tolist()
        raise ValueError(f"preference_metrics: lengths ≤ 0 at rows {rows}; an empty completion has no log-probability")
    beta = resolve_beta(beta)
    policy = policy_logps.detach().double().cpu()
    rewards = beta * (policy - (0.0 if ref_logps is None else ref_logps.detach().double().cpu()))
    normalized = policy / lengths.detach().double().cpu()
    k = shape[1]
    order = torch.arange(k)
    if ranks is None:
        pairs = (order[:, None] < order[None, :]).expand(shape[0], k, k)  # j listed before k = j better
    else:
        r = ranks.detach().cpu()
        pairs = r[:, :, None] < r[:, None, :]
    greater = lambda a, b: a > b  # noqa: E731
    per_example = {
        "reward_accuracy": _pair_means(rewards, pairs, greater),
        "reward_margin": _pair_means(rewards, pairs, torch.sub),
        "logp_accuracy": _pair_means(policy, pairs, greater),
        "logp_accuracy_normalized": _pair_means(normalized, pairs, greater),
        "chosen_reward": rewards[:, 0],
        "rejected_reward": rewards[:, -1],
    }
    keep = ~torch.isnan(per_example["reward_accuracy"])
    if not bool(keep.any()):
        raise ValueError("preference_metrics: every prompt's completions are tied in `ranks`; nothing to rank")

    def summary(values: Tensor) -> MeanCI:
        return bootstrap_mean(
            np.asarray(values[keep]), confidence=confidence, method=method, n_resamples=n_resamples, seed=seed
        )

    stats = {name: summary(v) for name, v in per_example.items()}
    return PreferenceMetrics(
        **stats,
        num_examples=int(keep.sum()),
        group_size=k,
        beta=beta,
        reference_free=ref_logps is None,
        values={name: per_example[name][keep].tolist() for name in ("reward_accuracy", "reward_margin")},
    )


@torch.no_grad()
def evaluate_preferences(
    policy: Any,
    batches: Iterable[Any],
    *,
    reference: Callable[[Any], Any] | None = None,
    beta: float | None = None,
    loss: Any = None,
    confidence: float = 0.95,
    method: BootstrapMethod = "percentile",
    n_resamples: int = 2000,
    seed: int = 0,
) -> PreferenceMetrics:
    """Run the engine over held-out paired or ranked batches (no grad, eval mode) and compute the metrics.

    Args:
        policy: a `LogProbEngine`, or a causal LM (wrapped in one with default settings).
        batches: `TokenBatch`es of paired (group_size 2) or ranked (group_size K) data, e.g. a DataLoader
            with `PreferenceCollator`; ranked batches may carry `extras["ranks"]` [B, K].
        reference: batch → `SequenceLogProbs` of π_ref (`ReferenceLogProbs`), or None (reference-free).
        beta, loss: the implicit-reward β, given or taken from the loss (`resolve_beta`).
        confidence, method, n_resamples, seed: of the bootstrap over prompts.
    """
    beta = resolve_beta(beta, loss)
    engine = policy if isinstance(policy, LogProbEngine) else LogProbEngine(policy)
    device = next(engine.model.parameters()).device
    logps, counts, refs, ranks = [], [], [], []
    with eval_mode(engine.model):
        for i, batch in enumerate(batches):
            if batch.group_size < 2:
                raise ValueError(
                    f"evaluate_preferences: batch {i} has group_size={batch.group_size}; preference "
                    "metrics need paired (2) or ranked (K ≥ 2) batches"
                )
            batch = batch.to(device)
            out = engine(batch)
            logps.append(out.grouped().cpu())
            counts.append(out.grouped(out.count).cpu())
            if reference is not None:
                refs.append(reference(batch).grouped().cpu())
            if "ranks" in batch.extras:
                ranks.append(batch.extras["ranks"].cpu())
    if not logps:
        raise ValueError("evaluate_preferences: `batches` is empty; pass the held-out split's batches")
    if ranks and len(ranks) != len(logps):
        raise ValueError("evaluate_preferences: some batches carry extras['ranks'] and others do not")
    return preference_metrics(
        torch.cat(logps),
        torch.cat(counts),
        torch.cat(refs) if refs else None,
        beta=beta,
        ranks=torch.cat(ranks) if ranks else None,
        confidence=confidence,
        method=method,
        n_resamples=n_resamples,
        seed=seed,
    )
