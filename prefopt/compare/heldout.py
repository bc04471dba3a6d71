"""What a comparison evaluates on, said in the table's footer: the held-out pairs and prompts, and on the
synthetic task the label-noise ceiling.

    prompts = holdout_prompts(rows["prompt"], fraction=0.1, seed=0)  # prompts held out of a single file
    train_rows, eval_rows = split_by_prompt(rows, prompts)           # no prompt in both
    write_heldout(out, describe_heldout(...))                         # <out>/heldout.json, read by the report

Your data with an eval (or test, or validation) split is evaluated on that split. A single file (or a folder
with only a train split) has a fraction `CompareConfig.holdout` of its distinct prompts held out (10% by
default): drawn by `CompareConfig.task_seed` from the sorted prompts, so the same file and seed give the same
split whatever its row order; every row of a held-out prompt goes to the eval side, and no run trains on it.
`holdout=0` keeps every row for training, and the footer then says that no held-out preference metric exists
and how to get one.

The label-noise ceiling is the gold reward's own accuracy on the eval pairs: the share of pairs whose chosen
completion has the strictly higher gold reward (ties count as wrong, as in the implicit-reward accuracy). A
policy's implicit reward cannot be expected to order the labels better than the reward they were drawn from;
the table shows it as the row `gold reward (labels)`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prefopt.atomic import write_json_atomic
from prefopt.eval import bootstrap_mean

__all__ = [
    "CEILING_LABEL",
    "HOLDOUT_DEFAULT",
    "ceiling_row",
    "describe_heldout",
    "gold_label_accuracy",
    "heldout_note",
    "holdout_prompts",
    "prompt_key",
    "read_heldout",
    "split_by_prompt",
    "write_heldout",
]

HOLDOUT_DEFAULT = 0.1  # share of distinct prompts held out of data that has no eval split
CEILING_LABEL = "gold reward (labels)"
_FILE = "heldout.json"


def prompt_key(prompt: Any) -> str:
    """A prompt as a string key: the text itself, or a conversation (list of messages) as sorted JSON."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def holdout_prompts(prompts: Iterable[Any], fraction: float, seed: int) -> set[str]:
    """The keys (`prompt_key`) of round(fraction · n) of the n distinct prompts, at least 1 and at most n − 1,
    drawn by `seed` from the sorted keys; empty when fraction is 0 or there are fewer than 2 prompts."""
    keys = sorted({prompt_key(p) for p in prompts})
    if fraction <= 0 or len(keys) < 2:
        return set()
    count = min(len(keys) - 1, max(1, round(fraction * len(keys))))
    return set(random.Random(f"prefopt-compare-holdout-{seed}").sample(keys, count))


def split_by_prompt(rows: Any, heldout: set[str]) -> tuple[Any, Any]:
    """(rows of the other prompts, rows of the held-out prompts) of a `datasets.Dataset` with a prompt column."""
    held = [prompt_key(p) in heldout for p in rows["prompt"]]
    return (
        rows.select([i for i, h in enumerate(held) if not h]),
        rows.select([i for i, h in enumerate(held) if h]),
    )


def gold_label_accuracy(pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The label-noise ceiling of paired rows with gold rewards (`chosen_gold`, `rejected_gold`): the share
    whose chosen completion has the strictly higher gold reward, with the bootstrap CI over pairs that the
    implicit-reward accuracy gets (`MeanCI.to_dict()`)."""
    wins = [1.0 if row["chosen_gold"] > row["rejected_gold"] else 0.0 for row in pairs]
    return bootstrap_mean(wins).to_dict()


def describe_heldout(
    *,
    pairs: int,
    source: str,
    generation_prompts: int = 0,
    reward: str | None = None,
    ceiling: dict[str, Any] | None = None,
    missing: str | None = None,
) -> dict[str, Any]:
    """What the comparison evaluated (JSON-able): `pairs` held-out pairs from `source` (e.g. "the synthetic
    task's eval split", "prompts held out of prefs.jsonl"), `generation_prompts` prompts sampled and scored by
    `reward`, the label-noise ceiling, and `missing`: why a part is absent and how to supply it."""
    return {
        "pairs": pairs,
        "source": source,
        "generation_prompts": generation_prompts,
        "reward": reward,
        "ceiling": ceiling,
        "missing": missing,
    }


def write_heldout(out: str | Path, heldout: dict[str, Any]) -> None:
    write_json_atomic(Path(out) / _FILE, heldout)


def read_heldout(out: str | Path) -> dict[str, Any] | None:
    """The description `write_heldout` left in the output folder `out`, or None."""
    path = Path(out) / _FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def ceiling_row(heldout: dict[str, Any] | None) -> dict[str, Any] | None:
    """The table row of the label-noise ceiling (its eval acc only), or None when there is none."""
    if not heldout or not heldout.get("ceiling"):
        return None
    return {"label": CEILING_LABEL, "loss": None, "hparams": {}, "seeds": [], "eval_accuracy": heldout["ceiling"]}


def heldout_note(heldout: dict[str, Any] | None) -> str:
    """The footer's sentence on what was evaluated ("" when the folder has no description)."""
    if not heldout:
        return ""
    parts = []
    if heldout["pairs"]:
        parts.append(f"eval acc and margin on {heldout['pairs']} held-out pairs ({heldout['source']})")
    if heldout.get("generation_prompts"):
        parts.append(
            f"samples of {heldout['generation_prompts']} held-out prompts, one per prompt, scored by the "
            f"{heldout['reward']}"
        )
    text = "Evaluated: " + "; ".join(parts) + "." if parts else ""
    if heldout.get("ceiling"):
        text += f" `{CEILING_LABEL}`: how often the gold reward itself orders those pairs as labelled."
    if heldout.get("missing"):
        text += " " + heldout["missing"]
    return text.strip()
