"""The column schemas of the four data kinds, in the public formats users already have.

    kind       required columns                          one row holds
    paired     prompt, chosen, rejected                  a preference y_w ≻ y_l for prompt x
    unpaired   prompt, completion, label                 one completion with a binary label (KTO)
    ranked     prompt, completions, ranks | scores       K ≥ 2 completions with an order
    prompt     prompt                                    a prompt to generate from (online algorithms)

Optional columns carried through to the batch: `margin` (float, e.g. a reward-model margin), `weight`
(float ≥ 0), `id` (str or int), `pair_id` (int: the pair an unpaired row came from, see `to_unpaired`).

Text fields are either strings or conversations: lists of `{"role", "content"}` messages rendered with
the tokenizer's chat template. Paired data may leave out `prompt` ("implicit prompt"): `chosen` and
`rejected` are then whole texts or conversations and the prompt is their longest common prefix.

The loss registry names the kind a loss consumes (`loss_spec(name).kind`); the data layer takes that
string and knows no loss by name. The registry calls prompt-only data "rollout"; both names work here.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "DataKind",
    "KINDS",
    "KindSchema",
    "OPTIONAL_COLUMNS",
    "IDENTICAL_POLICIES",
    "MESSAGE_ROLES",
    "schema_for",
    "is_conversation",
    "nearest_name",
]

DataKind = Literal["paired", "unpaired", "ranked", "prompt"]
KINDS: tuple[str, ...] = ("paired", "unpaired", "ranked", "prompt")
_ALIASES = {"rollout": "prompt", "prompt-only": "prompt", "prompt_only": "prompt"}

OPTIONAL_COLUMNS: tuple[str, ...] = ("margin", "weight", "id", "pair_id")
# What to do with pairs whose chosen equals rejected (`prefopt.data.validate`); here so that settings can
# check the value without importing `datasets`.
IDENTICAL_POLICIES: tuple[str, ...] = ("warn", "drop", "error")
MESSAGE_ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class KindSchema:
    """The columns of one data kind.

    Attributes:
        kind: canonical kind name.
        required: columns every dataset of this kind must have.
        one_of: groups of which exactly one column must be present (ranked: ranks | scores).
        optional: further columns carried through when present.
        text_columns: columns holding a string or a conversation (list of messages).
    """

    kind: str
    required: tuple[str, ...]
    one_of: tuple[tuple[str, ...], ...] = ()
    optional: tuple[str, ...] = OPTIONAL_COLUMNS
    text_columns: tuple[str, ...] = ()

    @property
    def known_columns(self) -> tuple[str, ...]:
        """Every column name this kind understands (for did-you-mean suggestions)."""
        return self.required + tuple(c for group in self.one_of for c in group) + self.optional


_SCHEMAS = {
    "paired": KindSchema("paired", ("prompt", "chosen", "rejected"), text_columns=("prompt", "chosen", "rejected")),
    "unpaired": KindSchema("unpaired", ("prompt", "completion", "label"), text_columns=("prompt", "completion")),
    "ranked": KindSchema("ranked", ("prompt", "completions"), one_of=(("ranks", "scores"),), text_columns=("prompt",)),
    "prompt": KindSchema("prompt", ("prompt",), text_columns=("prompt",)),
}


def schema_for(kind: str) -> KindSchema:
    """The schema of data kind `kind` ("paired", "unpaired", "ranked", "prompt"; "rollout" = "prompt").

    An unknown kind raises ValueError naming the valid ones and the nearest match.
    """
    canonical = _ALIASES.get(kind, kind)
    if canonical not in _SCHEMAS:
        near = nearest_name(kind, KINDS + tuple(_ALIASES))
        hint = f" Did you mean {near!r}?" if near else ""
        raise ValueError(
            f"unknown data kind {kind!r}.{hint} Valid kinds: {', '.join(KINDS)} (and 'rollout' = 'prompt')."
        )
    return _SCHEMAS[canonical]


def is_conversation(value: Any) -> bool:
    """True if `value` looks like a conversation: a non-empty list whose items are all dicts."""
    return isinstance(value, list) and len(value) > 0 and all(isinstance(m, dict) for m in value)


def nearest_name(name: str, candidates: Sequence[str], cutoff: float = 0.6) -> str | None:
    """The candidate closest to `name` by difflib's ratio (case-insensitive), or None below `cutoff`."""
    lowered = {c.lower(): c for c in candidates}
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=cutoff)
    return lowered[match[0]] if match else None
