"""`prefopt.from_trl_dpo_config`: TRL's DPOConfig read as a prefopt loss, and the registry's hints for TRL names.

Each TRL loss type is checked twice on the same three pairs:
  * against TRL's formula, written out here per pair in plain floats from TRL's DPOTrainer docs and the papers
    (β = 0.3, label_smoothing ε = 0.15 where TRL reads it, discopop_tau τ = 0.2: none of them TRL's defaults);
  * that formula against TRL's own value, recorded once with TRL in a side venv (TRL is not installed here): TRL
    1.16.0's `DPOTrainer._compute_loss` on a stub trainer whose model returns fixed float64 per-token log-probs
    (multiples of 1/8, so the sums below are exact) and precomputed reference log-probs; TRL 0.28.0's
    `DPOTrainer.dpo_loss` for the fields that only TRL ≤ 0.28 had. tests/record_trl_losses.py records them again.

The three pairs (sums over completion tokens; |y| = completion tokens):
    policy chosen  −3.75, −2.375, −4.25     reference chosen   −3.875, −2.75, −4.125     |y_w| = 3, 3, 3
    policy rejected −3.5, −4.625, −3.125    reference rejected −2.5,  −4.25, −3.0        |y_l| = 2, 4, 3
so ρ_w = 0.125, 0.375, −0.125; ρ_l = −1, −0.375, −0.125; Δ = 1.125, 0.75, 0. The policy margins
u = log π(y_w) − log π(y_l) = −0.25, 2.25, −1.125 and the reference's v = −1.375, 1.5, −1.125 sort to different
orders, so AOT's quantile gaps sort(u) − sort(v) = 0.25, 0.875, 0.75 differ from Δ and from aot_unpaired's
sort(ρ_w) − sort(ρ_l) = 0.875, 0.5, 0.5.
"""

from __future__ import annotations

import enum
import importlib.metadata
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import prefopt
from prefopt.errors import SettingsError, UnknownLossError
from prefopt.trl_config import TRL_LOSS_FIELDS, TRL_LOSS_TYPES, from_trl_dpo_config

ROOT = Path(__file__).resolve().parents[1]

CHOSEN, REJECTED = [-3.75, -2.375, -4.25], [-3.5, -4.625, -3.125]
REF_CHOSEN, REF_REJECTED = [-3.875, -2.75, -4.125], [-2.5, -4.25, -3.0]
CHOSEN_LENGTHS, REJECTED_LENGTHS = [3, 3, 3], [2, 4, 3]
BETA, EPS, TAU = 0.3, 0.15, 0.2

# TRL's own loss on these pairs (the module docstring says how they were recorded).
TRL_1_16 = {
    "sigmoid": 0.6062258589877785,
    "sigmoid_norm": 0.656404810365843,
    "hinge": 0.8125,
    "ipo": 2.0466218171296298,
    "exo_pair": 0.2627327109864527,
    "nca_pair": 1.3425465696671186,
    "robust": 0.566047287559207,
    "bco_pair": 1.297510285160002,
    "sppo_hard": 3.914930555555556,
    "aot": 0.6327243293863388,
    "aot_unpaired": 0.6322583136205273,
    "apo_zero": 0.9533309442833021,
    "apo_down": 0.9628327894488308,
    "discopop": 0.759825740633246,
    "sft": 1.1527777777777777,
}
TRL_1_16_MPO = 1.897260522000001  # loss_type [sigmoid, bco_pair, sft], loss_weights [0.8, 0.2, 1.0]
TRL_0_28 = {
    "sigmoid, label_smoothing 0.15": 0.6343508589877785,
    "exo_pair, label_smoothing 0": 2.4466187433889464,
    "sigmoid, reference_free": 0.6729897893494448,
    # f_divergence_type given as TRL's FDivergenceType member (a string is ignored by 0.24–0.28: docs/trl.md)
    "sigmoid, js_divergence": 0.6426254848867908,
    "sigmoid, alpha_divergence 0.3": 0.5994289122704655,
    "sigmoid, alpha_divergence (default 1.0)": 0.5776594237939822,
}
# f-DPO and WPO on the sigmoid loss (TRL 1.16; the α-divergence recorded in float32, TRL has no float64 cap for it).
TRL_1_16_RESHAPED = {
    "sigmoid, forward_kl": 0.5776594237939822,
    "sigmoid, js_divergence": 0.6426254848867908,
    "sigmoid, alpha_divergence 0.3": 0.5881083607673645,
    "sigmoid, use_weighting": 0.18405453958222476,
}
# Σ_t log Σ_v p² of each completion, the sums of tests/record_trl_losses.py's LOG_SUM_SQ rows.
SUM_SQ_CHOSEN, SUM_SQ_REJECTED = [-1.75, -1.25, -2.125], [-1.75, -2.375, -1.625]


# ── TRL's formulas, per pair, in plain floats ─────────────────────────────────────────────────────────────


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return math.exp(log_sigmoid(x))


RHO_W = [c - r for c, r in zip(CHOSEN, REF_CHOSEN)]
RHO_L = [c - r for c, r in zip(REJECTED, REF_REJECTED)]
DELTA = [w - lo for w, lo in zip(RHO_W, RHO_L)]
NORM_DELTA = [w / a - lo / b for w, lo, a, b in zip(RHO_W, RHO_L, CHOSEN_LENGTHS, REJECTED_LENGTHS)]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def smoothed(z: float, eps: float) -> float:
    """(1−ε)·(−log σ(z)) + ε·(−log σ(−z)): cDPO's and AOT's smoothed logistic loss."""
    return -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)


def exo(z: float, eps: float) -> float:
    """KL(Bern(σ(z)) ‖ Bern(1−ε)), EXO-pair (arXiv:2402.00856 Eq. 16)."""
    return sigmoid(z) * (log_sigmoid(z) - math.log(1 - eps)) + sigmoid(-z) * (log_sigmoid(-z) - math.log(eps))


def sorted_gaps(upper: list[float], lower: list[float]) -> list[float]:
    return [a - b for a, b in zip(sorted(upper), sorted(lower))]


U = [c - r for c, r in zip(CHOSEN, REJECTED)]  # policy margin per pair
V = [c - r for c, r in zip(REF_CHOSEN, REF_REJECTED)]  # reference margin per pair

PAIRS = list(zip(RHO_W, RHO_L))


def robust(z: float) -> float:
    """Robust DPO's unbiased loss (arXiv:2403.00409 Sec. 3.1)."""
    return ((1 - EPS) * -log_sigmoid(z) + EPS * log_sigmoid(-z)) / (1 - 2 * EPS)


def discopop(z: float) -> float:
    """DiscoPOP's log-ratio modulated loss (arXiv:2406.08414 Eq. 5)."""
    return (1 - sigmoid(z / TAU)) * -log_sigmoid(z) + sigmoid(z / TAU) * math.exp(-z)


TRL_FORMULA = {
    "sigmoid": mean([-log_sigmoid(BETA * d) for d in DELTA]),
    "sigmoid_norm": mean([-log_sigmoid(BETA * d) for d in NORM_DELTA]),
    "hinge": mean([max(0.0, 1 - BETA * d) for d in DELTA]),
    "ipo": mean([(d - 1 / (2 * BETA)) ** 2 for d in NORM_DELTA]),  # β is IPO's τ
    "exo_pair": mean([exo(BETA * d, EPS) for d in DELTA]),
    "nca_pair": mean(
        [-log_sigmoid(BETA * w) - 0.5 * log_sigmoid(-BETA * w) - 0.5 * log_sigmoid(-BETA * lo) for w, lo in PAIRS]
    ),
    "robust": mean([robust(BETA * d) for d in DELTA]),
    "bco_pair": mean([-log_sigmoid(BETA * w) - log_sigmoid(-BETA * lo) for w, lo in PAIRS]),
    "sppo_hard": mean([(w - 0.5 / BETA) ** 2 + (lo + 0.5 / BETA) ** 2 for w, lo in PAIRS]),
    "aot": mean([smoothed(BETA * g, EPS) for g in sorted_gaps(U, V)]),
    "aot_unpaired": mean([smoothed(BETA * g, EPS) for g in sorted_gaps(RHO_W, RHO_L)]),
    "apo_zero": mean([(1 - sigmoid(BETA * w)) + sigmoid(BETA * lo) for w, lo in PAIRS]),
    "apo_down": mean([sigmoid(BETA * w) + (1 - sigmoid(BETA * d)) for w, d in zip(RHO_W, DELTA)]),
    "discopop": mean([discopop(BETA * d) for d in DELTA]),
    "sft": -sum(CHOSEN) / sum(CHOSEN_LENGTHS),  # one token mean over every chosen token of the batch
}
TRL_FORMULA["aot_pair"] = TRL_FORMULA["aot_unpaired"]  # aot_unpaired's name up to TRL 0.19

# The DPOConfig fields of each case beyond loss_type and beta: ε only where TRL reads it.
EXTRA = {
    "exo_pair": {"label_smoothing": EPS},
    "robust": {"label_smoothing": EPS},
    "aot": {"label_smoothing": EPS},
    "aot_unpaired": {"label_smoothing": EPS},
    "aot_pair": {"label_smoothing": EPS},
    "discopop": {"discopop_tau": TAU},
}


def inputs(chosen_lengths: list[int] = CHOSEN_LENGTHS) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    t = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    return (t(CHOSEN), t(REJECTED), t(REF_CHOSEN), t(REF_REJECTED)), {
        "chosen_lengths": t(chosen_lengths),
        "rejected_lengths": t(REJECTED_LENGTHS),
    }


def value(loss: prefopt.BoundLoss, chosen_lengths: list[int] = CHOSEN_LENGTHS) -> float:
    args, lengths = inputs(chosen_lengths)
    return float(loss(*args, **lengths).loss)


# ── every loss type ───────────────────────────────────────────────────────────────────────────────────────


def test_the_test_formulas_are_trls() -> None:
    """The formulas above give TRL 1.16's own values (exo_pair to 1e-8: TRL forms ε as a float32 tensor)."""
    for loss_type, trl_value in TRL_1_16.items():
        assert TRL_FORMULA[loss_type] == pytest.approx(trl_value, rel=1e-12, abs=1e-8 if loss_type == "exo_pair" else 0)


@pytest.mark.parametrize("loss_type", list(TRL_LOSS_TYPES))
def test_each_loss_type_is_trls_formula(loss_type: str) -> None:
    loss = from_trl_dpo_config({"loss_type": loss_type, "beta": BETA, **EXTRA.get(loss_type, {})})
    assert loss.name == TRL_LOSS_TYPES[loss_type].loss
    assert value(loss) == pytest.approx(TRL_FORMULA[loss_type], rel=1e-12)


def test_a_list_with_weights_is_the_weighted_sum() -> None:
    """MPO: 0.8·sigmoid + 0.2·bco_pair + 1·sft, as TRL sums Σ_i w_i·mean(loss_i)."""
    loss = from_trl_dpo_config(
        {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0], "beta": BETA}
    )
    assert loss.spec.name == "dpo:0.8+bco_pair:0.2+sft:1"
    expected = 0.8 * TRL_FORMULA["sigmoid"] + 0.2 * TRL_FORMULA["bco_pair"] + TRL_FORMULA["sft"]
    assert expected == pytest.approx(TRL_1_16_MPO, rel=1e-12)
    assert value(loss) == pytest.approx(expected, rel=1e-12)


def test_a_list_without_weights_weighs_each_one_and_a_repeat_counts_twice() -> None:
    loss = from_trl_dpo_config({"loss_type": ["hinge", "robust", "hinge"], "beta": BETA, "label_smoothing": EPS})
    assert loss.spec.name == "hinge:2+robust_dpo:1"
    assert value(loss) == pytest.approx(2 * TRL_FORMULA["hinge"] + TRL_FORMULA["robust"], rel=1e-12)


def f_margin(divergence: str, alpha: float = 0.0) -> list[float]:
    """f'(u_w) − f'(u_l) per pair (arXiv:2309.16240 Table 1; α the paper's)."""
    f = {
        "forward_kl": lambda r: -math.exp(-r),
        "js": lambda r: math.log(2) + log_sigmoid(r),
        "alpha": lambda r: (1 - math.exp(-alpha * r)) / alpha,
    }[divergence]
    return [f(w) - f(lo) for w, lo in PAIRS]


@pytest.mark.parametrize(
    ("fields", "trl_version", "recorded", "divergence", "alpha"),
    [
        ({"f_divergence_type": "forward_kl"}, None, TRL_1_16_RESHAPED["sigmoid, forward_kl"], "forward_kl", 0.0),
        ({"f_divergence_type": "js_divergence"}, None, TRL_1_16_RESHAPED["sigmoid, js_divergence"], "js", 0.0),
        (
            {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3},
            None,
            TRL_1_16_RESHAPED["sigmoid, alpha_divergence 0.3"],
            "alpha",
            0.7,  # TRL ≥ 0.29: α = 1 − c
        ),
        ({"f_divergence_type": "js_divergence"}, "0.28", TRL_0_28["sigmoid, js_divergence"], "js", 0.0),
        (
            {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3},
            "0.28",
            TRL_0_28["sigmoid, alpha_divergence 0.3"],
            "alpha",
            0.3,  # TRL ≤ 0.28: α = c
        ),
        (
            {"f_divergence_type": "alpha_divergence"},
            "0.28",
            TRL_0_28["sigmoid, alpha_divergence (default 1.0)"],
            "forward_kl",
            0.0,
        ),  # TRL ≤ 0.28's default c = 1: the forward KL
    ],
    ids=["forward_kl", "js", "alpha-1.16", "js-0.28", "alpha-0.28", "alpha-default-0.28"],
)
def test_f_divergence_is_fdpo_with_trls_values(fields, trl_version, recorded, divergence, alpha) -> None:
    """β = 0.3: TRL's loss is −log σ(β·(f'(u_w) − f'(u_l))), the paper's f-DPO; TRL ≥ 0.29's coefficient c is the
    paper's α = 1 − c ((u^(c−1) − 1)/(c − 1) = (1 − u^−α)/α), TRL ≤ 0.28's is α itself."""
    loss = from_trl_dpo_config({"beta": BETA, **fields}, trl_version=trl_version)
    expected = {"beta": BETA, "divergence": divergence, "alpha": alpha if divergence == "alpha" else 0.5}
    assert loss.name == "fdpo" and {**loss.spec.defaults(), **loss.hparams} == pytest.approx(expected)
    formula = mean([-log_sigmoid(BETA * m) for m in f_margin(divergence, alpha)])
    assert formula == pytest.approx(recorded, rel=1e-6 if divergence == "alpha" and trl_version is None else 1e-12)
    assert value(loss) == pytest.approx(formula, rel=1e-12)


@pytest.mark.parametrize("trl_version", [None, "0.28"])
def test_use_weighting_is_wpo(trl_version: str | None) -> None:
    """TRL's use_weighting: the pair weight exp(mean_t[log p_t − log Σ_v p_v²]) of both completions, detached,
    times the sigmoid loss; TRL ≥ 0.29 does not clamp it, TRL ≤ 0.28 clamps it at 1 (these pairs' weights are below
    1, so the two agree here; the clamp itself: tests/losses/test_pairwise_regularized.py)."""
    loss = from_trl_dpo_config({"beta": BETA, "use_weighting": True}, trl_version=trl_version)
    assert loss.name == "wpo" and loss.hparams == {"beta": BETA, "clamp_weight": trl_version is not None}
    log_w = [
        (c - sc) / a + (r - sr) / b
        for c, sc, a, r, sr, b in zip(
            CHOSEN, SUM_SQ_CHOSEN, CHOSEN_LENGTHS, REJECTED, SUM_SQ_REJECTED, REJECTED_LENGTHS
        )
    ]
    weights = [math.exp(min(x, 0.0) if trl_version else x) for x in log_w]
    expected = mean([w * -log_sigmoid(BETA * d) for w, d in zip(weights, DELTA)])
    if trl_version is None:
        assert expected == pytest.approx(TRL_1_16_RESHAPED["sigmoid, use_weighting"], rel=1e-12)
    args, lengths = inputs()
    sq = {
        "chosen_log_sum_sq_probs": torch.tensor(SUM_SQ_CHOSEN, dtype=torch.float64),
        "rejected_log_sum_sq_probs": torch.tensor(SUM_SQ_REJECTED, dtype=torch.float64),
    }
    assert float(loss(*args, **lengths, **sq).loss) == pytest.approx(expected, rel=1e-12)


def test_trl_defaults_fill_the_fields_left_out() -> None:
    """DPOConfig() is sigmoid at β = 0.1 (TRL's default, passed even where prefopt's paper default differs)."""
    assert repr(from_trl_dpo_config({})) == "dpo(beta=0.1)"
    assert repr(from_trl_dpo_config({"loss_type": "nca_pair"})) == "nca(beta=0.1)"  # prefopt's nca default: 0.01
    assert repr(from_trl_dpo_config({"ld_alpha": 1.0, "f_divergence_type": "reverse_kl"})) == "dpo(beta=0.1)"
    assert set(TRL_LOSS_FIELDS) >= {"loss_type", "loss_weights", "beta", "label_smoothing", "rpo_alpha", "ld_alpha"}


@dataclass
class FakeDPOConfig:
    """A config object with DPOConfig's attribute names and other training fields (not read)."""

    loss_type: list[str] = field(default_factory=lambda: ["robust"])
    beta: float = BETA
    label_smoothing: float = EPS
    learning_rate: float = 1e-6
    max_length: int = 1024


def test_a_config_object_is_read_by_attribute() -> None:
    assert value(from_trl_dpo_config(FakeDPOConfig())) == pytest.approx(TRL_FORMULA["robust"], rel=1e-12)


# ── TRL ≤ 0.28 ────────────────────────────────────────────────────────────────────────────────────────────


def test_old_trl_sigmoid_label_smoothing_is_conservative_dpo() -> None:
    loss = from_trl_dpo_config({"loss_type": "sigmoid", "beta": BETA, "label_smoothing": EPS}, trl_version="0.28.0")
    expected = mean([smoothed(BETA * d, EPS) for d in DELTA])
    assert expected == pytest.approx(TRL_0_28["sigmoid, label_smoothing 0.15"], rel=1e-12)
    assert (loss.name, value(loss)) == ("cdpo", pytest.approx(expected, rel=1e-12))


def test_old_trl_exo_pair_takes_1e_3_for_no_smoothing() -> None:
    loss = from_trl_dpo_config({"loss_type": "exo_pair", "beta": BETA}, trl_version="0.28")
    expected = mean([exo(BETA * d, 1e-3) for d in DELTA])
    assert expected == pytest.approx(TRL_0_28["exo_pair, label_smoothing 0"], rel=1e-12)
    assert value(loss) == pytest.approx(expected, rel=1e-12)


def test_old_trl_reference_free_sigmoid_is_cpo_without_nll() -> None:
    """reference_free (≤ 0.28 only, so the mapping is read as 0.28): −log σ(β·(log π(y_w) − log π(y_l)))."""
    loss = from_trl_dpo_config({"loss_type": "sigmoid", "beta": BETA, "reference_free": True})
    expected = mean([-log_sigmoid(BETA * u) for u in U])
    assert expected == pytest.approx(TRL_0_28["sigmoid, reference_free"], rel=1e-12)
    assert (repr(loss), value(loss)) == ("cpo(beta=0.3, alpha=0.0)", pytest.approx(expected, rel=1e-12))


def test_old_trl_rpo_alpha_adds_the_chosen_nll() -> None:
    """rpo_alpha α: DPO + α·NLL(y_w) (rpo for sigmoid alone, a combination with sft otherwise). TRL takes one
    token mean over the batch's chosen tokens, prefopt each row's token mean averaged over rows: equal for equal
    chosen lengths (3, 3, 3), and here, for lengths 2, 4, 3, α·(mean_i(3.75/2, 2.375/4, 4.25/3) − 10.375/9)."""
    loss = from_trl_dpo_config({"loss_type": "sigmoid", "beta": BETA, "rpo_alpha": 0.5, "label_smoothing": 0.0})
    assert repr(loss) == "rpo(beta=0.3, alpha=0.5)"
    assert value(loss) == pytest.approx(TRL_FORMULA["sigmoid"] + 0.5 * TRL_FORMULA["sft"], rel=1e-12)
    per_row = mean([3.75 / 2, 2.375 / 4, 4.25 / 3])
    assert value(loss, [2, 4, 3]) == pytest.approx(TRL_FORMULA["sigmoid"] + 0.5 * per_row, rel=1e-12)
    assert value(loss, [2, 4, 3]) - (TRL_FORMULA["sigmoid"] + 0.5 * 10.375 / 9) == pytest.approx(
        0.5 * (per_row - 10.375 / 9), rel=1e-12
    )
    mixed = from_trl_dpo_config({"loss_type": ["hinge", "sft"], "beta": BETA, "rpo_alpha": 0.5})
    assert mixed.spec.name == "hinge:1+sft:1.5"
    assert value(mixed) == pytest.approx(TRL_FORMULA["hinge"] + 1.5 * TRL_FORMULA["sft"], rel=1e-12)


class FDivergenceType(enum.Enum):  # TRL ≤ 0.28 held f_divergence_type as an Enum
    REVERSE_KL = "reverse_kl"
    JS_DIVERGENCE = "js_divergence"


def test_the_installed_trl_decides_the_era_of_a_trl_config_object(monkeypatch: pytest.MonkeyPatch) -> None:
    class DPOConfig(FakeDPOConfig):
        pass

    DPOConfig.__module__ = "trl.trainer.dpo_config"
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.28.0" if name == "trl" else "0")
    old = DPOConfig(loss_type=["sigmoid"])
    old.f_divergence_type = FDivergenceType.REVERSE_KL
    assert from_trl_dpo_config(old).name == "cdpo"
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.16.0")
    with pytest.raises(SettingsError, match="label_smoothing=0.15 changes none of loss_type"):
        from_trl_dpo_config(DPOConfig(loss_type=["sigmoid"]))


# ── refused options ───────────────────────────────────────────────────────────────────────────────────────

REFUSED = [
    ({"use_weighting": True, "loss_type": "hinge"}, None, "use_weighting=True with loss_type ['hinge']: prefopt maps"),
    ({"use_weighting": True, "f_divergence_type": "js_divergence"}, None, "and f_divergence_type='js_divergence'"),
    ({"ld_alpha": 0.5}, None, "ld_alpha=0.5: LD-DPO needs the log-prob of each completion's first"),
    ({"f_divergence_type": "js_divergence", "loss_type": "ipo"}, None, "f_divergence_type='js_divergence' with loss"),
    ({"f_divergence_type": FDivergenceType.JS_DIVERGENCE, "loss_type": ["sigmoid", "sft"]}, None, "to fdpo"),
    ({"f_divergence_type": "forward_kl"}, "0.28", "f_divergence_type='forward_kl': TRL ≤ 0.28 knows reverse_kl"),
    ({"f_divergence_type": "chi2"}, None, "f_divergence_type='chi2': TRL knows reverse_kl, forward_kl"),
    ({"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 1.5}, None, "the paper's α = -0.5"),
    ({"label_smoothing": 0.1}, None, "label_smoothing=0.1 changes none of loss_type ['sigmoid'] in TRL"),
    ({"loss_type": "hinge", "label_smoothing": 0.1}, "0.28", "label_smoothing=0.1 changes none of loss_type"),
    ({"loss_type": "exo_pair"}, None, "loss_type 'exo_pair' needs label_smoothing > 0"),
    ({"loss_type": "bco_pair"}, "0.28", "'bco_pair' up to TRL 0.28 shifts by a running mean"),
    ({"loss_type": ["ipo", "sft"]}, "0.28", "'ipo' in a list: up to TRL 0.28 it divides every listed loss"),
    ({"loss_type": "hinge", "reference_free": True}, None, "reference_free=True with loss_type ['hinge']"),
    ({"rpo_alpha": 1.0}, "1.16", "rpo_alpha=1.0: DPOConfig has no rpo_alpha since TRL 0.29"),
    ({"loss_type": "kto_pair"}, None, "loss_type 'kto_pair' is not a TRL DPO loss type"),
    ({"loss_types": ["sigmoid"]}, None, "unknown field 'loss_types'; did you mean 'loss_type'?"),
    ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, None, "loss_weights=[1.0]: give one weight per loss"),
    ({"loss_type": ["sigmoid", "sft"], "loss_weights": [-1.0, 1.0]}, None, "the weight of dpo is -1.0"),
    ({"beta": -0.1}, None, "loss_type='sigmoid' → prefopt loss 'dpo': dpo: beta=-0.1 is outside its domain"),
    ({"loss_type": "robust", "label_smoothing": 0.5}, None, "epsilon=0.5 is outside its domain"),
    ({}, "one.two", "trl_version='one.two' is not a version"),
    (["sigmoid"], None, "expected a TRL DPOConfig or a mapping of its fields"),
]


@pytest.mark.parametrize(("config", "trl_version", "message"), REFUSED, ids=[m[:40] for _, _, m in REFUSED])
def test_options_without_prefopt_semantics_are_refused_in_one_line(config, trl_version, message) -> None:
    with pytest.raises(SettingsError) as caught:
        from_trl_dpo_config(config, trl_version=trl_version)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


# ── the registry's hints and the docs ─────────────────────────────────────────────────────────────────────


def test_an_unknown_hparam_points_to_the_losses_that_take_it() -> None:
    with pytest.raises(UnknownLossError) as caught:
        prefopt.get_loss("dpo", label_smoothing=0.1)
    assert str(caught.value) == (
        "unknown hyper-parameter of loss 'dpo': 'label_smoothing'. Valid: beta. label_smoothing is a "
        "hyper-parameter of aot, aot_unpaired, cpo_simpo. Elsewhere (TRL) label_smoothing means epsilon of cdpo, exo, "
        "robust_dpo: e.g. loss 'cdpo' with epsilon=…."
    )
    with pytest.raises(UnknownLossError, match=r"label_smoothing means epsilon: set epsilon=… instead"):
        prefopt.get_loss("cdpo", label_smoothing=0.1)
    with pytest.raises(UnknownLossError, match=r"rpo_alpha means alpha of rpo: e.g. loss 'rpo' with alpha=…"):
        prefopt.loss_spec("dpo").validate_hparams({"rpo_alpha": 1.0})  # the path configs take
    with pytest.raises(UnknownLossError) as caught:
        prefopt.get_loss("dpo", no_such_name=1)
    assert str(caught.value) == "unknown hyper-parameter of loss 'dpo': 'no_such_name'. Valid: beta."


def test_docs_trl_md_maps_every_loss_type_as_the_code_does() -> None:
    text = (ROOT / "docs" / "trl.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| `(\w+)`", text, flags=re.MULTILINE))
    assert {t: rows.get(t) for t in TRL_LOSS_TYPES} == {t: e.loss for t, e in TRL_LOSS_TYPES.items()}
