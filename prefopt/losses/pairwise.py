"""Pairwise preference losses with a reference model: DPO and its sigmoid-shaped, noise-robust variants.

Notation (per pair, shapes [B]; sums over completion tokens):

    ρ_w = log π_θ(y_w|x) − log π_ref(y_w|x)     ρ_l likewise for the rejected y_l
    Δ   = ρ_w − ρ_l                              the implicit-reward margin in log space
    x   = β·Δ                                    the logit every loss here is a function of

Each loss is a scalar function f(x) of that logit, averaged over the batch:

    dpo         −log σ(x)                                   Rafailov et al. 2023, arXiv:2305.18290, Eq. 7
    cdpo        (1−ε)(−log σ(x)) + ε(−log σ(−x))            Mitchell 2023, "A note on DPO with noisy
                                                            preferences & relationship to IPO" (cDPO)
    robust_dpo  [(1−ε)(−log σ(x)) − ε(−log σ(−x))]/(1−2ε)   Chowdhury et al. 2024, arXiv:2403.00409, Sec. 3.1
    exo         KL(Bern(σ(x)) ‖ Bern(1−ε))                  Ji et al. 2024, arXiv:2402.00856, Eq. 16
    discopop    σ(−x/τ)(−log σ(x)) + σ(x/τ)·e^{−x}          Lu et al. 2024, arXiv:2406.08414 (LRML)

cDPO and robust DPO share the ε-mixture of the forward and the label-flipped DPO losses but are not
the same loss: cDPO *adds* the flipped term, so its per-pair optimum is finite (x* = log((1−ε)/ε)),
while robust DPO *subtracts* it and rescales by 1/(1−2ε), which makes it an unbiased estimate of the
clean-label DPO loss under flip rate ε; its derivative in x is negative everywhere, tending to
−ε/(1−2ε), so the margin is never held at a finite value.

All of them log the standard DPO metrics (`rewards/*` = β·ρ, `logps/*`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from prefopt.losses.base import neg_logsigmoid
from prefopt.losses.kinds import PairedTerms, paired_loss
from prefopt.registry import POSITIVE, HParam, Interval

__all__ = ["BETA", "dpo", "cdpo", "robust_dpo", "exo", "discopop"]

BETA = HParam("beta", 0.1, "inverse temperature β of the implicit reward β·log π/π_ref", POSITIVE)

# Flip rates: ε = 0 reduces cDPO and robust DPO to DPO; ε = 1/2 makes the labels pure noise (and
# divides robust DPO by zero), so the domain is [0, 1/2).
_FLIP_RATE = Interval(0.0, 0.5, lo_closed=True)


@paired_loss(
    "dpo",
    needs_reference=True,
    paper="Rafailov et al. 2023, Direct Preference Optimization, arXiv:2305.18290 (Eq. 7)",
    formula="−log σ(β·Δ)",
    hparams=[BETA],
)
def dpo(t: PairedTerms, *, beta: float) -> Tensor:
    """Direct Preference Optimization: logistic loss on the margin of implicit rewards.

    Args:
        beta: β; the implicit reward is r̂ = β·ρ (paper: 0.1 on Anthropic-HH, App. B).
    """
    return neg_logsigmoid(beta * t.margin)


@paired_loss(
    "cdpo",
    needs_reference=True,
    paper=(
        "Mitchell 2023, A note on DPO with noisy preferences & relationship to IPO (conservative DPO, "
        "ericmitchell.ai/cdpo.pdf); ε = 0.2 is the HALOs default (config/loss/cdpo.yaml), the note fixes none"
    ),
    formula="(1−ε)·(−log σ(β·Δ)) + ε·(−log σ(−β·Δ))",
    hparams=[
        BETA,
        HParam(
            "epsilon",
            0.2,
            "label-smoothing ε: assumed fraction of flipped preference labels",
            _FLIP_RATE,
            aliases=("label_smoothing",),  # TRL ≤ 0.28, loss_type="sigmoid"
        ),
    ],
)
def cdpo(t: PairedTerms, *, beta: float, epsilon: float) -> Tensor:
    """Conservative DPO (label smoothing): DPO against soft targets P(y_w ≻ y_l) = 1 − ε.

    The loss is the binary cross-entropy of σ(β·Δ) against 1 − ε, so each pair has a finite optimum
    β·Δ* = log((1−ε)/ε) instead of DPO's Δ → ∞.

    Args:
        beta: β of the implicit reward.
        epsilon: ε ∈ [0, ½); ε = 0 is DPO.
    """
    x = beta * t.margin  # [B]
    return (1.0 - epsilon) * neg_logsigmoid(x) + epsilon * neg_logsigmoid(-x)


@paired_loss(
    "robust_dpo",
    needs_reference=True,
    paper=(
        "Chowdhury, Kini & Natarajan 2024, Provably Robust DPO: Aligning Language Models with Noisy Feedback, "
        "arXiv:2403.00409 (Sec. 3.1; β = 0.1 in Table 4, ε = 0.1 in Sec. 6)"
    ),
    formula="[(1−ε)·(−log σ(β·Δ)) − ε·(−log σ(−β·Δ))] / (1−2ε)",
    hparams=[
        BETA,
        HParam(
            "epsilon",
            0.1,
            "known label-flip rate ε of the preference data (must be < ½)",
            _FLIP_RATE,
            aliases=("label_smoothing",),  # TRL loss_type="robust"
        ),
    ],
)
def robust_dpo(t: PairedTerms, *, beta: float, epsilon: float) -> Tensor:
    """Robust DPO (rDPO): an unbiased estimate of the clean-label DPO loss under random label flips.

    If each label is flipped independently with probability ε, the expectation of this loss over the
    flip equals the DPO loss of the clean pair. It is not bounded below: for large β·Δ it decreases
    linearly with slope −ε/(1−2ε) (per unit of β·Δ).

    Args:
        beta: β of the implicit reward.
        epsilon: flip rate ε ∈ [0, ½); ε = 0 is DPO.
    """
    x = beta * t.margin  # [B]
    return ((1.0 - epsilon) * neg_logsigmoid(x) - epsilon * neg_logsigmoid(-x)) / (1.0 - 2.0 * epsilon)


@paired_loss(
    "exo",
    needs_reference=True,
    paper=(
        "Ji et al. 2024, Towards Efficient Exact Optimization of Language Model Alignment, arXiv:2402.00856 "
        "(Eq. 16, EXO-pair; ε = 1e-3 recommended, β_r = 0.1 in App. B)"
    ),
    formula="σ(β·Δ)·[log σ(β·Δ) − log(1−ε)] + σ(−β·Δ)·[log σ(−β·Δ) − log ε]",
    hparams=[
        BETA,
        HParam(
            "epsilon",
            1e-3,
            "ε > 0 of the smoothed target Bern(1−ε); ε = 0 makes the KL infinite",
            Interval(0.0, 0.5),
            aliases=("label_smoothing",),  # TRL loss_type="exo_pair"
        ),
    ],
)
def exo(t: PairedTerms, *, beta: float, epsilon: float) -> Tensor:
    """EXO-pair: reverse KL from the policy's pair preference σ(β·Δ) to the smoothed label Bern(1−ε).

    Where DPO minimises the forward KL (cross-entropy) to the label, EXO minimises
    KL(Bern(σ(β·Δ)) ‖ Bern(1−ε)), which is mode-seeking; the minimum is 0 at σ(β·Δ) = 1 − ε.
    Computed from log σ(±x) so that neither term forms 0·log 0.

    Args:
        beta: β (β_π in the paper) scaling the policy log-ratio.
        epsilon: ε ∈ (0, ½) of the target distribution.
    """
    x = beta * t.margin  # [B]
    log_p_chosen, log_p_rejected = F.logsigmoid(x), F.logsigmoid(-x)  # log σ(x), log σ(−x) = log(1 − σ(x))
    return log_p_chosen.exp() * (log_p_chosen - math.log1p(-epsilon)) + log_p_rejected.exp() * (
        log_p_rejected - math.log(epsilon)
    )


@paired_loss(
    "discopop",
    needs_reference=True,
    paper=(
        "Lu et al. 2024, Discovering Preference Optimization Algorithms with and for Large Language Models, "
        "arXiv:2406.08414 (log-ratio modulated loss, LRML; β = 0.05 in App. B.1, τ = 0.05 in App. E)"
    ),
    formula="σ(−β·Δ/τ)·(−log σ(β·Δ)) + σ(β·Δ/τ)·exp(−β·Δ)",
    hparams=[
        HParam("beta", 0.05, "inverse temperature β of the implicit reward β·log π/π_ref", POSITIVE),
        HParam(
            "tau",
            0.05,
            "temperature τ of the sigmoid that blends the logistic and exponential losses",
            POSITIVE,
            aliases=("discopop_tau",),  # TRL
        ),
    ],
)
def discopop(t: PairedTerms, *, beta: float, tau: float) -> Tensor:
    """DiscoPOP (LRML): a sigmoid-weighted blend of the logistic (DPO) and exponential losses.

    With x = β·Δ, the weight σ(x/τ) moves from the logistic loss (x ≪ 0) to e^{−x} (x ≫ 0). The
    exponential term is evaluated as exp(log σ(x/τ) − x), whose exponent is bounded above (by about
    −0.2 at τ = 0.05), so it never overflows even for β·Δ ≪ 0 where e^{−x} alone would.

    Args:
        beta: β of the implicit reward.
        tau: τ of the blending sigmoid.
    """
    x = beta * t.margin  # [B]
    logistic_weight = torch.sigmoid(-x / tau)  # 1 − σ(x/τ)
    exponential = torch.exp(F.logsigmoid(x / tau) - x)  # σ(x/τ)·e^{−x}
    return logistic_weight * neg_logsigmoid(x) + exponential
