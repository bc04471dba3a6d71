"""The gold reward r*(x, y) of the toy review language (a `prefopt.reward_function.RewardFunction`).

    r*(x, y) = content(x, y) + λ_len · log(1 + |y|) − c_bad · 1[x + y is not a review of the language]

content is the mean sentiment of the sentiment words in the review body (the prompt's opening words
followed by the completion); each sentiment word w (an adjective or a verb) contributes

    s(w) = valence(w) · Π_{m ∈ scope(w)} mult(m) · weight(aspect of its clause | item category)

valence ±2 (strong) or ±1 (mild); scope(w) is the words before w in its clause (a clause ends at "," "."
"and" "but"); mult is an intensifier's factor ("very" 1.5, "extremely" 2, "slightly" 0.5, …) or −1/2 for
a negation ("not good" = −0.5, "not awful" = +1); aspect weights say what matters for the prompt's
item category (a hotel's location 1.5, a book's cover 0.5; see `language.ASPECT_WEIGHTS`). With no
sentiment word content is 0. |y| counts the words of the completion; the log makes the length
component mild and saturating, so a length-exploiting policy gains a little reward per extra word. The
penalty c_bad makes ungrammatical text (the reward hack of a drifting policy) worse than any review.

The computation is vectorised: words become ids, per-word tables are gathered into [B, T] tensors,
and the clause scopes are segment-wise cumulative sums of log |mult| and of negation counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prefopt.data.synthetic.language import (
    ADJECTIVES,
    ASPECT_WEIGHTS,
    BOUNDARY_WORDS,
    CATEGORIES,
    INTENSIFIERS,
    NEGATIONS,
    VERBS,
    accepts,
    item_category,
    split_prompt,
    vocabulary,
)
from prefopt.reward_function import RewardFunction

__all__ = ["RewardFunction", "GoldReward", "gold_reward", "gold_reward_components"]

DEFAULT_LENGTH_WEIGHT = 0.25
DEFAULT_UNGRAMMATICAL_PENALTY = 2.0


class _Tables:
    """Per-word lookup tables over the language vocabulary (+1 row for unknown words, +1 for padding)."""

    def __init__(self) -> None:
        words = vocabulary()
        self.index = {w: i for i, w in enumerate(words)}
        self.unknown, self.pad = len(words), len(words) + 1
        size = len(words) + 2
        self.valence = torch.zeros(size)
        self.log_mult = torch.zeros(size)
        self.negation = torch.zeros(size)
        self.boundary = torch.zeros(size, dtype=torch.bool)
        for word, value in ADJECTIVES.items():
            self.valence[self.index[word]] = value
        for past, (base, value) in VERBS.items():
            self.valence[self.index[past]] = self.valence[self.index[base]] = value
        for word, factor in {**INTENSIFIERS, **NEGATIONS}.items():
            self.log_mult[self.index[word]] = math.log(abs(factor))
            self.negation[self.index[word]] = float(factor < 0)
        for word in BOUNDARY_WORDS:
            self.boundary[self.index[word]] = True
        self.boundary[self.pad] = True
        self.categories = sorted(CATEGORIES)
        self.log_aspect = torch.zeros(len(self.categories), size)  # [n_categories, V]
        for c, category in enumerate(self.categories):
            for aspect, weight in ASPECT_WEIGHTS[category].items():
                self.log_aspect[c, self.index[aspect]] = math.log(weight)


_TABLES: _Tables | None = None


def _tables() -> _Tables:
    global _TABLES
    if _TABLES is None:
        _TABLES = _Tables()
    return _TABLES


def _segment_cumsum(values: Tensor, boundary: Tensor) -> Tensor:
    """Cumulative sum along dim 1 restarting after every boundary position. values, boundary: [B, T]."""
    total = values.cumsum(1)  # (B, T)
    positions = torch.arange(values.shape[1]).expand_as(values)
    last = torch.where(boundary, positions, torch.full_like(positions, -1)).cummax(1).values  # last boundary ≤ t
    before = total.gather(1, last.clamp(min=0))
    return total - torch.where(last >= 0, before, torch.zeros_like(before))


def gold_reward_components(prompts: Sequence[str], completions: Sequence[str]) -> dict[str, Tensor]:
    """The parts of r*: `content` [B] float32, `length` [B] (completion words, float32) and
    `grammatical` [B] bool. Raises ValueError naming the row whose prompt is not "CATEGORY review of the ITEM : …"."""
    if len(prompts) != len(completions):
        raise ValueError(
            f"gold_reward: {len(prompts)} prompts but {len(completions)} completions; pass one "
            "completion per prompt (repeat a prompt for several completions)"
        )
    tables = _tables()
    rows, categories = [], []
    for i, prompt in enumerate(prompts):
        parsed = split_prompt(prompt)
        if parsed is None:
            raise ValueError(
                f"gold_reward: prompt of row {i} ({prompt[:60]!r}) is not a prompt of the synthetic "
                "language; it must read 'CATEGORY review of the ITEM : [opening words]' (an item of that "
                "category, e.g. 'food review of the pizza :')"
            )
        item, opening = parsed
        categories.append(tables.categories.index(item_category(item)))
        rows.append([tables.index.get(w, tables.unknown) for w in opening + completions[i].split()])
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), max(width, 1)), tables.pad, dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    category = torch.tensor(categories, dtype=torch.long)
    boundary = tables.boundary[ids]
    log_scope = _segment_cumsum(tables.log_mult[ids] + tables.log_aspect[category[:, None], ids], boundary)
    negations = _segment_cumsum(tables.negation[ids], boundary)
    valence = tables.valence[ids]  # (B, T)
    # A sentiment word's own table entries are 0, so the scope sums at w are those of the words before it.
    sign = 1.0 - 2.0 * torch.remainder(negations, 2.0)
    contribution = valence * torch.exp(log_scope) * sign
    count = (valence != 0).sum(1).clamp(min=1)
    return {
        "content": contribution.sum(1) / count,
        "length": torch.tensor([len(c.split()) for c in completions], dtype=torch.float32),
        "grammatical": torch.tensor([accepts(p, c) for p, c in zip(prompts, completions)], dtype=torch.bool),
    }


def gold_reward(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    length_weight: float = DEFAULT_LENGTH_WEIGHT,
    ungrammatical_penalty: float = DEFAULT_UNGRAMMATICAL_PENALTY,
) -> Tensor:
    """r*(x, y) for B (prompt, completion) pairs → float32 [B] (formula in the module docstring).

    Args:
        prompts: B prompts "CATEGORY review of the ITEM : [opening words]".
        completions: B completions (row i continues prompt i).
        length_weight: λ_len ≥ 0 of the length component λ_len·log(1 + |y|).
        ungrammatical_penalty: c_bad ≥ 0 subtracted when prompt + completion is not in the language.
    """
    if length_weight < 0 or ungrammatical_penalty < 0:
        raise ValueError(
            f"gold_reward: length_weight={length_weight} and ungrammatical_penalty="
            f"{ungrammatical_penalty} must both be ≥ 0"
        )
    parts = gold_reward_components(prompts, completions)
    return (
        parts["content"]
        + length_weight * torch.log1p(parts["length"])
        - ungrammatical_penalty * (~parts["grammatical"]).float()
    )


@dataclass(frozen=True)
class GoldReward:
    """The gold reward as a reward-model object (implements `RewardFunction`).

    `GoldReward().score(prompts, completions)` → float32 [B]; see `gold_reward` for the arguments.
    """

    length_weight: float = DEFAULT_LENGTH_WEIGHT
    ungrammatical_penalty: float = DEFAULT_UNGRAMMATICAL_PENALTY

    def __post_init__(self) -> None:
        if self.length_weight < 0 or self.ungrammatical_penalty < 0:
            raise ValueError(
                f"GoldReward: length_weight={self.length_weight} and ungrammatical_penalty="
                f"{self.ungrammatical_penalty} must both be ≥ 0"
            )

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """Rewards [B] (float32) of `completions[i]` as a continuation of `prompts[i]`."""
        return gold_reward(
            prompts, completions, length_weight=self.length_weight, ungrammatical_penalty=self.ungrammatical_penalty
        )
