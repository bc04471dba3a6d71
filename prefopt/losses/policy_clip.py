"""The PPO family of `prefopt.losses.policy_gradient`: the clipped surrogate, its metrics, and `ppo`.

Notation and conventions are those of `prefopt.losses.policy_gradient` (its module docstring); the group
losses there (RLOO, GRPO, Dr. GRPO, ReMax) and in `prefopt.losses.policy_ratio` (DAPO, GSPO, CISPO) and
`prefopt.losses.policy_reinforce` (REINFORCE++) build on the surrogate and helpers defined here.

Asymmetric clipping (DAPO's clip-higher) is `clipped_surrogate(..., clip_high=ε_high)`: ρ is clipped to
[1 − ε, 1 + ε_high]. Dual-clip PPO (Ye et al. 2020, arXiv:1912.09729, Eq. 5) bounds the loss of a token
with a negative advantage, whose plain surrogate −A·ρ grows without limit in ρ, by −c·A (c > 1):

    s_t = min(max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), −c·A)   where A < 0;   unchanged where A ≥ 0

(`dual_clip`, PPO's `clip_dual` = c; off by default, as in TRL. verl's `clip_ratio_c` is 3.)
Every clip hyper-parameter of the rollout losses is named `clip_…`: clip_range, clip_range_value, clip_low,
clip_high, clip_dual.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prefopt.losses.base import LossOutput
from prefopt.losses.kinds import rollout_loss
from prefopt.registry import NON_NEGATIVE, POSITIVE, HParam, Interval, LossInputError
from prefopt.rl.kl import clamp_log_ratio
from prefopt.rl.masked import masked_mean

__all__ = ["clipped_surrogate", "dual_clip", "ppo"]

CLIP_RANGE = HParam("clip_range", 0.2, "PPO ratio clip ε: ρ is clipped to [1−ε, 1+ε]", Interval(0.0, 1.0))


def _zero(x: Tensor) -> Tensor:
    return torch.zeros((), dtype=x.dtype, device=x.device)


def clipped_surrogate(
    policy_logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_range: float,
    *,
    clip_high: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The PPO clipped surrogate per token, as a loss: max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε_high)).

    Args:
        policy_logps, old_logps: [S, T] per-token log-probs under π_θ and π_old.
        advantages: [S, T] per-token advantages, or [S, 1] broadcast over the tokens of a sequence.
        mask: [S, T] bool; padding gets log ρ = 0 so that its garbage cannot overflow exp.
        clip_range: ε, the lower clip 1 − ε (and the upper 1 + ε unless `clip_high` is given).
        clip_high: ε_high of the upper clip 1 + ε_high (DAPO's clip-higher); None = ε.
    Returns:
        (loss [S, T], log_ratio [S, T], clipped [S, T] bool — where the clipped branch is the larger),
        all 0/False at padding. ρ = exp(clamp(log ρ, ±20)) (verl's clamp, `clamp_log_ratio`): finite in
        float32, and with no gradient beyond ±20; `log_ratio` is returned unclamped, for the metrics.
    """
    log_ratio = torch.where(mask, policy_logps - old_logps, _zero(policy_logps))
    ratio = torch.exp(clamp_log_ratio(log_ratio))
    unclipped = -advantages * ratio
    upper = clip_range if clip_high is None else clip_high
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + upper)
    loss = torch.where(mask, torch.maximum(unclipped, clipped), _zero(unclipped))
    return loss, log_ratio, (clipped > unclipped) & mask


def dual_clip(token_loss: Tensor, advantages: Tensor, mask: Tensor, clip_dual: float) -> tuple[Tensor, Tensor]:
    """Dual-clip PPO (module docstring): where A < 0, the per-token loss is at most −c·A.

    Args:
        token_loss: [S, T] the clipped surrogate (`clipped_surrogate`); advantages: [S, T] or [S, 1].
        mask: [S, T] bool; clip_dual: c > 1.
    Returns:
        (loss [S, T], bound [S, T] bool — where the dual clip binds), 0/False at padding.
    """
    bound = -clip_dual * advantages
    binds = (advantages < 0) & (token_loss > bound) & mask
    return torch.where(binds, bound.expand_as(token_loss), token_loss), binds


def _policy_metrics(log_ratio: Tensor, clipped: Tensor, mask: Tensor, policy_loss: Tensor) -> dict[str, Tensor]:
    log_ratio = log_ratio.detach().float()
    return {
        "policy/clipfrac": masked_mean(clipped.float(), mask),
        "policy/approxkl": 0.5 * masked_mean(log_ratio**2, mask),
        "policy/ratio": masked_mean(clamp_log_ratio(log_ratio).exp(), mask),
        "loss/policy": policy_loss.detach().float(),
    }


def _reward_metrics(rewards: Tensor) -> dict[str, Tensor]:
    rewards = rewards.float()
    # Mean over prompts of the within-group std (0 for K = 1): how much signal the groups carry.
    spread = rewards.std(1).mean() if rewards.shape[1] > 1 else torch.zeros((), device=rewards.device)
    return {"rewards/mean": rewards.mean(), "rewards/std": spread}


def _require(name: str, value: Tensor | None, what: str) -> Tensor:
    if value is None:
        raise LossInputError(f"{name}: {what}")
    return value


@rollout_loss(
    "ppo",
    needs_reference=False,
    paper=(
        "Schulman et al. 2017, arXiv:1707.06347 (Eq. 7, 9); Ziegler et al. 2019, arXiv:1909.08593; "
        "defaults ε = 0.2, ε_v = 0.2, c_vf = 0.1 from TRL PPOConfig (cliprange, cliprange_value, vf_coef); "
        "dual clip: Ye et al. 2020, arXiv:1912.09729 (Eq. 5), off by default"
    ),
    formula=(
        "mean_t max(−A·ρ, −A·clip(ρ,1±ε)) [min with −c·A where A < 0: dual clip] "
        "+ c_vf·½·mean_t max((V−G)², (clip(V,V_old±ε_v)−G)²)"
    ),
    hparams=[
        CLIP_RANGE,
        HParam("clip_range_value", 0.2, "value clip ε_v: V is kept within V_old ± ε_v", POSITIVE),
        HParam("vf_coef", 0.1, "weight c_vf of the value loss in the total", NON_NEGATIVE),
        HParam(
            "clip_dual",
            None,
            "dual-clip c > 1 (Ye et al. 2020, arXiv:1912.09729): a token with A < 0 loses at most −c·A; None = off",
            Interval(1.0, math.inf),
        ),
    ],
    # One sample per prompt and 4 optimisation passes over each rollout (Ziegler et al. 2019; TRL PPOConfig).
    online_defaults={"num_samples": 1, "min_samples": 1, "epochs": 4, "token_mean": 1},
)
def ppo(
    policy_logps: Tensor,
    old_logps: Tensor,
    completion_mask: Tensor,
    *,
    advantages: Tensor | None,
    values: Tensor | None,
    old_values: Tensor | None,
    returns: Tensor | None,
    token_entropy: Tensor | None,
    clip_range: float,
    clip_range_value: float,
    vf_coef: float,
    clip_dual: float | None,
) -> LossOutput:
    """PPO for language models: clipped policy loss plus clipped value loss, token means over the batch.

    The KL penalty to the reference is not here: it is folded into the per-token rewards before GAE
    (`prefopt.rl.kl_penalized_rewards`, then `prefopt.rl.gae`, then `masked_whiten` on advantages).
    `loss` is the token-level mean over every valid token of the batch (TRL), L_pg + c_vf·L_vf, not the
    mean of `per_example`, which holds each sequence's own token mean of the same per-token loss.

    Args:
        policy_logps, old_logps, completion_mask: [S, T] (module docstring).
        advantages: [S, T] per-token advantages (GAE, usually whitened); required.
        values: [S, T] the value head's current outputs V (differentiable); None = no value loss.
        old_values: [S, T] values at rollout time V_old; returns: [S, T] targets G = A + V_old (from GAE).
        token_entropy: [S, T] per-token entropy of π_θ, logged as `entropy` when given.
        clip_range, clip_range_value, vf_coef: ε, ε_v, c_vf; clip_dual: c of dual-clip PPO (None = off).
    """
    mask = completion_mask
    advantages = _require("ppo", advantages, "advantages [S, T] are required (GAE over the rollout, prefopt.rl.gae).")
    pg_token, log_ratio, clipped = clipped_surrogate(policy_logps, old_logps, advantages, mask, clip_range)
    dual: dict[str, Tensor] = {}
    if clip_dual is not None:
        pg_token, binds = dual_clip(pg_token, advantages, mask, clip_dual)
        dual["policy/dual_clipfrac"] = masked_mean(binds.float(), mask)
    pg_loss = masked_mean(pg_token, mask)
    metrics = {**_policy_metrics(log_ratio, clipped, mask, pg_loss), **dual}
    token_loss = pg_token
    loss = pg_loss
    if values is not None:
        returns = _require("ppo", returns, "values were given, so returns [S, T] (GAE targets) are required too.")
        old_values = _require("ppo", old_values, "values were given, so old_values [S, T] (rollout values) are too.")
        clipped_values = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
        unclipped_sq = (values - returns) ** 2
        clipped_sq = (clipped_values - returns) ** 2
        vf_token = torch.where(mask, 0.5 * torch.maximum(unclipped_sq, clipped_sq), _zero(unclipped_sq))
        vf_loss = masked_mean(vf_token, mask)
        token_loss = pg_token + vf_coef * vf_token
        loss = pg_loss + vf_coef * vf_loss
        metrics["val/clipfrac"] = masked_mean((clipped_sq > unclipped_sq).float(), mask)
        metrics["loss/value"] = vf_loss.detach().float()
    if token_entropy is not None:
        metrics["entropy"] = masked_mean(token_entropy.detach().float(), mask)
    return LossOutput(loss, masked_mean(token_loss, mask, dim=1), metrics)
