"""Reference-free pairwise losses: ORPO, CPO, SimPO and SFT on the chosen.

Their public functions take the same arguments as every paired loss (so a config swaps names only); the
reference arguments are checked and never reach the bodies, which read a `PolicyPair`. Notation per pair,
shapes [B]:

    logπ(y)  = Σ_t log π_θ(y_t | x, y_<t)         summed completion log-prob (the inputs)
    ℓ(y)     = logπ(y) / |y|                      length-averaged log-prob, |y| = completion tokens
    NLL(y_w) = −ℓ(y_w)                            token-mean negative log-likelihood of the chosen

ORPO — Hong, Lee & Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference Model",
arXiv:2403.07691, Eq. 6–8. With odds(y) = e^ℓ / (1 − e^ℓ) built from the *length-averaged* ℓ:
    log odds(y) = ℓ − log(1 − e^ℓ)                (log1mexp, stable as ℓ → 0⁻ and ℓ → −∞)
    L = NLL(y_w) + λ·(−log σ(log odds(y_w) − log odds(y_l)))
`orpo_seq` is ORPO with the official trainer's NLL (xfactlab/orpo, `--disable_prompt_loss` off): the token mean
over the whole chosen sequence after its first token, prompt x included, −(logπ(x) + logπ(y_w|x))/(|x|−1 + |y_w|).

CPO — Xu et al. 2024, "Contrastive Preference Optimization", arXiv:2401.08417, Eq. 3–5:
    L = −log σ(β·(logπ(y_w) − logπ(y_l))) + α·NLL(y_w)
The preference term uses summed log-probs; the NLL is the token mean of the chosen completion, as in
the authors' ALMA code and TRL's CPOTrainer (a cross-entropy averaged over tokens), so α = 1 weighs a
per-token quantity, not a sum that grows with length.

SimPO — Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
arXiv:2405.14734, Eq. 6:
    L = −log σ(β·ℓ(y_w) − β·ℓ(y_l) − γ)
γ is an absolute target margin in reward units. The official code instead takes γ/β
(`gamma_beta_ratio`) and computes β·(ℓ_w − ℓ_l − γ/β); TRL's `simpo_gamma` is γ itself. Here both
spellings are accepted (`gamma` = γ, `gamma_beta_ratio` = γ/β, at most one of them).

SFT — supervised fine-tuning on the chosen completion, the generation loss of MPO (Wang et al. 2024,
"Enhancing the Reasoning Ability of Multimodal Large Language Models via Mixed Preference Optimization",
arXiv:2411.10442), TRL's loss_type="sft":
    L = NLL(y_w) = −logπ(y_w)/|y_w|
the NLL term of CPO and RPO on its own, and the same token mean per row (TRL takes one cross-entropy over every
chosen token of the batch: equal when the chosen completions have equal lengths). The rejected completion is
not trained on. Alone it is SFT on preference data; weighted with others it is MPO (`prefopt.combine_losses`).

CPO-SimPO — Xu et al. 2024 (CPO, above) with SimPO's margin, as TRL's CPOTrainer computes it with
`loss_type="simpo"` and `cpo_alpha` > 0 (github.com/fe1ixxu/CPO_SIMPO):
    L = (1−ε)·(−log σ(β·ℓ(y_w) − β·ℓ(y_l) − γ)) + ε·(−log σ(−(β·ℓ(y_w) − β·ℓ(y_l) − γ))) + α·NLL(y_w)
i.e. SimPO (label-smoothed as TRL's CPOTrainer smooths every loss type) plus CPO's NLL of the chosen. TRL's NLL is
one cross-entropy over all chosen tokens of the micro-batch; here the mean over rows of each row's token mean, as
for cpo (equal when the chosen completions are equally long). Defaults: the authors' Llama-3-8B-Instruct run
(training_configs/llama-3-8b-instruct-cpo-simpo.yaml: β = 10, γ = 5.4, α = 0.05); TRL's CPOConfig defaults
(β = 0.1, simpo_gamma = 0.5, cpo_alpha = 1) are generic, not CPO-SimPO's.

AlphaPO — Gupta et al. 2025, "AlphaPO: Reward Shape Matters for LLM Alignment", arXiv:2501.03884 (not α-DPO,
arXiv:2410.10148, which is `alpha_dpo` in `prefopt.losses.pairwise_margin`; TRL CPOTrainer
`loss_type="alphapo"`, which is `simpo` with `cpo_alpha=0` and the reward transformed by `alpha`): SimPO with the
length-normalised reward log-transformed by a Box–Cox-like shape parameter α,
    r_α(y) = (1 − π_θ(y|x)^{−α/|y|})/α = (1 − e^{−α·ℓ(y)})/α       (→ ℓ(y), SimPO's, as α → 0)
    L = −log σ(β·r_α(y_w) − β·r_α(y_l) − γ)
α > 0 makes the reward concave in ℓ (bounded above by 1/α), which the paper shows slows likelihood displacement.
α = 0 is refused (use `simpo`). Defaults: β = 2.0 and γ = 1.0 are SimPO's (the paper starts from SimPO's tuned
settings, App. A.6); α = 0.25 is a starting point in the paper's range of small positive α, not a constant the
paper fixes for every model — tune it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prefopt.losses.base import log1mexp, neg_logsigmoid
from prefopt.losses.kinds import PolicyPair, Reported, paired_loss
from prefopt.registry import NON_NEGATIVE, POSITIVE, HParam, Interval, LossInputError

__all__ = [
    "SIMPO_DEFAULT_GAMMA_BETA_RATIO",
    "log_odds",
    "simpo_gamma",
    "orpo",
    "orpo_seq",
    "cpo",
    "simpo",
    "sft",
    "cpo_simpo",
    "alphapo",
]

# The SimPO README recommends γ/β = 0.5 "as a starting point" (the Llama3-Base setting, β = 2.0,
# γ = 1.0); its config dataclass defaults to 0.25 and the released Mistral-Base model used 0.8.
SIMPO_DEFAULT_GAMMA_BETA_RATIO = 0.5


_ORPO_LAMBDA = HParam(
    "lambda_",
    0.1,
    "weight λ of the odds-ratio term (paper λ = 0.1 for Mistral-ORPO; official code --alpha; TRL beta)",
    NON_NEGATIVE,
    aliases=("beta",),  # TRL ORPOConfig
)


def log_odds(avg_logps: Tensor) -> Tensor:
    """log odds(y) = ℓ − log(1 − e^ℓ) for length-averaged log-probs ℓ ≤ 0 (ORPO, arXiv:2403.07691 Eq. 4).

    Shapes: [B] → [B]. `log1mexp` keeps it finite and accurate both as ℓ → 0⁻ (where
    log(1 − e^ℓ) ≈ log(−ℓ)) and for ℓ ≈ −1e4 (where it is ≈ −e^ℓ); at ℓ = 0 exactly it is
    capped at ℓ − log(tiny) instead of +∞.
    """
    return avg_logps - log1mexp(avg_logps)


@paired_loss(
    "orpo",
    needs_reference=False,
    paper="Hong, Lee & Thorne 2024, ORPO: Monolithic Preference Optimization without Reference Model, "
    "arXiv:2403.07691 (Eq. 6–8)",
    formula="−ℓ_w + λ·(−log σ(log odds(ℓ_w) − log odds(ℓ_l))), ℓ = logπ/|y|, odds = e^ℓ/(1−e^ℓ)",
    hparams=[_ORPO_LAMBDA],
    needs_lengths=True,
    needs_nonpositive_logps=True,  # odds e^ℓ/(1 − e^ℓ) and the NLL −ℓ_w need ℓ ≤ 0
)
def orpo(t: PolicyPair, *, lambda_: float) -> Reported:
    """Odds-Ratio Preference Optimization: SFT on the chosen plus a log-odds-ratio penalty, no reference.

    Args:
        lambda_: λ, the weight of L_OR relative to the token-mean NLL of the chosen.

    Metrics: `nll_loss`, `log_odds_ratio` (mean log σ(·)), `log_odds_chosen` (mean log-odds difference),
    `rewards/*` = λ·ℓ (as the ORPO code and TRL log them), `logps/*` summed.
    Deviation: the official code's NLL is a token mean over the whole batch and the whole chosen sequence,
    prompt included (`orpo_seq`); here it is the mean over rows of each row's token mean of the completion.
    """
    return _orpo(t, -t.chosen_avg_logps, lambda_)


def _orpo(t: PolicyPair, nll: Tensor, lambda_: float) -> Reported:
    """ORPO's per-pair loss nll + λ·L_OR, the odds ratio of the completions' length-averaged log-probs."""
    chosen_avg, rejected_avg = t.chosen_avg_logps, t.rejected_avg_logps  # ℓ_w, ℓ_l, [B]
    log_odds_diff = log_odds(chosen_avg) - log_odds(rejected_avg)  # [B]
    odds_ratio_loss = neg_logsigmoid(log_odds_diff)  # −log σ(·), [B]
    return Reported(
        nll + lambda_ * odds_ratio_loss,
        rewards=(lambda_ * chosen_avg, lambda_ * rejected_avg),
        metrics={"nll_loss": nll, "log_odds_ratio": -odds_ratio_loss, "log_odds_chosen": log_odds_diff},
    )


@paired_loss(
    "orpo_seq",
    needs_reference=False,
    paper="Hong, Lee & Thorne 2024, arXiv:2403.07691 (Eq. 6–8), with the NLL of the official trainer "
    "(xfactlab/orpo src/orpo_trainer.py: every token of the chosen sequence, prompt included)",
    formula="−(logπ(x) + logπ(y_w|x))/(|x|−1 + |y_w|) + λ·(−log σ(log odds(ℓ_w) − log odds(ℓ_l)))",
    hparams=[_ORPO_LAMBDA],
    needs_lengths=True,
    needs_nonpositive_logps=True,
)
def orpo_seq(t: PolicyPair, *, chosen_prompt_sum: Tensor, chosen_prompt_count: Tensor, lambda_: float) -> Reported:
    """ORPO with the official code's NLL: the token mean over the whole chosen sequence, prompt included.

    The odds ratio is orpo's (completion tokens only, as the official `compute_logps`); the NLL adds the
    prompt tokens after the first (`chosen_prompt_sum`, `chosen_prompt_count`: `SequenceLogProbs.prompt_sum` /
    `prompt_count` of `engine(batch, score_prompt="chosen")`, served by LossCall and the training loop).

    Args:
        lambda_: λ, the weight of L_OR (official `--alpha`).
    Deviation: the official NLL is one token mean over the micro-batch; here each row's token mean, averaged.
    """
    if bool((chosen_prompt_sum.detach() > 1e-3).any()):
        raise LossInputError("orpo_seq: chosen_prompt_sum is above 0; it must be a sum of log-probs (≤ 0).")
    tokens = t.chosen_lengths + chosen_prompt_count.to(t.chosen_logps.dtype)  # |x| − 1 + |y_w|, [B]
    return _orpo(t, -(t.chosen_logps + chosen_prompt_sum.to(t.chosen_logps.dtype)) / tokens, lambda_)


@paired_loss(
    "cpo",
    needs_reference=False,
    paper="Xu et al. 2024, Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance in "
    "Machine Translation, arXiv:2401.08417 (Eq. 3–5; β = 0.1, α = 1 as in TRL CPOConfig)",
    formula="−log σ(β·(logπ(y_w) − logπ(y_l))) + α·(−logπ(y_w)/|y_w|)",
    hparams=[
        HParam("beta", 0.1, "inverse temperature β of the reference-free reward β·logπ_θ (paper: 0.1)", POSITIVE),
        HParam(
            "alpha",
            1.0,
            "weight α of the token-mean NLL of the chosen completion (paper: 1)",
            NON_NEGATIVE,
            aliases=("cpo_alpha",),  # TRL CPOConfig
        ),
    ],
    needs_lengths=True,
    needs_nonpositive_logps=True,  # the NLL −log π_θ(y_w)/|y_w| is ≥ 0 only for a log-probability
)
def cpo(t: PolicyPair, *, beta: float, alpha: float) -> Reported:
    """Contrastive Preference Optimization: reference-free DPO on summed log-probs plus NLL of the chosen.

    The NLL is the token mean of the chosen completion (chosen_lengths); rejected_lengths are not used.

    Args:
        beta: β of the preference term; alpha: α, weight of the NLL term.

    Metrics: `rewards/*` = β·logπ_θ (summed), `logps/*`, `nll_loss`.
    """
    chosen_nll = -t.chosen_logps / t.chosen_lengths  # [B]
    preference = neg_logsigmoid(beta * t.policy_margin)
    return Reported(
        preference + alpha * chosen_nll,
        rewards=(beta * t.chosen_logps, beta * t.rejected_logps),
        metrics={"nll_loss": chosen_nll},
    )


def simpo_gamma(beta: float, gamma: float | None, gamma_beta_ratio: float | None) -> float:
    """The absolute SimPO margin γ from either spelling: γ itself, or γ/β (the official code's parameter).

    Neither given: γ = β·0.5 (`SIMPO_DEFAULT_GAMMA_BETA_RATIO`). Both given: a `LossInputError`.
    """
    if gamma is not None and gamma_beta_ratio is not None:
        raise LossInputError(
            f"simpo: pass either gamma (the absolute margin γ, here {gamma}) or gamma_beta_ratio (γ/β, here "
            f"{gamma_beta_ratio}), not both; gamma = beta·gamma_beta_ratio."
        )
    if gamma is not None:
        return gamma
    ratio = SIMPO_DEFAULT_GAMMA_BETA_RATIO if gamma_beta_ratio is None else gamma_beta_ratio
    return beta * ratio


@paired_loss(
    "simpo",
    needs_reference=False,
    paper="Meng, Xia & Chen 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward, "
    "arXiv:2405.14734 (Eq. 6; β = 2.0, γ/β = 0.5 from the authors' README)",
    formula="−log σ(β·logπ(y_w)/|y_w| − β·logπ(y_l)/|y_l| − γ)",
    hparams=[
        HParam("beta", 2.0, "scale β of the length-normalised reward β·logπ/|y| (paper: 2.0–2.5)", POSITIVE),
        HParam(
            "gamma",
            None,
            "absolute target margin γ in reward units (TRL simpo_gamma, Liger gamma); None → β·gamma_beta_ratio",
            NON_NEGATIVE,
            aliases=("simpo_gamma",),  # TRL CPOConfig
        ),
        HParam(
            "gamma_beta_ratio",
            None,
            "γ/β, the SimPO code's parameter; None → 0.5 (authors' recommended start); give gamma or this, not both",
            NON_NEGATIVE,
        ),
    ],
    needs_lengths=True,
)
def simpo(t: PolicyPair, *, beta: float, gamma: float | None, gamma_beta_ratio: float | None) -> Reported:
    """Simple Preference Optimization: a margin loss on length-averaged log-probs, no reference.

    Args:
        beta: β. gamma: absolute margin γ. gamma_beta_ratio: γ/β. With neither, γ = 0.5·β;
            `gamma=g` and `gamma_beta_ratio=g/β` give the same loss.

    Metrics: `rewards/*` = β·ℓ (length-averaged), `logps/*` summed, `gamma` (the γ used).
    """
    margin = simpo_gamma(beta, gamma, gamma_beta_ratio)
    chosen_reward = beta * t.chosen_logps / t.chosen_lengths  # β·ℓ_w, [B]
    rejected_reward = beta * t.rejected_logps / t.rejected_lengths
    per_example = neg_logsigmoid(chosen_reward - rejected_reward - margin)
    return Reported(
        per_example, rewards=(chosen_reward, rejected_reward), metrics={"gamma": per_example.new_tensor(margin)}
    )


@paired_loss(
    "sft",
    needs_reference=False,
    paper="Wang et al. 2024, Enhancing the Reasoning Ability of Multimodal Large Language Models via Mixed "
    "Preference Optimization, arXiv:2411.10442 (the generation loss of MPO: SFT on the chosen; TRL loss_type='sft')",
    formula="−logπ(y_w)/|y_w|",
    needs_lengths=True,
    needs_nonpositive_logps=True,  # the NLL −log π_θ(y_w)/|y_w| is ≥ 0 only for a log-probability
)
def sft(t: PolicyPair) -> Reported:
    """Supervised fine-tuning on the chosen completions: the token-mean negative log-likelihood of y_w.

    The rejected completion is scored (its log-probs are logged) but not trained on. No hyper-parameters: weigh
    it against other losses with `prefopt.combine_losses` (MPO: dpo:0.8+bco_pair:0.2+sft:1).

    Metrics: `rewards/*` = ℓ = logπ/|y| (length-averaged log-probs; `rewards/accuracies` is the share of pairs
    whose chosen completion is the likelier per token), `logps/*` summed.
    Deviation: TRL's `sft` is one cross-entropy over all chosen tokens of the batch; here it is the mean over
    rows of each row's token mean (identical when all chosen completions have the same length), as for
    rpo, cpo and orpo.
    """
    chosen_avg = t.chosen_avg_logps  # ℓ_w, [B]
    return Reported(-chosen_avg, rewards=(chosen_avg, t.rejected_avg_logps))


@paired_loss(
    "cpo_simpo",
    needs_reference=False,
    paper="Xu et al. 2024, CPO, arXiv:2401.08417, with SimPO's margin (Meng, Xia & Chen 2024, arXiv:2405.14734), as "
    "TRL's CPOTrainer loss_type='simpo' with cpo_alpha > 0 (github.com/fe1ixxu/CPO_SIMPO; β = 10, γ = 5.4, α = 0.05 "
    "from its Llama-3-8B-Instruct config)",
    formula="(1−ε)·(−log σ(β·ℓ_w − β·ℓ_l − γ)) + ε·(−log σ(γ − β·ℓ_w + β·ℓ_l)) + α·(−ℓ_w), ℓ = logπ/|y|",
    hparams=[
        HParam("beta", 10.0, "scale β of the length-normalised reward β·logπ/|y| (CPO-SimPO: 10)", POSITIVE),
        HParam(
            "gamma",
            5.4,
            "absolute target margin γ in reward units (CPO-SimPO: 5.4)",
            NON_NEGATIVE,
            aliases=("simpo_gamma",),  # TRL CPOConfig
        ),
        HParam(
            "alpha",
            0.05,
            "weight α of the token-mean NLL of the chosen completion (CPO-SimPO: 0.05)",
            NON_NEGATIVE,
            aliases=("cpo_alpha",),  # TRL CPOConfig
        ),
        HParam(
            "label_smoothing",
            0.0,
            "ε: weight of the label-flipped term, as TRL's CPOTrainer smooths every loss type; 0 = the paper's",
            Interval(0.0, 0.5, lo_closed=True),
        ),
    ],
    needs_lengths=True,
    needs_nonpositive_logps=True,  # the NLL −log π_θ(y_w)/|y_w| is ≥ 0 only for a log-probability
)
def cpo_simpo(t: PolicyPair, *, beta: float, gamma: float, alpha: float, label_smoothing: float) -> Reported:
    """CPO-SimPO: SimPO's margin loss on length-averaged log-probs plus α times the chosen's token-mean NLL.

    Args:
        beta: β; gamma: absolute margin γ; alpha: α of the NLL; label_smoothing: ε (0 in the paper).

    Metrics: `rewards/*` = β·ℓ (length-averaged), `logps/*` summed, `nll_loss`.
    """
    chosen_reward, rejected_reward = beta * t.chosen_avg_logps, beta * t.rejected_avg_logps  # β·ℓ, [B]
    logits = chosen_reward - rejected_reward - gamma
    preference = (1.0 - label_smoothing) * neg_logsigmoid(logits) + label_smoothing * neg_logsigmoid(-logits)
    nll = -t.chosen_avg_logps
    return Reported(preference + alpha * nll, rewards=(chosen_reward, rejected_reward), metrics={"nll_loss": nll})


def alpha_reward(avg_logps: Tensor, alpha: float) -> Tensor:
    """AlphaPO's reward shape r_α(ℓ) = (1 − e^{−α·ℓ})/α = −expm1(−α·ℓ)/α for length-averaged log-probs ℓ [B].

    expm1 keeps it accurate for small α·ℓ (where it is ≈ ℓ, SimPO's reward); the exponent is capped at
    log(largest float) − 8, so α < 0 with ℓ ≪ 0 gives a large finite reward, not inf.
    """
    exponent = (-alpha * avg_logps).clamp(max=math.log(torch.finfo(avg_logps.dtype).max) - 8.0)
    return -torch.expm1(exponent) / alpha


@paired_loss(
    "alphapo",
    needs_reference=False,
    paper="Gupta et al. 2025, AlphaPO: Reward Shape Matters for LLM Alignment, arXiv:2501.03884 (the AlphaPO "
    "objective; TRL CPOTrainer loss_type='alphapo'; β, γ: SimPO's; α = 0.25 a starting point). Not α-DPO "
    "(arXiv:2410.10148, `alpha_dpo`)",
    formula="−log σ(β·r_α(y_w) − β·r_α(y_l) − γ), r_α(y) = (1 − π_θ(y)^(−α/|y|))/α",
    hparams=[
        HParam("beta", 2.0, "scale β of the reward β·r_α (SimPO's 2.0, the paper's starting point)", POSITIVE),
        HParam(
            "gamma",
            1.0,
            "absolute target margin γ in reward units (SimPO's β·0.5 = 1.0)",
            NON_NEGATIVE,
            aliases=("simpo_gamma",),  # TRL CPOConfig
        ),
        HParam(
            "alpha",
            0.25,
            "shape α of the reward (1 − π^(−α/|y|))/α; α → 0 is SimPO (use simpo), α > 0 a concave reward; tune it",
            Interval(-1.0, 1.0, lo_closed=True, hi_closed=True),
        ),
    ],
    needs_lengths=True,
)
def alphapo(t: PolicyPair, *, beta: float, gamma: float, alpha: float) -> Reported:
    """AlphaPO: SimPO with the length-normalised reward reshaped by α, r_α = (1 − π^(−α/|y|))/α.

    Args:
        beta: β; gamma: absolute margin γ; alpha: α ≠ 0 (α → 0 is `simpo`).

    Metrics: `rewards/*` = β·r_α (as TRL logs them), `logps/*` summed.
    """
    if alpha == 0.0:
        raise LossInputError("alphapo: alpha=0 is SimPO's log reward; use get_loss('simpo', ...) for it.")
    chosen_reward = beta * alpha_reward(t.chosen_avg_logps, alpha)  # [B]
    rejected_reward = beta * alpha_reward(t.rejected_avg_logps, alpha)
    return Reported(neg_logsigmoid(chosen_reward - rejected_reward - gamma), rewards=(chosen_reward, rejected_reward))
