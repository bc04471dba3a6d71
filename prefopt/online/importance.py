"""Truncated importance sampling (TIS): correcting the learner for a sampler whose log-probs differ from its own.

The online loop samples a rollout with one implementation of the policy (HF `generate` in bf16, vLLM's
kernels) and scores it with another (the log-prob engine): the two assign the sampled tokens slightly
different log-probs, so the rollout is off-policy for the π_old the losses assume. Yao et al. 2025 ("Your
efficient RL framework secretly brings you off-policy RL training", Feng Yao et al., blog note) correct each
token's policy gradient by the capped ratio of the two, as verl (`tis_imp_ratio_cap`) and TRL
(`GRPOConfig.vllm_importance_sampling_correction`, `vllm_importance_sampling_cap` = 2) do:

    log r_t = log π_old(y_t) − log π_sampler(y_t)        per completion token of row s   [S, T]
    token:     w_t = min(exp(log r_t), C)
    sequence:  w_t = min(exp(Σ_u log r_u), C)  for every token t of the row (the product of its token ratios)
    loss gradient:  Σ_t w_t · ∂ℓ_t/∂ log π_θ(y_t)        w detached (no gradient through it)

π_old is the learner's own no-gradient score of the rollout (`PreparedRollout.old_logps`; NLPO: the
policy renormalised inside its action mask, the distribution it samples from). The weight enters every
rollout loss through one code path, `reweight_gradient`, applied to the policy's per-token log-probs before
the loss: their value is unchanged (losses, metrics and clipping decisions see the same numbers) and the
gradient reaching each token's log-prob is multiplied by w_t. For a loss that is a sum of per-token terms
ℓ_t(log π_θ(y_t)) this is exactly the gradient of Σ_t w_t·ℓ_t: the surrogate and, where the loss has one,
its per-token KL penalty both weighted (TRL and verl weight the surrogate only; with β = 0 the two agree).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prefopt.settings import SettingsError, is_finite_number

__all__ = [
    "IMPORTANCE_SAMPLING",
    "check_importance_sampling",
    "importance_weights",
    "mismatch_metrics",
    "reweight_gradient",
]

# OnlineConfig.importance_sampling: off (no sampler log-probs recorded), per token, or one weight per sequence.
IMPORTANCE_SAMPLING = ("off", "token", "sequence")


def check_importance_sampling(mode: object, cap: object, pair_loss: str | None = None, recipe: Any = None) -> None:
    """Raise SettingsError (one line, naming the field and the fix) for a bad mode or cap C, or for a run whose
    loss reads no per-token log-probs of rollouts: a paired `pair_loss` on best/worst pairs, ILQL (`recipe`)."""
    if mode not in IMPORTANCE_SAMPLING:
        raise SettingsError(f"OnlineConfig.importance_sampling={mode!r}: use one of {IMPORTANCE_SAMPLING}")
    if mode != "off" and (pair_loss is not None or getattr(recipe, "q_learning", False)):
        what = f"pair_loss={pair_loss!r} scores whole pairs" if pair_loss else "ILQL trains on reference samples"
        raise SettingsError(
            f"OnlineConfig.importance_sampling={mode!r}: {what}, with no per-token policy gradient to "
            "weight; set importance_sampling='off'"
        )
    if not (is_finite_number(cap) and float(cap) >= 1):  # type: ignore[arg-type]
        raise SettingsError(
            f"OnlineConfig.importance_sampling_cap={cap!r} must be a finite number ≥ 1 (the cap C of the "
            "ratio π_old/π_sampler; TRL's default 2)"
        )


def _log_ratios(old_logps: Tensor, sampler_logps: Tensor, mask: Tensor) -> Tensor:
    """log π_old − log π_sampler [S, T] in float32, 0 outside `mask` and where the sampler gave none (NaN)."""
    log_ratio = old_logps.float() - sampler_logps.float()
    return torch.where(mask & ~torch.isnan(sampler_logps), log_ratio, torch.zeros_like(log_ratio))


def importance_weights(old_logps: Tensor, sampler_logps: Tensor, mask: Tensor, *, mode: str, cap: float) -> Tensor:
    """The detached TIS weights [S, T] (module docstring): min(ratio, C) per token or per sequence, 1 outside
    `mask`.

    Args:
        old_logps, sampler_logps: [S, T] log-probs of the sampled tokens under the learner and the sampler.
        mask: [S, T] bool, True at completion tokens.
        mode: "token" or "sequence"; cap: C ≥ 1.
    """
    log_ratio = _log_ratios(old_logps, sampler_logps, mask)
    if mode == "sequence":
        log_ratio = log_ratio.sum(1, keepdim=True).expand_as(log_ratio)
    elif mode != "token":
        raise ValueError(f"importance_weights: mode={mode!r}: use 'token' or 'sequence'")
    weights = torch.clamp(torch.exp(log_ratio), max=cap)  # exp(+large) = inf → C
    return torch.where(mask, weights, torch.ones_like(weights)).detach()


def mismatch_metrics(
    old_logps: Tensor, sampler_logps: Tensor, mask: Tensor, *, mode: str, cap: float
) -> dict[str, float]:
    """How far the sampler is from the learner on a rollout, logged each step (`is/…`):

    is/logp_diff_mean    mean_t |log π_old − log π_sampler| over the completion tokens
    is/logp_diff_max     max_t of the same
    is/ratio_max         the largest ratio before the cap (per token, or per sequence in sequence mode)
    is/ratio_min         the smallest
    is/capped_frac       share of tokens (sequences) whose ratio exceeds C
    is/weight_mean       mean weight w over the completion tokens
    """
    log_ratio = _log_ratios(old_logps, sampler_logps, mask)
    valid = mask & ~torch.isnan(sampler_logps)
    if not bool(valid.any()):
        return {"is/logp_diff_mean": 0.0, "is/logp_diff_max": 0.0, "is/ratio_max": 1.0, "is/ratio_min": 1.0,
                "is/capped_frac": 0.0, "is/weight_mean": 1.0}  # fmt: skip
    diff = log_ratio[valid].abs()
    unit = log_ratio.sum(1)[mask.any(1)] if mode == "sequence" else log_ratio[valid]  # per sequence or per token
    ratios = torch.exp(unit.double())
    weights = importance_weights(old_logps, sampler_logps, mask, mode=mode, cap=cap)
    return {
        "is/logp_diff_mean": float(diff.mean()),
        "is/logp_diff_max": float(diff.max()),
        "is/ratio_max": float(ratios.max()),
        "is/ratio_min": float(ratios.min()),
        "is/capped_frac": float((ratios > cap).double().mean()),
        "is/weight_mean": float(weights[mask].double().mean()),
    }


def reweight_gradient(policy_logps: Tensor, weights: Tensor) -> Tensor:
    """`policy_logps` [S, T] with the same values and its gradient multiplied by `weights` (detached) per token:
    sg(x) + w·(x − sg(x)). Where w = 1 the value and the gradient are bit for bit those of `policy_logps`."""
    if not policy_logps.requires_grad:
        return policy_logps
    fixed = policy_logps.detach()
    return fixed + weights.to(policy_logps.dtype) * (policy_logps - fixed)
