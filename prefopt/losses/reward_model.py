"""Reward-model losses on scalar scores r(x, y) (scores="rewards"): Bradley–Terry and Plackett–Luce.

Bradley–Terry (Bradley & Terry 1952; InstructGPT, Ouyang et al. 2022, arXiv:2203.02155, Eq. 1):
    L = −log σ(r_w − r_l − m) + η·(r_w + r_l)²
m is an optional per-pair margin (Llama 2, Touvron et al. 2023, arXiv:2307.09288, §3.2.2, uses one
per preference strength); the centring term with coefficient η (Eisenstein et al. 2023, "Helping or
Herding? Reward Model Ensembles Mitigate but do not Eliminate Reward Hacking", arXiv:2312.09244,
suggest η = 0.01) pins the reward's free additive constant near zero. Default η = 0: plain BT.

Plackett–Luce (K-wise; Zhu, Jordan & Jiao 2023, arXiv:2301.11270): for rewards r_1..r_K best first,
    L = Σ_j [log Σ_{k≥j} exp(r_k) − r_j]     which is Bradley–Terry at K = 2.
"""

from __future__ import annotations

from torch import Tensor

from prefopt.losses.base import LossOutput, neg_logsigmoid, ranked_reward_metrics
from prefopt.losses.kinds import reward_model_loss
from prefopt.losses.ranked import plackett_luce_nll
from prefopt.registry import NON_NEGATIVE, HParam, LossInputError

__all__ = ["bradley_terry", "plackett_luce_rm"]


@reward_model_loss(
    "bradley_terry",
    kind="paired",
    paper="Ouyang et al. 2022, Training language models to follow instructions with human feedback, "
    "arXiv:2203.02155 (Eq. 1); margin: Touvron et al. 2023, arXiv:2307.09288 (Eq. 2); centring: "
    "Eisenstein et al. 2023, arXiv:2312.09244",
    formula="−log σ(r_w − r_l − m) + η·(r_w + r_l)²",
    hparams=[
        HParam(
            "center_coef",
            0.0,
            "η of the centring penalty η·(r_w + r_l)² (0 = off; Eisenstein et al. 2023 suggest 0.01)",
            NON_NEGATIVE,
        )
    ],
)
def bradley_terry(
    chosen_rewards: Tensor, rejected_rewards: Tensor, *, margin: Tensor | None, center_coef: float
) -> LossOutput:
    """Bradley–Terry reward-model loss: logistic regression on the reward difference of a pair.

    Args:
        chosen_rewards, rejected_rewards: [B] scalar rewards r(x, y_w), r(x, y_l) from the reward model.
        margin: optional [B] margin m the chosen must win by (e.g. by preference strength); None = 0.
        center_coef: η of the centring term.

    Metrics: `accuracy` (mean 1[r_w > r_l]), `rewards/chosen`, `rewards/rejected`, `rewards/margins`.
    """
    difference = chosen_rewards - rejected_rewards  # [B]
    logits = difference
    if margin is not None:
        if not isinstance(margin, Tensor) or margin.shape != chosen_rewards.shape:
            got = tuple(margin.shape) if isinstance(margin, Tensor) else type(margin).__name__
            raise LossInputError(
                f"bradley_terry: margin must be a tensor of shape {tuple(chosen_rewards.shape)} (one per pair), "
                f"got {got}."
            )
        logits = difference - margin.to(difference.dtype)
    per_example = neg_logsigmoid(logits)
    if center_coef > 0:
        per_example = per_example + center_coef * (chosen_rewards + rejected_rewards) ** 2
    detached = difference.detach().float()
    metrics = {
        "accuracy": (detached > 0).float().mean(),
        "rewards/chosen": chosen_rewards.detach().float().mean(),
        "rewards/rejected": rejected_rewards.detach().float().mean(),
        "rewards/margins": detached.mean(),
    }
    return LossOutput(per_example.mean(), per_example, metrics)


@reward_model_loss(
    "plackett_luce_rm",
    kind="ranked",
    paper="Zhu, Jordan & Jiao 2023, Principled Reinforcement Learning with Human Feedback from Pairwise or "
    "K-wise Comparisons, arXiv:2301.11270 (Plackett–Luce MLE)",
    formula="Σ_j [log Σ_{k≥j} exp(r_k) − r_j], completions best first",
)
def plackett_luce_rm(rewards: Tensor) -> LossOutput:
    """K-wise reward-model loss: −log of the Plackett–Luce probability of the observed ranking.

    Args:
        rewards: [B, K] rewards r(x, y_k) from the reward model, completions ordered best first (the public
            function also accepts `lengths`, like every ranked loss, and does not use them).

    Metrics: `accuracy` (fraction of correctly ordered pairs j < k), `rewards/chosen` (best),
    `rewards/rejected` (worst), `rewards/margins`; at K = 2 these equal `bradley_terry`'s.
    """
    per_example = plackett_luce_nll(rewards)
    ranked = ranked_reward_metrics(rewards)
    metrics = {"accuracy": ranked.pop("rewards/accuracies"), **ranked}
    return LossOutput(per_example.mean(), per_example, metrics)
