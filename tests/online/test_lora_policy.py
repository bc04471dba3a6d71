"""A LoRA policy in the online loop (`prefopt.online.lora_policy`): only the adapter (and PPO's value head) train,
π_ref is the adapter-disabled base held once, checkpoints resume bit for bit, final/ loads in `compare`, and the
settings and flags fail in one line. On a random 2-layer, 32-wide Llama saved to disk (no SFT, so seconds)."""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch
from safetensors.torch import load_file

from prefopt.cli.train_online import COMMAND, main
from prefopt.cli.train_online import config_from_args as online_config_from_args
from prefopt.engine import LogProbEngine
from prefopt.online.config import OnlineConfig
from prefopt.online.lora_policy import DisabledAdapterEngine
from prefopt.online.setup import setup_online_run, synthetic_prompts
from prefopt.online.trainer import rollout_step, train_online
from prefopt.settings import SettingsError
from prefopt.train.model import load_causal_lm

from ..train.tiny_task import tiny_llama

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    from prefopt.data.synthetic import build_tokenizer

    tokenizer = build_tokenizer()
    folder = tmp_path_factory.mktemp("tiny-base") / "model"
    tiny_llama(tokenizer, seed=1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _settings(base_path, out, **changes):
    settings = dict(
        model=str(base_path),
        prompts=synthetic_prompts(0)[0][:8],
        lora_r=4,
        lora_alpha=8.0,
        steps=2,
        prompts_per_step=2,
        num_samples=2,
        max_new_tokens=6,
        lr=5e-2,
        output_dir=str(out),
        progress=False,
        num_threads=1,
        share_prompt="off",
    )
    return {**settings, **changes}


def _config(base_path, out, **changes):
    settings = _settings(base_path, out, **changes)
    return OnlineConfig(**{k: v for k, v in settings.items() if k != "prompts"}), settings["prompts"]


def _storages(*modules):
    return {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}


def test_grpo_lora_trains_the_adapter_and_the_reference_is_the_base(base_path, tmp_path):
    config, prompts = _config(base_path, tmp_path / "run", algorithm="grpo")
    run = setup_online_run(config, prompts=prompts)
    base = load_causal_lm(str(base_path), "base").eval()  # the untouched base, to compare with
    assert isinstance(run.ref_engine, DisabledAdapterEngine) and run.ref_engine.model is run.policy
    # one set of base weights: the reference reads the policy's own storages, nothing else holds parameters
    assert len(_storages(run.policy)) == len(_storages(base)) + sum(1 for _ in run.parameters()["policy"])
    before = {n: p.detach().clone() for n, p in run.policy.named_parameters()}
    rollout_step(run, 0)
    changed = {n for n, p in run.policy.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in run.policy.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable and all("lora_" in n for n in trainable)
    assert any("lora_B" in n for n in changed)  # B left 0: the policy now differs from its base
    batch = _batch(run, prompts[:2])  # a fresh batch: π_ref scores it as the base does, π_θ does not
    ref = run.ref_engine(batch, return_tokens=True)
    plain = LogProbEngine(base, backend=config.engine_backend)(batch, return_tokens=True)
    assert torch.equal(ref.tokens, plain.tokens) and torch.equal(ref.sum, plain.sum)
    with torch.no_grad():
        assert not torch.allclose(run.engine(batch).sum, plain.sum)


def _batch(run, prompts):
    from prefopt.online.generation import GenerationConfig, generate

    rollout = generate(run.policy, run.tokenizer, prompts, GenerationConfig(max_new_tokens=6, num_samples=2), seed=3)
    return rollout.token_batch()


def test_ppo_lora_value_head_rides_on_the_trunk(base_path, tmp_path):
    config, prompts = _config(base_path, tmp_path / "run", algorithm="ppo", epochs=1)
    run = setup_online_run(config, prompts=prompts)
    policy_ids = {id(p) for p in run.policy.parameters()}
    assert {id(p) for p in run.critic.backbone.parameters()} <= policy_ids  # the policy's trunk, not a copy
    head = [id(p) for p in run.critic.head.parameters()]
    assert [id(p) for g in run.optimizers["critic"].param_groups for p in g["params"]] == head
    base = {n: p.detach().clone() for n, p in run.policy.named_parameters() if not p.requires_grad}
    head_before = run.critic.head.weight.detach().clone()
    rollout_step(run, 0)
    assert not torch.equal(run.critic.head.weight, head_before)
    assert all(torch.equal(p, base[n]) for n, p in run.policy.named_parameters() if not p.requires_grad)


def test_ppo_lora_resumes_bit_for_bit_and_final_loads_in_compare(base_path, tmp_path):
    from prefopt.compare.run import _load_trained

    whole = train_online(**_settings(base_path, tmp_path / "whole", algorithm="ppo", epochs=1, checkpoint_every=1))
    half = _settings(base_path, tmp_path / "half", algorithm="ppo", epochs=1, checkpoint_every=1)
    train_online(**{**half, "steps": 1})
    resumed = train_online(**{**half, "resume": True})
    for name in ("policy", "critic"):
        a = load_file(str(whole.checkpoint_path / f"{name}.safetensors"))
        b = load_file(str(resumed.checkpoint_path / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all("lora_" in k for k in a if not k.startswith("head."))  # the adapter and the value head only
    assert (whole.model_path / "adapter_config.json").exists()
    merged = _load_trained(whole.model_path)
    assert not hasattr(merged, "peft_config") and type(merged).__name__ == "LlamaForCausalLM"


def test_8bit_base_where_bitsandbytes_runs(base_path, tmp_path):
    pytest.importorskip("bitsandbytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = train_online(
                **_settings(base_path, tmp_path / "run", algorithm="grpo", steps=1, quantization="8bit")
            )
        except RuntimeError as err:  # a bitsandbytes that cannot run here: refused in one line
            assert "\n" not in str(err) and "8bit" in str(err)
            return
    assert (result.model_path / "adapter_config.json").exists()


def test_quantized_loading_that_fails_is_one_line(monkeypatch):
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise ImportError("Using `bitsandbytes` 4-bit quantization requires the latest version\nsecond line")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    with pytest.raises(RuntimeError) as info:
        load_causal_lm("some/model", "OnlineConfig.model", quantization="4bit")
    message = str(info.value)
    assert "\n" not in message and "OnlineConfig.model" in message and "4bit" in message and "GPU" in message


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"quantization": "8bit", "lora_r": 0}, ("quantization", "lora_r")),
        ({"quantization": "8bit", "model": None}, ("quantization", "OnlineConfig.model")),
        ({"quantization": "3bit"}, ("quantization", "4bit")),
        ({"lora_r": -1}, ("lora_r",)),
        ({"lora_dropout": 1.0}, ("lora_dropout",)),
        ({"lora_alpha": 0.0}, ("lora_alpha",)),
        ({"algorithm": "nlpo"}, ("lora_r", "NLPO")),
    ],
)
def test_bad_lora_settings_are_one_line(base_path, tmp_path, changes, words):
    settings = {k: v for k, v in _settings(base_path, tmp_path, **changes).items() if k != "prompts"}
    with pytest.raises((SettingsError, ValueError)) as info:
        OnlineConfig(**settings)
    assert "\n" not in str(info.value) and all(w in str(info.value) for w in words)


def _parse(argv):
    parser = argparse.ArgumentParser()
    COMMAND.add_to(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train-online", *argv])


def test_lora_flags_mirror_prefopt_train(capsys):
    flags = ["--lora-r", "8", "--lora-alpha", "16", "--lora-dropout", "0.1", "--model", "m", "--quantization", "4bit"]
    config = online_config_from_args(_parse(flags))
    assert (config.lora_r, config.lora_alpha, config.lora_dropout, config.quantization) == (8, 16.0, 0.1, "4bit")
    for argv, word in (
        (["--quantization", "8bit"], "lora_r"),
        (["--lora-r", "-1"], "lora_r"),
        (["--lora-dropout", "1.5"], "lora_dropout"),
        (["--quantization", "2bit", "--lora-r", "4"], "quantization"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and word in err[0] and err[0].startswith("prefopt train-online:")
