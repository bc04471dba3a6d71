"""Three 2025 reworkings of the importance ratio in the group surrogate: DAPO, GSPO and CISPO.

Notation as `prefopt.losses.policy_gradient` (rows group-major, s = k·B + b; per-token [S, T]; rewards [B, K]):

    Â_i = (r_i − mean_j r_j)/(std_j r_j + 1e-4)   group-normalised advantage of sample i (as `grpo`)
    ρ_t = exp(log π_θ − log π_old)                 per-token importance ratio (log-ratio clamped to ±20)
    N   = Σ_i |o_i|                                completion tokens of the batch the call is given

    dapo   L = (1/N) Σ_i Σ_t max(−Â_i·ρ_t, −Â_i·clip(ρ_t, 1−ε_low, 1+ε_high))
           Yu et al. 2025, arXiv:2503.14476, Eq. 8: clip-higher (ε_low = 0.2, ε_high = 0.28), one token-level
           mean over the batch (every token weighs the same, whatever its completion's length), no KL.
    gspo   L = (1/S) Σ_i max(−Â_i·s_i, −Â_i·clip(s_i, 1−ε_low, 1+ε_high)),  s_i = exp((1/|o_i|) Σ_t log ρ_t)
           Zheng et al. 2025, arXiv:2507.18071, Eq. 5–7: one length-normalised ratio per sequence, clipped per
           sequence, with the paper's ranges ε_low = 3e-4, ε_high = 4e-4 (§5.1); no KL.
    cispo  L = −(1/N) Σ_i Σ_t sg(clip(ρ_t, 1−ε_low, 1+ε_high))·Â_i·log π_θ(o_{i,t})
           MiniMax 2025, MiniMax-M1, arXiv:2506.13585, Eq. 4–5: the clipped ratio is a stop-gradient weight
           on log π, so a token outside the clip range keeps its gradient (scaled by the bound) instead of
           losing it as in PPO's min; no lower bound (the paper sets ε_low "to a large value"), token-level
           mean as DAPO; no KL.

What differs from `grpo` is where the ratio is clipped and how token losses are averaged: GRPO clips each
ρ_t at 1 ± 0.2 and averages each sequence's tokens first (1/|o_i|), DAPO widens the upper bound and averages
all tokens of the batch at once, GSPO clips one geometric-mean ratio per sequence (so its ranges are ~1000×
narrower), and CISPO never zeroes a token's gradient. On-policy (old_logps=None) ρ = s = 1 and all three
give the REINFORCE gradient −Â_i·∇log π_θ, DAPO and CISPO weighted per token by 1/N, GSPO per sequence by
1/(S·|o_i|).

`per_example` of DAPO and CISPO is each sequence's token sum scaled by S/N, so that its mean is the loss.
The token-level mean N is taken over the call's rows: in the online loop, over each minibatch (one optimiser
step), which is the whole rollout unless `num_minibatches` > 1. DAPO's dynamic sampling and overlong reward
shaping are options of the online loop (`OnlineConfig.dynamic_sampling`, `overlong_shaping`), on by default
for `dapo` through its `online_defaults`: a group whose rewards are all equal has Â = 0, so it adds tokens to
N but nothing to the sum, which is why the paper drops such groups.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prefopt.losses.base import LossOutput
from prefopt.losses.kinds import rollout_loss
from prefopt.losses.policy_clip import _policy_metrics, _reward_metrics, _zero, clipped_surrogate
from prefopt.losses.policy_gradient import GROUP_STD_EPS
from prefopt.registry import POSITIVE, HParam, Interval
from prefopt.rl.baselines import check_grouped_rewards, group_normalized_advantages, grouped_to_sequences
from prefopt.rl.kl import clamp_log_ratio
from prefopt.rl.masked import masked_mean, masked_sum

__all__ = ["dapo", "gspo", "cispo", "token_level_mean"]

UNIT = Interval(0.0, 1.0)


def token_level_mean(token_loss: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(Σ_i Σ_t ℓ_{i,t} / N, per-sequence Σ_t ℓ_{i,t}·S/N [S]): the token-level mean over the batch (DAPO's
    normalisation) and each sequence's share of it, scaled so that per_example.mean() is the loss. N = Σ mask,
    at least 1 (an empty batch gives 0)."""
    count = mask.sum().clamp(min=1).to(token_loss.dtype)
    sums = masked_sum(token_loss, mask, dim=1)  # [S]
    return sums.sum() / count, sums * (mask.shape[0] / count)


def _group_advantages(rewards: Tensor | None, rows: int, where: str) -> tuple[Tensor, Tensor]:
    """(rewards [B, K] checked, Â [S] group-normalised as GRPO's, std + 1e-4)."""
    grouped = check_grouped_rewards(rewards, rows, where=where, min_k=2)
    return grouped, grouped_to_sequences(group_normalized_advantages(grouped, eps=GROUP_STD_EPS))


@rollout_loss(
    "dapo",
    needs_reference=False,
    paper=(
        "Yu et al. 2025, DAPO: An Open-Source LLM Reinforcement Learning System at Scale, arXiv:2503.14476 (Eq. 8; "
        "clip-higher ε_low = 0.2, ε_high = 0.28; token-level loss; no KL; dynamic sampling and overlong reward "
        "shaping are online-loop options, on by default)"
    ),
    formula="(1/Σ_i|o_i|) Σ_i Σ_t max(−Â_i·ρ_t, −Â_i·clip(ρ_t, 1−ε_low, 1+ε_high)), Â_i = (r_i − mean)/(std + 1e-4)",
    hparams=[
        HParam("clip_low", 0.2, "ε_low: ρ is clipped below at 1 − ε_low", UNIT, aliases=("epsilon",)),  # TRL
        HParam(
            "clip_high",
            0.28,
            "ε_high: ρ is clipped above at 1 + ε_high (clip-higher)",
            POSITIVE,
            aliases=("epsilon_high",),
        ),
    ],
    online_defaults={"dynamic_sampling": 1, "overlong_shaping": 1, "token_mean": 1},
)
def dapo(
    policy_logps: Tensor,
    old_logps: Tensor,
    completion_mask: Tensor,
    *,
    rewards: Tensor | None,
    clip_low: float,
    clip_high: float,
) -> LossOutput:
    """DAPO: GRPO's group advantages with a wider upper clip, one token-level mean over the batch, no KL.

    Args:
        policy_logps, old_logps, completion_mask: [S, T], S = K·B (module docstring).
        rewards: [B, K] sequence rewards, K ≥ 2 (after the loop's overlong shaping, when on).
        clip_low, clip_high: ε_low and ε_high.
    """
    grouped, advantages = _group_advantages(rewards, policy_logps.shape[0], "dapo")
    pg_token, log_ratio, clipped = clipped_surrogate(
        policy_logps,
        old_logps,
        advantages.unsqueeze(1).to(policy_logps.dtype),
        completion_mask,
        clip_low,
        clip_high=clip_high,
    )
    loss, per_example = token_level_mean(pg_token, completion_mask)
    metrics = _policy_metrics(log_ratio, clipped, completion_mask, loss)
    return LossOutput(loss, per_example, {**metrics, **_reward_metrics(grouped)})


@rollout_loss(
    "gspo",
    needs_reference=False,
    paper=(
        "Zheng et al. 2025, Group Sequence Policy Optimization, arXiv:2507.18071 (Eq. 5–7; clipping ranges 3e-4 "
        "and 4e-4, §5.1; group-normalised advantages; no KL)"
    ),
    formula="mean_i max(−Â_i·s_i, −Â_i·clip(s_i, 1−ε_low, 1+ε_high)), s_i = exp(mean_t log(π_θ/π_old)), Â as grpo",
    hparams=[
        HParam("clip_low", 3e-4, "ε_low: the sequence ratio s_i is clipped below at 1 − ε_low", UNIT),
        HParam("clip_high", 4e-4, "ε_high: the sequence ratio s_i is clipped above at 1 + ε_high", POSITIVE),
    ],
)
def gspo(
    policy_logps: Tensor,
    old_logps: Tensor,
    completion_mask: Tensor,
    *,
    rewards: Tensor | None,
    clip_low: float,
    clip_high: float,
) -> LossOutput:
    """GSPO: one importance ratio per sequence, the geometric mean of its token ratios, clipped per sequence.

    The ratio's gradient is s_i·(1/|o_i|) Σ_t ∇log π_θ(o_{i,t}): every token of a sequence gets the same weight,
    and a clipped sequence gives none. An empty completion contributes 0. `policy/clipfrac` is the fraction of
    completion tokens in clipped sequences (the paper's "fraction of clipped tokens").

    Args:
        policy_logps, old_logps, completion_mask: [S, T], S = K·B.
        rewards: [B, K] sequence rewards, K ≥ 2.
        clip_low, clip_high: ε_low and ε_high of the sequence ratio.
    """
    mask = completion_mask
    grouped, advantages = _group_advantages(rewards, policy_logps.shape[0], "gspo")
    advantages = advantages.to(policy_logps.dtype)
    log_ratio = torch.where(mask, policy_logps - old_logps, _zero(policy_logps))  # [S, T]
    lengths = mask.sum(1)  # [S]
    sequence_log_ratio = masked_sum(log_ratio, mask, dim=1) / lengths.clamp(min=1).to(log_ratio.dtype)  # [S]
    ratio = torch.exp(clamp_log_ratio(sequence_log_ratio))  # s_i
    unclipped = -advantages * ratio
    clipped_loss = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_example = torch.where(lengths > 0, torch.maximum(unclipped, clipped_loss), _zero(unclipped))  # [S]
    loss = per_example.mean()
    clipped = (clipped_loss > unclipped) & (lengths > 0)  # [S]
    metrics = _policy_metrics(log_ratio, clipped.unsqueeze(1) & mask, mask, loss)
    metrics["policy/sequence_ratio"] = masked_mean(ratio.detach().float(), lengths > 0)
    return LossOutput(loss, per_example, {**metrics, **_reward_metrics(grouped)})


@rollout_loss(
    "cispo",
    needs_reference=False,
    paper=(
        "MiniMax 2025, MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention, arXiv:2506.13585 "
        "(CISPO, Eq. 4–5: no lower bound on the IS weight; the paper tunes ε_high without stating it: 0.28 is "
        "DAPO's, the baseline it is compared with); group-normalised advantages, token-level loss, no KL"
    ),
    formula="−(1/Σ_i|o_i|) Σ_i Σ_t sg(clip(ρ_t, 1−ε_low, 1+ε_high))·Â_i·log π_θ(o_{i,t}), Â as grpo",
    hparams=[
        HParam(
            "clip_low",
            None,
            "ε_low: the IS weight is clipped below at 1 − ε_low (None = no lower bound, the paper)",
            Interval(0.0, math.inf),
        ),
        HParam("clip_high", 0.28, "ε_high: the IS weight is clipped above at 1 + ε_high", POSITIVE),
    ],
    online_defaults={"token_mean": 1},  # one mean over the batch's tokens (`token_level_mean`)
)
def cispo(
    policy_logps: Tensor,
    old_logps: Tensor,
    completion_mask: Tensor,
    *,
    rewards: Tensor | None,
    clip_low: float | None,
    clip_high: float,
) -> LossOutput:
    """CISPO: REINFORCE on log π weighted per token by the clipped, stop-gradient importance ratio.

    The gradient of token t is −sg(ρ̂_t)·Â_i·∇log π_θ/N for every token, clipped or not; PPO's min instead
    gives a token whose ratio left the clip range no gradient at all. The loss value is the paper's surrogate
    (it scales with log π), not an estimate of the objective. `policy/clipfrac` is the fraction of tokens whose
    weight was clipped.

    Args:
        policy_logps, old_logps, completion_mask: [S, T], S = K·B.
        rewards: [B, K] sequence rewards, K ≥ 2.
        clip_low: ε_low (None: no lower bound); clip_high: ε_high.
    """
    mask = completion_mask
    grouped, advantages = _group_advantages(rewards, policy_logps.shape[0], "cispo")
    log_ratio = torch.where(mask, policy_logps - old_logps, _zero(policy_logps))
    ratio = torch.exp(clamp_log_ratio(log_ratio.detach()))
    lower = 0.0 if clip_low is None else max(1.0 - clip_low, 0.0)
    weight = ratio.clamp(lower, 1.0 + clip_high)  # sg(ρ̂_t): computed from detached log-probs
    token_loss = -weight * advantages.unsqueeze(1).to(weight.dtype) * policy_logps
    token_loss = torch.where(mask, token_loss, _zero(token_loss))
    loss, per_example = token_level_mean(token_loss, mask)
    clipped = (weight != ratio) & mask
    metrics = _policy_metrics(log_ratio, clipped, mask, loss)
    return LossOutput(loss, per_example, {**metrics, **_reward_metrics(grouped)})
