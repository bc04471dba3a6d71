"""Advantage estimators and reward shaping for the online algorithms: pure functions of tensors.

    masked      masked_sum / masked_mean / masked_var / masked_whiten, check_right_padded
    gae         GAE(γ, λ) advantages and returns (PPO)
    kl          k1 / k3 KL estimators, the ±20 log-ratio clamp before exp, KL-shaped per-token rewards,
                EOS penalty, adaptive β
    baselines   leave-one-out (RLOO), group-normalised (GRPO, Dr. GRPO), greedy (ReMax) advantages
    shaping     DAPO's soft overlong penalty and the filter of groups whose rewards are all equal

The losses that consume these live in `prefopt.losses.policy_gradient` and `prefopt.losses.best_of_n`;
docs/online.md shows how a rollout flows through them.
"""

from prefopt.rl.baselines import (
    check_grouped_rewards,
    greedy_baseline_advantages,
    group_normalized_advantages,
    grouped_to_sequences,
    leave_one_out_advantages,
    sequences_to_grouped,
)
from prefopt.rl.gae import gae
from prefopt.rl.kl import (
    LOG_RATIO_CLAMP,
    AdaptiveKLController,
    FixedKLController,
    KLEstimator,
    adaptive_kl_coef,
    apply_eos_penalty,
    clamp_log_ratio,
    contains_eos,
    kl_k1,
    kl_k3,
    kl_penalized_rewards,
    token_kl,
)
from prefopt.rl.masked import check_right_padded, masked_mean, masked_sum, masked_var, masked_whiten
from prefopt.rl.shaping import groups_with_spread, overlong_penalty

__all__ = [
    "LOG_RATIO_CLAMP",
    "AdaptiveKLController",
    "FixedKLController",
    "KLEstimator",
    "adaptive_kl_coef",
    "apply_eos_penalty",
    "check_grouped_rewards",
    "check_right_padded",
    "clamp_log_ratio",
    "contains_eos",
    "gae",
    "greedy_baseline_advantages",
    "group_normalized_advantages",
    "grouped_to_sequences",
    "groups_with_spread",
    "kl_k1",
    "kl_k3",
    "kl_penalized_rewards",
    "leave_one_out_advantages",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "overlong_penalty",
    "sequences_to_grouped",
    "token_kl",
]
