"""The online half of `prefopt compare`: online runs (`prefopt.online.train_online`) and the best-of-N policy.

An online algorithm in `CompareConfig.losses` (ppo, rloo, grpo, dr_grpo, remax, best_of_n, online_dpo)
trains from the same starting policy as the offline losses, on the train split's prompts, with the
task's reward function (the synthetic task's gold reward, or `CompareConfig.reward`: a saved reward
model or Python functions), and is evaluated exactly like them (held-out preference metrics and generation
metrics), so every algorithm lands on the same frontier. Its settings are `prefopt.compare.config`'s
`online_settings`.

With `best_of_n` among the losses, the inference-time best-of-N policy (sample N from the reference,
keep the best by gold reward) is added for N in `CompareConfig.bon_n`: its expected reward and measured
KL (`prefopt.online.best_of_n_reference`) beside the analytic bound log N − (N−1)/N, computed once per
output folder and kept in `best_of_n.json`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefopt.atomic import write_json_atomic
from prefopt.compare.heldout import prompt_key
from prefopt.data import load_preferences
from prefopt.data.tokenize import PromptCompletionEncoder, TokenizeConfig
from prefopt.errors import MissingSplitError
from prefopt.online.best_of_n_reference import evaluate_best_of_n
from prefopt.online.trainer import train_online

__all__ = ["train_online_run", "data_prompts", "best_of_n_reference", "saved_best_of_n"]


def train_online_run(task: Any, settings: Mapping[str, Any]) -> Any:
    """Train one online run from the task's starting policy (a copy of the synthetic policy, or your model
    loaded from its path, so that its learning-rate default is the one for real models); returns its
    `OnlineResult`."""
    common = {
        "tokenizer": task.tokenizer,
        "reward": task.reward,
        "prompts": task.prompts("train"),
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
    candidates = ("train",) if split == "train" or held_out is not None else ("eval", "test", "validation")
    rows = None
    for name in candidates:
        try:
            rows = load_preferences(data, kind="prompt", split=name, revision=revision)
            break
        except MissingSplitError:
            continue
    if rows is None:
        return []
    prompts = rows["prompt"]
    if held_out is not None:
        prompts = [p for p in prompts if (prompt_key(p) in held_out) != (split == "train")]
    encoder = PromptCompletionEncoder(tokenizer, TokenizeConfig(append_eos=False))
    texts = [encoder.render(prompt)[0] for prompt in prompts]
    return list(dict.fromkeys(texts))


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
