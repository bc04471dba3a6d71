"""Turning the public formats into the canonical columns of each kind, row by row and whole datasets.

Implicit prompt (paired rows without a usable `prompt`): the prompt is the longest common prefix of
`chosen` and `rejected` —
  * conversations: the longest run of identical leading messages; both remainders must be non-empty;
  * text: the longest common character prefix, cut back to the last whitespace inside it so that no word
    is split between prompt and completion (the whitespace starts the completions). A row with no such
    prefix is an error.
A string `prompt` beside conversational `chosen`/`rejected` (the UltraFeedback-binarized shape, where the
conversations repeat the user turn) also takes the implicit path: the string is replaced by the
extracted messages.

Ranked rows are reordered best first: by `ranks` ascending (1 = best) or `scores` descending. Ties are
handled explicitly by `ties`: "error" (default; reported by validation), "drop" (rows with ties are
removed) or "keep" (a stable order; the canonical dense `ranks` column, 0 = best, keeps equal values so
a loss can see the ties).

`to_unpaired` splits each pair into a desirable and an undesirable row that share `pair_id` (the index
of the source pair), so KTO's mismatched-pair KL estimate can be formed from the same data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prefopt.data.schema import is_conversation
from prefopt.progress import quiet_by_default

if TYPE_CHECKING:
    import datasets

__all__ = [
    "TIE_POLICIES",
    "split_common_prefix",
    "needs_prompt_extraction",
    "rank_order",
    "has_ties",
    "extract_prompts",
    "order_ranked",
    "to_unpaired",
    "derived_fingerprint",
]

TIE_POLICIES: tuple[str, ...] = ("error", "drop", "keep")


def derived_fingerprint(parent: str, *parts: object) -> str:
    """A stable 16-hex fingerprint for a dataset derived from `parent` by an operation described by `parts`."""
    text = "\x1f".join([parent, *map(repr, parts)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def split_common_prefix(chosen: Any, rejected: Any) -> tuple[Any, Any, Any] | None:
    """Split two full texts or conversations into (prompt, chosen_rest, rejected_rest), or None if impossible.

    Conversations split after their longest run of equal leading messages; text splits at the last
    whitespace inside the longest common character prefix (see the module docstring). None means no
    non-empty prompt exists or a remainder would be empty.
    """
    if is_conversation(chosen) and is_conversation(rejected):
        return _split_conversations(chosen, rejected)
    if isinstance(chosen, str) and isinstance(rejected, str):
        return _split_texts(chosen, rejected)
    return None


def _common_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """The length of the longest common prefix of `a` and `b` (items compared with ==)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _split_conversations(chosen: list[Any], rejected: list[Any]) -> tuple[Any, Any, Any] | None:
    """Two conversations split after their longest run of equal leading messages."""
    n = _common_length(chosen, rejected)
    if n == 0 or n == len(chosen) or n == len(rejected):
        return None
    return chosen[:n], chosen[n:], rejected[n:]


def _split_texts(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """Two texts split at the last whitespace inside their longest common character prefix."""
    n = _common_length(chosen, rejected)
    if n == len(chosen) == len(rejected):
        return None  # identical texts: nothing to prefer
    cut = n
    # Keep the prefix whole only if it ends right before whitespace in both texts; otherwise back off
    # to the last whitespace inside it, so no word (and no whole completion) lands in the prompt.
    at_word_end = n < len(chosen) and n < len(rejected) and chosen[n].isspace() and rejected[n].isspace()
    if not at_word_end:
        while cut > 0 and not chosen[cut - 1].isspace():
            cut -= 1
    while cut > 0 and chosen[cut - 1].isspace():
        cut -= 1  # the whitespace run belongs to the completions
    if cut == 0 or not chosen[cut:] or not rejected[cut:]:
        return None
    return chosen[:cut], chosen[cut:], rejected[cut:]


def needs_prompt_extraction(row: dict[str, Any]) -> bool:
    """True if a paired row takes the implicit-prompt path (no prompt, or a string beside conversations)."""
    prompt = row.get("prompt")
    conversational = is_conversation(row.get("chosen")) and is_conversation(row.get("rejected"))
    return prompt is None or (isinstance(prompt, str) and conversational)


def rank_order(ranks: Sequence[float] | None, scores: Sequence[float] | None) -> list[int]:
    """Indices of the completions best first (ranks ascending, or scores descending; stable on ties)."""
    if ranks is not None:
        return sorted(range(len(ranks)), key=lambda i: ranks[i])
    assert scores is not None
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def has_ties(ranks: Sequence[float] | None, scores: Sequence[float] | None) -> bool:
    """True if two completions share a rank or a score."""
    values = ranks if ranks is not None else scores
    assert values is not None
    return len(set(values)) < len(values)


def _dense_ranks(values: Sequence[float], order: list[int]) -> list[int]:
    """Dense 0-based ranks in `order` (0 = best); equal values share a rank."""
    out: list[int] = []
    for j, i in enumerate(order):
        same = j > 0 and values[i] == values[order[j - 1]]
        out.append(out[-1] if same else (out[-1] + 1 if out else 0))
    return out


@quiet_by_default
def extract_prompts(dataset: datasets.Dataset) -> datasets.Dataset:
    """Paired dataset → the same rows with an explicit `prompt` (implicit rows split by their common prefix).

    Rows must have been validated (a row without a common prefix raises ValueError naming it).
    """
    if "prompt" not in dataset.column_names:
        dataset = dataset.add_column(
            "prompt", [None] * len(dataset), new_fingerprint=derived_fingerprint(dataset._fingerprint, "add-prompt")
        )

    def split(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"prompt": [], "chosen": [], "rejected": []}
        for i, prompt, chosen, rejected in zip(indices, batch["prompt"], batch["chosen"], batch["rejected"]):
            if needs_prompt_extraction({"prompt": prompt, "chosen": chosen, "rejected": rejected}):
                parts = split_common_prefix(chosen, rejected)
                if parts is None:
                    raise ValueError(f"row {i}: chosen and rejected share no prompt prefix (validate first)")
                prompt, chosen, rejected = parts
            out["prompt"].append(prompt)
            out["chosen"].append(chosen)
            out["rejected"].append(rejected)
        return out

    return dataset.map(
        split,
        batched=True,
        with_indices=True,
        desc="extract prompts",
        new_fingerprint=derived_fingerprint(dataset._fingerprint, "extract-prompts"),
    )


@quiet_by_default
def order_ranked(dataset: datasets.Dataset, ties: str = "error") -> datasets.Dataset:
    """Ranked dataset → `completions` best first with dense `ranks` (0 = best); `scores` reordered if present.

    Args:
        dataset: validated ranked rows with `ranks` (1 = best) or `scores` (higher = better).
        ties: "error" | "drop" | "keep" (see the module docstring).
    """
    if ties not in TIE_POLICIES:
        raise ValueError(f"ties={ties!r}: use one of {TIE_POLICIES}")
    by_scores = "ranks" not in dataset.column_names
    if ties == "drop":
        dataset = dataset.filter(
            lambda r: not has_ties(None if by_scores else r["ranks"], r["scores"] if by_scores else None),
            new_fingerprint=derived_fingerprint(dataset._fingerprint, "drop-ties"),
            desc="drop tied rows",
        )

    def reorder(row: dict[str, Any]) -> dict[str, Any]:
        values = row["scores"] if by_scores else row["ranks"]
        order = rank_order(None if by_scores else values, values if by_scores else None)
        out = {"completions": [row["completions"][i] for i in order], "ranks": _dense_ranks(values, order)}
        if by_scores:
            out["scores"] = [float(values[i]) for i in order]
        return out

    return dataset.map(
        reorder,
        desc="order completions",
        new_fingerprint=derived_fingerprint(dataset._fingerprint, "order-ranked", ties),
    )


@quiet_by_default
def to_unpaired(dataset: datasets.Dataset, *, progress: bool | None = None) -> datasets.Dataset:
    """Paired rows (prompt, chosen, rejected) → unpaired rows (prompt, completion, label, pair_id).

    Row i becomes rows 2i (chosen, label True) and 2i+1 (rejected, label False), both with `pair_id = i`
    (the source row's position; a source `pair_id` column wins). `margin`, `weight` and `id` are copied to
    both halves. Prompts must be explicit (`load_preferences` extracts implicit ones first). `progress`:
    `datasets`' progress bar (None: quiet unless switched on, `prefopt.progress`).
    """
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"to_unpaired needs paired columns; missing {missing}. Load with kind='paired' first.")
    carried = [c for c in ("margin", "weight", "id") if c in dataset.column_names]

    def split(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {k: [] for k in ("prompt", "completion", "label", "pair_id", *carried)}
        pair_ids = batch.get("pair_id", indices)
        for j, pair_id in enumerate(pair_ids):
            for completion, label in ((batch["chosen"][j], True), (batch["rejected"][j], False)):
                out["prompt"].append(batch["prompt"][j])
                out["completion"].append(completion)
                out["label"].append(label)
                out["pair_id"].append(int(pair_id))
                for c in carried:
                    out[c].append(batch[c][j])
        return out

    return dataset.map(
        split,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        desc="split pairs",
        new_fingerprint=derived_fingerprint(dataset._fingerprint, "to-unpaired"),
    )
