"""Pairwise losses that regress or hinge the log-ratio margin instead of taking its log-sigmoid.

Notation (per pair, shapes [B]; log-probs are sums over completion tokens, |y| their token counts):

    ρ_w = log π_θ(y_w|x) − log π_ref(y_w|x)     ρ_l likewise for the rejected y_l
    Δ   = ρ_w − ρ_l

    ipo        (ρ_w/|y_w| − ρ_l/|y_l| − 1/(2τ))²          IPO with per-token log-ratios (TRL, HALOs)
    ipo_sum    (Δ − 1/(2τ))²                              Azar et al. 2023, arXiv:2310.12036, Eq. 17
    sppo_hard  (ρ_w − 1/(2β))² + (ρ_l + 1/(2β))²          Wu et al. 2024, arXiv:2405.00675 (hard labels)
    hinge      max(0, 1 − β·Δ)                            Liu et al. 2023, arXiv:2309.06657 (hinge-norm)
    slic       max(0, δ − log π_θ(y_w) + log π_θ(y_l)) − λ·log π_θ(y_w)
                                                          Zhao et al. 2023, arXiv:2305.10425 (reference-free)

IPO's regularisation strength τ is passed as `beta` (so configs can swap loss names), and the
regression target is 1/(2τ): a larger τ asks for a smaller margin. `ipo` divides each log-ratio by
its own completion length before differencing, the normalisation TRL reports as confirmed with the
IPO authors; `ipo_sum` is the paper's Eq. 17 on sequence log-probs, whose target margin does not
grow with length, so the two need different τ.

The reward metrics stay β·ρ on summed log-ratios for every reference-based loss here (the TRL and
HALOs convention, also for IPO); SLiC, which has no reference, logs the policy log-probs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefopt.losses.kinds import PairedTerms, PolicyPair, Reported, paired_loss
from prefopt.registry import NON_NEGATIVE, POSITIVE, HParam

__all__ = ["ipo", "ipo_sum", "sppo_hard", "hinge", "slic"]

_TAU_HELP = "IPO's τ (named beta for uniformity): the regression target of the margin is 1/(2τ)"


def _ipo(margin: Tensor, tau: float) -> Reported:
    """Squared regression of `margin` [B] onto 1/(2τ), reporting `ipo/margin`."""
    return Reported((margin - 1.0 / (2.0 * tau)) ** 2, metrics={"ipo/margin": margin})


@paired_loss(
    "ipo",
    needs_reference=True,
    needs_lengths=True,
    paper=(
        "Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human Preferences, "
        "arXiv:2310.12036 (Eq. 17), with per-token log-ratios as in TRL (PR #1265, confirmed with the "
        "authors) and HALOs; τ = 0.1 is the TRL and HALOs default (the paper's experiments are bandits)"
    ),
    formula="(ρ_w/|y_w| − ρ_l/|y_l| − 1/(2τ))²",
    hparams=[HParam("beta", 0.1, _TAU_HELP, POSITIVE)],
)
def ipo(t: PairedTerms, *, beta: float) -> Reported:
    """IPO on length-normalised log-ratios: regress the per-token margin onto 1/(2τ).

    Args:
        beta: τ, the KL-regularisation strength of ΨPO with Ψ = identity.
    """
    return _ipo(t.normalized_margin, beta)


@paired_loss(
    "ipo_sum",
    needs_reference=True,
    paper=(
        "Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human Preferences, "
        "arXiv:2310.12036 (Eq. 17, sequence log-probs as in the paper, OpenRLHF and the reference DPO repo)"
    ),
    formula="(Δ − 1/(2τ))²",
    hparams=[HParam("beta", 0.1, _TAU_HELP, POSITIVE)],
)
def ipo_sum(t: PairedTerms, *, beta: float) -> Reported:
    """IPO as written in the paper: regress the summed log-ratio margin Δ onto 1/(2τ).

    Args:
        beta: τ, the KL-regularisation strength of ΨPO with Ψ = identity.
    """
    return _ipo(t.margin, beta)


@paired_loss(
    "sppo_hard",
    needs_reference=True,
    paper=(
        "Wu et al. 2024, Self-Play Preference Optimization for Language Model Alignment, arXiv:2405.00675 "
        "(the SPPO square loss with hard win-rates 1 and 0 and η = 1/β, as in TRL's sppo_hard; β = 1e-3)"
    ),
    formula="(ρ_w − 1/(2β))² + (ρ_l + 1/(2β))²",
    hparams=[HParam("beta", 1e-3, "β = 1/η: the targets of ρ_w and ρ_l are ±1/(2β) = ±η/2", POSITIVE)],
)
def sppo_hard(t: PairedTerms, *, beta: float) -> Tensor:
    """SPPO with hard labels: regress each log-ratio separately, ρ_w onto +η/2 and ρ_l onto −η/2.

    The paper's loss is (ρ(y) − η(P̂(y ≻ π_t) − ½))² with ρ relative to the previous iterate; with the
    chosen winning surely (P̂ = 1) and the rejected losing (P̂ = 0) it becomes this sum. Unlike the
    margin losses it moves each likelihood, not only their difference. Pass the previous iterate's
    log-probs as the reference to follow the paper's self-play iteration.

    Args:
        beta: β = 1/η.
    """
    target = 1.0 / (2.0 * beta)
    return (t.chosen_ratio - target) ** 2 + (t.rejected_ratio + target) ** 2


@paired_loss(
    "hinge",
    needs_reference=True,
    paper=(
        "Liu et al. 2023, Statistical Rejection Sampling Improves Preference Optimization, arXiv:2309.06657 "
        "(hinge-norm loss; β is the paper's γ, 0.05 as in TRL's paper index)"
    ),
    formula="max(0, 1 − β·Δ)",
    hparams=[HParam("beta", 0.05, "γ: scale of the normalised margin; the hinge is met at Δ = 1/β", POSITIVE)],
)
def hinge(t: PairedTerms, *, beta: float) -> Tensor:
    """RSO hinge-norm: the SVM counterpart of DPO on the reference-normalised margin.

    Pairs whose margin already exceeds 1/β contribute neither loss nor gradient.

    Args:
        beta: γ of the paper.
    """
    return torch.relu(1.0 - beta * t.margin)


@paired_loss(
    "slic",
    needs_reference=False,
    paper=(
        "Zhao et al. 2023, SLiC-HF: Sequence Likelihood Calibration with Human Feedback, arXiv:2305.10425 "
        "(rank calibration loss + cross-entropy regulariser on the target; δ = 1, λ = 0.1 from HALOs' "
        "config/loss/slic.yaml, whose regulariser is the sequence NLL)"
    ),
    formula="max(0, δ − log π_θ(y_w) + log π_θ(y_l)) − λ·log π_θ(y_w)",
    hparams=[
        HParam("delta", 1.0, "calibration margin δ between the chosen and rejected sequence log-probs", NON_NEGATIVE),
        HParam("lambda_", 0.1, "weight λ of the sequence NLL of the chosen completion", NON_NEGATIVE),
    ],
    needs_nonpositive_logps=True,  # the NLL −log π_θ(y_w) is ≥ 0 only for a log-probability
)
def slic(t: PolicyPair, *, delta: float, lambda_: float) -> Reported:
    """SLiC-HF: hinge calibration of sequence log-likelihoods plus an NLL anchor on the chosen completion.

    The regulariser is the *sequence* NLL −log π_θ(y_w) (a sum over tokens), as in the paper's
    L_reg = −log P_θ(y_ref|x) with the chosen completion as y_ref, so both terms are on the same
    summed scale; lengths are not used.

    The defaults' source uses the same convention: λ = 0.1 and δ = 1 (HALOs' `beta`) were set in HALOs'
    config/loss/slic.yaml (commit d49576f, 2023-12-03), whose SLiCTrainer then received sequence sums
    (`get_batch_logps(..., average_log_prob=False)`), so λ weighed the summed NLL −Σ_t log π_θ(y_t), as here.
    HALOs since f43abdc (2025-01-19) passes per-token log-probs [B, T] to the same code, where
    `reg_loss = −policy_chosen_logps` stays [B, T] while the calibration term is [B]; their sum does not
    broadcast unless B = T (a shape error), so that version fixes no per-token convention for λ.

    Args:
        delta: margin δ of the calibration hinge.
        lambda_: weight λ of the NLL regulariser.

    Metrics: `rewards/*` = log π_θ (summed), `calibration_loss`, `nll_loss`.
    """
    calibration = torch.relu(delta - t.chosen_logps + t.rejected_logps)  # [B]
    nll = -t.chosen_logps  # [B]
    return Reported(
        calibration + lambda_ * nll,
        rewards=(t.chosen_logps, t.rejected_logps),
        metrics={"calibration_loss": calibration, "nll_loss": nll},
    )
