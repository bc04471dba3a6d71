"""Weighted sums of registered losses: MPO as a feature of the registry, usable wherever a loss is.

Mixed Preference Optimization (Wang et al. 2024, "Enhancing the Reasoning Ability of Multimodal Large Language
Models via Mixed Preference Optimization", arXiv:2411.10442) trains on a weighted sum of a preference loss (DPO),
a quality loss (BCO on pairs) and a generation loss (SFT on the chosen), weighted 0.8, 0.2 and 1:

    combo = prefopt.combine_losses({"dpo": 0.8, "bco_pair": 0.2, "sft": 1.0}, beta=0.1)
    out = combo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_lengths=…, rejected_lengths=…)
    out.loss, out.per_example    0.8·L_dpo + 0.2·L_bco_pair + 1·L_sft   (each part's own reduction, weighted)
    out.metrics                  each part's loss and metrics under its name: "dpo/loss", "dpo/rewards/margins", …
    combo.spec.name              "dpo:0.8+bco_pair:0.2+sft:1", the spelling that names the combination wherever
                                 a loss name goes: prefopt.get_loss(spelling, beta=0.1), prefopt.loss_spec(spelling),
                                 `prefopt train --loss SPELLING`, `prefopt compare --losses dpo,SPELLING`

Rules:
  * the parts share one data kind, paired, unpaired or ranked log-prob losses: one batch feeds them all;
  * weights are finite and ≥ 0, at least one > 0 (a part of weight 0 is computed and logged, not trained on);
    a part appears once; the spelling writes each weight shortest (1.0 → "1", 1e20 → "1e20": no "+" in it);
  * hyper-parameters: `beta=0.1` goes to every part that declares `beta` (TRL's MPO shares β), `dpo.beta=0.2`
    to one part and wins over a shared value; a part given as a `BoundLoss` keeps its bound values. A name no
    part takes is an error. The combination's `LossSpec.hparams` are the parts', named `dpo.beta`;
  * the call is the parts' call (tensors, or engine outputs), and each part checks its inputs itself;
  * the declaration merges the parts': a reference or lengths if any part needs them, the union of extra
    inputs, each part's running state kept under the part's name (a checkpoint's `state.json` holds
    {"kto:1+bco:1": {"bco": {...}}}); two parts may not take one input name served two ways.

The declaration and the call are in `prefopt.losses.combined`; this module checks what a user gives.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from prefopt.losses.combined import CombinedLoss, CombinedSpec, combined_spec, weight_text
from prefopt.registry import (
    COMBINATION_MARKS,
    BoundLoss,
    LossInputError,
    LossSpec,
    UnknownLossError,
    list_losses,
    loss_spec,
    register_combinations,
)
from prefopt.registry.spec import _unknown

__all__ = ["COMBINABLE_KINDS", "combine_losses", "is_combination", "parse_combination"]

# The kinds a combination may have: one batch of paired, unpaired or ranked log-probs feeds every part.
COMBINABLE_KINDS = ("paired", "unpaired", "ranked")
_EXAMPLE = "dpo:0.8+bco_pair:0.2+sft:1"


def is_combination(name: str) -> bool:
    """Whether `name` spells a combination ("dpo:0.8+sft:1") rather than naming one loss."""
    return any(mark in name for mark in COMBINATION_MARKS)


def parse_combination(spelling: str) -> tuple[tuple[str, float], ...]:
    """ "dpo:0.8+sft:1" → (("dpo", 0.8), ("sft", 1.0)); a part without ":WEIGHT" weighs 1. Names are not looked up
    and weights not checked here (`combine_losses` does both)."""
    parts = []
    for piece in spelling.split("+"):
        name, sep, weight = (text.strip() for text in piece.partition(":"))
        if not name or (sep and not weight):
            raise LossInputError(
                f"{spelling!r}: part {piece.strip()!r} is incomplete; write a combination as "
                f"NAME:WEIGHT+NAME:WEIGHT, e.g. {_EXAMPLE}"
            )
        try:
            parts.append((name, float(weight) if sep else 1.0))
        except ValueError:
            raise LossInputError(
                f"{spelling!r}: the weight of {name} is {weight!r}, not a number; write NAME:WEIGHT, e.g. {name}:0.5"
            ) from None
    return tuple(parts)


def combine_losses(
    parts: Mapping[str, float] | Sequence[tuple[str | BoundLoss, float]] | str, /, **hparams: Any
) -> CombinedLoss:
    """The weighted sum of registered losses `parts`, with `hparams` bound (module docstring).

    Args:
        parts: a mapping name → weight, a sequence of (name or `BoundLoss`, weight) pairs (a `BoundLoss` keeps
            its bound hyper-parameters), or a spelling such as "dpo:0.8+sft:1".
        hparams: `NAME=V` for every part that declares NAME, `**{"PART.NAME": V}` for one part.

    Raises:
        UnknownLossError: an unknown part (with a did-you-mean) or a hyper-parameter no part takes.
        LossInputError: a bad weight, a part listed twice, parts of different data kinds, a part that is not a
            paired, unpaired or ranked log-prob loss, or two parts serving one input two ways.
    """
    items = _items(parts)
    where = parts if isinstance(parts, str) else "+".join(f"{_part_name(p)}:{_text(w)}" for p, w in items)
    resolved: list[tuple[LossSpec, float]] = []
    bound: dict[str, Any] = {}
    for part, weight in items:
        spec = _part_spec(part, where)
        _check_weight(where, spec.name, weight)
        resolved.append((spec, float(weight)))
        if isinstance(part, BoundLoss):
            bound.update({f"{spec.name}.{k}": v for k, v in part.hparams.items()})
    _check_parts(where, resolved)
    spec = combined_spec(tuple(resolved))
    return CombinedLoss(spec, spec.validate_hparams({**hparams, **bound}))


def _items(parts: Any) -> list[tuple[Any, Any]]:
    if isinstance(parts, str):
        return list(parse_combination(parts))
    if isinstance(parts, Mapping):
        return list(parts.items())
    items = list(parts) if isinstance(parts, Sequence) else None
    if items is None or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in items):
        raise LossInputError(
            f"combine_losses: parts must be a mapping name → weight, (name or BoundLoss, weight) pairs or a "
            f"spelling such as {_EXAMPLE!r}; got {parts!r}"
        )
    return [(p[0], p[1]) for p in items]


def _part_name(part: Any) -> str:
    return part.name if isinstance(part, BoundLoss) else str(part)


def _text(weight: Any) -> str:
    number = isinstance(weight, numbers.Real) and not isinstance(weight, bool) and math.isfinite(weight)
    return weight_text(weight) if number else repr(weight)


def _part_spec(part: Any, where: str) -> LossSpec:
    """The registered loss a part names; a combination is not a part."""
    if isinstance(part, BoundLoss):
        spec = part.spec
    elif isinstance(part, str) and not is_combination(part):
        try:
            spec = loss_spec(part)
        except UnknownLossError:
            raise UnknownLossError(f"{where}: {_unknown('loss', part, list_losses())}") from None
    else:
        raise LossInputError(f"{where}: a part is one registered loss (a name or a BoundLoss), got {part!r}")
    if isinstance(spec, CombinedSpec):
        raise LossInputError(f"{where}: part {spec.name!r} is itself a combination; list its parts instead")
    return spec


def _check_weight(where: str, name: str, weight: Any) -> None:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) or weight < 0:
        raise LossInputError(
            f"{where}: the weight of {name} is {weight!r}; a weight is a finite number ≥ 0 (0 logs the part "
            f"without training on it), e.g. {name}:0.5"
        )


def _check_parts(where: str, parts: list[tuple[LossSpec, float]]) -> None:
    """At least one part, none twice, some weight > 0, one data kind among the combinable ones."""
    names = [spec.name for spec, _ in parts]
    if not parts:
        raise LossInputError(f"combine_losses: no parts; give losses and weights, e.g. {_EXAMPLE}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise LossInputError(f"{where}: {', '.join(twice)} is listed twice; list each part once, with one weight")
    if not any(weight > 0 for _, weight in parts):
        raise LossInputError(f"{where}: every weight is 0, so nothing would train; give some part a weight > 0")
    kinds = [spec.kind + (" reward-model" if spec.scores != "logps" else "") for spec, _ in parts]
    if len(set(kinds)) > 1:
        raise LossInputError(
            f"{where}: the parts have different data kinds ({', '.join(f'{n}: {k}' for n, k in zip(names, kinds))}); "
            f"one batch feeds every part, so combine losses of one kind (`prefopt losses --kind paired` lists them)"
        )
    if kinds[0] not in COMBINABLE_KINDS:
        raise LossInputError(
            f"{where}: {', '.join(names)} {'is a' if len(names) == 1 else 'are'} {kinds[0]} loss"
            f"{'' if len(names) == 1 else 'es'}; a combination is of offline log-prob losses of one kind "
            f"({', '.join(COMBINABLE_KINDS)})"
        )


def _bind(spelling: str, hparams: Mapping[str, Any]) -> CombinedLoss:
    return combine_losses(spelling, **hparams)


register_combinations(_bind)
