"""Python callables as reward functions, TRL's GRPO convention: what they are called with (prompts,
completions, the prompt rows' columns, by signature), several with weights and None skipped, `module:function`
strings, prompt rows with columns, and the errors that name the function and the row."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from prefopt.compare import CompareConfig
from prefopt.data.synthetic.reward import GoldReward
from prefopt.errors import RewardError, SettingsError
from prefopt.online import CallableReward, CombinedReward, as_reward_function, combine_rewards, score_rollout
from prefopt.online.config import OnlineConfig
from prefopt.online.generation import Rollout
from prefopt.online.reward_spec import check_reward_columns
from prefopt.online.rewards import rollout_rewards
from prefopt.online.setup import PromptOrder, load_prompt_rows, prompt_rows, setup_online_run

from . import reward_callables
from .reward_callables import length_reward, raising_reward

HERE = "tests.online.test_reward_functions"
CALLABLES = "tests.online.reward_callables"


def _rollout(prompts: list[str], completions: list[str], k: int) -> Rollout:
    s = len(completions)
    empty = torch.zeros(s, 1, dtype=torch.long)
    return Rollout(prompts, completions, empty, empty, empty.bool(), torch.zeros(s, dtype=torch.bool), k)


def test_keyword_functions_get_prompts_completions_and_every_column() -> None:
    seen = {}

    def reward(prompts, completions, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(prompts=prompts, completions=completions, **kwargs)
        return [1.0, 2.0]

    scores = CallableReward(reward).score(["p0", "p1"], ["c0", "c1"], answer=["a0", "a1"], task=["t", "u"])
    assert scores.tolist() == [1.0, 2.0] and scores.dtype == torch.float32
    assert seen == {"prompts": ["p0", "p1"], "completions": ["c0", "c1"], "answer": ["a0", "a1"], "task": ["t", "u"]}


def test_a_function_without_kwargs_gets_only_what_its_signature_names() -> None:
    calls: list[tuple] = []

    def named(completions, answer):  # type: ignore[no-untyped-def]
        calls.append(("named", completions, answer))
        return [float(c == a) for c, a in zip(completions, answer)]

    def positional(ps, cs, *, task="none"):  # type: ignore[no-untyped-def]
        calls.append(("positional", ps, cs, task))
        return [0.5] * len(cs)

    columns = {"answer": ["4", "5"], "task": ["math", "code"]}
    assert CallableReward(named).score(["2+2", "2+3"], ["4", "6"], **columns).tolist() == [1.0, 0.0]
    assert CallableReward(positional).score(["2+2", "2+3"], ["4", "6"], **columns).tolist() == [0.5, 0.5]
    assert calls == [("named", ["4", "6"], ["4", "5"]), ("positional", ["2+2", "2+3"], ["4", "6"], ["math", "code"])]
    with pytest.raises(RewardError, match=rf"{HERE}:.*named.* needs `answer`.*columns: task"):
        CallableReward(named).score(["p"], ["c"], task=["math"])


def test_signatures_that_cannot_take_a_batch_are_refused_when_wrapped() -> None:
    with pytest.raises(RewardError, match=r"reward_callables:takes_one\(completion\) takes neither"):
        CallableReward(reward_callables.takes_one)

    async def remote(completions, **kwargs):  # type: ignore[no-untyped-def]
        return [0.0] * len(completions)

    with pytest.raises(RewardError, match="is async"):
        CallableReward(remote)
    with pytest.raises(RewardError, match="is a class"):
        CallableReward(reward_callables.LengthReward)


def test_weights_sum_the_functions_that_scored_each_row() -> None:
    """f = [1, 2, None], g = [None, 4, 6], weights (1, 0.5): rewards [1, 2 + 0.5·4, 0.5·6] = [1, 4, 3]."""

    def f(completions, **kwargs):  # type: ignore[no-untyped-def]
        return [1, 2.0, None]

    def g(completions, **kwargs):  # type: ignore[no-untyped-def]
        return [None, 4.0, 6.0]

    prompts, completions = ["a", "b", "c"], ["x", "y", "z"]
    for reward in (combine_rewards([(f, 1.0), (g, 0.5)]), as_reward_function([f, g], weights=[1, 0.5])):
        assert isinstance(reward, CombinedReward) and reward.names == ("f", "g")
        total, per = reward.score_parts(prompts, completions)
        assert total.tolist() == [1.0, 4.0, 3.0]
        assert per["f"][:2].tolist() == [1.0, 2.0] and torch.isnan(per["f"][2])
        assert torch.isnan(per["g"][0]) and per["g"][1:].tolist() == [4.0, 6.0]
    same = combine_rewards([lambda ps, cs: [1.0] * len(cs), lambda ps, cs: [2.0] * len(cs)])
    assert same.names == ("<lambda>", "<lambda>_2") and same.weights == (1.0, 1.0)
    assert same.score(["a"], ["x"]).tolist() == [3.0]


def test_gold_and_functions_combine() -> None:
    """gold + 0.5·words/10 equals the gold reward plus half the length reward, row by row."""
    prompts = ["food review of the pizza :"] * 2
    completions = ["the pizza was great .", "bad ."]
    mixed = as_reward_function(f"gold,{CALLABLES}:length_reward", weights=[1.0, 0.5])
    assert isinstance(mixed, CombinedReward) and mixed.names == ("gold", "length_reward")
    expected = GoldReward().score(prompts, completions) + 0.5 * torch.tensor([0.5, 0.2])
    torch.testing.assert_close(mixed.score(prompts, completions), expected)


def test_none_everywhere_in_a_row_is_an_error() -> None:
    def f(completions, **kwargs):  # type: ignore[no-untyped-def]
        return [1.0, None]

    def g(completions, **kwargs):  # type: ignore[no-untyped-def]
        return [None, None]

    with pytest.raises(RewardError, match=r"every reward function \(f, g\) returned None at row 1 \(prompt 'p1'"):
        combine_rewards([f, g]).score(["p0", "p1"], ["c0", "c1"])
    with pytest.raises(RewardError, match=rf"{HERE}:.*\.f returned None at row 1.*beside other reward functions"):
        CallableReward(f).score(["p0", "p1"], ["c0", "c1"])
    with pytest.raises(RewardError, match=r"returned None at row 1"):  # an object array reads as its list
        CallableReward(lambda ps, cs: np.array([1.0, None])).score(["p0", "p1"], ["c0", "c1"])


@pytest.mark.parametrize(
    ("returned", "match"),
    [
        ([1.0], r"returned 1 values for 3 completions"),
        (
            [float("inf"), 0.0, 1.0],
            r"returned inf at row 0 \(prompt 'why is the skyx{46}…', completion 'because\.{53}…'\); 1 of 3",
        ),
        (torch.tensor([0.0, float("nan"), 1.0]), r"returned nan at row 1 \(prompt 'b', completion 'y'\)"),
        ([0.0, "high", 1.0], r"returned 'high' \(str\) at row 1"),
        (np.array(["0.5", "x", "1"]), r"returned an array of <U3"),
        (3.0, r"returned float, not a list"),
    ],
)
def test_bad_values_name_the_function_and_the_row(returned: object, match: str) -> None:
    def bad(prompts, completions):  # type: ignore[no-untyped-def]
        return returned

    prompts = ["why is the sky" + "x" * 46 + "tail", "b", "c"]  # 64 and 67 characters: excerpts cut at 60
    with pytest.raises(RewardError, match=rf"reward function {HERE}:.*bad {match}"):
        CallableReward(bad).score(prompts, ["because" + "." * 60, "y", "z"])


def test_an_exception_inside_is_wrapped_with_the_function_and_the_batch() -> None:
    with pytest.raises(RewardError) as caught:
        CallableReward(raising_reward).score(["p0", "p1"], ["c0", "c1"])
    message = str(caught.value)
    assert f"{CALLABLES}:raising_reward raised ZeroDivisionError" in message and "rows 0–1" in message
    assert "(prompt 'p0', completion 'c0')" in message
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def test_score_rollout_passes_columns_aligned_with_the_rows_and_logs_each_function() -> None:
    """B = 2 prompts, K = 2 samples, rows s = k·B + b: the topic column is [food, film, food, film]; film rows
    are None for topic_reward. length: words/10 = [0.2, 0.1, 0.3, 0.1]; topic: [1, None, 0, None]."""
    reward_callables.SEEN.clear()
    prompts = ["food review of the pizza :", "film review of the movie :"]
    rollout = _rollout(prompts, ["food good", "meh", "tasty and fine", "bad"], 2)
    reward = combine_rewards([(length_reward, 1.0), (reward_callables.topic_reward, 2.0)])
    scores, metrics = rollout_rewards(reward, rollout, {"topic": ["food", "film"]})
    assert reward_callables.SEEN == [(prompts[0], "food"), (prompts[1], "film")] * 2
    torch.testing.assert_close(scores, torch.tensor([[0.2 + 2.0, 0.3], [0.1, 0.1]]))  # [B, K]
    assert metrics["rewards/length_reward/mean"] == pytest.approx(0.175)
    assert metrics["rewards/length_reward/std"] == pytest.approx(torch.tensor([0.2, 0.1, 0.3, 0.1]).std().item())
    assert metrics["rewards/topic_reward/mean"] == pytest.approx(0.5)  # over the 2 rows it scored
    assert metrics["rewards/topic_reward/std"] == pytest.approx(2**-0.5)
    gold = GoldReward()
    assert rollout_rewards(gold, rollout, {"topic": ["food", "film"]})[1] == {}  # no column reaches it
    assert score_rollout(CallableReward(length_reward), rollout).shape == (2, 2)
    with pytest.raises(ValueError, match="column 'topic' has 1 values for 2 prompts"):
        score_rollout(reward, rollout, {"topic": ["food"]})


def test_weights_of_the_config_do_not_apply_to_a_reward_given_in_memory() -> None:
    with pytest.raises(SettingsError, match=r"reward_weights weigh the functions of OnlineConfig.reward.*pairs"):
        setup_online_run(OnlineConfig(reward_weights=(2.0,)), reward=length_reward)


def test_reward_strings_import_functions_and_name_each_mistake(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    reward = as_reward_function(f"{CALLABLES}:length_reward")
    assert isinstance(reward, CallableReward) and reward.fn is length_reward
    cases = {
        "no_such_module_xyz:f": "no module named 'no_such_module_xyz' on sys.path or in the current folder",
        f"{CALLABLES}:lenght_reward": "has no attribute 'lenght_reward'; did you mean length_reward",
        f"{CALLABLES}:NOT_CALLABLE": "is a int, not callable",
        f"{CALLABLES}:LengthReward": "is a class",
        f"{CALLABLES}:takes_one": "takes neither `completions` by keyword",
        "mod:": "is not module:function",
        "runs/rm/missing": "no such folder",
        f"gold,,{CALLABLES}:length_reward": "has an empty entry",
    }
    for text, words in cases.items():
        with pytest.raises(SettingsError, match="OnlineConfig.reward=") as caught:
            OnlineConfig(reward=text)
        assert words in str(caught.value), (text, str(caught.value))
    with pytest.raises(SettingsError, match=r"names 2 reward function\(s\) but reward_weights has 1"):
        OnlineConfig(reward=f"gold,{CALLABLES}:length_reward", reward_weights=(1.0,))
    config = OnlineConfig.from_dict({"reward": f"gold,{CALLABLES}:length_reward", "reward_weights": "1,0.5"})
    assert config.reward_weights == (1.0, 0.5)
    # the current folder is searched while the module is imported, and left off sys.path afterwards
    (tmp_path / "my_rewards_in_cwd.py").write_text(
        "def short(completions, **kw):\n    return [-len(c) for c in completions]\n"
    )
    monkeypatch.chdir(tmp_path)
    path = list(sys.path)
    assert as_reward_function("my_rewards_in_cwd:short").score(["p"], ["abc"]).tolist() == [-3.0]
    assert sys.path == path


def test_required_columns_are_checked_against_the_prompts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = f"{CALLABLES}:topic_reward"
    check_reward_columns(text, {"topic"}, "OnlineConfig.reward", "prompts.jsonl")
    with pytest.raises(SettingsError, match=r"needs the column 'topic', which is not a column of prompts.jsonl"):
        check_reward_columns(text, {"answer"}, "OnlineConfig.reward", "prompts.jsonl")
    with pytest.raises(SettingsError, match=r"CompareConfig.reward=.*topic_reward.*needs the column 'topic'"):
        CompareConfig(losses=("rloo",), reward=text)
    config = CompareConfig(losses=("rloo",), reward=f"{CALLABLES}:length_reward")  # the synthetic task takes one
    assert config.reward_label == f"reward ({CALLABLES}:length_reward)"
    with pytest.raises(SettingsError, match="reward_weights weigh the functions of reward, which is not set"):
        CompareConfig(losses=("rloo",), reward_weights=(1.0,))


def test_prompt_rows_carry_their_columns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "2+2=", "answer": "4", "task": "math"}, {"prompt": "3+3=", "answer": "6", "task": "math"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_prompt_rows(path) == (["2+2=", "3+3="], {"answer": ["4", "6"], "task": ["math", "math"]})
    assert prompt_rows(rows) == load_prompt_rows(path)
    assert prompt_rows(["a", "b"]) == (["a", "b"], {})
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "x", "answer": "1"}) + "\n")
    with pytest.raises(SettingsError, match=r"prompts.jsonl:2: its fields differ from the first row's in \['task'\]"):
        load_prompt_rows(path)
    with pytest.raises(SettingsError, match=r"prompts\[0\]: column 'completions' has the name"):
        prompt_rows([{"prompt": "x", "completions": "y"}])
    order = PromptOrder(["p0", "p1", "p2"], 2, seed=0, columns={"answer": ["a0", "a1", "a2"]})
    for step in range(3):
        assert order.columns(step)["answer"] == [p.replace("p", "a") for p in order.batch(step)]
