"""Training precision of `train-online` (policy and PPO critic) and `train-rm`: a bf16 checkpoint trains fp32
master weights under bf16 autocast, the reference stays bf16, and final/ is saved in bf16 (`prefopt.train.precision`).

Models are random-init tiny Llamas (synthetic tokenizer) built from config, so each test takes seconds.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from prefopt.data.synthetic import build_tokenizer, gold_reward, sample_review
from tests.train.tiny_task import tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

EXPECTED = {
    "checkpoint_dtype": "bfloat16",
    "master_weights_dtype": "float32",
    "compute_dtype": "bfloat16",
    "saved_dtype": "bfloat16",
}


@pytest.fixture(autouse=True)
def one_torch_thread():
    from prefopt.threads import torch_threads

    with torch_threads(1):
        yield


def _llama(tokenizer: Any) -> Any:
    return tiny_llama(tokenizer, seed=0).to(torch.bfloat16)


def _online(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    tokenizer = build_tokenizer()
    rng = random.Random(0)
    prompts = [sample_review(rng).prompt for _ in range(4)]
    return {
        "model": _llama(tokenizer),
        "tokenizer": tokenizer,
        "prompts": prompts,
        "steps": 1,
        "prompts_per_step": 2,
        "max_new_tokens": 6,
        "output_dir": str(tmp_path),
        "progress": False,
        "num_threads": 1,
        "lr": 1e-5,
        "reward": lambda ps, cs: [float(len(c.split())) for c in cs],
        **overrides,
    }


def test_online_policy_and_critic_train_fp32_master_weights(tmp_path) -> None:
    from prefopt.online.config import OnlineConfig
    from prefopt.online.setup import setup_online_run

    settings = _online(tmp_path / "setup", algorithm="ppo")
    objects = {k: settings.pop(k) for k in ("model", "tokenizer", "prompts", "reward")}
    run = setup_online_run(OnlineConfig(**settings), **objects)
    assert {p.dtype for p in run.policy.parameters()} == {torch.float32}
    assert {p.dtype for p in run.critic.parameters()} == {torch.float32}
    assert {p.dtype for p in run.ref_engine.model.parameters()} == {torch.bfloat16}  # frozen: loaded dtype
    assert run.precision.autocast == torch.bfloat16

    from prefopt.online.trainer import train_online

    settings = _online(tmp_path / "ppo", algorithm="ppo")
    model = settings["model"]
    result = train_online(**settings)
    assert result.precision == EXPECTED
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    saved = load_file(str(result.model_path / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    assert json.loads((result.model_path / "config.json").read_text())["dtype"] == "bfloat16"
    checkpoint = load_file(str(result.checkpoint_path / "critic.safetensors"))
    assert {t.dtype for t in checkpoint.values()} == {torch.float32}


def test_online_pure_bf16_and_fp32_save_are_explicit_choices(tmp_path) -> None:
    from prefopt.online.trainer import train_online

    settings = _online(tmp_path / "pure", algorithm="rloo", master_weights="bf16", save_dtype="fp32")
    model = settings["model"]
    result = train_online(**settings)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert result.precision == {**EXPECTED, "master_weights_dtype": "bfloat16", "saved_dtype": "float32"}
    saved = load_file(str(result.model_path / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}


def test_reward_model_from_a_bf16_checkpoint(tmp_path) -> None:
    from prefopt.online.reward_model import LearnedReward, train_reward_model

    tokenizer = build_tokenizer()
    _llama(tokenizer).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    rng = random.Random(1)
    rows = []
    while len(rows) < 16:
        first = sample_review(rng)
        texts = [first.completion, sample_review(rng, item=first.item).completion]
        gold = gold_reward([first.prompt] * 2, texts).tolist()
        if gold[0] != gold[1]:
            best = int(gold[1] > gold[0])
            rows.append({"prompt": first.prompt, "chosen": texts[best], "rejected": texts[1 - best]})
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = train_reward_model(
        model=str(tmp_path / "llama"),
        data=str(data),
        eval_split="none",
        batch_size=8,
        output_dir=str(tmp_path / "rm"),
        progress=False,
        num_threads=1,
    )
    assert result.precision == EXPECTED
    saved = load_file(str(result.model_path / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    metadata = json.loads((result.model_path / "prefopt_reward_model.json").read_text())
    assert metadata["precision"] == EXPECTED
    scores = LearnedReward(result.model_path).score([rows[0]["prompt"]], [rows[0]["chosen"]])
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
