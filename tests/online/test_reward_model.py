"""Reward models on the tiny synthetic task: held-out accuracy, Plackett–Luce on ranked data, save → load.

The task is `tiny_task()`: `SFTConfig.tiny()` with 96 train and 32 eval prompts (4 completions each,
noiseless labels: the chosen completion has the higher gold reward). Its policy is cached under the session's
`prefopt-cache` folder, the one tests/test_compare.py uses, so a full-suite run trains it once.
"""

from __future__ import annotations

import json

import pytest
import torch

from prefopt.online.reward_config import tiny_task
from prefopt.online.reward_model import LearnedReward, synthetic_reward_model, train_reward_model

TINY = tiny_task()


@pytest.fixture(autouse=True)
def one_torch_thread():
    from prefopt.threads import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory):
    """The tiny synthetic task, with PREFOPT_CACHE pointing at the session's shared cache for the module.
    Built through `synthetic_task_for`, whose in-process cache the training calls below then hit."""
    from prefopt.online.reward_config import RewardModelConfig, synthetic_task_for

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFOPT_CACHE", str(tmp_path_factory.getbasetemp() / "prefopt-cache"))
        yield synthetic_task_for(RewardModelConfig(**TINY, progress=False))


def _settings(tmp_path, **overrides) -> dict:
    return {**TINY, "output_dir": str(tmp_path), "progress": False, **overrides}


def test_bradley_terry_rm_orders_held_out_pairs_well_above_chance(task, tmp_path) -> None:
    """Measured on a 2-core CPU: eval accuracy 0.70 / 0.69 / 0.78 for seeds 0 / 1 / 2 on the 64 eval pairs
    (6 epochs, batch 8, lr 1e-3, from scratch); chance is 0.5. The bound leaves room for platform noise."""
    result = train_reward_model(**_settings(tmp_path, epochs=6, batch_size=8, lr=1e-3))
    assert result.eval_examples == 64
    assert result.eval_accuracy >= 0.62
    assert result.eval_margin > 0 and result.train_accuracy >= 0.75
    assert result.steps == 6 * 24  # 186 train pairs (2 prompts lost to identical samples): 24 batches of 8
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, last = records[:24], records[-24:]
    assert sum(r["loss"] for r in last) < sum(r["loss"] for r in first)
    assert records[-1]["lr"] < records[30]["lr"]  # linear decay after the warm-up
    metadata = json.loads((result.model_path / "prefopt_reward_model.json").read_text())
    assert metadata["model"] == metadata["data"] == "synthetic"
    assert metadata["tokenize"]["max_length"] == 128  # capped at the model's max_position_embeddings


def test_plackett_luce_rm_trains_on_ranked_data(task, tmp_path) -> None:
    """Measured: pairwise ordering accuracy 0.63 / 0.67 / 0.70 for seeds 0 / 1 / 2 on the 32 eval rankings."""
    result = train_reward_model(**_settings(tmp_path, loss="plackett_luce_rm", epochs=4, lr=1e-3))
    assert result.eval_examples == 32  # one ranking of 4 per eval prompt
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    per_epoch = result.steps // 4
    assert sum(r["loss"] for r in records[-per_epoch:]) < sum(r["loss"] for r in records[:per_epoch])
    assert result.eval_accuracy >= 0.58  # share of the 6 pairs per ranking ordered right; chance 0.5
    assert json.loads((result.model_path / "prefopt_reward_model.json").read_text())["loss"] == "plackett_luce_rm"


def test_in_memory_rm_from_the_policy_scores_like_its_saved_copy(task, tmp_path) -> None:
    from prefopt.online.reward_config import RewardModelConfig

    model = synthetic_reward_model(task.policy.model, init="policy", seed=5)
    torch.testing.assert_close(
        model.model.layers[0].mlp.up_proj.weight, task.policy.model.model.layers[0].mlp.up_proj.weight
    )
    result = train_reward_model(model=model, tokenizer=task.policy.tokenizer, **_settings(tmp_path, epochs=0.25))
    assert result.steps == 3 and not torch.equal(
        model.model.embed_tokens.weight, task.policy.model.model.embed_tokens.weight
    )  # trained in place
    rows = task.preferences.rows("paired", "eval")[:20]
    prompts, texts = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    in_memory = LearnedReward(model, task.policy.tokenizer, tokenize_config=RewardModelConfig().tokenize_config(model))
    saved = LearnedReward(str(result.model_path), batch_size=7, device="cpu")
    model.train()
    torch.testing.assert_close(saved.score(prompts, texts), in_memory.score(prompts, texts), rtol=1e-5, atol=1e-5)
    assert model.training  # scoring switches to eval mode and back


def test_resume_matches_an_uninterrupted_run(task, tmp_path) -> None:
    """A run stopped after its step-10 checkpoint and resumed ends with the same weights and metrics as one
    that ran straight through (replayed data order, restored optimiser and schedule)."""
    common = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 10, "eval_split": "none"}
    full = train_reward_model(**_settings(tmp_path / "full", **common))
    cut_dir = tmp_path / "cut"
    import prefopt.online.reward_model as rm

    original = rm._step
    calls = {"n": 0}

    def stop_after_the_checkpoint(*args, **kwargs):  # simulates a kill at step 15
        calls["n"] += 1
        if calls["n"] > 15:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    rm._step = stop_after_the_checkpoint
    try:
        with pytest.raises(KeyboardInterrupt):
            train_reward_model(**_settings(cut_dir, **common))
    finally:
        rm._step = original
    assert (cut_dir / "checkpoints" / "step-000010").exists()
    with pytest.raises(ValueError, match="earlier run"):
        train_reward_model(**_settings(cut_dir, **common))
    with pytest.raises(ValueError, match=r"different settings \['lr'\]"):
        train_reward_model(**_settings(cut_dir, **{**common, "lr": 2e-3}, resume=True))
    resumed = train_reward_model(**_settings(cut_dir, **common, resume=True))
    timing = {"elapsed_s"}
    assert {k: v for k, v in resumed.final_metrics.items() if k not in timing} == pytest.approx(
        {k: v for k, v in full.final_metrics.items() if k not in timing}, rel=1e-5, abs=1e-7
    )
    assert resumed.train_accuracy == full.train_accuracy
    steps = [json.loads(line)["step"] for line in (cut_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, full.steps + 1))
