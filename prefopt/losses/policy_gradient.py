"""Policy-gradient losses for online RLHF: PPO, RLOO, GRPO, Dr. GRPO and ReMax.

Notation (one row per sampled completion, right-padded; S sequences, T token positions):

    policy_logps   [S, T]  log π_θ(y_t | x, y_<t), differentiable
    old_logps      [S, T]  the same under the behaviour policy π_old that sampled the rollout
    completion_mask[S, T]  bool, True at completion tokens
    ρ_t = exp(log π_θ − log π_old)                         importance ratio per token
    s_t(A) = max(−A·ρ_t, −A·clip(ρ_t, 1−ε, 1+ε))           clipped surrogate (Schulman et al. 2017,
                                                           arXiv:1707.06347, Eq. 7, negated to a loss)

Group losses take `rewards` [B, K] (K samples of each of B prompts); row s = k·B + b of the per-token
tensors is sample k of prompt b (`prefopt.rl.baselines`). They differ in the advantage and in how
token losses are reduced:

    ppo       A_t from GAE (per token), loss = token mean over the batch of s_t + c_vf·½·max((V−G)²,
              (clip(V, V_old±ε_v)−G)²)                     Ziegler et al. 2019; TRL PPO
    rloo      A_i = R_i − mean_{j≠i} R_j, R_i = r_i − β Σ_t k1_t;  loss_i = Σ_t s_t (REINFORCE on log π(y|x))
                                                           Ahmadian et al. 2024, arXiv:2402.14740
    grpo      A_i = (r_i − mean)/(std + 1e-4);  loss_i = (1/|o_i|) Σ_t [s_t + β·k3_t]
                                                           Shao et al. 2024, arXiv:2402.03300, Eq. 3–4
    dr_grpo   A_i = r_i − mean;  loss_i = (1/L_max) Σ_t [s_t + β·k3_t], L_max = max_new_tokens (required)
                                                           Liu et al. 2025, arXiv:2503.20783
    remax     A_i = r_i − r(x, ȳ_greedy);  loss_i = Σ_t s_t  Li et al. 2023, arXiv:2310.10505

The loss of a group method is the mean of loss_i over the S sequences. With old_logps = None (one
update per rollout, as in the GRPO paper and ReMax) ρ = 1 with gradient ∇log π_θ, so s_t reduces to
the REINFORCE term −A·log π_θ(y_t) in value of its gradient. Before every exp the log-ratio is clamped
to ±20 (verl's convention, `prefopt.rl.kl.clamp_log_ratio`), so ρ and k3 stay finite in float32 and no
overflow times a zero weight becomes a NaN gradient; a β of 0 leaves the KL term out of the loss
entirely. RLOO and ReMax clip per token rather than
on the sequence ratio exp(Σ_t log ρ_t) of TRL's older RLOO: the two agree on-policy, and the per-token
ratio cannot overflow for long sequences. Metrics are detached scalars: policy/clipfrac (fraction of
valid tokens where the clipped branch is active), policy/approxkl (½·mean (log ρ)², TRL), policy/ratio,
loss/policy, and per loss val/clipfrac, loss/value, entropy, kl (token-mean k3 to the reference),
objective/kl (mean sequence Σ_t k1 of the rollout, RLOO), rewards/mean, rewards/std.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefopt.losses.base import LossOutput
from prefopt.losses.kinds import rollout_loss
from prefopt.losses.policy_clip import (
    CLIP_RANGE,
    _policy_metrics,
    _require,
    _reward_metrics,
    _zero,
    clipped_surrogate,
    ppo,
)
from prefopt.registry import NON_NEGATIVE, POSITIVE, HParam, LossInputError
from prefopt.rl.baselines import (
    check_grouped_rewards,
    greedy_baseline_advantages,
    group_normalized_advantages,
    grouped_to_sequences,
    leave_one_out_advantages,
    sequences_to_grouped,
)
from prefopt.rl.kl import kl_k1, kl_k3
from prefopt.rl.masked import masked_mean, masked_sum

__all__ = ["clipped_surrogate", "ppo", "rloo", "grpo", "dr_grpo", "remax"]

# GRPO's advantage denominator std + eps: TRL's value; the paper states none.
GROUP_STD_EPS = 1e-4


def _group_loss(
    policy_logps: Tensor,
    old_logps: Tensor,
    mask: Tensor,
    advantages: Tensor,
    clip_range: float,
    *,
    kl_token: Tensor | None = None,
    beta: float = 0.0,
    normaliser: str | float = "sum",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-sequence losses [S] of the clipped surrogate with sequence advantages [S] (+ β·KL per token).

    normaliser: "sum" (Σ_t, REINFORCE), "mean" (1/|o_i| Σ_t, GRPO) or a number L (1/L Σ_t, Dr. GRPO).
    """
    pg_token, log_ratio, clipped = clipped_surrogate(
        policy_logps, old_logps, advantages.unsqueeze(1).to(policy_logps.dtype), mask, clip_range
    )
    # β = 0 leaves the KL out of the loss entirely (a reference, when given, is still logged as `kl`).
    token_loss = pg_token if kl_token is None or beta == 0 else pg_token + beta * kl_token
    if normaliser == "mean":
        per_example = masked_mean(token_loss, mask, dim=1)
    else:
        per_example = masked_sum(token_loss, mask, dim=1)
        if not isinstance(normaliser, str):
            per_example = per_example / normaliser
    metrics = _policy_metrics(log_ratio, clipped, mask, masked_mean(pg_token, mask))
    if kl_token is not None:
        metrics["kl"] = masked_mean(kl_token.detach().float(), mask)
    return per_example, metrics


def _k3_to_reference(policy_logps: Tensor, ref_logps: Tensor | None, mask: Tensor, *, beta: float) -> Tensor | None:
    """Per-token k3 KL(π_θ‖π_ref) [S, T] (0 at padding), or None without a reference (only when β = 0).
    With β = 0 it is only logged, so it is computed off the graph."""
    if ref_logps is None:
        return None
    if beta == 0:
        policy_logps = policy_logps.detach()
    safe_ref = torch.where(mask, ref_logps, policy_logps.detach())  # padding: u = 0, k3 = 0
    return torch.where(mask, kl_k3(policy_logps, safe_ref), _zero(policy_logps))


@rollout_loss(
    "rloo",
    needs_reference=True,
    paper=(
        "Ahmadian et al. 2024, Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human "
        "Feedback in LLMs, arXiv:2402.14740 (RLOO; Kool et al. 2019); β = 0.03 from the TRL RLOO index"
    ),
    formula="mean_i Σ_t max(−A_i·ρ_t, −A_i·clip(ρ_t,1±ε)), A_i = R_i − mean_{j≠i} R_j, R_i = r_i − β·Σ_t k1_t",
    hparams=[
        HParam("beta", 0.03, "KL coefficient β of the sequence reward R = r − β·Σ_t k1", NON_NEGATIVE),
        CLIP_RANGE,
    ],
)
def rloo(
    policy_logps: Tensor,
    old_logps: Tensor,
    completion_mask: Tensor,
    *,
    rewards: Tensor | None,
    ref_logps: Tensor | None,
    beta: float,
    clip_range: float,
) -> LossOutput:
    """RLOO: REINFORCE on the sequence log-prob with the leave-one-out mean of the other K − 1 samples.

    The KL penalty enters the reward, R_i = r_i − β·Σ_t (log π_old − log π_ref), computed from the
    rollout (no gradient), before the baseline, as in the paper.

    Args:
        policy_logps, old_logps, completion_mask: [S, T], S = K·B (module docstring).
        rewards: [B, K] sequence rewards, K ≥ 2.
        ref_logps: [S, T] reference log-probs (required when β > 0).
        beta, clip_range: β and ε.
    """
    mask = completion_mask
    grouped = check_grouped_rewards(rewards, policy_logps.shape[0], where="rloo", min_k=2)
    shaped = grouped_to_sequences(grouped)  # [S]
    metrics: dict[str, Tensor] = {}
    if ref_logps is not None and beta > 0:
        sequence_kl = masked_sum(kl_k1(old_logps, ref_logps), mask, dim=1)  # [S]
        shaped = shaped - beta * sequence_kl.to(shaped.dtype)
        metrics["objective/kl"] = sequence_kl.float().mean()
    advantages = grouped_to_sequences(leave_one_out_advantages(sequences_to_grouped(shaped, grouped.shape[1])))
    per_example, policy_metrics = _group_loss(policy_logps, old_logps, mask, advantages, clip_range)
    return LossOutput(per_example.mean(), per_example, {**policy_metrics, **metrics, **_reward_metrics(grouped)})


@rollout_loss(
    "grpo",
    needs_reference=True,
    paper=(
        "Shao et al. 2024, DeepSeekMath, arXiv:2402.03300 (Eq. 3–4, outcome supervision §4.1.2; β = 0.04, "
        "one update per exploration stage); std + 1e-4 as TRL"
    ),
    formula="mean_i (1/|o_i|) Σ_t [max(−Â_i·ρ_t, −Â_i·clip(ρ_t,1±ε)) + β·k3_t], Â_i = (r_i − mean)/(std + 1e-4)",
    hparams=[HParam("beta", 0.04, "coefficient β of the per-token k3 KL to the reference", NON_NEGATIVE), CLIP_RANGE],
)
def grpo(
    policy_logps: Tensor,
    old_logps: Tensor,
    completion_mask: Tensor,
    *,
    rewards: Tensor | None,
    ref_logps: Tensor | None,
    beta: float,
    clip_range: float,
) -> LossOutput:
    """GRPO: PPO's clipped surrogate with group-normalised advantages and a per-token k3 KL, no critic.

    Each sequence's token losses are averaged over its own length (1/|o_i|), then over the S
    sequences. k3 uses the current policy (differentiable): D_t = π_ref/π_θ − log(π_ref/π_θ) − 1.

    Args:
        policy_logps, old_logps, completion_mask: [S, T], S = K·B.
        rewards: [B, K] sequence rewards, K ≥ 2.
        ref_logps: [S, T] reference log-probs (required when β > 0).
        beta, clip_range: β and ε.
    """
    grouped = check_grouped_rewards(rewards, policy_logps.shape[0], where="grpo", min_k=2)
    advantages = grouped_to_sequences(group_normalized_advantages(grouped, eps=GROUP_STD_EPS))
    kl_token = _k3_to_reference(policy_logps, ref_logps, completion_mask, beta=beta)
    per_example, metrics = _group_loss(
        policy_logps,
        old_logps,
        completion_mask,
        advantages,
        clip_range,
        kl_token=kl_token,
        beta=beta,
        normaliser="mean",
    )
    return LossOutput(per_example.mean(), per_example, {**metrics, **_reward_metrics(grouped)})


@rollout_loss(
    "dr_grpo",
    needs_reference=False,
    paper=(
        "Liu et al. 2025, Understanding R1-Zero-Like Training: A Critical Perspective, arXiv:2503.20783 "
        "(Dr. GRPO: no std scaling, no 1/|o_i|; constant normaliser as TRL loss_type='dr_grpo'; β = 0 as TRL)"
    ),
    formula="mean_i (1/L_max) Σ_t [max(−Â_i·ρ_t, −Â_i·clip(ρ_t,1±ε)) + β·k3_t], Â_i = r_i − mean",
    hparams=[
        HParam("beta", 0.0, "coefficient β of the per-token k3 KL to the reference (0 = no reference)", NON_NEGATIVE),
        CLIP_RANGE,
        HParam(
            "max_length",
            None,
            "constant L_max dividing each sequence's token sum: required, the generation limit max_new_tokens "
            "(the online loop passes it)",
            POSITIVE,
        ),
    ],
)
def dr_grpo(
    policy_logps: Tensor,
    old_logps: Tensor,
    completion_mask: Tensor,
    *,
    rewards: Tensor | None,
    ref_logps: Tensor | None,
    beta: float,
    clip_range: float,
    max_length: int | None,
) -> LossOutput:
    """Dr. GRPO ("GRPO done right"): mean-centred advantages and a length-independent token sum.

    Dividing by a constant instead of |o_i| removes GRPO's preference for long wrong answers and short
    right ones; dropping the std removes its up-weighting of near-solved and near-failed prompts.
    `max_length` is required: the generation limit (max_new_tokens), the same in every batch (the online loop
    passes it). The batch's width T is not a default: it changes from batch to batch, and in the rollout's
    [S, T] layout it counts prompt columns too, so it would scale each batch's update by its longest prompt
    and completion and bring back part of the length bias Dr. GRPO removes.

    Args:
        policy_logps, old_logps, completion_mask: [S, T], S = K·B.
        rewards: [B, K] sequence rewards, K ≥ 2.
        ref_logps: [S, T] reference log-probs (required when β > 0).
        beta, clip_range: β and ε; max_length: L_max ≥ the longest completion (required).
    """
    grouped = check_grouped_rewards(rewards, policy_logps.shape[0], where="dr_grpo", min_k=2)
    if max_length is None:
        raise LossInputError(
            "dr_grpo: max_length is required, the constant L_max that divides every completion's token sum: pass "
            "the generation limit (max_length=max_new_tokens), the same in every batch; the online loop passes it."
        )
    longest = int(completion_mask.sum(1).max())
    normaliser = max_length
    if longest > normaliser:
        raise LossInputError(
            f"dr_grpo: a completion has {longest} tokens but max_length={max_length}; set max_length to the "
            f"generation limit (max_new_tokens) so that it bounds every completion."
        )
    advantages = grouped_to_sequences(group_normalized_advantages(grouped, scale_by_std=False))
    kl_token = _k3_to_reference(policy_logps, ref_logps, completion_mask, beta=beta)
    per_example, metrics = _group_loss(
        policy_logps,
        old_logps,
        completion_mask,
        advantages,
        clip_range,
        kl_token=kl_token,
        beta=beta,
        normaliser=float(normaliser),
    )
    return LossOutput(per_example.mean(), per_example, {**metrics, **_reward_metrics(grouped)})


@rollout_loss(
    "remax",
    needs_reference=False,
    paper=(
        "Li et al. 2023, ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning "
        "Large Language Models, arXiv:2310.10505 (greedy-decoding baseline)"
    ),
    formula="mean_i Σ_t max(−A_i·ρ_t, −A_i·clip(ρ_t,1±ε)), A_i = r(x, y_i) − r(x, ȳ_greedy)",
    hparams=[CLIP_RANGE],
    online_defaults={"num_samples": 1, "min_samples": 1},  # one sample per prompt (Li et al. 2023)
)
def remax(
    policy_logps: Tensor,
    old_logps: Tensor,
    completion_mask: Tensor,
    *,
    rewards: Tensor | None,
    greedy_rewards: Tensor | None,
    clip_range: float,
) -> LossOutput:
    """ReMax: REINFORCE whose baseline is the reward of the prompt's greedy decode.

    A KL penalty, if wanted, belongs in both rewards (shape the sampled and the greedy reward the same
    way before calling). On-policy (old_logps=None) the clip never binds and this is the paper's
    estimator Σ_t ∇log π(y_t)·(r(x, y) − r(x, ȳ)).

    Args:
        policy_logps, old_logps, completion_mask: [S, T], S = K·B (K = 1 in the paper).
        rewards: [B, K] rewards of the sampled completions.
        greedy_rewards: [B] reward of each prompt's greedy completion.
        clip_range: ε.
    """
    grouped = check_grouped_rewards(rewards, policy_logps.shape[0], where="remax", min_k=1)
    greedy = _require("remax", greedy_rewards, "greedy_rewards [B] are required (reward of each greedy decode).")
    advantages = grouped_to_sequences(greedy_baseline_advantages(grouped, greedy.detach().to(grouped.dtype)))
    per_example, metrics = _group_loss(policy_logps, old_logps, completion_mask, advantages, clip_range)
    metrics["rewards/greedy"] = greedy.detach().float().mean()
    return LossOutput(per_example.mean(), per_example, {**metrics, **_reward_metrics(grouped)})
