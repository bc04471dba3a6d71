"""One reward interface for the online algorithms: learned reward models, the synthetic gold reward, callables.

Everything that scores completions implements `RewardFunction` (`prefopt.reward_function`):

    score(prompts: Sequence[str], completions: Sequence[str]) -> Tensor [B] float32      (no gradient)

`as_reward_function` turns what a user has into one:

    as_reward_function("gold")                         # the synthetic task's gold reward
    as_reward_function("runs/rm/final")                # a reward model saved by `prefopt train-rm`
    as_reward_function(lambda ps, cs: [len(c) for c in cs])   # any Python callable, batched
    as_reward_function(my_reward_model)                # an object with .score(prompts, completions)

and `score_rollout` scores a `Rollout` into the [B, K] layout the rollout losses take, checking that
the function returned one finite number per completion.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prefopt.data.synthetic.reward import GoldReward
from prefopt.online.reward_model import LearnedReward
from prefopt.reward_function import RewardFunction

__all__ = ["RewardFunction", "CallableReward", "as_reward_function", "check_scores", "score_rollout"]


def check_scores(scores: Any, count: int, *, where: str, completions: Sequence[str] | None = None) -> Tensor:
    """`scores` as a float32 CPU tensor [count], or a clear error (wrong type, shape or a non-finite value).

    Args:
        scores: what a reward function returned (tensor, array, list of numbers).
        count: how many completions were scored; where: the caller, for the message.
        completions: the scored texts, quoted in the message for the first bad row.
    """
    try:
        values = torch.as_tensor(scores.detach().cpu() if isinstance(scores, Tensor) else scores, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"{where}: the reward function returned {type(scores).__name__}, which is not a sequence "
            f"of numbers ({err}); return one float per completion"
        ) from None
    if values.dim() == 2 and values.shape[1] == 1:
        values = values[:, 0]  # a (B, 1) head output
    if values.shape != (count,):
        raise ValueError(
            f"{where}: the reward function returned shape {tuple(values.shape)} for {count} completions; "
            f"return one float per completion, shape ({count},)"
        )
    bad = (~torch.isfinite(values)).nonzero().flatten()
    if len(bad):
        row = int(bad[0])
        text = f" (completion {completions[row][:80]!r})" if completions is not None else ""
        raise ValueError(
            f"{where}: reward {float(values[row])} at row {row}{text} is not finite; "
            f"{len(bad)} of {count} rewards are non-finite. Fix the reward function"
        )
    return values


@dataclass(frozen=True)
class CallableReward:
    """A Python callable `fn(prompts, completions) -> B numbers` as a `RewardFunction`.

    The callable gets whole batches (lists of strings); it may return a list, a NumPy array or a tensor.
    """

    fn: Callable[[list[str], list[str]], Any]
    name: str = "callable"

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """Rewards [B] float32 of `completions[i]` given `prompts[i]`."""
        if len(prompts) != len(completions):
            raise ValueError(
                f"{self.name}: {len(prompts)} prompts but {len(completions)} completions; row i of "
                "each is one (prompt, completion) pair"
            )
        with torch.no_grad():
            out = self.fn(list(prompts), list(completions))
        return check_scores(out, len(completions), where=self.name, completions=completions)


def _saved_reward_model(path: Path) -> RewardFunction:
    return LearnedReward(str(path))


def as_reward_function(reward: Any) -> RewardFunction:
    """A `RewardFunction` from a reward object, a callable, "gold", or a saved reward model's folder.

    Raises:
        ValueError: anything else, or a path that does not exist.
    """
    if isinstance(reward, str) and reward == "gold":
        return GoldReward()
    if isinstance(reward, (str, os.PathLike)):
        path = Path(reward)
        if not path.exists():
            raise ValueError(
                f"reward={str(reward)!r}: no such folder. Give 'gold' (the synthetic task's reward), "
                "the folder of a reward model saved by `prefopt train-rm` (its final/ folder), or, from "
                "Python, a callable fn(prompts, completions) -> rewards"
            )
        return _saved_reward_model(path)
    if hasattr(reward, "score") and callable(reward.score):
        return reward
    if callable(reward):
        return CallableReward(reward, name=getattr(reward, "__name__", "callable"))
    raise ValueError(
        f"reward: {type(reward).__name__} is not a reward. Give a RewardFunction (an object with "
        ".score(prompts, completions)), a callable fn(prompts, completions) -> rewards, 'gold', or the "
        "folder of a saved reward model"
    )


def score_rollout(reward: RewardFunction, rollout: Any) -> Tensor:
    """Rewards of every sample of `rollout` as [B, K] float32 (column k = sample k of each prompt).

    Args:
        reward: a `RewardFunction` (see `as_reward_function`).
        rollout: a `prefopt.online.generation.Rollout` (S = K·B rows, group-major).
    """
    scores = reward.score(rollout.row_prompts(), rollout.completions)
    values = check_scores(
        scores, len(rollout.completions), where=f"reward {type(reward).__name__}", completions=rollout.completions
    )
    return values.view(rollout.num_samples, rollout.num_prompts).T.contiguous()
