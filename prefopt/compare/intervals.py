"""The table's ± : how one row's runs (one per seed) become a mean with a 95% interval.

    one seed        the run's own bootstrap interval over held-out prompts (pairs for eval acc and margin)
    several seeds   a hierarchical bootstrap (`prefopt.eval.hierarchical_bootstrap_mean`): seeds with
                    replacement, then the held-out prompts within each drawn seed, for every column whose runs
                    kept per-prompt values (eval acc, margin, reward, KL, win, length); Student's t over the
                    seeds' values for the others (train loss, LC win, time, memory)

The hierarchical interval holds both sources of spread, training seeds and evaluation prompts; Student's t
over 2–3 seed means sees only the first, with few degrees of freedom.
"""

from __future__ import annotations

from typing import Any

from prefopt.eval import aggregate_seeds, hierarchical_bootstrap_mean, pairwise_outcomes

__all__ = ["PER_PROMPT", "interval_note", "per_prompt", "seeds_interval"]

# column → where a run's result keeps its per-prompt values
PER_PROMPT = {
    "eval_accuracy": ("preference", "values", "reward_accuracy"),
    "eval_margin": ("preference", "values", "reward_margin"),
    "reward": ("generation", "rewards"),
    "kl": ("generation", "kls"),
    "length": ("generation", "lengths"),
}


def _get(record: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(record, dict) or record.get(key) is None:
            return None
        record = record[key]
    return record


def per_prompt(record: dict[str, Any], key: str) -> list[float] | None:
    """The run's per-prompt values of column `key` (win: 1, ½ or 0 against the reference's sample of the same
    prompt), or None when the run did not keep them."""
    if key == "win_rate":
        mine, theirs = _get(record, ("generation", "rewards")), _get(record, ("generation", "reference_rewards"))
        return pairwise_outcomes(mine, theirs).tolist() if mine and theirs else None
    values = _get(record, PER_PROMPT[key]) if key in PER_PROMPT else None
    return list(values) if values else None


def seeds_interval(runs: list[dict[str, Any]], key: str, means: list[float]) -> dict[str, Any]:
    """{mean, low, high} of column `key` over `runs` (several seeds; `means`: each run's value)."""
    values = [per_prompt(r, key) for r in runs]
    if all(values):
        ci = hierarchical_bootstrap_mean(values)
    else:
        ci = aggregate_seeds(means)
    return {"mean": ci.mean, "low": ci.low, "high": ci.high, "method": ci.method}


def interval_note(seeds: int) -> str:
    """The footer's words for the ± of a table over `seeds` seeds."""
    if seeds > 1:
        return (
            "over seeds and held-out prompts (hierarchical bootstrap; Student's t over seeds for train loss, "
            "LC win, time and memory)."
        )
    return "over held-out prompts (bootstrap; pairs for eval acc and margin)."
