"""DPO under other divergences from the reference: f-divergences (f-DPO) and the token-level KL (TDPO).

Notation (per pair, shapes [B]; log-probs are sums over completion tokens):

    ρ_w = log π_θ(y_w|x) − log π_ref(y_w|x)     ρ_l likewise;  u = e^ρ = π_θ(y|x)/π_ref(y|x)
    Δ   = ρ_w − ρ_l                              DPO: L = −log σ(β·Δ)  (Rafailov et al. 2023, Eq. 7)

f-DPO — Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse
Divergence Constraints", arXiv:2309.16240 (Table 1 and the f-DPO loss): regularising the RLHF objective by an
f-divergence D_f(π_θ‖π_ref) instead of the reverse KL, the optimal policy satisfies r = β·f'(u) + const, so

    L = −log σ(β·f'(u_w) − β·f'(u_l))

    divergence    f'(u)                    β·f'(u_w) − β·f'(u_l) with ρ = log u
    reverse_kl    log u + 1                β·Δ                                  = DPO exactly
    forward_kl    −1/u                     β·(e^{−ρ_l} − e^{−ρ_w})
    js            log(2u/(1 + u))          β·(log σ(ρ_w) − log σ(ρ_l))
    alpha         (1 − u^{−α})/α, α∈(0,1)  β·(e^{−α·ρ_l} − e^{−α·ρ_w})/α       → reverse KL as α → 0, forward as α → 1

The α of the paper's Table 1 is α here. TRL ≥ 0.29 writes f'(u) = (u^{c−1} − 1)/(c − 1) with
`f_alpha_divergence_coef` c, which is the same function for c = 1 − α (TRL ≤ 0.28 used c = α);
`prefopt.trl_config` converts. The exponentials of forward_kl and alpha are taken of arguments capped at
log(largest float) − 8 (TRL caps them likewise), so a log-ratio of −1e4 gives a large finite loss, not inf.

TDPO — Zeng et al. 2024, "Token-level Direct Preference Optimization", arXiv:2404.11999 (Eq. 18 and 19): DPO
whose margin is corrected by the sequential KL divergence of each completion,

    D_SeqKL(x, y) = Σ_t KL(π_ref(·|x, y_<t) ‖ π_θ(·|x, y_<t))            a sum over the completion's positions
    δ = D_SeqKL(x, y_l) − D_SeqKL(x, y_w)
    tdpo1:  L = −log σ(β·(Δ − δ))
    tdpo:   L = −log σ(β·(Δ − α·(D_SeqKL(x, y_l) − sg[D_SeqKL(x, y_w)])))      TDPO₂, the authors' recommendation

The sequential KL is over the whole vocabulary at every position: it needs both models' next-token
distributions, which per-sequence log-probs do not carry. The losses take it as inputs (`chosen_seq_kl`,
`rejected_seq_kl`, [B], differentiable in π_θ); `prefopt.LossCall` computes them exactly from the policy's and
the reference model's hidden states with `prefopt.kernels.linear_sequential_kl` (no B×T×V logits).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from prefopt.losses.base import neg_logsigmoid
from prefopt.losses.kinds import PairedTerms, Reported, paired_loss
from prefopt.losses.pairwise import BETA
from prefopt.registry import UNIT_OPEN, HParam, LossInputError

__all__ = ["DIVERGENCES", "f_divergence_margin", "fdpo", "tdpo", "tdpo1"]

DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")


def _capped_exp(x: Tensor) -> Tensor:
    """e^x with x capped at log(largest float) − 8, so that sums and β-multiples of it stay finite."""
    return torch.exp(x.clamp(max=math.log(torch.finfo(x.dtype).max) - 8.0))


def f_divergence_margin(chosen_ratio: Tensor, rejected_ratio: Tensor, divergence: str, alpha: float) -> Tensor:
    """f'(u_w) − f'(u_l) for log-ratios ρ = log u [B] (the table of the module docstring; constants cancel)."""
    if divergence == "reverse_kl":
        return chosen_ratio - rejected_ratio
    if divergence == "forward_kl":
        return _capped_exp(-rejected_ratio) - _capped_exp(-chosen_ratio)
    if divergence == "js":
        return F.logsigmoid(chosen_ratio) - F.logsigmoid(rejected_ratio)
    return (_capped_exp(-alpha * rejected_ratio) - _capped_exp(-alpha * chosen_ratio)) / alpha


@paired_loss(
    "fdpo",
    needs_reference=True,
    paper="Wang et al. 2023, Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse Divergence "
    "Constraints, arXiv:2309.16240 (Table 1, the f-DPO loss; β = 0.1, α = 0.5 as TRL's default)",
    formula="−log σ(β·f'(π_θ(y_w)/π_ref(y_w)) − β·f'(π_θ(y_l)/π_ref(y_l))), f' of `divergence`",
    hparams=[
        BETA,
        HParam(
            "divergence",
            "reverse_kl",
            "the f-divergence from the reference: reverse_kl (= dpo), forward_kl, js (Jensen–Shannon), alpha",
            choices=DIVERGENCES,
            aliases=("f_divergence_type",),  # TRL DPOConfig (its names differ: prefopt.trl_config converts)
        ),
        HParam(
            "alpha",
            0.5,
            "α of the α-divergence, f'(u) = (1 − u^−α)/α (paper's α; TRL ≥ 0.29 f_alpha_divergence_coef = 1 − α); "
            "read only with divergence='alpha'",
            UNIT_OPEN,
        ),
    ],
)
def fdpo(t: PairedTerms, *, beta: float, divergence: str, alpha: float) -> Reported:
    """f-DPO: DPO for an f-divergence regulariser, −log σ(β·(f'(u_w) − f'(u_l))) with u = π_θ/π_ref.

    `divergence='reverse_kl'` is `dpo` exactly. Forward KL and small-α divergences penalise a completion whose
    probability fell below the reference's much harder than DPO (f'(u) → −∞ as u → 0 like −1/u or −u^−α/α).

    Args:
        beta: β of the implicit reward β·f'(u).
        divergence: reverse_kl, forward_kl, js or alpha.
        alpha: α ∈ (0, 1) of the α-divergence (ignored by the others).

    Metrics: `f_margin` = mean f'(u_w) − f'(u_l).
    """
    margin = f_divergence_margin(t.chosen_ratio, t.rejected_ratio, divergence, alpha)  # [B]
    return Reported(neg_logsigmoid(beta * margin), metrics={"f_margin": margin})


def _seq_kl(loss: str, chosen: Tensor | None, rejected: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
    """The two [B] sequential KLs, checked: given, one value per pair, ≥ 0 up to rounding."""
    if chosen is None or rejected is None:
        raise LossInputError(
            f"{loss} needs chosen_seq_kl and rejected_seq_kl, Σ_t KL(π_ref(·|x, y_<t) ‖ π_θ(·|x, y_<t)) of each "
            f"completion ([B], with gradient): prefopt.LossCall({loss!r}, engine=..., reference="
            f"ReferenceLogProbs.from_model(ref_model)) computes them from both models (a reference cache cannot)."
        )
    out = []
    for name, value in (("chosen_seq_kl", chosen), ("rejected_seq_kl", rejected)):
        if not isinstance(value, Tensor) or value.shape != like.shape:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise LossInputError(f"{loss}: {name} must be a tensor of shape {tuple(like.shape)}, got {got}.")
        if bool((value.detach() < -1e-3).any()):
            raise LossInputError(
                f"{loss}: {name} is below 0 at rows {(value < -1e-3).nonzero().flatten().tolist()}; "
                f"a KL divergence is ≥ 0."
            )
        out.append(value.to(like.dtype))
    return out[0], out[1]


_TDPO_PAPER = (
    "Zeng et al. 2024, Token-level Direct Preference Optimization, arXiv:2404.11999 ({eq}; β = 0.1{alpha} as in "
    "the authors' README)"
)


@paired_loss(
    "tdpo",
    needs_reference=True,
    paper=_TDPO_PAPER.format(eq="TDPO₂, Eq. 19", alpha=", α = 0.5"),
    formula="−log σ(β·(Δ − α·(D_SeqKL(y_l) − sg[D_SeqKL(y_w)]))), D_SeqKL = Σ_t KL(π_ref ‖ π_θ)",
    hparams=[
        BETA,
        HParam("alpha", 0.5, "α: weight of the sequential-KL margin (TDPO₂; the README uses 0.5)", UNIT_OPEN),
    ],
)
def tdpo(
    t: PairedTerms, *, chosen_seq_kl: Tensor | None, rejected_seq_kl: Tensor | None, beta: float, alpha: float
) -> Reported:
    """TDPO₂: DPO whose margin is reduced by α times the rejected completion's sequential KL minus the chosen's.

    The chosen completion's sequential KL is detached (the paper's stop-gradient), so its KL is not pushed up;
    the rejected completion's KL is differentiated, which keeps it from growing without bound.

    Args:
        chosen_seq_kl, rejected_seq_kl: [B] D_SeqKL(x, y) = Σ_t KL(π_ref(·|x, y_<t) ‖ π_θ(·|x, y_<t)).
        beta: β; alpha: α of the KL margin.

    Metrics: `seq_kl/chosen`, `seq_kl/rejected` (means).
    """
    kl_w, kl_l = _seq_kl("tdpo", chosen_seq_kl, rejected_seq_kl, t.chosen_logps)
    logits = beta * (t.margin - alpha * (kl_l - kl_w.detach()))  # [B]
    return Reported(neg_logsigmoid(logits), metrics={"seq_kl/chosen": kl_w, "seq_kl/rejected": kl_l})


@paired_loss(
    "tdpo1",
    needs_reference=True,
    paper=_TDPO_PAPER.format(eq="TDPO₁, Eq. 18", alpha=""),
    formula="−log σ(β·(Δ − (D_SeqKL(y_l) − D_SeqKL(y_w)))), D_SeqKL = Σ_t KL(π_ref ‖ π_θ)",
    hparams=[BETA],
)
def tdpo1(t: PairedTerms, *, chosen_seq_kl: Tensor | None, rejected_seq_kl: Tensor | None, beta: float) -> Reported:
    """TDPO₁: DPO whose margin is reduced by the rejected completion's sequential KL minus the chosen's.

    Both KLs are differentiated (unlike `tdpo`, which stops the chosen's gradient and weighs the margin by α).

    Args:
        chosen_seq_kl, rejected_seq_kl: [B] sequential KLs (see `tdpo`). beta: β.

    Metrics: `seq_kl/chosen`, `seq_kl/rejected` (means).
    """
    kl_w, kl_l = _seq_kl("tdpo1", chosen_seq_kl, rejected_seq_kl, t.chosen_logps)
    logits = beta * (t.margin - (kl_l - kl_w))  # [B]
    return Reported(neg_logsigmoid(logits), metrics={"seq_kl/chosen": kl_w, "seq_kl/rejected": kl_l})
