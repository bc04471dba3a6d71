"""REINFORCE++ (Hu 2025, arXiv:2501.03262): critic-free PPO with KL-shaped returns normalised over the global batch.

Notation as `prefopt.losses.policy_gradient` (rows group-major, s = k·B + b; per-token [S, T]; rewards [B, K]):

    r'_i   = r_i                          baseline="none"  (REINFORCE++, any K ≥ 1)
           = r_i − mean_j r_j             baseline="group" (REINFORCE++-baseline, K ≥ 2: the group mean)
    k1_t   = log π_old(o_t) − log π_ref(o_t)              per-token KL of the rollout (no gradient), Eq. 9
    A_t    = r'_i − β·Σ_{u ≥ t} k1_u                      the return of r_u = −β·k1_u + 1[u = last]·r'_i, Eq. 8
    Â_t    = (A_t − mean(A))/√(var(A) + 1e-8)             over EVERY completion token of the global batch, Eq. 10
    L      = (1/N) Σ_i Σ_t max(−Â_t·ρ_t, −Â_t·clip(ρ_t, 1−ε, 1+ε))      PPO's clipped surrogate, token mean

The normalisation is the paper's point: GRPO's per-prompt std is a biased, noisy estimate; REINFORCE++
divides by the standard deviation of the whole batch (whose bias vanishes as it grows). The statistic must
therefore be that of the global batch, not of one minibatch: the loss declares `rollout_inputs={"advantages":
…}`, so the online loop computes Â once over the whole rollout (`reinforce_pp_advantages`) and passes each
minibatch its rows. Called directly without `advantages`, the loss computes Â over the rows it is given, which
is the global batch when it is given the whole rollout. The mean and unbiased variance are those of
`prefopt.rl.masked_whiten` (TRL's, as prefopt's PPO whitening; OpenRLHF divides by the biased variance).

Defaults: β = 0.01 (OpenRLHF's `init_kl_coef`, the paper's implementation), ε = 0.2, γ = 1 (the return is an
undiscounted sum, as Eq. 8), baseline "none". The KL enters the return with π_old, not π_θ, so it carries no
gradient; the KL estimator is k1 as in the paper (OpenRLHF's default).
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefopt.loss_state import RolloutBatch
from prefopt.losses.base import LossOutput
from prefopt.losses.kinds import rollout_loss
from prefopt.losses.policy_clip import CLIP_RANGE, _policy_metrics, _reward_metrics, _zero, clipped_surrogate
from prefopt.registry import NON_NEGATIVE, HParam, LossInputError
from prefopt.rl.baselines import check_grouped_rewards, grouped_to_sequences
from prefopt.rl.kl import kl_k1
from prefopt.rl.masked import masked_mean, masked_sum, masked_whiten

__all__ = ["reinforce_pp", "reinforce_pp_advantages"]

BASELINES = ("none", "group")


def reinforce_pp_advantages(
    rewards: Tensor,
    old_logps: Tensor,
    ref_logps: Tensor | None,
    mask: Tensor,
    *,
    beta: float,
    baseline: str,
) -> Tensor:
    """REINFORCE++'s advantages Â [S, T] (module docstring), normalised over every valid token of `mask`.

    Args:
        rewards: [B, K] sequence rewards (K ≥ 2 with baseline="group").
        old_logps, ref_logps: [S, T] per-token log-probs of the behaviour policy and the reference (ref_logps
            may be None only when β = 0).
        mask: [S, T] bool, one contiguous completion per row (any layout: the prompt may come first).
        beta: β ≥ 0 of the per-token KL in the return; baseline: "none" or "group".
    Returns:
        Â, 0 at padding (and everywhere when the batch has fewer than 2 completion tokens).
    """
    grouped = check_grouped_rewards(rewards, mask.shape[0], where="reinforce_pp", min_k=2 if baseline == "group" else 1)
    grouped = grouped.detach().to(old_logps.dtype)
    if baseline == "group":
        grouped = grouped - grouped.mean(1, keepdim=True)
    returns = grouped_to_sequences(grouped).unsqueeze(1).expand(mask.shape)  # r'_i at every token of row i
    if beta > 0:
        if ref_logps is None:
            raise LossInputError("reinforce_pp_advantages: beta > 0 needs ref_logps [S, T] (or pass beta=0)")
        k1 = torch.where(mask, kl_k1(old_logps.detach(), ref_logps.detach()), _zero(old_logps))
        to_go = k1.flip(1).cumsum(1).flip(1)  # Σ_{u ≥ t} k1_u within each row (0 beyond its completion)
        returns = returns - beta * to_go
    if int(mask.sum()) < 2:  # no variance to normalise by; nothing to learn from one token either
        return torch.zeros_like(returns)
    return masked_whiten(returns, mask)


def _global_advantages(batch: RolloutBatch) -> Tensor:
    """The online loop's provider (`rollout_inputs`): Â over the whole rollout, before its minibatches."""
    return reinforce_pp_advantages(
        batch.rewards,
        batch.old_logps,
        batch.ref_logps,
        batch.completion_mask,
        beta=float(batch.hparams["beta"]),
        baseline=str(batch.hparams["baseline"]),
    )


@rollout_loss(
    "reinforce_pp",
    needs_reference=True,
    paper=(
        "Hu 2025, REINFORCE++: Stabilizing Critic-Free Policy Optimization with Global Normalization, "
        "arXiv:2501.03262 (Eq. 8–10; REINFORCE++-baseline: the group mean subtracted first); β = 0.01 "
        "(OpenRLHF init_kl_coef), ε = 0.2"
    ),
    formula=(
        "mean_t max(−Â_t·ρ_t, −Â_t·clip(ρ_t,1±ε)), Â = whiten over the global batch of r' − β·Σ_{u≥t} k1_u, "
        "r' = r (baseline none) or r − mean_group r (group)"
    ),
    hparams=[
        HParam("beta", 0.01, "coefficient β of the per-token k1 KL in the return (0 = no reference)", NON_NEGATIVE),
        CLIP_RANGE,
        HParam(
            "baseline",
            "none",
            "'none' (REINFORCE++, K ≥ 1) or 'group' (REINFORCE++-baseline: subtract each prompt's mean reward, K ≥ 2)",
            choices=BASELINES,
        ),
    ],
    # REINFORCE++ samples k ≥ 1 per prompt (the baseline variant needs 2); its loss is a mean over the batch's tokens
    online_defaults={"min_samples": 1, "token_mean": 1},
    rollout_inputs={"advantages": _global_advantages},
)
def reinforce_pp(
    policy_logps: Tensor,
    old_logps: Tensor,
    completion_mask: Tensor,
    *,
    rewards: Tensor | None,
    ref_logps: Tensor | None,
    advantages: Tensor | None,
    beta: float,
    clip_range: float,
    baseline: str,
) -> LossOutput:
    """REINFORCE++: PPO's clipped surrogate on KL-shaped returns whitened over the global batch, no critic.

    Args:
        policy_logps, old_logps, completion_mask: [S, T], S = K·B (module docstring).
        rewards: [B, K] sequence rewards (also logged as rewards/mean, rewards/std).
        ref_logps: [S, T] reference log-probs (required when β > 0).
        advantages: [S, T] Â computed over the global batch (the online loop passes them; None: computed
            from rewards over this call's rows, `reinforce_pp_advantages`).
        beta, clip_range, baseline: β, ε and the baseline.
    """
    mask = completion_mask
    grouped = check_grouped_rewards(
        rewards, policy_logps.shape[0], where="reinforce_pp", min_k=2 if baseline == "group" else 1
    )
    metrics: dict[str, Tensor] = {}
    if advantages is None:
        advantages = reinforce_pp_advantages(grouped, old_logps, ref_logps, mask, beta=beta, baseline=baseline)
    if ref_logps is not None:
        sequence_kl = masked_sum(torch.where(mask, kl_k1(old_logps, ref_logps), _zero(old_logps)), mask, dim=1)
        metrics["objective/kl"] = sequence_kl.float().mean()
    pg_token, log_ratio, clipped = clipped_surrogate(
        policy_logps, old_logps, advantages.to(policy_logps.dtype), mask, clip_range
    )
    loss = masked_mean(pg_token, mask)
    metrics.update(_policy_metrics(log_ratio, clipped, mask, loss))
    return LossOutput(loss, masked_mean(pg_token, mask, dim=1), {**metrics, **_reward_metrics(grouped)})
