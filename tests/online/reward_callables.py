"""Reward functions the tests name as `module:function` strings, e.g.
`prefopt train-online --reward tests.online.reward_callables:length_reward` (`tests` is a package)."""

from __future__ import annotations

from typing import Any

# (prompt, topic) of every row `topic_reward` scored, to check that columns reach it aligned with the rows.
SEEN: list[tuple[str, str]] = []

NOT_CALLABLE = 3


def length_reward(completions: list[str], **kwargs: Any) -> list[float]:
    """Words in the completion, over 10 (TRL's convention: completions by keyword, the rest in **kwargs)."""
    return [len(c.split()) / 10 for c in completions]


def topic_reward(prompts: list[str], completions: list[str], topic: list[str]) -> list[float | None]:
    """1 when the completion names the prompt's `topic` column, 0 if not; None for film reviews (not
    applicable: the other reward functions score them). Records what it saw in `SEEN`."""
    SEEN.extend(zip(prompts, topic))
    return [None if t == "film" else float(t in c) for c, t in zip(completions, topic)]


def raising_reward(completions: list[str], **kwargs: Any) -> list[float]:
    """A bug: divides by zero on the first batch."""
    return [len(c) / 0 for c in completions]


def takes_one(completion: str) -> float:
    """Not a batch function: one completion at a time."""
    return float(len(completion))


class LengthReward:
    """A class (the string must name an instance or a function)."""

    def __call__(self, completions: list[str], **kwargs: Any) -> list[float]:
        return [float(len(c)) for c in completions]
