"""`RewardFunction`: what online algorithms and evaluation call to score completions.

The gold reward of the synthetic task (`prefopt.data.synthetic.GoldReward`), a learned reward model
(`prefopt.online.LearnedReward`) and wrapped Python callables (`prefopt.online.as_reward_function`,
`prefopt.online.combine_rewards`) all implement it. A leaf: it imports nothing of prefopt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["RewardFunction"]


@runtime_checkable
class RewardFunction(Protocol):
    """What online algorithms and evaluation call to score completions: the gold reward here, a learned
    reward model elsewhere.

    `score(prompts, completions)` takes B prompt strings and B completion strings (row i completes
    prompt i) and returns a float32 tensor [B] of rewards, higher = better. Must not need gradients.
    An implementation may take more keyword arguments, the prompt rows' extra columns as lists aligned
    with the completions (`score(prompts, completions, answer=[...])`): the online loop passes those its
    signature names, or all of them to a `**columns` parameter (`prefopt.online.score_rollout`).
    """

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor: ...
