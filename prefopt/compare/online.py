"""The online half of `prefopt compare`: online runs (`prefopt.online.train_online`) and the best-of-N policy.

An online algorithm in `CompareConfig.losses` (ppo, rloo, grpo, dr_grpo, remax, best_of_n, online_dpo)
trains from the same starting policy as the offline losses, on the train split's prompts, with the
task's reward function (the synthetic task's gold reward, or `CompareConfig.reward`: a saved reward
model or Python functions), and is evaluated exactly like them (held-out preference metrics and generation
metrics), so every algorithm lands on the same frontier. Its settings are `prefopt.compare.config`'s
`online_settings`. On your data the other fields of each prompt's row reach the reward functions as keyword
arguments (TRL's convention): the online runs get the prompts as rows with those columns, and the evaluation and
best-of-N, which score (prompts, completions), get them through `PromptColumnsReward` (e.g. `references` for
`prefopt.online.lexical_rewards`).

With `best_of_n` among the losses, the inference-time best-of-N policy (sample N from the reference,
keep the best by gold reward) is added for N in `CompareConfig.bon_n`: its expected reward and measured
KL (`prefopt.online.best_of_n_reference`) beside the analytic bound log N − (N−1)/N, computed once per
output folder and kept in `best_of_n.json`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefopt.atomic import write_json_atomic
from prefopt.compare.heldout import prompt_key
from prefopt.data import load_preferences
from prefopt.data.loading import open_preferences
from prefopt.data.tokenize import PromptCompletionEncoder, TokenizeConfig
from prefopt.errors import MissingSplitError
from prefopt.online.best_of_n_reference import evaluate_best_of_n
from prefopt.online.reward_functions import CallableReward, CombinedReward, call_score
from prefopt.online.trainer import train_online

__all__ = [
    "NOT_REWARD_COLUMNS",
    "PromptColumnsReward",
    "train_online_run",
    "data_prompts",
    "data_prompt_rows",
    "best_of_n_reference",
    "saved_best_of_n",
]

# Columns of the data that never reach a reward function as keyword arguments: TRL's GRPOTrainer leaves out the
# prompt and the completion (every other column of the row is passed), and a reward function's own arguments
# (`prompts`, `completions`: a ranked row's completions) cannot be columns.
NOT_REWARD_COLUMNS = ("prompt", "completion", "prompts", "completions")


@dataclasses.dataclass(frozen=True)
class PromptColumnsReward:
    """A reward scored from prompts and completions alone, which passes each prompt's columns (the fields beside
    it in your data) to the wrapped reward as keyword arguments, TRL's convention: so the generation evaluation and
    best-of-N, which score (prompts, completions), reach e.g. `references` for `prefopt.online.lexical_rewards`.

    Attributes:
        reward: the `RewardFunction` (`CallableReward`, `CombinedReward`, a reward model, ...).
        columns: prompt text (as rendered for sampling) → its columns, filled as `SharedTask` reads the prompts.
    """

    reward: Any
    columns: Mapping[str, Mapping[str, Any]]

    def columns_of(self, prompts: Sequence[str]) -> dict[str, list[Any]]:
        """Each column of `prompts`' rows, aligned with them (None where a prompt's row lacks it)."""
        rows = [self.columns.get(prompt, {}) for prompt in prompts]
        names = sorted({name for row in rows for name in row})
        return {name: [row.get(name) for row in rows] for name in names}

    def score(self, prompts: Sequence[Any], completions: Sequence[str], **columns: Sequence[Any]) -> Any:
        """Rewards [S]; the columns given (the online loop's) or else those of the prompts' rows."""
        given = columns or self.columns_of(list(prompts))
        if isinstance(self.reward, (CallableReward, CombinedReward)):
            return self.reward.score(prompts, completions, **given)
        return call_score(self.reward, prompts, completions, given)


def _online_inputs(task: Any) -> tuple[Any, Any]:
    """(reward, prompts) of an online run: on your data, prompt rows with their columns (the online loop passes
    them to the reward functions itself, logging each function's rewards) and the reward unwrapped."""
    reward = task.reward.reward if isinstance(task.reward, PromptColumnsReward) else task.reward
    if task.synthetic is not None:
        return reward, task.prompts("train")
    rows = task.prompt_rows("train")
    return reward, (rows if any(len(row) > 1 for row in rows) else [row["prompt"] for row in rows])


def train_online_run(task: Any, settings: Mapping[str, Any]) -> Any:
    """Train one online run from the task's starting policy (a copy of the synthetic policy, or your model
    loaded from its path, so that its learning-rate default is the one for real models); returns its
    `OnlineResult`."""
    reward, prompts = _online_inputs(task)
    common = {
        "tokenizer": task.tokenizer,
        "reward": reward,
        "prompts": prompts,
        "reference_model": task.model,
        **settings,
    }
    if task.synthetic is not None:
        return train_online(model=copy.deepcopy(task.model).train().requires_grad_(True), **common)
    return train_online(model=task.config.model, **common)


def data_prompts(
    data: str, split: str, tokenizer: Any, revision: str | None = None, held_out: set[str] | None = None
) -> list[str]:
    """The distinct prompts of `data`'s train split (`split="train"`) or held-out split (eval, test or
    validation, the first present), as text: conversations are rendered with the chat template and its
    generation prompt. Empty when there is no held-out split. `revision` pins a Hub dataset. `held_out`: the
    keys (`prefopt.compare.heldout.prompt_key`) of prompts held out of the train split, which is then the only
    split read: its other prompts (`split="train"`) or those (any other split)."""
    return [row["prompt"] for row in data_prompt_rows(data, split, tokenizer, revision, held_out)]


def data_prompt_rows(
    data: str, split: str, tokenizer: Any, revision: str | None = None, held_out: set[str] | None = None
) -> list[dict[str, Any]]:
    """`data_prompts` as rows {"prompt": text, **columns}: each distinct prompt with the other fields of the first
    row that holds it (all but `NOT_REWARD_COLUMNS`, as TRL passes them to reward functions)."""
    candidates = ("train",) if split == "train" or held_out is not None else ("eval", "test", "validation")
    rows = opened = None
    for name in candidates:
        try:
            opened = open_preferences(data, split=name, revision=revision)
            rows = load_preferences(opened, kind="prompt")
            break
        except MissingSplitError:
            continue
    if rows is None or opened is None:
        return []
    prompts = rows["prompt"]
    raw = opened.dataset
    # the rows as read (one per prompt row: validation renames nothing here); else no columns
    extra = [n for n in raw.column_names if n not in NOT_REWARD_COLUMNS] if len(raw) == len(prompts) else []
    values = {name: raw[name] for name in extra}
    encoder = PromptCompletionEncoder(tokenizer, TokenizeConfig(append_eos=False))
    out: dict[str, dict[str, Any]] = {}
    for i, prompt in enumerate(prompts):
        if held_out is not None and (prompt_key(prompt) in held_out) == (split == "train"):
            continue
        text = encoder.render(prompt)[0]
        out.setdefault(text, {"prompt": text, **{name: column[i] for name, column in values.items()}})
    return list(out.values())


def _best_of_n_key(config: Any) -> dict[str, Any]:
    """What the best-of-N points depend on: a cached file with another key is recomputed."""
    sft = config.sft_config.fingerprint() if config.sft_config is not None else "default"
    preferences = dataclasses.asdict(config.preference_config) if config.preference_config is not None else "default"
    return {
        "task_seed": config.task_seed,
        "sft": sft,
        "preferences": preferences,
        "data": config.data,
        "model": config.model,
        "reward": config.reward,
        "n": list(config.bon_n),
        "samples": config.bon_samples,
        "prompts": config.eval_prompts,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.eval_seed,
        # only when set: the points cached before reward_weights existed keep their key
        **({"reward_weights": list(config.reward_weights)} if config.reward_weights is not None else {}),
    }


def saved_best_of_n(config: Any, path: Path) -> list[dict[str, Any]] | None:
    """The best-of-N points `path` holds when they were computed with `config`'s settings, else None."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    return saved["points"] if saved.get("key") == _best_of_n_key(config) else None


def best_of_n_reference(task: Any, path: Path) -> list[dict[str, Any]]:
    """Best-of-N points (as dicts: n, reward, kl, kl_bound, win_rate, ...) on the held-out prompts; read from
    `path` when it holds the same settings, else computed and written there atomically."""
    config = task.config
    key = _best_of_n_key(config)
    saved = saved_best_of_n(config, path)
    if saved is not None:
        return saved
    if config.progress:
        print(
            f"best-of-N from the reference: N ∈ {list(config.bon_n)}, {config.bon_samples} samples per prompt",
            flush=True,
        )
    prompts = task.prompts("heldout")[: config.eval_prompts]
    if not prompts:
        return []
    points = evaluate_best_of_n(
        task.model,
        task.tokenizer,
        prompts,
        task.reward,
        ns=config.bon_n,
        samples=config.bon_samples,
        max_new_tokens=config.max_new_tokens,
        seed=config.eval_seed,
        progress=config.progress,
    )
    dicts = [p.to_dict() for p in points]
    write_json_atomic(path, {"key": key, "points": dicts})
    return dicts
