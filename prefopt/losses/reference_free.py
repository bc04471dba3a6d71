"""Reference-free pairwise losses: ORPO, CPO and SimPO.

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
"""

from __future__ import annotations

from torch import Tensor

from prefopt.losses.base import log1mexp, neg_logsigmoid
from prefopt.losses.kinds import PolicyPair, Reported, paired_loss
from prefopt.registry import NON_NEGATIVE, POSITIVE, HParam, LossInputError

__all__ = ["SIMPO_DEFAULT_GAMMA_BETA_RATIO", "log_odds", "simpo_gamma", "orpo", "cpo", "simpo"]

# The SimPO README recommends γ/β = 0.5 "as a starting point" (the Llama3-Base setting, β = 2.0,
# γ = 1.0); its config dataclass defaults to 0.25 and the released Mistral-Base model used 0.8.
SIMPO_DEFAULT_GAMMA_BETA_RATIO = 0.5


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
    hparams=[
        HParam(
            "lambda_",
            0.1,
            "weight λ of the odds-ratio term (paper λ = 0.1 for Mistral-ORPO; official code --alpha; TRL beta)",
            NON_NEGATIVE,
        )
    ],
    needs_lengths=True,
    needs_nonpositive_logps=True,  # odds e^ℓ/(1 − e^ℓ) and the NLL −ℓ_w need ℓ ≤ 0
)
def orpo(t: PolicyPair, *, lambda_: float) -> Reported:
    """Odds-Ratio Preference Optimization: SFT on the chosen plus a log-odds-ratio penalty, no reference.

    Args:
        lambda_: λ, the weight of L_OR relative to the token-mean NLL of the chosen.

    Metrics: `nll_loss`, `log_odds_ratio` (mean log σ(·)), `log_odds_chosen` (mean log-odds difference),
    `rewards/*` = λ·ℓ (as the ORPO code and TRL log them), `logps/*` summed.
    Deviation: the official code's NLL is a token mean over the whole batch; here it is the mean over
    rows of each row's token mean (identical when all chosen completions have the same length).
    """
    chosen_avg, rejected_avg = t.chosen_avg_logps, t.rejected_avg_logps  # ℓ_w, ℓ_l, [B]
    log_odds_diff = log_odds(chosen_avg) - log_odds(rejected_avg)  # [B]
    odds_ratio_loss = neg_logsigmoid(log_odds_diff)  # −log σ(·), [B]
    nll = -chosen_avg
    return Reported(
        nll + lambda_ * odds_ratio_loss,
        rewards=(lambda_ * chosen_avg, lambda_ * rejected_avg),
        metrics={"nll_loss": nll, "log_odds_ratio": -odds_ratio_loss, "log_odds_chosen": log_odds_diff},
    )


@paired_loss(
    "cpo",
    needs_reference=False,
    paper="Xu et al. 2024, Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance in "
    "Machine Translation, arXiv:2401.08417 (Eq. 3–5; β = 0.1, α = 1 as in TRL CPOConfig)",
    formula="−log σ(β·(logπ(y_w) − logπ(y_l))) + α·(−logπ(y_w)/|y_w|)",
    hparams=[
        HParam("beta", 0.1, "inverse temperature β of the reference-free reward β·logπ_θ (paper: 0.1)", POSITIVE),
        HParam("alpha", 1.0, "weight α of the token-mean NLL of the chosen completion (paper: 1)", NON_NEGATIVE),
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
