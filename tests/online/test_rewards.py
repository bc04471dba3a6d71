"""The reward interface: callables, the gold reward, saved reward models by path, and score checking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prefopt.data.synthetic.reward import GoldReward
from prefopt.online.generation import Rollout
from prefopt.online.rewards import CallableReward, as_reward_function, check_scores, score_rollout
from prefopt.reward_function import RewardFunction


def _rollout(completions: list[str], prompts: list[str], k: int) -> Rollout:
    s = len(completions)
    empty = torch.zeros(s, 1, dtype=torch.long)
    return Rollout(prompts, completions, empty, empty, empty.bool(), torch.zeros(s, dtype=torch.bool), k)


def test_callable_returning_list_or_array_becomes_a_reward_function() -> None:
    by_length = as_reward_function(lambda ps, cs: [float(len(c)) for c in cs])
    assert isinstance(by_length, RewardFunction)
    assert by_length.score(["a", "b"], ["xy", "xyz"]).tolist() == [2.0, 3.0]
    as_array = as_reward_function(lambda ps, cs: np.array([len(p) for p in ps]))
    assert as_array.score(["ab", "c"], ["", ""]).dtype == torch.float32


def test_score_rollout_is_grouped_b_by_k() -> None:
    # rows s = k·B + b: prompts p0, p1 (B = 2), K = 3 samples each; reward = 10·k + b by construction
    completions = [f"{k}{b}" for k in range(3) for b in range(2)]
    rollout = _rollout(completions, ["p0", "p1"], 3)
    reward = CallableReward(lambda ps, cs: [10.0 * int(c[0]) + int(c[1]) for c in cs])
    grouped = score_rollout(reward, rollout)
    assert grouped.tolist() == [[0.0, 10.0, 20.0], [1.0, 11.0, 21.0]]
    seen: list[list[str]] = []
    score_rollout(CallableReward(lambda ps, cs: seen.append(ps) or [0.0] * len(cs)), rollout)
    assert seen[0] == ["p0", "p1"] * 3, "each completion is scored with its own prompt"


def test_gold_and_objects_pass_through() -> None:
    assert isinstance(as_reward_function("gold"), GoldReward)
    gold = GoldReward(length_weight=0.0)
    assert as_reward_function(gold) is gold


@pytest.mark.parametrize(
    ("returned", "match"),
    [
        ([1.0], "returned 1 values for 2 completions"),
        ([1.0, float("nan")], "row 1"),
        ("high", "returned str, not a list"),
        ([[1.0, 2.0]], "1 values for 2 completions"),
    ],
)
def test_bad_scores_are_clear_errors(returned: object, match: str) -> None:
    reward = CallableReward(lambda ps, cs: returned, name="mine")
    with pytest.raises(ValueError, match=match):
        reward.score(["a", "b"], ["x", "y"])


def test_column_vector_scores_are_accepted() -> None:
    assert check_scores(torch.tensor([[1.0], [2.0]]), 2, where="t").tolist() == [1.0, 2.0]


def test_mismatched_lists_and_unknown_rewards_are_clear_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        CallableReward(lambda ps, cs: [0.0]).score(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="no such folder"):
        as_reward_function(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="is not a reward"):
        as_reward_function(3)
