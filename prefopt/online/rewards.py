"""One reward interface for the online algorithms: learned reward models, the synthetic gold reward, callables.

Everything that scores completions implements `RewardFunction` (`prefopt.reward_function`):

    score(prompts: Sequence[str], completions: Sequence[str]) -> Tensor [B] float32      (no gradient)

`as_reward_function` turns what a user has into one:

    as_reward_function("gold")                         # the synthetic task's gold reward
    as_reward_function("runs/rm/final")                # a reward model saved by `prefopt train-rm`
    as_reward_function("my_rewards:length_reward")     # a Python function, module:function (`reward_spec`)
    as_reward_function(lambda ps, cs: [len(c) for c in cs])   # any Python callable, batched (TRL's convention)
    as_reward_function([f, g], weights=[1.0, 0.5])     # several, weighted: combine_rewards
    as_reward_function(my_reward_model)                # an object with .score(prompts, completions)

Python callables follow TRL's GRPO convention, `f(prompts, completions, **columns) -> list[float | None]`
(`prefopt.online.reward_functions`). `score_rollout` scores a `Rollout` into the [B, K] layout the rollout
losses take, passing the prompt rows' extra columns, and checks that the function returned one finite number
per completion; `rollout_rewards` also gives the per-function metrics `rewards/<name>/mean` and `/std`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prefopt.data.synthetic.reward import GoldReward
from prefopt.errors import RewardError
from prefopt.online.reward_functions import (
    CallableReward,
    CombinedReward,
    call_score,
    callable_name,
    check_scores,
)
from prefopt.online.reward_model import LearnedReward
from prefopt.online.reward_spec import is_reference, resolve_reward_parts
from prefopt.reward_function import RewardFunction

__all__ = [
    "RewardFunction",
    "CallableReward",
    "CombinedReward",
    "as_reward_function",
    "check_scores",
    "combine_rewards",
    "rollout_rewards",
    "score_rollout",
]


def _saved_reward_model(path: Path) -> RewardFunction:
    return LearnedReward(str(path))


def _single(reward: Any) -> RewardFunction:
    """One reward: an object with .score, a callable, "gold", a reward model folder or `module:function`."""
    if isinstance(reward, str) and reward == "gold":
        return GoldReward()
    if isinstance(reward, str) and is_reference(reward.strip()):
        return _single(resolve_reward_parts(reward.strip())[0])
    if isinstance(reward, (str, os.PathLike)):
        path = Path(reward)
        if not path.exists():
            raise ValueError(
                f"reward={str(reward)!r}: no such folder. Give 'gold' (the synthetic task's reward), "
                "the folder of a reward model saved by `prefopt train-rm` (its final/ folder), a Python "
                "function as module:function, or, from Python, a callable fn(prompts, completions) -> rewards"
            )
        return _saved_reward_model(path)
    if hasattr(reward, "score") and callable(reward.score):
        return reward  # type: ignore[no-any-return]
    if callable(reward):
        return CallableReward(reward)
    raise ValueError(
        f"reward: {type(reward).__name__} is not a reward. Give a RewardFunction (an object with "
        ".score(prompts, completions)), a callable fn(prompts, completions) -> rewards, 'gold', "
        "module:function, or the folder of a saved reward model"
    )


def _name(reward: Any) -> str:
    """The metric name of one part (`rewards/<name>/mean`): TRL's function name, "gold", a model's folder."""
    if isinstance(reward, (str, os.PathLike)):
        text = str(reward).strip()
        if text == "gold" or ":" in text:
            return text.rpartition(":")[2].rpartition(".")[2] or text
        path = Path(text)
        return path.parent.name if path.name == "final" and path.parent.name else path.name
    if isinstance(reward, CallableReward):
        return reward.name
    if isinstance(reward, GoldReward):
        return "gold"
    name = getattr(reward, "name", None)
    return name if isinstance(name, str) and name else callable_name(reward)


def combine_rewards(rewards: Sequence[Any], weights: Sequence[float] | None = None) -> CombinedReward:
    """Several rewards as one: Σ_f w_f · r_f, a function's None skipped (TRL's `reward_funcs` with
    `reward_weights`; `prefopt.online.reward_functions`).

    Args:
        rewards: each what `as_reward_function` takes, or a (reward, weight) pair:
            `combine_rewards([(f, 1.0), (g, 0.5)])`.
        weights: one per reward (default: the pairs' weights, else 1.0 each).
    Returns:
        a `CombinedReward`; its functions' rewards are logged as `rewards/<name>/mean` and `/std`.
    """
    items = list(rewards)
    paired = [isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], (int, float)) for r in items]
    if weights is not None and any(paired):
        raise RewardError("combine_rewards: give weights as (reward, weight) pairs or as weights=, not both")
    if any(paired) and not all(paired):
        raise RewardError("combine_rewards: give every reward as a (reward, weight) pair, or none of them")
    if all(paired) and items:
        items, weights = [r for r, _ in items], [float(w) for _, w in items]
    weights = [1.0] * len(items) if weights is None else list(weights)
    if len(weights) != len(items):
        raise RewardError(
            f"combine_rewards: {len(items)} rewards but {len(weights)} weights; give one weight per reward"
        )
    bad = [w for w in weights if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w)]
    if bad:
        raise RewardError(f"combine_rewards: weight {bad[0]!r} is not a finite number")
    names: list[str] = []
    for item in items:
        name = base = _name(item)
        count = 1
        while name in names:  # two lambdas, or the same function twice: <lambda>, <lambda>_2
            count += 1
            name = f"{base}_{count}"
        names.append(name)
    return CombinedReward(tuple(_single(r) for r in items), tuple(float(w) for w in weights), tuple(names))


def as_reward_function(reward: Any, weights: Sequence[float] | None = None) -> RewardFunction:
    """A `RewardFunction` from a reward object, a callable, "gold", a saved reward model's folder, a
    `module:function` string, several of them (a list, or a comma-separated string) with `weights`.

    Raises:
        ValueError: anything else, or a path that does not exist (`SettingsError` for a bad string).
    """
    if isinstance(reward, str) and reward.strip() != "gold" and not Path(reward).exists():
        parts = resolve_reward_parts(reward, "reward", weights)  # "a:f,b:g", "mod:f", or a missing folder
        if len(parts) > 1 or weights is not None:
            return combine_rewards([(p, float(w)) for p, w in zip(parts, weights)] if weights else parts)
        return _single(parts[0])
    if isinstance(reward, (list, tuple)) and not isinstance(reward, str):
        return combine_rewards(reward, weights)
    if weights is not None:
        return combine_rewards([reward], weights)
    return _single(reward)


def _grouped_columns(columns: Mapping[str, Sequence[Any]] | None, rollout: Any) -> dict[str, list[Any]]:
    """Each prompt's column values repeated for its K samples, in the rollout's row order (s = k·B + b)."""
    out = {}
    for name, values in (columns or {}).items():
        if len(values) != rollout.num_prompts:
            raise ValueError(
                f"score_rollout: column {name!r} has {len(values)} values for {rollout.num_prompts} prompts; "
                "give one value per prompt"
            )
        out[name] = list(values) * rollout.num_samples
    return out


def _metrics(per_function: Mapping[str, Tensor]) -> dict[str, float]:
    """`rewards/<name>/mean` and `/std` of each function over the rows it scored (TRL's names)."""
    metrics = {}
    for name, values in per_function.items():
        scored = values[~torch.isnan(values)].double()
        if len(scored):
            metrics[f"rewards/{name}/mean"] = float(scored.mean())
            metrics[f"rewards/{name}/std"] = float(scored.std()) if len(scored) > 1 else 0.0
    return metrics


def rollout_rewards(
    reward: RewardFunction, rollout: Any, columns: Mapping[str, Sequence[Any]] | None = None
) -> tuple[Tensor, dict[str, float]]:
    """(rewards [B, K] float32 of every sample of `rollout`, per-function metrics).

    Args:
        reward: a `RewardFunction` (see `as_reward_function`).
        rollout: a `prefopt.online.generation.Rollout` (S = K·B rows, group-major).
        columns: the prompts' extra columns, one value per prompt (B each); passed aligned with the
            completions to a reward whose `score` takes them (module docstring).
    Returns:
        the rewards (column k = sample k of each prompt) and, for Python functions (`CallableReward`,
        `CombinedReward`), `rewards/<name>/mean` and `rewards/<name>/std` of each.
    """
    prompts, completions = rollout.row_prompts(), rollout.completions
    grouped = _grouped_columns(columns, rollout)
    if isinstance(reward, (CallableReward, CombinedReward)):
        scores, per_function = reward.score_parts(prompts, completions, **grouped)
    else:
        scores, per_function = call_score(reward, prompts, completions, grouped), {}
    values = check_scores(scores, len(completions), where=f"reward {type(reward).__name__}", completions=completions)
    return values.view(rollout.num_samples, rollout.num_prompts).T.contiguous(), _metrics(per_function)


def score_rollout(reward: RewardFunction, rollout: Any, columns: Mapping[str, Sequence[Any]] | None = None) -> Tensor:
    """Rewards of every sample of `rollout` as [B, K] float32 (column k = sample k of each prompt).

    Args:
        reward: a `RewardFunction` (see `as_reward_function`).
        rollout: a `prefopt.online.generation.Rollout` (S = K·B rows, group-major).
        columns: the prompts' extra columns, one value per prompt (`rollout_rewards`).
    """
    return rollout_rewards(reward, rollout, columns)[0]
