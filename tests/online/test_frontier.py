"""The online frontier losses (dapo, gspo, cispo, reinforce_pp) in the online loop, and its DAPO options:
dynamic sampling (drop groups whose rewards are all equal, sample more to refill) and the soft overlong
penalty, on by default for dapo through its declaration; REINFORCE++'s advantages normalised over the whole
rollout, not a minibatch. The end-to-end runs reuse tests/online/tiny_online.py's seconds-scale settings."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prefopt.cli.train_online import main
from prefopt.engine import SequenceLogProbs
from prefopt.loss_state import RolloutBatch
from prefopt.online import group_sampling
from prefopt.online.config import OnlineConfig
from prefopt.online.distributed import Processes
from prefopt.online.generation import Rollout
from prefopt.online.rollout_step import PreparedRollout, loss_inputs, prompt_rows, rollout_wide_inputs
from prefopt.online.trainer import train_online
from prefopt.registry import loss_spec
from prefopt.rl import groups_with_spread, overlong_penalty

from .tiny_online import online_settings, tiny_model_path, tiny_prompts

FRONTIER = ("dapo", "gspo", "cispo", "reinforce_pp")


def test_overlong_penalty_hand_computed() -> None:
    """L_max = 10, L_cache = 4: 0 up to 6 tokens, then (6 − |y|)/4: 7 → −0.25, 10 → −1; beyond the limit −1;
    times the factor 0.5."""
    lengths = torch.tensor([3, 6, 7, 9, 10, 12])
    expected = torch.tensor([0.0, 0.0, -0.25, -0.75, -1.0, -1.0])
    torch.testing.assert_close(overlong_penalty(lengths, 10, 4), expected)
    torch.testing.assert_close(overlong_penalty(lengths, 10, 4, factor=0.5), expected / 2)


def test_groups_with_spread() -> None:
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.5000001]])
    assert groups_with_spread(rewards).tolist() == [False, True, True]


def test_options_default_on_for_dapo_through_its_declaration() -> None:
    dapo = OnlineConfig(algorithm="dapo", max_new_tokens=20)
    assert dapo.filters_groups and dapo.overlong_cache == 4  # a fifth of the limit, as 4,096 of 20,480
    off = OnlineConfig(algorithm="dapo", dynamic_sampling=False, overlong_shaping=False)
    assert not off.filters_groups and off.overlong_cache is None
    grpo = OnlineConfig(algorithm="grpo")
    assert not grpo.filters_groups and grpo.overlong_cache is None
    assert OnlineConfig(algorithm="grpo", overlong_buffer=8).overlong_cache == 8  # a buffer switches it on
    assert OnlineConfig(algorithm="gspo", dynamic_sampling=True).filters_groups
    with pytest.raises(ValueError, match="num_samples ≥ 2"):
        OnlineConfig(algorithm="ppo", dynamic_sampling=True)  # one sample per prompt: every group is "tied"
    with pytest.raises(ValueError, match="overlong_buffer=30 exceeds max_new_tokens=20"):
        OnlineConfig(algorithm="dapo", max_new_tokens=20, overlong_buffer=30)


def _rollout(num_prompts: int, k: int, width: int, tag: str) -> Rollout:
    s = num_prompts * k
    ids = torch.arange(s * width).reshape(s, width)
    return Rollout(
        prompts=[f"{tag}{b}" for b in range(num_prompts)],
        completions=[f"{tag}{r % num_prompts}.{r // num_prompts}" for r in range(s)],
        input_ids=ids,
        attention_mask=torch.ones(s, width, dtype=torch.long),
        completion_mask=torch.ones(s, width, dtype=torch.bool),
        finished=torch.ones(s, dtype=torch.bool),
        num_samples=k,
    )


def test_select_and_concat_keep_rows_group_major() -> None:
    """Prompts {2, 0} of a 3-prompt rollout, then 1 prompt of another (narrower) one: row k·B' + b is sample
    k of kept prompt b."""
    first, second = _rollout(3, 2, 4, "a"), _rollout(2, 2, 3, "b")
    joined = group_sampling.concat_rollouts(
        [
            group_sampling.select_prompts(first, torch.tensor([2, 0])),
            group_sampling.select_prompts(second, torch.tensor([1])),
        ]
    )
    assert joined.prompts == ["a2", "a0", "b1"] and joined.num_prompts == 3
    assert joined.completions == ["a2.0", "a0.0", "b1.0", "a2.1", "a0.1", "b1.1"]
    assert joined.input_ids.shape == (6, 4) and not joined.attention_mask[2, 3] and not joined.completion_mask[5, 3]
    torch.testing.assert_close(joined.input_ids[3], first.input_ids[5])  # sample 1 of a2 = row 1·3 + 2


def test_dynamic_sampling_refills_from_later_rounds(monkeypatch) -> None:
    """Round 0: prompts 0 and 2 of 3 are tied (dropped), prompt 1 kept; round 1 draws 3 more, of which the first
    two informative ones fill the batch. The refills are a seeded draw, the same on a re-run."""
    rounds = {
        0: torch.tensor([[1.0, 1.0], [0.0, 1.0], [2.0, 2.0]]),
        1: torch.tensor([[3.0, 4.0], [5.0, 5.0], [0.0, 9.0]]),
    }
    seen = []

    def draw(run, prompts, columns, seed, seeds=None):
        seen.append((list(prompts), seed))
        index = len(seen) - 1
        return _rollout(3, 2, 2, f"r{index}p"), rounds[index], {"c": [f"{index}.{i}" for i in range(3)]}, {}

    monkeypatch.setattr(group_sampling, "_draw", draw)
    config = OnlineConfig(algorithm="dapo", prompts_per_step=3, num_samples=2)
    order = type("Order", (), {"prompts": list("uvwxyz"), "per_step": 3, "all_columns": {"c": list("UVWXYZ")}})()
    order.batch, order.columns = (lambda step: ["u", "v", "w"]), (lambda step: {"c": ["U", "V", "W"]})
    run = type("Run", (), {"config": config, "prompts": order, "processes": Processes()})()
    rollout, scores, columns, metrics = group_sampling.sample_rollout(run, 0, seed=7)
    assert rollout.prompts == ["r0p1", "r1p0", "r1p2"] and columns == {"c": ["0.1", "1.0", "1.2"]}
    torch.testing.assert_close(scores, torch.tensor([[0.0, 1.0], [3.0, 4.0], [0.0, 9.0]]))
    assert metrics["dynamic_sampling/rounds"] == 2 and metrics["dynamic_sampling/kept"] == 1.0
    assert metrics["dynamic_sampling/informative"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert seen[1] == (group_sampling.refill_prompts(order, 7 * 1_000_003 + 1)[0], 7 * 1_000_003 + 1)
    assert len(set(seen[1][0])) == 3 and set(seen[1][0]) <= set("uvwxyz")


def test_rollout_wide_advantages_are_cut_per_minibatch() -> None:
    """The loop computes reinforce_pp's declared `rollout_inputs` once over the rollout; a minibatch of prompt 1
    gets exactly those rows, not advantages normalised over its own rows."""
    spec = loss_spec("reinforce_pp")
    g = torch.Generator().manual_seed(0)
    b, k, t = 3, 2, 4
    mask = torch.ones(b * k, t, dtype=torch.bool)
    old, ref = -torch.rand(b * k, t, generator=g), -torch.rand(b * k, t, generator=g)
    prepared = PreparedRollout(torch.randn(b, k, generator=g), old, ref, mask)
    hparams = {"beta": 0.1, "clip_range": 0.2, "baseline": "group"}
    prepared.token_inputs.update(rollout_wide_inputs(spec, prepared, hparams))
    provider = spec.rollout_inputs["advantages"]
    full = provider(RolloutBatch(prepared.scores, old, ref, mask, hparams))
    prompts = torch.tensor([1])
    rows = prompt_rows(prompts, b, k)
    policy = SequenceLogProbs(torch.zeros(k), torch.full((k,), t), tokens=old[rows].clone())
    _, kwargs = loss_inputs(spec, prepared, prompts, rows, t, policy=policy, values=None)
    torch.testing.assert_close(kwargs["advantages"], full[rows])
    assert kwargs["advantages"].abs().sum() > 0


@pytest.mark.parametrize("algorithm", FRONTIER)
def test_command_line_run(algorithm, tmp_path, capsys) -> None:
    """`prefopt train-online --loss NAME` on the tiny synthetic policy: 2 steps, finite metrics; dapo logs its
    options (on by default), reinforce_pp runs with 2 minibatches (global advantages)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(tiny_prompts()[0][:16]) + "\n")
    extra = {"reinforce_pp": ["--num-minibatches", "2", "--set", "baseline=group"]}.get(algorithm, [])
    argv = ["--model", str(tiny_model_path()), "--prompts", str(prompts), "--loss", algorithm, "--steps", "2"]
    argv += ["--prompts-per-step", "4", "--num-samples", "2", "--max-new-tokens", "12", "--out", str(tmp_path / "run")]
    assert main([*argv, "--num-threads", "1", "--quiet", "--lr", "2e-4", *extra]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = result["final_metrics"]
    assert result["steps"] == 2 and all(math.isfinite(v) for v in metrics.values()), metrics
    assert {"loss", "policy/clipfrac", "rewards/mean", "objective/scores"} <= set(metrics)
    if algorithm == "dapo":
        assert {"dynamic_sampling/kept", "dynamic_sampling/rounds", "overlong/penalty"} <= set(metrics)
        assert metrics["overlong/penalty"] <= 0
    if algorithm == "reinforce_pp":
        assert metrics["updates"] == 2


def test_dynamic_sampling_end_to_end_with_tied_rewards(tmp_path) -> None:
    """A reward of 0/1 (completion length parity) ties many groups of K = 2: dynamic sampling keeps only
    groups with a spread and refills; every step still trains."""
    records = []

    def parity(prompts, completions):
        return [float(len(c) % 2) for c in completions]

    train_online(
        algorithm="grpo",
        dynamic_sampling=True,
        num_samples=2,
        reward=parity,
        on_step=lambda step, record: records.append(record),
        **online_settings(tmp_path, max_new_tokens=12),
    )
    assert [r["step"] for r in records] == [1, 2]
    assert min(r["dynamic_sampling/informative"] for r in records) < 1  # some groups were tied and dropped
    for record in records:
        assert record["dynamic_sampling/rounds"] >= 1 and 0 < record["dynamic_sampling/kept"] <= 1
        assert record["updates"] == 1 and math.isfinite(record["loss"])


@pytest.mark.slow
def test_compare_runs_the_frontier_losses(tmp_path, tmp_path_factory, monkeypatch) -> None:
    """`prefopt compare` trains each frontier loss on the tiny synthetic task and puts it in the table with the
    same columns as every other algorithm (reward and KL on held-out prompts)."""
    from prefopt.compare import CompareConfig, compare, tiny_task

    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path_factory.getbasetemp() / "prefopt-cache"))  # as test_compare
    config = CompareConfig(
        losses=FRONTIER,
        output_dir=str(tmp_path / "cmp"),
        progress=False,
        online={"steps": 1, "prompts_per_step": 4, "num_samples": 2, "num_threads": 1},
        **{**tiny_task(), "eval_prompts": 4, "max_new_tokens": 8},
    )
    rows = compare(config).rows
    assert [r["label"] for r in rows[: len(FRONTIER)]] == list(FRONTIER)
    for row in rows[: len(FRONTIER)]:
        for key in ("reward", "kl", "win_rate", "length"):
            assert math.isfinite(row[key]["mean"]), (row["label"], key)
