"""TRL's DPO configuration read as a prefopt loss: `from_trl_dpo_config(DPOConfig(...))` or a mapping of its fields.

TRL's `DPOTrainer` picks its loss from `DPOConfig` fields; prefopt names each formula in its registry. Each TRL
`loss_type` maps to the registered loss with the same formula, hyper-parameters renamed where the names differ
(TRL's β is passed to every part that takes one, TRL's default 0.1 where the config leaves it out, not prefopt's
per-loss paper default):

    sigmoid → dpo (TRL ≤ 0.28 with label_smoothing ε > 0: cdpo, epsilon=ε)    sigmoid_norm → dpo_norm
    hinge → hinge          ipo → ipo (per-token log-ratios, as TRL)           exo_pair → exo, epsilon=ε
    nca_pair → nca         robust → robust_dpo, epsilon=ε                     bco_pair → bco_pair (δ = 0)
    sppo_hard → sppo_hard  aot → aot, label_smoothing=ε                       aot_unpaired → aot_unpaired
    apo_zero → apo_zero    apo_down → apo_down    discopop → discopop, tau=discopop_tau    sft → sft

A list of loss types gives `combine_losses` of the parts with `loss_weights` (TRL: Σ_i w_i·mean(loss_i)). The fields
read are `TRL_LOSS_FIELDS`; every other field (learning_rate, max_length, bf16, ...) configures TRL's trainer, not
its loss, and is not read here (docs/trl.md maps them to `prefopt train`'s settings). Two fields change the sigmoid
loss into another registered one:

    f_divergence_type (f-DPO, loss_type 'sigmoid')   → fdpo: reverse_kl → dpo; forward_kl → forward_kl;
        js_divergence → js; alpha_divergence → alpha with the paper's α = 1 − f_alpha_divergence_coef (TRL ≥ 0.29,
        whose f'(u) = (u^(c−1) − 1)/(c − 1)) or α = f_alpha_divergence_coef (TRL ≤ 0.28, (1 − u^−c)/c); an α of 0
        is reverse KL (dpo), 1 forward KL
    use_weighting (WPO, loss_type 'sigmoid')         → wpo, the aligned weight exp(mean_t[log p_t − log Σ_v p_v²])
        per completion, clamped at 1 up to TRL 0.28 (clamp_weight=True), unclamped since 0.29 (clamp_weight=False)

A field whose value prefopt cannot give the same meaning raises a `SettingsError` that names it, says why and what
to use instead: either of those two with another loss type or with each other (TRL applies them to every loss
type; prefopt maps the sigmoid loss only), `ld_alpha` other than 1 (LD-DPO needs the log-prob of each completion's
first min(|y_w|, |y_l|) tokens), a label_smoothing that no listed loss type reads, and `reference_free` except with
sigmoid.

Two TRL eras differ (the loss code was rewritten in 0.29; 1.16 is the newest checked): up to 0.28, `sigmoid` with
label_smoothing ε was conservative DPO, `bco_pair` shifted its logits by a running mean of the rewards, `ipo`
divided every listed loss's log-probs by the length, `exo_pair` took ε = 1e-3 when label_smoothing was 0, and
the config had `rpo_alpha` (DPO + α·NLL of the chosen) and `reference_free` (reference log-probs taken as 0).
The era is `trl_version` when given, else the installed TRL's for a TRL config object, else 0.28 for a mapping
that holds a field only 0.28 had (rpo_alpha, reference_free), else the newest.

The NLL parts (`sft`, rpo_alpha) are per-sequence token means averaged over pairs, as everywhere in prefopt;
TRL averages over all chosen tokens of its micro-batch. The two agree when the chosen completions of a batch are
equally long (docs/trl.md, "Where the two differ").
"""

from __future__ import annotations

import difflib
import enum
import importlib.metadata
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prefopt.errors import LossInputError, SettingsError, UnknownLossError
from prefopt.losses.combine import combine_losses
from prefopt.registry import BoundLoss, get_loss

__all__ = ["TRL_LOSS_FIELDS", "TRL_LOSS_TYPES", "TrlLossType", "from_trl_dpo_config"]

# The DPOConfig fields that choose or shape TRL's loss, with TRL's defaults (1.16; the last two only up to 0.28).
_DEFAULTS: dict[str, Any] = {
    "loss_type": ("sigmoid",),
    "loss_weights": None,
    "beta": 0.1,
    "label_smoothing": 0.0,
    "discopop_tau": 0.05,
    "use_weighting": False,
    "ld_alpha": None,
    "f_divergence_type": "reverse_kl",
    "f_alpha_divergence_coef": 0.5,
    "rpo_alpha": None,
    "reference_free": False,
}
TRL_LOSS_FIELDS: tuple[str, ...] = tuple(_DEFAULTS)
_ONLY_UP_TO_0_28 = ("rpo_alpha", "reference_free")  # removed from DPOConfig in TRL 0.29
_LAST_OLD_ERA = (0, 28)


@dataclass(frozen=True)
class TrlLossType:
    """What one TRL `loss_type` is in prefopt: the registered loss, and which of its hyper-parameters TRL's
    `label_smoothing` sets (None: TRL does not read label_smoothing for this loss type)."""

    loss: str
    smoothing: str | None = None
    takes_beta: bool = True


TRL_LOSS_TYPES: dict[str, TrlLossType] = {
    "sigmoid": TrlLossType("dpo"),
    "sigmoid_norm": TrlLossType("dpo_norm"),
    "hinge": TrlLossType("hinge"),
    "ipo": TrlLossType("ipo"),
    "exo_pair": TrlLossType("exo", smoothing="epsilon"),
    "nca_pair": TrlLossType("nca"),
    "robust": TrlLossType("robust_dpo", smoothing="epsilon"),
    "bco_pair": TrlLossType("bco_pair"),
    "sppo_hard": TrlLossType("sppo_hard"),
    "aot": TrlLossType("aot", smoothing="label_smoothing"),
    "aot_unpaired": TrlLossType("aot_unpaired", smoothing="label_smoothing"),
    "aot_pair": TrlLossType("aot_unpaired", smoothing="label_smoothing"),  # aot_unpaired's name up to TRL 0.19
    "apo_zero": TrlLossType("apo_zero"),
    "apo_down": TrlLossType("apo_down"),
    "discopop": TrlLossType("discopop"),
    "sft": TrlLossType("sft", takes_beta=False),
}


def from_trl_dpo_config(config: Any, *, trl_version: str | None = None) -> BoundLoss:
    """The prefopt loss that TRL's `DPOTrainer` computes for `config`.

    Args:
        config: a TRL `DPOConfig`, or a mapping of its fields (e.g. a TRL YAML file loaded with `yaml.safe_load`);
            the fields read are `TRL_LOSS_FIELDS`, TRL's defaults for those left out.
        trl_version: the TRL release whose semantics to follow ("0.28", "1.16.0"); see the module docstring.

    Returns:
        A `BoundLoss`: the registered loss for one loss type of weight 1, else `combine_losses` of the parts.

    Raises:
        SettingsError: a field prefopt cannot give TRL's meaning, or a value TRL or prefopt refuses; the message
            names the field and what to use instead.
    """
    fields = _read_fields(config)
    old_era = _old_era(config, fields, trl_version)
    values = {**_DEFAULTS, **({"f_alpha_divergence_coef": 1.0} if old_era else {}), **fields}  # ≤ 0.28's default
    loss_types = _loss_types(values["loss_type"])
    weights = _weights(values["loss_weights"], loss_types)
    _check_unsupported(values)
    _check_smoothing(values, loss_types, old_era)
    rpo_alpha = _rpo_alpha(values)
    if values["reference_free"]:
        return _reference_free(values, loss_types, weights, rpo_alpha)
    reshaped = _divergence_or_weighting(values, loss_types, weights, old_era, rpo_alpha)
    if reshaped is not None:
        return reshaped
    parts = [(_part(t, values, old_era, len(loss_types)), w) for t, w in zip(loss_types, weights, strict=True)]
    if rpo_alpha and len(parts) == 1 and parts[0][0].name == "dpo" and parts[0][1] == 1.0:
        return _bind("rpo", {"beta": values["beta"], "alpha": rpo_alpha}, "loss_type='sigmoid' with rpo_alpha")
    if rpo_alpha:  # TRL ≤ 0.28 adds α·NLL of the chosen to the weighted sum
        parts.append((_bind("sft", {}, "rpo_alpha"), rpo_alpha))
    merged: dict[str, tuple[BoundLoss, float]] = {}  # a loss listed twice: TRL sums it twice
    for bound, weight in parts:
        merged[repr(bound)] = (bound, merged.get(repr(bound), (bound, 0.0))[1] + weight)
    if len(merged) == 1 and next(iter(merged.values()))[1] == 1.0:
        return next(iter(merged.values()))[0]
    try:
        return combine_losses(list(merged.values()))
    except (LossInputError, UnknownLossError) as err:
        raise SettingsError(f"TRL DPOConfig loss_type={loss_types} with loss_weights={weights}: {err}") from None


# ---------------------------------------------------------------------------------------------------------------
# Reading the config


def _read_fields(config: Any) -> dict[str, Any]:
    """The loss fields `config` sets (a mapping's keys, or a config object's attributes)."""
    if isinstance(config, Mapping):
        keys = [k for k in config if isinstance(k, str)]
        for key in keys:
            near = difflib.get_close_matches(key, TRL_LOSS_FIELDS, n=1, cutoff=0.85)
            if key not in _DEFAULTS and near:
                raise SettingsError(f"TRL DPOConfig: unknown field {key!r}; did you mean {near[0]!r}?")
        return {k: config[k] for k in TRL_LOSS_FIELDS if k in config}
    if hasattr(config, "loss_type"):
        return {k: getattr(config, k) for k in TRL_LOSS_FIELDS if hasattr(config, k)}
    raise SettingsError(
        f"from_trl_dpo_config: expected a TRL DPOConfig or a mapping of its fields (loss_type, beta, ...), "
        f"got {type(config).__name__}"
    )


def _old_era(config: Any, fields: Mapping[str, Any], trl_version: str | None) -> bool:
    """True for TRL ≤ 0.28's loss semantics (module docstring)."""
    if trl_version is None and not isinstance(config, Mapping) and type(config).__module__.split(".")[0] == "trl":
        try:
            trl_version = importlib.metadata.version("trl")
        except importlib.metadata.PackageNotFoundError:
            trl_version = None
    if trl_version is None:
        return any(k in fields for k in _ONLY_UP_TO_0_28)
    match = re.match(r"^\s*v?(\d+)\.(\d+)", str(trl_version))
    if match is None:
        raise SettingsError(f"from_trl_dpo_config: trl_version={trl_version!r} is not a version such as 0.28 or 1.16.0")
    old = (int(match[1]), int(match[2])) <= _LAST_OLD_ERA
    for key in _ONLY_UP_TO_0_28:
        if not old and fields.get(key, _DEFAULTS[key]) not in (None, False):
            raise SettingsError(
                f"TRL DPOConfig {key}={fields[key]!r}: DPOConfig has no {key} since TRL 0.29 (trl_version="
                f"{trl_version!r}); pass trl_version='0.28' if the config is from TRL 0.28 or earlier"
            )
    return old


def _loss_types(value: Any) -> list[str]:
    types = [value] if isinstance(value, str) else list(value) if isinstance(value, Sequence) else None
    if not types or not all(isinstance(t, str) for t in types):
        raise SettingsError(f"TRL DPOConfig loss_type={value!r}: give one loss type or a list of them, e.g. 'sigmoid'")
    for t in types:
        if t not in TRL_LOSS_TYPES:
            near = difflib.get_close_matches(t, TRL_LOSS_TYPES, n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise SettingsError(
                f"TRL DPOConfig loss_type {t!r} is not a TRL DPO loss type.{hint} Known: {', '.join(TRL_LOSS_TYPES)}"
            )
    return types


def _weights(value: Any, loss_types: list[str]) -> list[float]:
    if value is None:
        return [1.0] * len(loss_types)
    weights = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    if weights is None or len(weights) != len(loss_types):
        raise SettingsError(
            f"TRL DPOConfig loss_weights={value!r}: give one weight per loss type ({len(loss_types)}: {loss_types})"
        )
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) for w in weights):
        raise SettingsError(f"TRL DPOConfig loss_weights={value!r}: the weights must be numbers")
    return [float(w) for w in weights]


# ---------------------------------------------------------------------------------------------------------------
# Fields without a prefopt meaning


def _check_unsupported(values: Mapping[str, Any]) -> None:
    if values["ld_alpha"] is not None and values["ld_alpha"] != 1.0:
        raise SettingsError(
            f"TRL DPOConfig ld_alpha={values['ld_alpha']!r}: LD-DPO needs the log-prob of each completion's first "
            "min(|y_w|, |y_l|) tokens, which a prefopt loss of sequence log-probs does not receive; prefopt has no "
            "LD-DPO yet: set ld_alpha to None (or 1.0, which weighs nothing) for plain DPO, or try 'rdpo'/'dpo_norm' "
            "against length exploitation"
        )


# TRL's f_divergence_type → fdpo's divergence (TRL ≤ 0.28 had reverse_kl, js_divergence, alpha_divergence).
_DIVERGENCES = {
    "reverse_kl": "reverse_kl",
    "forward_kl": "forward_kl",
    "js_divergence": "js",
    "alpha_divergence": "alpha",
}


def _divergence_or_weighting(
    values: Mapping[str, Any], loss_types: list[str], weights: list[float], old_era: bool, rpo_alpha: float
) -> BoundLoss | None:
    """fdpo for a non-default f_divergence_type, wpo for use_weighting (module docstring); None for neither."""
    divergence = values["f_divergence_type"]
    divergence = divergence.value if isinstance(divergence, enum.Enum) else divergence
    weighting = bool(values["use_weighting"])
    if divergence == "reverse_kl" and not weighting:
        return None
    field = "use_weighting=True" if weighting else f"f_divergence_type={divergence!r}"
    if divergence not in _DIVERGENCES or (old_era and divergence == "forward_kl"):
        known = [d for d in _DIVERGENCES if not (old_era and d == "forward_kl")]
        raise SettingsError(f"TRL DPOConfig {field}: TRL{' ≤ 0.28' if old_era else ''} knows {', '.join(known)}")
    plain_sigmoid = loss_types == ["sigmoid"] and weights == [1.0] and not values["label_smoothing"] and not rpo_alpha
    if not plain_sigmoid or (weighting and divergence != "reverse_kl"):
        raise SettingsError(
            f"TRL DPOConfig {field} with loss_type {loss_types}"
            f"{' and f_divergence_type=' + repr(divergence) if weighting and divergence != 'reverse_kl' else ''}: "
            f"prefopt maps it for loss_type 'sigmoid' alone (weight 1, no label_smoothing or rpo_alpha), to "
            f"{'wpo' if weighting else 'fdpo'}; TRL applies it to other loss types too, which prefopt does not"
        )
    beta = values["beta"]
    if weighting:
        return _bind("wpo", {"beta": beta, "clamp_weight": old_era}, "loss_type='sigmoid' with use_weighting=True")
    if divergence != "alpha_divergence":
        return _bind("fdpo", {"beta": beta, "divergence": _DIVERGENCES[divergence]}, f"{field}")
    return _alpha_divergence(values, old_era)


def _alpha_divergence(values: Mapping[str, Any], old_era: bool) -> BoundLoss:
    """fdpo for TRL's α-divergence: paper α = 1 − c (TRL ≥ 0.29) or c (≤ 0.28), c = f_alpha_divergence_coef."""
    coef = values["f_alpha_divergence_coef"]
    if isinstance(coef, bool) or not isinstance(coef, (int, float)):
        raise SettingsError(f"TRL DPOConfig f_alpha_divergence_coef={coef!r}: give a number in [0, 1]")
    alpha = float(coef) if old_era else 1.0 - float(coef)
    if not 0.0 <= alpha <= 1.0:
        raise SettingsError(
            f"TRL DPOConfig f_alpha_divergence_coef={coef!r}: its α-divergence has the paper's α = {alpha:g} "
            f"({'c' if old_era else '1 − c'}), outside [0, 1] where f-DPO's α-divergence is defined; use a "
            f"coefficient in [0, 1]"
        )
    what = f"f_divergence_type='alpha_divergence' with f_alpha_divergence_coef={coef!r}"
    if alpha < 1e-6 or alpha == 1.0:  # the limits: reverse KL (DPO; TRL ≥ 0.29 switches at |c − 1| < 1e-6), forward
        return _bind(
            "fdpo", {"beta": values["beta"], "divergence": "reverse_kl" if alpha < 1e-6 else "forward_kl"}, what
        )
    return _bind("fdpo", {"beta": values["beta"], "divergence": "alpha", "alpha": alpha}, what)


def _reads_smoothing(loss_type: str, old_era: bool) -> bool:
    return TRL_LOSS_TYPES[loss_type].smoothing is not None or (old_era and loss_type == "sigmoid")


def _check_smoothing(values: Mapping[str, Any], loss_types: list[str], old_era: bool) -> None:
    epsilon = values["label_smoothing"]
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise SettingsError(f"TRL DPOConfig label_smoothing={epsilon!r}: give a number in [0, 0.5)")
    if epsilon == 0 or any(_reads_smoothing(t, old_era) for t in loss_types):
        return
    readers = [t for t in TRL_LOSS_TYPES if TRL_LOSS_TYPES[t].smoothing]
    conservative = (
        " (TRL ≤ 0.28 read it as conservative DPO: get_loss('cdpo', epsilon=…), or trl_version='0.28')"
        if "sigmoid" in loss_types
        else ""
    )
    raise SettingsError(
        f"TRL DPOConfig label_smoothing={epsilon!r} changes none of loss_type {loss_types} in TRL (it is read by "
        f"{', '.join(readers)}){conservative}; set label_smoothing to 0"
    )


def _rpo_alpha(values: Mapping[str, Any]) -> float:
    alpha = values["rpo_alpha"]
    if alpha is None:
        return 0.0
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 0:
        raise SettingsError(f"TRL DPOConfig rpo_alpha={alpha!r}: give a number ≥ 0 (the weight of the chosen NLL)")
    return float(alpha)


def _reference_free(values: Mapping[str, Any], loss_types: list[str], weights: list[float], alpha: float) -> BoundLoss:
    """TRL ≤ 0.28's reference_free=True: the reference log-probs taken as 0. With sigmoid (ε = 0) that is CPO,
    −log σ(β·(log π(y_w) − log π(y_l))) + α·NLL; the other loss types have no reference-free entry here."""
    if loss_types != ["sigmoid"] or weights != [1.0] or values["label_smoothing"]:
        raise SettingsError(
            f"TRL DPOConfig reference_free=True with loss_type {loss_types}: prefopt maps it for loss_type 'sigmoid' "
            "alone, without label_smoothing (→ 'cpo' with alpha=0); TRL ≤ 0.28 read it as reference log-probs of 0 "
            "for hinge, ipo, robust, exo_pair, apo_zero, apo_down (pass zeros as the reference to that loss) and "
            "ignored it for the other loss types"
        )
    return _bind("cpo", {"beta": values["beta"], "alpha": alpha}, "loss_type='sigmoid' with reference_free=True")


# ---------------------------------------------------------------------------------------------------------------
# One loss type


def _part(loss_type: str, values: Mapping[str, Any], old_era: bool, count: int) -> BoundLoss:
    entry = TRL_LOSS_TYPES[loss_type]
    name, epsilon = entry.loss, values["label_smoothing"]
    hparams: dict[str, Any] = {"beta": values["beta"]} if entry.takes_beta else {}
    if loss_type == "discopop":
        hparams["tau"] = values["discopop_tau"]
    if loss_type == "sigmoid" and old_era and epsilon:
        name, hparams["epsilon"] = "cdpo", epsilon
    elif loss_type == "exo_pair" and not epsilon:
        if not old_era:
            raise SettingsError(
                "TRL DPOConfig loss_type 'exo_pair' needs label_smoothing > 0 (EXO's ε; the paper suggests 1e-3)"
            )
        hparams["epsilon"] = 1e-3  # TRL ≤ 0.28 took 1e-3 for 0
    elif entry.smoothing is not None:
        hparams[entry.smoothing] = epsilon
    if old_era and loss_type == "bco_pair":
        raise SettingsError(
            "TRL DPOConfig loss_type 'bco_pair' up to TRL 0.28 shifts by a running mean δ of the rewards; prefopt's "
            "'bco_pair' has δ = 0 (TRL ≥ 0.29), and the running δ is the unpaired 'bco': pass trl_version='1.16' "
            "for δ = 0"
        )
    if old_era and loss_type == "ipo" and count > 1:
        raise SettingsError(
            "TRL DPOConfig loss_type 'ipo' in a list: up to TRL 0.28 it divides every listed loss's log-probs by "
            "the length, which prefopt does not do to the other parts; list 'ipo' alone, or pass trl_version='1.16'"
        )
    return _bind(name, hparams, f"loss_type={loss_type!r}")


def _bind(name: str, hparams: Mapping[str, Any], what: str) -> BoundLoss:
    try:
        return get_loss(name, **hparams)
    except (LossInputError, UnknownLossError) as err:
        raise SettingsError(f"TRL DPOConfig {what} → prefopt loss {name!r}: {err}") from None
