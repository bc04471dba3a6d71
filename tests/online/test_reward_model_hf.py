"""Reward models on local HF folders (no synthetic policy trained): loading, margins, LearnedReward, CLI, errors.

The model folders are tiny random-init Llama / GPT-2 causal LMs built from config with the synthetic
task's tokenizer, and the data are grammar-sampled reviews labelled by the gold reward, so nothing is
downloaded and every test runs in about a second.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

import pytest
import torch

from prefopt.cli.train_rm import COMMAND as TRAIN_RM
from prefopt.data.synthetic import build_tokenizer, gold_reward, sample_review
from prefopt.online.reward_config import RewardModelConfig
from prefopt.online.reward_data import encode_completions, loss_arguments
from prefopt.online.reward_model import LearnedReward, load_reward_model, train_reward_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def one_torch_thread():
    from prefopt.threads import torch_threads

    with torch_threads(1):
        yield


def _rows(count: int, seed: int) -> tuple[list[dict], list[dict]]:
    """`count` paired rows (chosen = higher gold reward, margin = the gold gap) and ranked rows of 3."""
    rng = random.Random(seed)
    paired, ranked = [], []
    for i in range(count):
        first = sample_review(rng)
        texts = [first.completion] + [sample_review(rng, item=first.item).completion for _ in range(2)]
        gold = gold_reward([first.prompt] * 3, texts).tolist()
        order = sorted(range(3), key=lambda k: -gold[k])
        if gold[order[0]] == gold[order[-1]]:
            continue
        paired.append(
            {
                "prompt": first.prompt,
                "chosen": texts[order[0]],
                "rejected": texts[order[-1]],
                "margin": round(gold[order[0]] - gold[order[-1]], 3),
            }
        )
        ranked.append(
            {"prompt": first.prompt, "completions": [texts[k] for k in order], "scores": [gold[k] for k in order]}
        )
    return paired, ranked


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def hf_task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`llama/` and `gpt2/` causal-LM folders (GPT-2's tokenizer has no pad token) and paired/ranked data."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("rm-hf")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    llama.save_pretrained(root / "llama")
    tokenizer.save_pretrained(root / "llama")
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=32,
            n_layer=1,
            n_head=2,
            n_positions=128,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    gpt2.save_pretrained(root / "gpt2")
    no_pad = build_tokenizer()
    no_pad.pad_token = None
    no_pad.save_pretrained(root / "gpt2")
    paired, ranked = _rows(48, seed=1)
    data = root / "data"
    data.mkdir()
    _write_jsonl(data / "train.jsonl", paired[:32])
    _write_jsonl(data / "eval.jsonl", paired[32:])
    return {
        "root": root,
        "llama": root / "llama",
        "gpt2": root / "gpt2",
        "data": data,
        "ranked": _write_jsonl(root / "ranked.jsonl", ranked),
        "paired_file": data / "train.jsonl",
    }


def _config(hf_task: dict[str, Path], out: Path, **settings) -> dict:
    return {
        "model": str(hf_task["llama"]),
        "data": str(hf_task["data"]),
        "output_dir": str(out),
        "progress": False,
        "batch_size": 8,
        "epochs": 1.0,
        **settings,
    }


def test_margin_column_enters_the_bradley_terry_loss_as_the_formula_says(hf_task, tmp_path) -> None:
    """One batch holding every pair, so step 1's loss is the mean over all pairs of the initial model:
    with margins m_i it must be mean softplus(−(r_w − r_l − m)), i.e. −log σ(r_w − r_l − m) (Llama 2,
    Eq. 2), which differs from the margin-free mean softplus(−(r_w − r_l)) since every m_i > 0."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from prefopt.data import TokenizeConfig

    rows = [json.loads(line) for line in hf_task["paired_file"].read_text().splitlines()]
    result = train_reward_model(**_config(hf_task, tmp_path, batch_size=len(rows), eval_split="none"))
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same score-head draw as training's (seed 0)
        model = AutoModelForSequenceClassification.from_pretrained(hf_task["llama"], num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(hf_task["llama"])
    reward = LearnedReward(model, tokenizer, tokenize_config=TokenizeConfig(max_length=128))
    prompts = [r["prompt"] for r in rows]
    chosen = reward.score(prompts, [r["chosen"] for r in rows]).double()
    rejected = reward.score(prompts, [r["rejected"] for r in rows]).double()
    margin = torch.tensor([r["margin"] for r in rows], dtype=torch.float64)
    assert (margin > 0).all()
    with_margin = torch.nn.functional.softplus(-(chosen - rejected - margin)).mean()
    without = torch.nn.functional.softplus(-(chosen - rejected)).mean()
    assert first["loss"] == pytest.approx(float(with_margin), rel=1e-4)
    assert abs(float(with_margin) - float(without)) > 0.1
    assert result.eval_accuracy is None and result.steps == 1


def test_loss_arguments_pass_the_margin_and_lay_out_ranked_scores_best_first(hf_task) -> None:
    from prefopt.data import TokenizeConfig, collate_preferences, load_preferences, tokenize_preferences

    tokenizer = build_tokenizer()
    paired = tokenize_preferences(
        load_preferences(str(hf_task["paired_file"]), kind="paired"), tokenizer, TokenizeConfig(), kind="paired"
    ).to_list()[:3]
    batch = collate_preferences(paired, pad_token_id=0)
    scores = torch.arange(6, dtype=torch.float32)  # chosen block 0,1,2 then rejected block 3,4,5
    args = loss_arguments("paired", scores, batch)
    assert args["chosen_rewards"].tolist() == [0, 1, 2] and args["rejected_rewards"].tolist() == [3, 4, 5]
    assert args["margin"].tolist() == pytest.approx([r["margin"] for r in paired])
    ranked = tokenize_preferences(
        load_preferences(str(hf_task["ranked"]), kind="ranked"), tokenizer, TokenizeConfig(), kind="ranked"
    ).to_list()[:2]
    rewards = loss_arguments(
        "ranked", torch.arange(6, dtype=torch.float32), collate_preferences(ranked, pad_token_id=0)
    )
    assert rewards["rewards"].tolist() == [[0, 2, 4], [1, 3, 5]]  # row b, rank k = scores[k·B + b]


def test_hf_llama_folder_trains_saves_and_loads_with_the_same_scores(hf_task, tmp_path) -> None:
    result = train_reward_model(**_config(hf_task, tmp_path, lr=1e-3))
    final = tmp_path / "final"
    assert result.model_path == final and (final / "config.json").is_file()
    assert json.loads((final / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]
    metadata = json.loads((final / "prefopt_reward_model.json").read_text())
    assert metadata["loss"] == "bradley_terry" and metadata["eval"]["accuracy"] == pytest.approx(result.eval_accuracy)
    assert result.eval_examples == len((hf_task["data"] / "eval.jsonl").read_text().splitlines())
    assert json.loads((tmp_path / "result.json").read_text())["steps"] == result.steps == 4
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".final-")]  # the temporary folder is gone
    rows = [json.loads(line) for line in (hf_task["data"] / "eval.jsonl").read_text().splitlines()]
    reward = load_reward_model(final, batch_size=3)
    chosen = reward.score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = reward.score([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    assert chosen.dtype == torch.float32 and chosen.shape == (len(rows),)
    assert float((chosen > rejected).float().mean()) == pytest.approx(result.eval_accuracy)
    assert float((chosen - rejected).mean()) == pytest.approx(result.eval_margin, abs=1e-5)
    one_by_one = torch.stack([reward.score([r["prompt"]], [r["chosen"]])[0] for r in rows[:4]])
    torch.testing.assert_close(one_by_one, chosen[:4], rtol=1e-5, atol=1e-5)  # padding does not change a score
    assert reward.score([], []).shape == (0,)
    from prefopt.online.rewards import as_reward_function

    through_path = as_reward_function(str(final)).score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    torch.testing.assert_close(through_path, chosen)


def test_gpt2_without_pad_token_pools_on_eos_padding_and_ranked_data_trains_plackett_luce(hf_task, tmp_path) -> None:
    result = train_reward_model(
        model=str(hf_task["gpt2"]),
        loss="plackett_luce_rm",
        data=str(hf_task["ranked"]),
        output_dir=str(tmp_path),
        progress=False,
        batch_size=8,
        lr=1e-3,
        seed=3,
    )
    assert result.eval_accuracy is None  # one file: no eval split
    assert 0.0 <= result.train_accuracy <= 1.0 and result.steps == 6
    reward = LearnedReward(result.model_path)
    assert reward.model.config.pad_token_id == reward.tokenizer.eos_token_id == reward.tokenizer.pad_token_id
    scores = reward.score(["the hotel was", "the book was"], ["nice .", "very good and cheap ."])
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_cli_trains_and_prints_where_the_model_went(hf_task, tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    TRAIN_RM.add_to(parser.add_subparsers())
    config = tmp_path / "rm.yaml"
    config.write_text(f"model: {hf_task['llama']}\nbatch_size: 8\nloss_hparams: {{center_coef: 0.5}}\n")
    args = parser.parse_args(
        [
            "train-rm",
            "--config",
            str(config),
            "--data",
            str(hf_task["data"]),
            "--epochs",
            "0.5",
            "--set",
            "center_coef=0.01",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "eval accuracy" in printed and str(tmp_path / "run" / "final") in printed
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["loss_hparams"] == {"center_coef": 0.01} and saved["batch_size"] == 8 and saved["epochs"] == 0.5
    assert TRAIN_RM.main(["--loss", "dpo", "--out", str(tmp_path / "bad")]) == 2  # --loss: reward-model losses only
    assert "dpo" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"loss": "dpo"}, "not a reward model"),
        ({"loss": "bradley_terry", "loss_hparams": {"beta": 0.1}}, "center_coef"),
        ({"init": "pretrained"}, "init='pretrained'"),
        ({"hidden_size": 32, "init": "policy"}, "init='scratch'"),
        ({"model": "gpt2", "num_layers": 2}, "synthetic-task RM"),
        ({"lr": -1.0}, "lr=-1.0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"max_length": 64, "max_prompt_length": 64}, "max_prompt_length=64"),
        ({"learning_rate": 1e-3}, "unknown setting"),
    ],
)
def test_bad_settings_raise_errors_naming_the_field(settings, message) -> None:
    with pytest.raises(ValueError, match=message):
        RewardModelConfig.from_dict(settings)


def test_a_synthetic_rm_width_must_fit_the_policy_heads() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefopt.online.reward_model import synthetic_reward_model

    policy = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=16,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    with pytest.raises(ValueError, match="hidden_size=30"):
        synthetic_reward_model(policy, init="scratch", hidden_size=30)
    small = synthetic_reward_model(policy, init="scratch", hidden_size=8, num_layers=2)
    assert (small.config.hidden_size, small.config.num_hidden_layers, small.config.intermediate_size) == (8, 2, 16)
    copied = synthetic_reward_model(policy, init="policy")
    torch.testing.assert_close(copied.model.embed_tokens.weight, policy.model.embed_tokens.weight)


def test_bad_data_and_bad_reward_model_folders_give_clear_errors(hf_task, tmp_path) -> None:
    from prefopt.data import PreferenceDataError

    with pytest.raises(PreferenceDataError, match="chosen"):  # ranked rows given to a paired loss
        train_reward_model(**_config(hf_task, tmp_path, data=str(hf_task["ranked"])))
    with pytest.raises(ValueError, match="LlamaForCausalLM, not a sequence-classification"):
        LearnedReward(hf_task["llama"])
    with pytest.raises(FileNotFoundError, match="no config.json"):
        LearnedReward(tmp_path)
    with pytest.raises(TypeError, match="not a sequence-classification reward model"):
        LearnedReward(torch.nn.Linear(2, 1), build_tokenizer())
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        encode_completions(build_tokenizer(), RewardModelConfig().tokenize_config(), ["a", "b"], ["c"])


def test_in_memory_dataset_dict_uses_its_eval_split(hf_task, tmp_path) -> None:
    import datasets

    rows = [json.loads(line) for line in hf_task["paired_file"].read_text().splitlines()]
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:24]), "eval": datasets.Dataset.from_list(rows[24:])}
    )
    result = train_reward_model(**_config(hf_task, tmp_path, data=None), dataset=splits)
    assert result.eval_examples == len(rows) - 24 and result.steps == 3
    assert json.loads((result.model_path / "prefopt_reward_model.json").read_text())["data"] == "in-memory"
