"""What each policy of a comparison wrote: its samples on the held-out prompts, beside the reference's.

    write_run_samples(run_dir, record, scorer="gold reward")  # <run>/samples.jsonl
    read_run_samples(run_dir)                                           # its lines, as dicts
    side = side_by_side(records, output_dir)      # the first prompts, every table row beside the reference
    render_samples_md(side)                       # samples.md

`samples.jsonl` holds one line per held-out prompt, in the evaluation's order: the run (`run`, `label`,
`seed`), the prompt's `index` and text, the policy's `completion` with its `reward` (the synthetic task's
gold reward, or the reward model's score: `scorer` says which), `length` in tokens and `kl` (its sequence
KL to the reference, where the evaluation measured one), and the reference policy's sample for the same
prompt (`reference_completion`, `reference_reward`, `reference_length`). The texts are the ones the
evaluation scored (nothing is sampled again), and every run draws the reference's samples with the same
evaluation seed, so the reference column is the same in every run's file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefopt.atomic import write_atomic

__all__ = [
    "SAMPLES_FILE",
    "SIDE_BY_SIDE_PROMPTS",
    "SideBySide",
    "read_run_samples",
    "render_samples_md",
    "run_samples",
    "side_by_side",
    "write_run_samples",
]

SAMPLES_FILE = "samples.jsonl"
# Held-out prompts shown side by side in samples.md and report.html (the first ones, in evaluation order).
SIDE_BY_SIDE_PROMPTS = 6


def run_samples(record: dict[str, Any], scorer: str) -> list[dict[str, Any]]:
    """The samples.jsonl lines of one evaluated run (`record["generation"]` holds the per-prompt lists and the
    `prompts`); empty when the evaluation kept no texts."""
    gen = record.get("generation") or {}
    prompts = gen.get("prompts") or []
    completions = gen.get("completions") or []
    if not completions or len(completions) != len(prompts):
        return []
    n = len(prompts)

    def at(key: str, i: int) -> Any:
        values = gen.get(key) or []
        return values[i] if len(values) == n else None

    return [
        {
            "run": record.get("run_id"),
            "label": record.get("label"),
            "seed": record.get("seed"),
            "index": i,
            "prompt": prompts[i],
            "completion": completions[i],
            "reward": at("rewards", i),
            "length": at("lengths", i),
            "kl": at("kls", i),
            "reference_completion": at("reference_completions", i),
            "reference_reward": at("reference_rewards", i),
            "reference_length": at("reference_lengths", i),
            "scorer": scorer,
        }
        for i in range(n)
    ]


def write_run_samples(run_dir: str | Path, record: dict[str, Any], scorer: str) -> Path | None:
    """Write `<run_dir>/samples.jsonl` atomically (see the module docstring); None when there is nothing to write."""
    lines = run_samples(record, scorer)
    if not lines:
        return None
    path = Path(run_dir) / SAMPLES_FILE
    write_atomic(path, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    return path


def read_run_samples(run_dir: str | Path) -> list[dict[str, Any]]:
    """The lines of `<run_dir>/samples.jsonl` (empty when the run wrote none)."""
    path = Path(run_dir) / SAMPLES_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class SideBySide:
    """The same held-out prompts across a comparison's rows.

    Attributes:
        prompts: per prompt {"index", "prompt", "reference": sample, "rows": [(label, sample), ...]}, a sample
            being {"completion", "reward", "length"} (None where that row has no sample of the prompt).
        labels: the rows shown (the first seed of each); total: the held-out prompts each run has; scorer:
            what scored them.
    """

    prompts: list[dict[str, Any]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    total: int = 0
    scorer: str = "reward"


def _sample(line: dict[str, Any] | None, prefix: str = "") -> dict[str, Any] | None:
    if line is None or line.get(prefix + "completion") is None:
        return None
    return {k: line.get(prefix + k) for k in ("completion", "reward", "length")}


def side_by_side(
    records: list[dict[str, Any]], output_dir: str | Path, count: int = SIDE_BY_SIDE_PROMPTS
) -> SideBySide:
    """The first `count` held-out prompts with the sample of each row (its first seed's run) and the
    reference's, read from the runs' samples.jsonl files."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        label = record.get("label")
        if label in runs:
            continue
        lines = read_run_samples(Path(output_dir) / str(record.get("run_id")))
        if lines:
            runs[label] = lines
    if not runs:
        return SideBySide()
    first = next(iter(runs.values()))
    by_prompt = {label: {line["prompt"]: line for line in lines} for label, lines in runs.items()}
    shown = []
    for line in first[:count]:
        rows = [(label, _sample(by_prompt[label].get(line["prompt"]))) for label in runs]
        reference = next((_sample(by_prompt[lb].get(line["prompt"]), "reference_") for lb in runs), None)
        shown.append({"index": line["index"], "prompt": line["prompt"], "reference": reference, "rows": rows})
    return SideBySide(shown, list(runs), len(first), str(first[0].get("scorer") or "reward"))


def _md_text(text: Any) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip() or "(empty)"


def _number(value: Any, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def render_samples_md(side: SideBySide) -> str:
    """samples.md: per prompt, a table of the reference's and every row's sample with its reward and length."""
    if not side.prompts:
        return "# Samples\n\nNo run kept samples (they need a reward: the synthetic task, or --reward).\n"
    lines = [
        "# Samples",
        "",
        f"The first {len(side.prompts)} of the {side.total} held-out prompts, with each row's sample (its first "
        f"seed) beside the reference policy's; reward: {side.scorer}; length in tokens. Every run's own "
        "samples are in its folder's samples.jsonl.",
    ]
    for number, item in enumerate(side.prompts, start=1):
        lines += ["", f"## {number}. {_md_text(item['prompt'])}", "", "| policy | reward | length | completion |"]
        lines.append("|---|---|---|---|")
        for label, sample in [("reference", item["reference"]), *item["rows"]]:
            if sample is None:
                lines.append(f"| {_md_text(label)} | — | — | (no sample) |")
                continue
            reward, length = _number(sample["reward"], "{:.3f}"), _number(sample["length"], "{:.0f}")
            lines.append(f"| {_md_text(label)} | {reward} | {length} | {_md_text(sample['completion'])} |")
    return "\n".join(lines) + "\n"
