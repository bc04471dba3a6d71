"""Best-of-N: selection by reward, its analytic KL bound, and rejection-sampling fine-tuning (RAFT).

Rewards are grouped `rewards[b, k]` ([B, K]: K samples of each of B prompts); sequence s = k·B + b of
the rollout's per-token tensors is sample k of prompt b (`prefopt.rl.baselines`).

Best-of-N policy (inference time): draw N samples from π_ref and return the one of highest reward.
Its KL to π_ref is at most (and, for distinct outcomes of negligible probability, close to)

    KL(π_BoN ‖ π_ref) ≤ log N − (N − 1)/N

(the expression used since Stiennon et al. 2020, arXiv:2009.01325, as the BoN KL; Beirami et al. 2024,
arXiv:2401.01879, show that it is an upper bound, tight when no outcome has much probability). Exact
best-of-N distributions and reward curves live in `prefopt.reproduce`.

RAFT / rejection-sampling fine-tuning (Dong et al. 2023, arXiv:2304.06767): per prompt keep
the top-k samples by reward and take a supervised step on them,

    L = −Σ_{kept s} Σ_t log π_θ(y_{s,t}) / Σ_{kept s} |y_s|        (token mean, as causal-LM SFT)

then resample and repeat. Online DPO uses the same selection to build pairs (`best_worst_pairs`):

    online_dpo   per prompt, the best and the worst of its K samples by reward form a pair (y_w, y_l);
                 L = mean over pairs of −log σ(β·[(log π_θ − log π_ref)(y_w) − (log π_θ − log π_ref)(y_l)])
                 (Guo et al. 2024, Direct Language Model Alignment from Online AI Feedback,
                 arXiv:2402.04792; the pairs' rewards come from the reward function instead of an AI
                 annotator). `rollout_pairs` gives the pairs' sequence log-probs for any paired loss.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prefopt.losses.base import LossOutput, neg_logsigmoid, pairwise_reward_metrics
from prefopt.losses.kinds import rollout_loss
from prefopt.registry import POSITIVE, HParam, Interval, LossInputError
from prefopt.rl.baselines import check_grouped_rewards, grouped_to_sequences
from prefopt.rl.masked import masked_mean, masked_sum

__all__ = [
    "bon_kl_bound",
    "select_best_of_n",
    "kept_sequences_mask",
    "best_worst_pairs",
    "rollout_pairs",
    "best_of_n",
    "online_dpo",
]


def bon_kl_bound(n: int) -> float:
    """The analytic best-of-n KL bound log n − (n − 1)/n in nats (0 at n = 1, ~log n for large n).

    Raises:
        LossInputError: n is not an integer ≥ 1.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise LossInputError(f"bon_kl_bound: n={n!r} must be an integer ≥ 1 (the number of samples).")
    return math.log(n) - (n - 1) / n


def select_best_of_n(rewards: Tensor, top_k: int = 1) -> Tensor:
    """Column indices [B, top_k] of each prompt's top_k samples, highest reward first.

    Ties go to the lower sample index (a stable sort), so the choice is deterministic.

    Args:
        rewards: [B, K] sequence rewards.
        top_k: samples to keep per prompt, 1 ≤ top_k ≤ K (RAFT keeps 1).
    """
    rewards = check_grouped_rewards(rewards, where="select_best_of_n")
    k = rewards.shape[1]
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= k:
        raise LossInputError(f"select_best_of_n: top_k={top_k!r} must be an integer in [1, K={k}].")
    order = torch.sort(rewards, dim=1, descending=True, stable=True).indices
    return order[:, :top_k]


def kept_sequences_mask(rewards: Tensor, top_k: int = 1) -> Tensor:
    """bool [K·B] in group-major sequence order: True for the sequences `select_best_of_n` keeps."""
    columns = select_best_of_n(rewards, top_k)
    kept = torch.zeros(rewards.shape, dtype=torch.bool, device=rewards.device)
    kept.scatter_(1, columns, True)
    return grouped_to_sequences(kept)


def best_worst_pairs(rewards: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Online-DPO pairs: per prompt, the highest- and lowest-reward samples as sequence indices.

    Args:
        rewards: [B, K] sequence rewards, K ≥ 2.
    Returns:
        (chosen [B], rejected [B], valid [B]): group-major sequence indices s = k·B + b of the best and
        worst sample of each prompt, and whether the two rewards differ (a tie gives no preference;
        drop those pairs).
    """
    rewards = check_grouped_rewards(rewards, where="best_worst_pairs", min_k=2)
    batch = rewards.shape[0]
    order = torch.sort(rewards, dim=1, descending=True, stable=True).indices
    best, worst = order[:, 0], order[:, -1]
    prompts = torch.arange(batch, device=rewards.device)
    valid = rewards[prompts, best] > rewards[prompts, worst]
    return best * batch + prompts, worst * batch + prompts, valid


@rollout_loss(
    "best_of_n",
    needs_reference=False,
    paper=(
        "Dong et al. 2023, RAFT: Reward rAnked FineTuning for Generative Foundation Model Alignment, "
        "arXiv:2304.06767; KL bound log N − (N−1)/N as used by Stiennon et al. 2020, arXiv:2009.01325, "
        "proved an upper bound by Beirami et al. 2024, arXiv:2401.01879"
    ),
    formula="−Σ_{top-k by reward per prompt} Σ_t log π_θ(y_t) / Σ_{kept} |y|",
    hparams=[HParam("top_k", 1, "samples kept per prompt (RAFT: the best one)", Interval(1, math.inf, lo_closed=True))],
    needs_nonpositive_logps=True,  # the NLL −log π_θ(y_t) is ≥ 0 only for a log-probability
    online_defaults={"min_samples": 1},  # K = 1 is plain SFT on the samples
)
def best_of_n(policy_logps: Tensor, completion_mask: Tensor, *, rewards: Tensor | None, top_k: int) -> LossOutput:
    """Best-of-N fine-tuning (RAFT): SFT on the top_k highest-reward samples of each prompt.

    `loss` is the token-mean NLL over the kept samples; `per_example` [S] holds each kept sequence's
    own token-mean NLL and 0 for dropped ones. The body does not take old_logps (SFT has no importance
    ratio); the public function accepts it with the rollout contract. Metrics: rewards/mean (all
    samples), rewards/kept, kept/fraction, and bon/kl_bound = log K − (K−1)/K, the KL bound of the
    best-of-K policy (top_k = 1).

    Args:
        policy_logps, completion_mask: [S, T], S = K·B.
        rewards: [B, K] sequence rewards.
        top_k: samples kept per prompt, an integer in [1, K].
    """
    grouped = check_grouped_rewards(rewards, policy_logps.shape[0], where="best_of_n")
    if isinstance(top_k, float) and not float(top_k).is_integer():  # HParam accepts any number
        raise LossInputError(f"best_of_n: top_k={top_k} must be an integer.")
    kept = kept_sequences_mask(grouped, int(top_k))  # [S]
    tokens = completion_mask & kept.unsqueeze(1)  # [S, T]
    nll = -policy_logps
    loss = masked_mean(nll, tokens)
    per_example = torch.where(kept, masked_mean(nll, tokens, dim=1), torch.zeros_like(loss))
    kept_rewards = grouped_to_sequences(grouped)[kept]
    metrics = {
        "rewards/mean": grouped.float().mean(),
        "rewards/kept": kept_rewards.float().mean(),
        "kept/fraction": kept.float().mean(),
        "logps/kept": (masked_sum(policy_logps.detach(), tokens) / tokens.sum().clamp(min=1)).float(),
        "bon/kl_bound": torch.tensor(bon_kl_bound(grouped.shape[1]), device=grouped.device),
    }
    return LossOutput(loss, per_example, metrics)


def rollout_pairs(
    rewards: Tensor,
    completion_mask: Tensor,
    *token_logps: Tensor,
) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """Online preference pairs of a rollout: each prompt's best vs worst sample, as sequence log-probs.

    Args:
        rewards: [B, K] sequence rewards, K ≥ 2.
        completion_mask: [S, T] bool, S = K·B group-major.
        token_logps: per-token log-probs [S, T] (policy, reference, ...), each summed over its row. Add
            `completion_mask.float()` to get each pair's lengths: pass them to the paired loss, which then
            refuses a pair with an empty completion (length-normalised losses need them anyway).
    Returns:
        (valid [B] bool, [(chosen [B], rejected [B]) for each of token_logps]). A pair is valid when its
        rewards differ (a tie is no preference) and both completions have tokens; invalid pairs still
        appear in the tensors and must be dropped or zero-weighted by the caller.
    """
    chosen, rejected, valid = best_worst_pairs(rewards)
    lengths = completion_mask.sum(1)
    valid = valid & (lengths[chosen] > 0) & (lengths[rejected] > 0)
    sums = [masked_sum(t, completion_mask, dim=1) for t in token_logps]
    return valid, [(s[chosen], s[rejected]) for s in sums]


@rollout_loss(
    "online_dpo",
    needs_reference=True,
    paper=(
        "Guo et al. 2024, Direct Language Model Alignment from Online AI Feedback, arXiv:2402.04792 (online DPO: "
        "pairs sampled from the current policy, labelled online); DPO loss of Rafailov et al. 2023, arXiv:2305.18290"
    ),
    formula="mean_{valid b} −log σ(β[(log π_θ − log π_ref)(y_best,b) − (log π_θ − log π_ref)(y_worst,b)])",
    hparams=[HParam("beta", 0.1, "DPO's β on the online pairs", POSITIVE)],
    accepts_pair_loss=True,  # OnlineConfig.pair_loss: any paired log-prob loss on the same best/worst pairs
)
def online_dpo(
    policy_logps: Tensor, completion_mask: Tensor, *, rewards: Tensor | None, ref_logps: Tensor, beta: float
) -> LossOutput:
    """Online DPO: DPO on each prompt's best-vs-worst pair of the K samples just drawn from the policy.

    `loss` is the mean over valid pairs (`rollout_pairs`; 0 when none is valid); `per_example` [S]
    holds each valid pair's loss at its chosen row and 0 elsewhere. The body does not take old_logps
    (DPO has no importance ratio); the public function accepts it with the rollout contract. Metrics:
    the paired metrics of DPO (rewards/chosen = β·log-ratio of the best samples, ...), rewards/mean,
    pairs/valid (fraction).

    Args:
        policy_logps, completion_mask: [S, T], S = K·B; ref_logps: [S, T] reference log-probs.
        rewards: [B, K] rewards of the samples, K ≥ 2.
        beta: β.
    """
    grouped = check_grouped_rewards(rewards, policy_logps.shape[0], where="online_dpo", min_k=2)
    valid, ((policy_w, policy_l), (ref_w, ref_l)) = rollout_pairs(grouped, completion_mask, policy_logps, ref_logps)
    ratio_w, ratio_l = policy_w - ref_w, policy_l - ref_l
    pair_loss = torch.where(valid, neg_logsigmoid(beta * (ratio_w - ratio_l)), torch.zeros_like(ratio_w))
    loss = pair_loss.sum() / valid.sum().clamp(min=1)
    chosen_rows, _, _ = best_worst_pairs(grouped)
    per_example = torch.zeros(policy_logps.shape[0], dtype=pair_loss.dtype, device=pair_loss.device)
    per_example = per_example.index_add(0, chosen_rows, pair_loss)
    keep = valid if bool(valid.any()) else torch.ones_like(valid)  # metrics over valid pairs (all when none)
    metrics = pairwise_reward_metrics(beta * ratio_w[keep], beta * ratio_l[keep], policy_w[keep], policy_l[keep])
    metrics.update({"rewards/mean": grouped.float().mean(), "pairs/valid": valid.float().mean()})
    return LossOutput(loss, per_example, metrics)
