"""The whole synthetic task in one call: reference policy + preference data, optionally written to a folder.

task = synthetic_task(seed=0)                      # cached policy, fresh data (seconds after first build)
task.preferences.dataset("paired")                 # prompt / chosen / rejected
write_synthetic_task("synth/", seed=0)             # what `prefopt data synth --out synth/` does
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefopt.data.synthetic.policy import ReferencePolicy, SFTConfig, reference_policy, save_reference_policy
from prefopt.data.synthetic.preferences import PreferenceConfig, SyntheticPreferences, build_preferences
from prefopt.data.synthetic.reward import GoldReward
from prefopt.preflight import check_output_dir
from prefopt.settings import SettingsError

__all__ = ["SyntheticTask", "synthetic_task", "write_synthetic_task"]


@dataclass
class SyntheticTask:
    """The reference policy, its preference data and the gold reward they were labelled with."""

    policy: ReferencePolicy
    preferences: SyntheticPreferences
    reward: GoldReward


def synthetic_task(
    seed: int = 0,
    *,
    sft_config: SFTConfig | None = None,
    preference_config: PreferenceConfig | None = None,
    reward: GoldReward | None = None,
    cache_dir: str | Path | None = None,
    rebuild: bool = False,
    progress: bool = True,
) -> SyntheticTask:
    """Load (or train and cache) the reference policy for `seed` and sample its preference data.

    Args:
        seed: selects the policy weights, the prompts, the completions and the label draws.
        sft_config: reference-policy size and recipe (default `SFTConfig()`).
        preference_config: data sizes and labelling knobs (default `PreferenceConfig()`).
        reward: the gold reward (default `GoldReward()`).
        cache_dir, rebuild, progress: see `reference_policy`.
    """
    reward = reward or GoldReward()
    policy = reference_policy(seed, sft_config, cache_dir=cache_dir, rebuild=rebuild, progress=progress)
    preferences = build_preferences(
        policy.model, policy.tokenizer, seed=seed, config=preference_config, reward=reward, progress=progress
    )
    return SyntheticTask(policy, preferences, reward)


def write_synthetic_task(
    out_dir: str | Path,
    *,
    seed: int = 0,
    sft_config: SFTConfig | None = None,
    preference_config: PreferenceConfig | None = None,
    cache_dir: str | Path | None = None,
    rebuild: bool = False,
    progress: bool = True,
    with_gold: bool = False,
) -> dict[str, Any]:
    """Write the synthetic task to `out_dir` and return its summary.

    Layout: `model/` (safetensors weights, config, tokenizer with chat template, report.json),
    `paired|unpaired|ranked/{train,eval}.jsonl`, `heldout_prompts.jsonl`, `samples.jsonl` (every
    completion with its gold reward) and `summary.json` (data summary + the policy's report + the gold
    reward's settings). `with_gold` adds gold-reward columns to the exported rows.
    """
    out = Path(out_dir).expanduser()
    check_output_dir(out, "--out")
    if cache_dir is not None:
        check_output_dir(cache_dir, "--cache-dir")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SettingsError(f"seed={seed!r} (--seed) must be an integer ≥ 0")
    model_dir = out / "model"
    if model_dir.exists():
        raise FileExistsError(f"{model_dir} already exists; choose an empty --out folder or remove it")
    task = synthetic_task(
        seed,
        sft_config=sft_config,
        preference_config=preference_config,
        cache_dir=cache_dir,
        rebuild=rebuild,
        progress=progress,
    )
    copy = ReferencePolicy(task.policy.model, task.policy.tokenizer, None, task.policy.report)
    save_reference_policy(copy, model_dir)
    task.preferences.save(out, with_gold=with_gold)
    summary = task.preferences.summary()
    summary["reference_policy"] = {k: v for k, v in task.policy.report.items() if k != "examples"}
    summary["gold_reward"] = {
        "length_weight": task.reward.length_weight,
        "ungrammatical_penalty": task.reward.ungrammatical_penalty,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
