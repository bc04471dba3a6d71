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

WPO — Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization", arXiv:2406.11827
(Eq. 2–3, weight alignment; the authors' scripts/run_wpo.py):
    L = min(w(y_w)·w(y_l), 1)·(−log σ(β·Δ)),   weights detached (no gradient)
    w(y) = exp((1/|y|)·Σ_t [log π_θ(y_t|x, y_<t) − log Σ_v π_θ(v|x, y_<t)²])
    The alignment divides each token's probability by Σ_v p_v², the probability that two samples of that
    position agree, so a token that is as likely as the policy's typical sample there weighs 1 whether the
    distribution is peaked or flat; without it, flat positions (many plausible tokens) weigh exponentially less
    and pairs are weighted by the entropy of their contexts, not by how on-policy they are. Σ_t log Σ_v p_v²
    per sequence is an engine statistic (`SequenceLogProbs.log_sum_sq_probs`, computed on the fused head's
    logits tiles, never the N×V logits), which `prefopt.LossCall` and the training loop pass as the inputs
    `chosen_log_sum_sq_probs`, `rejected_log_sum_sq_probs`. The authors clamp the product at 1 (`clamp_weight`);
    TRL ≥ 0.29's `use_weighting` does not (`clamp_weight=False`).
wpo_unaligned — the weight without the alignment, w(y) = exp(log π_θ(y|x)/|y|) (the geometric-mean token
    probability), prefopt's `wpo` before the engine supplied Σ_v p_v². It is not the paper's WPO: kept, under
    this name, for runs that cannot serve the statistic (a loss called on sequence log-probs alone) and to
    reproduce earlier prefopt results.

ODPO — Amini, Vieira & Cotterell 2024, "Direct Preference Optimization with an Offset", arXiv:2402.10571
(Eq. 8; the authors' trainers.py `preference_loss(offset=True)`):
    L = −log σ(β·Δ − α·log(s(y_w) − s(y_l)))
    The offset asks the chosen to win by more when its score s is much higher. s_w − s_l > 0 comes from the
    data: a paired row's `margin` column (docs/data.md), the extra input `margin` [B]; for the authors' ratio
    variant put s_w/s_l there.

Where the defaults come from (β's meaning differs per loss, so each has its own):
    dpop      β = 0.3, λ = 50: the values used to train Smaug with DPOP; re-implementations of DPOP
              default to λ = 50 as well. The paper's own text could not be re-read while writing this,
              so treat both as "as reported for Smaug" rather than as a universal recommendation.
    rdpo      β = 0.1 (DPO's); α has no single paper default (the paper sweeps it per dataset), 0.05
              is a mid-range starting point in logit units per token — tune it.
    dpo_norm  β = 5: Tülu 3 8B DPO (open-instruct `--dpo_loss_type dpo_norm --dpo_beta 5`).
    rpo       α = 1 (Pang et al.), β = 0.1.
    wpo       β = 0.01 (the authors' training configs), clamp_weight (their clamp of the weight at 1).
    odpo      β = 0.1, α = 1 (the authors' config/loss/odpo.yaml; β is set per task there).

LD-DPO (Liu et al. 2024, arXiv:2409.06411) is deliberately *not* registered: it replaces each sequence
log-prob by logp(shared prefix of length min(|y_w|, |y_l|)) + α·logp(remaining tail), which needs the
log-prob of the first min(|y_w|, |y_l|) tokens of each completion. The uniform paired call only carries
whole-sequence sums, and splitting a sum by length (e.g. scaling by a token fraction) would be a different
loss under the paper's name. It fits once the engine returns per-token log-probs to the loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefopt.losses.base import neg_logsigmoid
from prefopt.losses.kinds import PairedTerms, Reported, paired_loss
from prefopt.losses.pairwise import BETA
from prefopt.registry import NON_NEGATIVE, POSITIVE, HParam, LossInputError

__all__ = ["dpop", "rdpo", "dpo_norm", "rpo", "wpo", "wpo_unaligned", "odpo"]

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
_ALPHA_RPO = HParam(
    "alpha",
    1.0,
    "α: weight of the chosen token-mean NLL (Pang et al. 2024 use 1)",
    NON_NEGATIVE,
    aliases=("rpo_alpha",),  # TRL ≤ 0.28
)
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


def _log_sum_sq_probs(chosen: Tensor | None, rejected: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
    """The [B] Σ_t log Σ_v π_θ(v)² of both completions, checked (given, one per pair, ≤ 0 up to rounding)."""
    if chosen is None or rejected is None:
        raise LossInputError(
            "wpo needs chosen_log_sum_sq_probs and rejected_log_sum_sq_probs, Σ_t log Σ_v π_θ(v|x, y_<t)² of each "
            "completion: the engine's SequenceLogProbs.log_sum_sq_probs (engine(batch, return_stats=True)); "
            "prefopt.LossCall('wpo', ...) and prefopt train pass them. Without them, 'wpo_unaligned' is the weight "
            "exp(mean_t log p_t) (not the paper's)."
        )
    out = []
    for name, value in (("chosen_log_sum_sq_probs", chosen), ("rejected_log_sum_sq_probs", rejected)):
        if not isinstance(value, Tensor) or value.shape != like.shape:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise LossInputError(f"wpo: {name} must be a tensor of shape {tuple(like.shape)}, got {got}.")
        if bool((value.detach() > 1e-3).any()):
            rows = (value.detach() > 1e-3).nonzero().flatten().tolist()
            raise LossInputError(f"wpo: {name} is above 0 at rows {rows}; log Σ_v p_v² ≤ 0 for a distribution.")
        out.append(value.detach().to(like.dtype))
    return out[0], out[1]


@paired_loss(
    "wpo",
    needs_reference=True,
    paper="Zhou et al. 2024, WPO: Enhancing RLHF with Weighted Preference Optimization, arXiv:2406.11827 "
    "(Eq. 2–3, the aligned weight; β = 0.01 and the clamp at 1 from the authors' code)",
    formula="sg[min(w(y_w)·w(y_l), 1)]·(−log σ(β·Δ)), w(y) = exp(mean_t[log π_θ(y_t) − log Σ_v π_θ(v)²])",
    hparams=[
        _BETA_WPO,
        HParam(
            "clamp_weight",
            True,
            "clamp the pair weight w(y_w)·w(y_l) at 1, as the authors' code does; False: unclamped, as TRL ≥ 0.29's "
            "use_weighting",
            choices=(True, False),
        ),
    ],
    needs_lengths=True,
    needs_nonpositive_logps=True,  # the weight exp(mean_t log p_t − …) reads log-probs as probabilities
)
def wpo(
    t: PairedTerms,
    *,
    chosen_log_sum_sq_probs: Tensor | None,
    rejected_log_sum_sq_probs: Tensor | None,
    beta: float,
    clamp_weight: bool,
) -> Reported:
    """WPO: DPO reweighted by how likely the current policy is to produce the pair, with the paper's alignment.

    w(y) = exp((log π_θ(y) − Σ_t log Σ_v π_θ(v)²)/|y|): each token's probability relative to the probability
    that two samples of its position agree. The product w(y_w)·w(y_l), detached, is formed as one exp of a sum
    (clamped at 0 before the exp with clamp_weight), so the clamped weight cannot overflow.

    Args:
        chosen_log_sum_sq_probs, rejected_log_sum_sq_probs: [B] Σ_t log Σ_v π_θ(v|x, y_<t)² of each completion
            (`SequenceLogProbs.log_sum_sq_probs`; served by LossCall and the training loop).
        beta: β of the implicit reward. clamp_weight: clamp the product at 1 (the authors' code).

    Metrics: `wpo_weight` = mean w(y_w)·w(y_l).
    """
    sq_w, sq_l = _log_sum_sq_probs(chosen_log_sum_sq_probs, rejected_log_sum_sq_probs, t.chosen_logps)
    aligned = (t.chosen_logps.detach() - sq_w) / t.chosen_lengths + (
        t.rejected_logps.detach() - sq_l
    ) / t.rejected_lengths
    if clamp_weight:
        aligned = aligned.clamp(max=0.0)
    weight = torch.exp(aligned)  # [B], detached
    return Reported(weight * neg_logsigmoid(beta * t.margin), metrics={"wpo_weight": weight})


@paired_loss(
    "wpo_unaligned",
    needs_reference=True,
    paper="Zhou et al. 2024, WPO, arXiv:2406.11827, without the paper's weight alignment (Eq. 3): the "
    "length-normalised sequence probability as the weight; β = 0.01",
    formula="sg[exp(log π_θ(y_w)/|y_w| + log π_θ(y_l)/|y_l|)]·(−log σ(β·Δ))",
    hparams=[_BETA_WPO],
    needs_lengths=True,
    needs_nonpositive_logps=True,  # exp(log π_θ(y)/|y|) is a geometric-mean token probability
)
def wpo_unaligned(t: PairedTerms, *, beta: float) -> Reported:
    """WPO's weight without its alignment: DPO times w(y_w)·w(y_l), w(y) = exp(log π_θ(y)/|y|), detached.

    Not the paper's WPO (see `wpo` and the module docstring): without dividing by Σ_v p_v², a pair's weight
    falls with the entropy of its contexts, so it reweights pairs differently. Kept under this name for calls
    on sequence log-probs alone and to reproduce prefopt's earlier `wpo`. The weight is one exp of a sum of
    average log-probs (clamped at 0), so it lies in (0, 1] and cannot overflow.

    Args:
        beta: β of the implicit reward.

    Metrics: `wpo_weight` = mean w(y_w)·w(y_l).
    """
    # Clamp at 0: a log-prob rounded above 0 must not give a weight above 1.
    log_weight = (t.chosen_avg_logps + t.rejected_avg_logps).clamp(max=0.0)
    weight = torch.exp(log_weight).detach()  # [B], the paper treats the weight as a constant
    return Reported(weight * neg_logsigmoid(beta * t.margin), metrics={"wpo_weight": weight})


@paired_loss(
    "odpo",
    needs_reference=True,
    paper="Amini, Vieira & Cotterell 2024, Direct Preference Optimization with an Offset, arXiv:2402.10571 "
    "(Eq. 8, offset α·log(s_w − s_l); α = 1 from the authors' config)",
    formula="−log σ(β·Δ − α·log(margin)), margin = s(y_w) − s(y_l) > 0 from the data",
    hparams=[
        BETA,
        HParam("alpha", 1.0, "α: scale of the offset α·log(s_w − s_l) (the authors' default 1)", NON_NEGATIVE),
    ],
)
def odpo(t: PairedTerms, *, margin: Tensor | None, beta: float, alpha: float) -> Reported:
    """ODPO: DPO that asks each pair's implicit-reward margin to exceed an offset set by its score difference.

    Args:
        margin: [B] s(y_w) − s(y_l) > 0, the data's score difference (a paired row's `margin` column, served
            from the batch; or s_w/s_l for the ratio variant).
        beta: β; alpha: α, the scale of the offset (α = 0 is DPO).

    Metrics: `offset` = mean α·log(margin).
    """
    if margin is None:
        raise LossInputError(
            "odpo needs margin = s(y_w) − s(y_l) > 0 per pair: give the paired data a `margin` column (the score "
            "difference, docs/data.md), or pass margin= ([B]) when calling the loss."
        )
    if not isinstance(margin, Tensor) or margin.shape != t.margin.shape:
        got = tuple(margin.shape) if isinstance(margin, Tensor) else type(margin).__name__
        raise LossInputError(f"odpo: margin must be a tensor of shape {tuple(t.margin.shape)}, got {got}.")
    if bool((margin <= 0).any()):
        rows = (margin <= 0).nonzero().flatten().tolist()
        raise LossInputError(
            f"odpo: margin is ≤ 0 at rows {rows[:10]}; the offset α·log(s_w − s_l) needs the chosen's score above "
            f"the rejected's: drop tied pairs, or orient each pair by its scores."
        )
    offset = alpha * torch.log(margin.detach().to(t.margin.dtype))  # [B]
    return Reported(neg_logsigmoid(beta * t.margin - offset), metrics={"offset": offset})
