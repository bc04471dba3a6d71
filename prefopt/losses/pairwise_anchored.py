"""Anchored pairwise losses: each completion's implicit reward is pushed against a fixed anchor (0), or
the whole batch's reward distributions are compared, instead of only the margin Δ as in DPO.

Notation (per pair, shapes [B]; sums over completion tokens):

    ρ_w = log π_θ(y_w|x) − log π_ref(y_w|x)     ρ_l likewise for the rejected y_l
    r̂_w = β·ρ_w,  r̂_l = β·ρ_l                   implicit rewards (DPO Eq. 5)
    Δ   = ρ_w − ρ_l

NCA-pair — Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards",
arXiv:2402.05369 (pairwise NCA, Sec. 4.1):
    L = −log σ(r̂_w) − ½ log σ(−r̂_w) − ½ log σ(−r̂_l)
    The first term raises the chosen reward on an absolute scale, so the chosen likelihood cannot fall
    the way it can under DPO (which sees only the difference).

BCO-pair — Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
arXiv:2404.04656: a binary classifier with logit r̂ − δ, chosen = positive, rejected = negative:
    L = −log σ(r̂_w − δ) − log σ(−(r̂_l − δ)),   here δ = 0
    The paper's δ is a running mean of all rewards (kept by the unpaired `bco`); the paired form here
    uses δ = 0, as current TRL `bco_pair` does, which keeps the loss a pure function of the batch.

APO-zero / APO-down — D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive
Revisions", arXiv:2408.06266 (Sec. 4):
    APO-zero: L = (1 − σ(r̂_w)) + σ(r̂_l)          push y_w up and y_l down (model worse than the data)
    APO-down: L = σ(r̂_w) + (1 − σ(β·Δ))           push both down, y_l more (model better than y_w)
    The constant 1 in each only keeps the loss non-negative; it does not change the gradient.

AOT — Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport",
arXiv:2406.05882 (Sec. 3): first-order stochastic dominance of one distribution over another, relaxed to
a 1-D optimal-transport problem whose solution pairs the *sorted* samples (quantiles):
    aot (paired):    u_i = log π_θ(y_w) − log π_θ(y_l),  v_i = log π_ref(y_w) − log π_ref(y_l);
                     sort u and v independently; L = (1/B) Σ_i ℓ(β(u_(i) − v_(i)))
    aot_unpaired:    sort ρ_w and ρ_l independently;  L = (1/B) Σ_i ℓ(β(ρ_w,(i) − ρ_l,(i)))
    with ℓ(z) = (1−ε)·(−log σ(z)) + ε·(−log σ(−z)) (ε = 0 is the paper's logistic relaxation).
    Consequences of the sort, documented on each function:
      * the loss depends on the whole batch, so it is NOT additive over micro-batches: under gradient
        accumulation the result differs from the full-batch loss (use one large batch per step);
      * `per_example[i]` is the loss of the i-th sorted quantile, not of input row i;
      * the loss is invariant to permuting the rows of the batch.

All of these take summed log-probs; the registry upcasts bf16/fp16 inputs and detaches the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefopt.losses.base import neg_logsigmoid
from prefopt.losses.kinds import PairedTerms, Reported, paired_loss
from prefopt.losses.pairwise import BETA
from prefopt.registry import POSITIVE, HParam, Interval

__all__ = ["nca", "bco_pair", "apo_zero", "apo_down", "aot", "aot_unpaired"]

# β defaults as used in the papers' own experiments (read via the TRL paper index, which cites sections):
# NCA Sec. C (α = 0.01 in the paper's notation), BCO Sec. C (β = 0.01), AOT (β = 0.01); APO uses β = 0.1.
_BETA_NCA = HParam("beta", 0.01, "reward scale β of r̂ = β·log π/π_ref (NCA paper App. C uses 0.01)", POSITIVE)
_BETA_BCO = HParam("beta", 0.01, "reward scale β of r̂ = β·log π/π_ref (BCO paper App. C uses 0.01)", POSITIVE)
_BETA_AOT = HParam("beta", 0.01, "reward scale β inside the logistic relaxation (AOT paper uses 0.01)", POSITIVE)
_AOT_SMOOTHING = HParam(
    "label_smoothing",
    0.0,
    "ε: weight of the reversed logistic term, as in cDPO; 0 is the paper's loss (TRL keeps ε for aot)",
    Interval(0.0, 0.5, lo_closed=True),
)


@paired_loss(
    "nca",
    needs_reference=True,
    paper="Chen et al. 2024, Noise Contrastive Alignment of Language Models with Explicit Rewards, "
    "arXiv:2402.05369 (pairwise NCA, Sec. 4.1; β = 0.01 from App. C)",
    formula="−log σ(β·ρ_w) − ½·log σ(−β·ρ_w) − ½·log σ(−β·ρ_l)",
    hparams=[_BETA_NCA],
)
def nca(t: PairedTerms, *, beta: float) -> Tensor:
    """NCA-pair: noise-contrastive alignment, anchoring the chosen reward at 0 instead of only the margin.

    Args:
        beta: β of the implicit reward r̂ = β·ρ.

    Returns:
        per_example [B] = −log σ(r̂_w) − ½ log σ(−r̂_w) − ½ log σ(−r̂_l).
    """
    chosen, rejected = beta * t.chosen_ratio, beta * t.rejected_ratio  # r̂_w, r̂_l
    return neg_logsigmoid(chosen) + 0.5 * neg_logsigmoid(-chosen) + 0.5 * neg_logsigmoid(-rejected)


@paired_loss(
    "bco_pair",
    needs_reference=True,
    paper="Jung et al. 2024, Binary Classifier Optimization for Large Language Model Alignment, "
    "arXiv:2404.04656 (Sec. 4, paired with δ = 0; β = 0.01 from App. C)",
    formula="−log σ(β·ρ_w) − log σ(−β·ρ_l)",
    hparams=[_BETA_BCO],
)
def bco_pair(t: PairedTerms, *, beta: float) -> Tensor:
    """BCO on pairs: binary cross-entropy with chosen as positive and rejected as negative, shift δ = 0.

    The paper's reward shift δ (a running mean of rewards) is not used here, so the loss depends on
    nothing but the batch; the unpaired `bco` keeps δ.

    Args:
        beta: β of the implicit reward r̂ = β·ρ.

    Returns:
        per_example [B] = −log σ(r̂_w) − log σ(−r̂_l).
    """
    return neg_logsigmoid(beta * t.chosen_ratio) + neg_logsigmoid(-beta * t.rejected_ratio)


@paired_loss(
    "apo_zero",
    needs_reference=True,
    paper="D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions, "
    "arXiv:2408.06266 (APO-zero, Sec. 4; β = 0.1, Sec. 5.2)",
    formula="(1 − σ(β·ρ_w)) + σ(β·ρ_l)",
    hparams=[BETA],
)
def apo_zero(t: PairedTerms, *, beta: float) -> Tensor:
    """APO-zero: raise the chosen likelihood and lower the rejected one, each anchored at ρ = 0.

    For data whose chosen answers are better than the model's own (the paper's guidance).

    Args:
        beta: β of the implicit reward r̂ = β·ρ.

    Returns:
        per_example [B] = σ(−r̂_w) + σ(r̂_l) ∈ (0, 2).
    """
    # 1 − σ(z) = σ(−z) exactly, and σ is bounded, so this form is stable for any finite input.
    return torch.sigmoid(-beta * t.chosen_ratio) + torch.sigmoid(beta * t.rejected_ratio)


@paired_loss(
    "apo_down",
    needs_reference=True,
    paper="D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions, "
    "arXiv:2408.06266 (APO-down, Sec. 4; β = 0.1, Sec. 5.2)",
    formula="σ(β·ρ_w) + (1 − σ(β·Δ))",
    hparams=[BETA],
)
def apo_down(t: PairedTerms, *, beta: float) -> Tensor:
    """APO-down: lower the chosen likelihood while lowering the rejected one faster.

    For data whose chosen answers are worse than the model's own (the paper's guidance).

    Args:
        beta: β of the implicit reward r̂ = β·ρ.

    Returns:
        per_example [B] = σ(r̂_w) + σ(−β·Δ) ∈ (0, 2).
    """
    return torch.sigmoid(beta * t.chosen_ratio) + torch.sigmoid(-beta * t.margin)


def _sorted_quantile_loss(upper: Tensor, lower: Tensor, beta: float, label_smoothing: float) -> Reported:
    """AOT's closed-form 1-D transport: pair the ascending-sorted samples of two [B] vectors.

    per_example [B] per quantile: ℓ(z) = (1−ε)·(−log σ(z)) + ε·(−log σ(−z)) with z = β·(upper_(i) − lower_(i));
    metric `quantile_violations`: the fraction of quantiles where `upper` fails to dominate `lower`.
    """
    gap = torch.sort(upper).values - torch.sort(lower).values  # [B], i-th quantile of each side
    z = beta * gap
    per_quantile = (1.0 - label_smoothing) * neg_logsigmoid(z) + label_smoothing * neg_logsigmoid(-z)
    return Reported(per_quantile, metrics={"quantile_violations": (gap < 0).float().mean()})


@paired_loss(
    "aot",
    needs_reference=True,
    paper="Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport, "
    "arXiv:2406.05882 (AOT paired, Sec. 3; β = 0.01)",
    formula="(1/B)·Σ_i ℓ(β·(sort(u)_i − sort(v)_i)), u = logπ_θ(y_w)−logπ_θ(y_l), v = same under π_ref",
    hparams=[_BETA_AOT, _AOT_SMOOTHING],
    batch_dependent=True,
)
def aot(t: PairedTerms, *, beta: float, label_smoothing: float) -> Reported:
    """AOT, paired: the policy's chosen-vs-rejected log-ratio distribution must dominate the reference's.

    u_i = log π_θ(y_w) − log π_θ(y_l) and v_i = log π_ref(y_w) − log π_ref(y_l) are sorted
    independently over the batch and matched quantile by quantile.

    Batch dependence: the loss couples all rows through the sort, so it is not a sum of per-row terms
    and is NOT usable with micro-batched gradient accumulation (the accumulated gradient would be that of
    a different, per-micro-batch objective). `per_example[i]` is the loss of the i-th sorted quantile,
    not of input row i. The loss is invariant to permuting the batch rows.

    Args:
        beta: β scaling the quantile gaps inside the logistic relaxation.
        label_smoothing: ε of the reversed logistic term (0 = the paper's loss).

    Returns:
        per_example [B] per sorted quantile; metric `quantile_violations` is the fraction of quantiles
        where sort(u)_i < sort(v)_i (dominance violated).
    """
    # Row by row u − v = Δ, but u and v are sorted separately, so the quantile gaps are not the Δ_i.
    return _sorted_quantile_loss(t.policy_margin, t.ref_margin, beta, label_smoothing)


@paired_loss(
    "aot_unpaired",
    needs_reference=True,
    paper="Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport, "
    "arXiv:2406.05882 (AOT unpaired, Sec. 3; β = 0.01)",
    formula="(1/B)·Σ_i ℓ(β·(sort(ρ_w)_i − sort(ρ_l)_i)), ℓ(z) = −log σ(z) at ε = 0",
    hparams=[_BETA_AOT, _AOT_SMOOTHING],
    batch_dependent=True,
)
def aot_unpaired(t: PairedTerms, *, beta: float, label_smoothing: float) -> Reported:
    """AOT, unpaired objective on paired batches: the distribution of chosen rewards ρ_w must dominate that of ρ_l.

    ρ_w and ρ_l are sorted separately, so the pairing of rows in the input is ignored: "unpaired" is the
    paper's name for this objective (Melnyk et al. 2024, Sec. 3: the marginal reward distributions of
    positive and negative samples, whichever prompt they answer), not a data kind. Matching sorted
    quantiles needs as many rejected as chosen completions in every batch, which the paired layout
    guarantees and labelled unpaired data (a varying count of each per batch) does not, so its data kind
    is "paired": prompt/chosen/rejected rows whose pairing the loss ignores.

    Batch dependence: as for `aot`, the sort couples all rows; do not use under micro-batched gradient
    accumulation. `per_example[i]` is the loss of the i-th sorted quantile, not of input row i, and the
    loss is invariant to permuting the chosen and the rejected rows (even independently).

    Args:
        beta: β scaling the quantile gaps inside the logistic relaxation.
        label_smoothing: ε of the reversed logistic term (0 = the paper's loss).

    Returns:
        per_example [B] per sorted quantile; metric `quantile_violations` is the fraction of quantiles
        where sort(ρ_w)_i < sort(ρ_l)_i.
    """
    return _sorted_quantile_loss(t.chosen_ratio, t.rejected_ratio, beta, label_smoothing)
