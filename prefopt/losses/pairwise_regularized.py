"""Regularised DPO: the DPO logistic loss with a penalty, a length correction, an NLL term or a weight.

Notation (per pair, shapes [B]; log-probs are sums over completion tokens; |y| = completion tokens):

    ρ_w = log π_θ(y_w|x) − log π_ref(y_w|x)     ρ_l likewise for the rejected y_l
    Δ   = ρ_w − ρ_l                              DPO: L = −log σ(β·Δ)  (Rafailov et al. 2023, Eq. 7)

DPOP / DPO-Positive — Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference Optimisation with
DPO-Positive", arXiv:2402.13228, Eq. 3:
    L = −log σ(β·(Δ − λ·max(0, log π_ref(y_w) − log π_θ(y_w))))
    The penalty is zero while the chosen likelihood stays at or above the reference.

R-DPO — Park et al. 2024, "Disentangling Length from Quality in Direct Preference Optimization",
arXiv:2403.19159 (Sec. 4, the R-DPO objective):
    L = −log σ(β·Δ + α·(|y_w| − |y_l|))
    Sign: the paper regularises the RLHF objective with a length penalty, max E[r(x,y) − α|y|] − β·KL,
    so the reward it recovers is r = β·log π*/π_ref + α|y| + const and the Bradley–Terry likelihood
    carries **+α(|y_w| − |y_l|)** inside the sigmoid (R-DPO = "DPO plus an α(|y_w| − |y_l|) margin
    inside the log-sigmoid", as summaries checked against the paper put it). With
    α > 0 a longer chosen answer already "explains" part of the preference, so the gradient that would
    otherwise reward length is smaller. Some third-party code writes −α(…); prefopt follows the paper.

DPO w/ LN (length-normalised DPO) — Lambert et al. 2024, "Tülu 3: Pushing Frontiers in Open Language
Model Post-Training", arXiv:2411.15124 (length-normalised DPO, β = 5):
    L = −log σ(β·(ρ_w/|y_w| − ρ_l/|y_l|))

RPO (DPO + NLL) — Pang et al. 2024, "Iterative Reasoning Preference Optimization", arXiv:2404.19733
(Eq. 1–3, α = 1):
    L = −log σ(β·Δ) − α·log π_θ(y_w|x)/|y_w|        the NLL is the token mean over the chosen completion

WPO — Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization", arXiv:2406.11827:
    L = w(y_w)·w(y_l)·(−log σ(β·Δ)),   w(y) = exp(log π_θ(y|x)/|y|), weights detached (no gradient)
    This is the paper's length-normalised sequence probability, which the per-sequence call can supply.
    The paper's calibrated weight, exp((1/|y|)·Σ_t [log π_θ(y_t) − log Σ_v π_θ(v)²]), needs the per-token
    sum of squared probabilities over the vocabulary, which the uniform call (sequence log-probs only)
    does not carry, so it is not offered here.

Where the defaults come from (β's meaning differs per loss, so each has its own):
    dpop      β = 0.3, λ = 50: the values used to train Smaug with DPOP; re-implementations of DPOP
              default to λ = 50 as well. The paper's own text could not be re-read while writing this,
              so treat both as "as reported for Smaug" rather than as a universal recommendation.
    rdpo      β = 0.1 (DPO's); α has no single paper default (the paper sweeps it per dataset), 0.05
              is a mid-range starting point in logit units per token — tune it.
    dpo_norm  β = 5: Tülu 3 8B DPO (open-instruct `--dpo_loss_type dpo_norm --dpo_beta 5`).
    rpo       α = 1 (Pang et al.), β = 0.1.
    wpo       β = 0.01.

LD-DPO (Liu et al. 2024, arXiv:2409.06411) is deliberately *not* registered: it replaces each sequence
log-prob by logp(shared prefix of length min(|y_w|, |y_l|)) + α·logp(remaining tail), which needs the
log-prob of the first min(|y_w|, |y_l|) tokens of each completion. The uniform paired call only carries
whole-sequence sums, and splitting a sum by length (e.g. scaling by a token fraction) would be a different
loss under the paper's name. It fits once the engine returns per-token log-probs to the loss.
"""

from __future__ import annotations

import torch

from prefopt.losses.base import neg_logsigmoid
from prefopt.losses.kinds import PairedTerms, Reported, paired_loss
from prefopt.losses.pairwise import BETA
from prefopt.registry import NON_NEGATIVE, POSITIVE, HParam

__all__ = ["dpop", "rdpo", "dpo_norm", "rpo", "wpo"]

_BETA_DPOP = HParam("beta", 0.3, "β of the implicit reward; the Smaug DPOP runs use 0.3", POSITIVE)
_LAMBDA_DPOP = HParam(
    "lambda_", 50.0, "λ: weight of the penalty max(0, log π_ref(y_w) − log π_θ(y_w)) (Smaug uses 50)", NON_NEGATIVE
)
_ALPHA_RDPO = HParam(
    "alpha",
    0.05,
    "α: weight of the length margin α(|y_w| − |y_l|) in nats per token; the paper sweeps it",
    NON_NEGATIVE,
)
_BETA_NORM = HParam("beta", 5.0, "β on length-normalised log-ratios (Tülu 3 DPO w/ LN uses 5)", POSITIVE)
_ALPHA_RPO = HParam("alpha", 1.0, "α: weight of the chosen token-mean NLL (Pang et al. 2024 use 1)", NON_NEGATIVE)
_BETA_WPO = HParam("beta", 0.01, "β of the implicit reward (WPO paper uses 0.01)", POSITIVE)


@paired_loss(
    "dpop",
    needs_reference=True,
    paper="Pal et al. 2024, Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive, "
    "arXiv:2402.13228 (Eq. 3)",
    formula="−log σ(β·(Δ − λ·max(0, log π_ref(y_w) − log π_θ(y_w))))",
    hparams=[_BETA_DPOP, _LAMBDA_DPOP],
)
def dpop(t: PairedTerms, *, beta: float, lambda_: float) -> Reported:
    """DPO-Positive: DPO whose margin is cut by λ times how far the chosen likelihood fell below the reference.

    Equals DPO on rows with π_θ(y_w) ≥ π_ref(y_w); exceeds it elsewhere.

    Args:
        beta: β of the implicit reward.
        lambda_: λ ≥ 0, the penalty weight (trailing underscore: `lambda` is a Python keyword).

    Metrics: `dpop_penalty` = mean max(0, log π_ref(y_w) − log π_θ(y_w)).
    """
    penalty = torch.relu(-t.chosen_ratio)  # max(0, log π_ref(y_w) − log π_θ(y_w)), [B]
    return Reported(neg_logsigmoid(beta * (t.margin - lambda_ * penalty)), metrics={"dpop_penalty": penalty})


@paired_loss(
    "rdpo",
    needs_reference=True,
    paper="Park et al. 2024, Disentangling Length from Quality in Direct Preference Optimization, "
    "arXiv:2403.19159 (Sec. 4, R-DPO objective: +α(|y_w| − |y_l|) inside σ)",
    formula="−log σ(β·Δ + α·(|y_w| − |y_l|))",
    hparams=[BETA, _ALPHA_RDPO],
    needs_lengths=True,
)
def rdpo(t: PairedTerms, *, beta: float, alpha: float) -> Reported:
    """R-DPO: DPO with a length margin, so a longer chosen answer earns less push towards length.

    The paper's sign is +α(|y_w| − |y_l|) inside the sigmoid (see the module docstring); α = 0 is DPO.

    Args:
        beta: β of the implicit reward.
        alpha: α ≥ 0, weight of the length difference (logit units per token).

    Metrics: `length_margin` = mean α(|y_w| − |y_l|).
    """
    length_margin = alpha * (t.chosen_lengths - t.rejected_lengths)  # [B]
    return Reported(neg_logsigmoid(beta * t.margin + length_margin), metrics={"length_margin": length_margin})


@paired_loss(
    "dpo_norm",
    needs_reference=True,
    paper="Lambert et al. 2024, Tülu 3: Pushing Frontiers in Open Language Model Post-Training, "
    "arXiv:2411.15124 (DPO w/ length normalisation; β = 5)",
    formula="−log σ(β·(ρ_w/|y_w| − ρ_l/|y_l|))",
    hparams=[_BETA_NORM],
    needs_lengths=True,
)
def dpo_norm(t: PairedTerms, *, beta: float) -> Reported:
    """Length-normalised DPO: each log-ratio is divided by its completion's token count before differencing.

    The logged rewards stay β·Σρ (the field's convention), not the normalised values in the loss.

    Args:
        beta: β on per-token log-ratios (so much larger than DPO's β).

    Metrics: `normalized_margin` = mean ρ_w/|y_w| − ρ_l/|y_l|.
    """
    return Reported(neg_logsigmoid(beta * t.normalized_margin), metrics={"normalized_margin": t.normalized_margin})


@paired_loss(
    "rpo",
    needs_reference=True,
    paper="Pang et al. 2024, Iterative Reasoning Preference Optimization, arXiv:2404.19733 (Eq. 1–3; α = 1)",
    formula="−log σ(β·Δ) − α·log π_θ(y_w)/|y_w|",
    hparams=[BETA, _ALPHA_RPO],
    needs_lengths=True,
    needs_nonpositive_logps=True,  # the NLL −log π_θ(y_w)/|y_w| is ≥ 0 only for a log-probability
)
def rpo(t: PairedTerms, *, beta: float, alpha: float) -> Reported:
    """RPO: DPO plus α times the token-mean negative log-likelihood of the chosen completion.

    Args:
        beta: β of the implicit reward.
        alpha: α ≥ 0, weight of the NLL term (α = 0 is DPO).

    Metrics: `nll_loss` = mean −log π_θ(y_w)/|y_w|.
    """
    nll = -t.chosen_logps / t.chosen_lengths  # token-mean NLL of y_w, [B]
    return Reported(neg_logsigmoid(beta * t.margin) + alpha * nll, metrics={"nll_loss": nll})


@paired_loss(
    "wpo",
    needs_reference=True,
    paper="Zhou et al. 2024, WPO: Enhancing RLHF with Weighted Preference Optimization, arXiv:2406.11827 "
    "(length-normalised weight; β = 0.01)",
    formula="sg[exp(log π_θ(y_w)/|y_w| + log π_θ(y_l)/|y_l|)]·(−log σ(β·Δ))",
    hparams=[_BETA_WPO],
    needs_lengths=True,
    needs_nonpositive_logps=True,  # exp(log π_θ(y)/|y|) is a geometric-mean token probability
)
def wpo(t: PairedTerms, *, beta: float) -> Reported:
    """WPO: DPO reweighted by how likely the current policy finds the pair, w(y_w)·w(y_l), weights detached.

    w(y) = exp(log π_θ(y)/|y|) is the geometric-mean token probability, in (0, 1]. The product is formed
    as one exp of a sum of average log-probs (≤ 0), so it cannot overflow; it may underflow to 0 for very
    unlikely pairs, which then contribute nothing. The paper's calibrated weight needs Σ_v p² per token
    and is not available through this call (see the module docstring).

    Args:
        beta: β of the implicit reward.

    Metrics: `wpo_weight` = mean w(y_w)·w(y_l).
    """
    # Clamp at 0: a log-prob rounded above 0 must not give a weight above 1.
    log_weight = (t.chosen_avg_logps + t.rejected_avg_logps).clamp(max=0.0)
    weight = torch.exp(log_weight).detach()  # [B], the paper treats the weight as a constant
    return Reported(weight * neg_logsigmoid(beta * t.margin), metrics={"wpo_weight": weight})
