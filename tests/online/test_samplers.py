"""The online loop's samplers (`prefopt.online.samplers`, `prefopt.online.vllm_samplers`) against stand-in engines
(tests/online/vllm_standins.py): after each update the engine holds the policy's current weights (LoRA merged),
pushed once, before the next generation, never through the disk; a server failure is one line; the HF path is
`generate` itself, batched by prompt length with its KV cache."""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import torch

from prefopt.cli import main
from prefopt.data.synthetic import build_tokenizer
from prefopt.errors import GenerationServerError
from prefopt.online import config as online_config
from prefopt.online import vllm_samplers
from prefopt.online.config import OnlineConfig
from prefopt.online.generation import GenerationConfig, generate
from prefopt.online.group_sampling import sample_rollout
from prefopt.online.samplers import HFSampler, Sampler, policy_weights, weight_checksum
from prefopt.online.setup import setup_online_run, synthetic_prompts
from prefopt.online.trainer import train_online
from prefopt.online.vllm_samplers import ServerClient, VLLMColocateSampler, VLLMServerSampler, build_sampler
from prefopt.settings import SettingsError
from tests.online.vllm_standins import FakeLLM, FakeServer, sampling_params
from tests.train.tiny_task import tiny_llama

PROMPTS = ["the food was", "service", "the food was", "we came back for the view"]
SETTINGS = GenerationConfig(num_samples=2, max_new_tokens=6)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _policy(tokenizer):
    return tiny_llama(tokenizer, seed=0)


def _checksums(model) -> dict[str, str]:
    return {name: weight_checksum(t) for name, t in policy_weights(model)}


def _pushed(events, start: int = 0) -> dict[str, str]:
    return {e[1]: e[3] for e in events[start:] if e[0] == "load"}


def _update(policy, optimizer, steps: int) -> None:
    """`steps` optimiser steps on a loss that moves every weight (what the loop's minibatches do)."""
    for _ in range(steps):
        loss = sum((p.float() ** 2).sum() for p in policy.parameters() if p.requires_grad)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _kinds(events) -> list[str]:
    """The event sequence with each push's loads collapsed into one "push"."""
    out: list[str] = []
    for event in events:
        kind = "push" if event[0] == "load" else event[0]
        if not (kind == "push" and out and out[-1] == "push"):
            out.append(kind)
    return out


def test_colocated_pushes_current_weights_once_per_update_before_generation(tokenizer, tmp_path, monkeypatch):
    """Loop order: generate → (2 optimiser steps, as PPO's epochs) → generate → generate (a dynamic-sampling
    refill: no update in between, no push) → 1 step → generate. Each push carries the policy's weights at that
    moment, bit for bit, and happens before the generation that follows it; nothing is saved to disk."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch, "save", lambda *a, **k: pytest.fail("weights written to disk"))
    policy = _policy(tokenizer)
    llm = FakeLLM(len(tokenizer), tokenizer.eos_token_id)
    sampler = VLLMColocateSampler(policy, tokenizer, llm, sampling_params=sampling_params)
    assert isinstance(sampler, Sampler)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    sampler.watch(optimizer)
    expected = []
    for step, updates in enumerate([2, 0, 1, 0]):
        expected.append(_checksums(policy))
        before = len(llm.events)
        rollout = sampler.generate(PROMPTS, SETTINGS, seed=step)
        if step != 2:  # step 2 follows no update
            assert _pushed(llm.events, before) == expected[-1]
        assert rollout.input_ids.shape[0] == len(PROMPTS) * 2 and rollout.sampler_logps is not None
        _update(policy, optimizer, updates)
    assert _kinds(llm.events) == [
        "push",
        "reset",
        "generate",
        "push",
        "reset",
        "generate",
        "generate",
        "push",
        "reset",
        "generate",
    ]
    assert sampler.pushes == 3 and sampler.synced_at == 3 == sampler.updates
    assert llm.model.weights.keys() == dict(policy.named_parameters()).keys()
    for name, param in policy.named_parameters():  # the engine's copy is the policy after its last push
        assert torch.equal(llm.model.weights[name], param.detach())
    assert os.listdir(tmp_path) == []


def test_rollout_from_engine_reply(tokenizer):
    """Completions stop at EOS (put back where vLLM dropped it, log-prob NaN), group-major rows, the engine's
    log-probs at the completion tokens."""
    policy = _policy(tokenizer)
    llm = FakeLLM(len(tokenizer), tokenizer.eos_token_id, drop_eos=True)
    rollout = VLLMColocateSampler(policy, tokenizer, llm, sampling_params=sampling_params).generate(
        PROMPTS, SETTINGS, seed=3
    )
    mask, logps = rollout.completion_mask, rollout.sampler_logps
    assert logps.shape == mask.shape and (logps[~mask] == 0).all()
    eos = tokenizer.eos_token_id
    for s in range(rollout.input_ids.shape[0]):
        tokens = rollout.input_ids[s][mask[s]].tolist()
        assert bool(rollout.finished[s]) == (tokens[-1] == eos)
        assert (eos not in tokens[:-1]) and len(tokens) <= SETTINGS.max_new_tokens + 1
        lp = logps[s][mask[s]]
        assert (lp[:-1] <= 0).all() and (torch.isnan(lp[-1]) == bool(rollout.finished[s]))
    assert rollout.finished.any() and not rollout.finished.all()


def test_lora_policy_is_pushed_merged_and_left_unmerged(tokenizer):
    """LoRA: the engine gets W + ΔW under the base model's names (what merge_and_unload gives), no adapter
    matrices, and the policy's own parameters are untouched, bit for bit."""
    from peft import LoraConfig, get_peft_model  # heavy: optional

    policy = get_peft_model(
        _policy(tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["norm"])
    )
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.normal_(0, 0.5)  # a trained adapter: ΔW ≠ 0, and a trained copy of the final norm
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    llm = FakeLLM(len(tokenizer), tokenizer.eos_token_id)
    VLLMColocateSampler(policy, tokenizer, llm, sampling_params=sampling_params).sync_weights(policy, 0)
    merged = dict(copy.deepcopy(policy).merge_and_unload().named_parameters())
    assert llm.model.weights.keys() == merged.keys()
    for name, weight in merged.items():
        torch.testing.assert_close(llm.model.weights[name], weight.detach(), rtol=0, atol=1e-6)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(
        llm.model.weights[q], before["base_model.model." + q.replace(".weight", ".base_layer.weight")]
    )
    for name, param in policy.named_parameters():
        assert torch.equal(param, before[name]), name


def test_server_pushes_over_its_api_and_generates(tokenizer):
    """The `trl vllm-serve` protocol: health, world size, init_communicator once; per tensor an announcement and
    its broadcast; a prefix-cache reset after each push; generation from the reply."""
    policy = _policy(tokenizer)
    with FakeServer(len(tokenizer), tokenizer.eos_token_id) as server:
        client = ServerClient(server.url, timeout=10)
        client.wait_until_up()
        sampler = VLLMServerSampler(policy, tokenizer, client, server.transport(), group_port=51299)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
        sampler.watch(optimizer)
        for step in range(2):
            expected, before = _checksums(policy), len(server.events)
            rollout = sampler.generate(PROMPTS, SETTINGS, seed=step)
            assert _pushed(server.events, before) == expected
            _update(policy, optimizer, 1)
        sampler.close()
    kinds = _kinds(server.events)
    assert kinds == ["init_communicator", "open", "push", "reset_prefix_cache", "generate"] * 1 + [
        "push",
        "reset_prefix_cache",
        "generate",
        "close_communicator",
        "closed",
    ]
    init = server.events[0][1]
    assert init["world_size"] == 2 and init["port"] == 51299 and server.events[1][3:] == (1, 2)
    assert rollout.sampler_logps is not None and rollout.input_ids.shape[0] == 8
    first = rollout.sampler_logps[0][rollout.completion_mask[0]]
    assert torch.isnan(first[0]) and (first[1:-1] <= 0).all()  # None → NaN: no correction for that token


def test_server_failure_is_one_line(tokenizer):
    policy = _policy(tokenizer)
    with FakeServer(len(tokenizer), tokenizer.eos_token_id) as server:
        server.fail["/update_named_param/"] = 500
        sampler = VLLMServerSampler(policy, tokenizer, ServerClient(server.url, 10), server.transport(), 51216)
        with pytest.raises(GenerationServerError) as error:
            sampler.generate(PROMPTS, SETTINGS, seed=0)
    message = str(error.value)
    assert "\n" not in message and "HTTP 500" in message and "/update_named_param/" in message
    assert server.url in message and "CUDA out of memory" in message
    url = server.url  # closed now: nothing listens
    with pytest.raises(GenerationServerError) as error:
        build_sampler("vllm_server", policy, tokenizer, server_url=url, server_timeout=0.2)
    assert "\n" not in str(error.value) and "--vllm-server-url" in str(error.value)


def test_hf_sampler_is_generate_batched_by_length_with_kv_cache(tokenizer, monkeypatch):
    """The HF path with decoder="hf" is `generate` itself (same samples for the same seed); with batching="length" each
    `model.generate` call gets prompts of one token length, unpadded, with "padded" one call gets them all
    left-padded with a mask; the KV cache on; nothing is pushed."""
    policy = _policy(tokenizer)
    calls = []
    original = type(policy).generate

    def spy(self, *args, **kwargs):
        calls.append((kwargs["input_ids"].shape, bool(kwargs["attention_mask"].all()), kwargs.get("use_cache")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(policy), "generate", spy)
    settings = GenerationConfig(num_samples=2, max_new_tokens=6, batch_size=64, batching="length", decoder="hf")
    ours = HFSampler(policy, tokenizer).generate(PROMPTS, settings, seed=5)
    direct = generate(policy, tokenizer, PROMPTS, settings, seed=5)
    assert ours.completions == direct.completions and torch.equal(ours.input_ids, direct.input_ids)
    lengths = sorted({len(tokenizer(p)["input_ids"]) for p in PROMPTS})
    assert len(calls) == 2 * len(lengths)  # one call per distinct prompt length, per generate
    assert all(unpadded and cache for _, unpadded, cache in calls)
    assert sorted(shape[1] for shape, _, _ in calls[: len(lengths)]) == lengths
    calls.clear()
    padded = dataclasses.replace(settings, batching="padded")
    ours = HFSampler(policy, tokenizer).generate(PROMPTS, padded, seed=5)
    assert ours.completions == generate(policy, tokenizer, PROMPTS, padded, seed=5).completions
    assert calls == [(torch.Size([len(PROMPTS), lengths[-1]]), False, True)] * 2  # one left-padded call each


def test_config_and_setup_choose_the_sampler(tokenizer, monkeypatch, tmp_path):
    """`OnlineConfig.generation_backend` builds the sampler in `setup_online_run`, which counts the policy's
    optimiser steps; the loop's rollout (`sample_rollout`) goes through it, pushing first."""

    llm = FakeLLM(len(tokenizer), tokenizer.eos_token_id)
    built = {}

    def colocated(model, **kwargs):
        built.update(model=model, **kwargs)
        return llm

    monkeypatch.setattr(vllm_samplers, "colocated_llm", colocated)
    monkeypatch.setattr(vllm_samplers, "vllm_sampling_params", sampling_params)
    policy = _policy(tokenizer)
    policy.config.name_or_path = "stand-in/tiny"
    config = OnlineConfig(
        algorithm="grpo",
        generation_backend="vllm",
        vllm_gpu_memory_utilization=0.5,
        prompts_per_step=2,
        max_new_tokens=6,
        output_dir=str(tmp_path / "run"),
        progress=False,
    )
    prompts = synthetic_prompts(0)[0][:4]  # the gold reward reads the synthetic task's prompts
    run = setup_online_run(config, model=policy, tokenizer=tokenizer, prompts=prompts)
    assert isinstance(run.sampler, VLLMColocateSampler) and built["gpu_memory_utilization"] == 0.5
    assert built["model"] == "stand-in/tiny"
    sample_rollout(run, 0, seed=0)
    _update(run.policy, run.optimizers["policy"], 1)
    sample_rollout(run, 1, seed=1)
    assert _kinds(llm.events) == ["push", "reset", "generate", "push", "reset", "generate"]
    assert _pushed(llm.events, 1 + llm.events.index(("reset",))) == _checksums(run.policy)
    plain = OnlineConfig(output_dir=str(tmp_path / "b"), progress=False)
    assert isinstance(
        setup_online_run(plain, model=_policy(tokenizer), tokenizer=tokenizer, prompts=prompts).sampler, HFSampler
    )


def test_settings_and_machine_mistakes_are_one_line():
    with pytest.raises(SettingsError, match="generation_backend='vlm'"):
        OnlineConfig(generation_backend="vlm")
    with pytest.raises(SettingsError, match="vllm_server_url"):
        OnlineConfig(generation_backend="vllm_server", vllm_server_url="localhost:8000")
    with pytest.raises(SettingsError, match="vllm_gpu_memory_utilization"):
        OnlineConfig(vllm_gpu_memory_utilization=1.5)
    with pytest.raises(SettingsError, match="action mask"):
        OnlineConfig(algorithm="nlpo", generation_backend="vllm")
    if torch.cuda.is_available():
        pytest.skip("the machine check refuses only without vLLM or CUDA")
    with pytest.raises(SettingsError) as error:
        OnlineConfig(generation_backend="vllm", output_dir="/tmp/prefopt-unused").preflight()
    assert "\n" not in str(error.value) and "--generation-backend hf" in str(error.value)


def test_cli_vllm_backend_without_gpu_exits_2(capsys, tmp_path):

    if torch.cuda.is_available():
        pytest.skip("needs a machine without vLLM or CUDA")
    code = main(["train-online", "--generation-backend", "vllm", "--out", str(tmp_path / "r"), "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "generation_backend" in err
    code = main(["train-online", "--generation-backend", "sglang", "--out", str(tmp_path / "r")])
    assert code == 2


def test_train_online_pushes_the_updated_policy_before_each_rollout(tokenizer, monkeypatch, tmp_path):
    """The whole loop (`train_online`, 3 GRPO steps) on the stand-in engine: one push before each rollout, each
    carrying the policy as the previous step's updates left it."""

    llm = FakeLLM(len(tokenizer), tokenizer.eos_token_id)
    monkeypatch.setattr(vllm_samplers, "colocated_llm", lambda model, **kwargs: llm)
    monkeypatch.setattr(online_config, "check_generation_machine", lambda backend: None)  # a GPU with vLLM
    monkeypatch.setattr(vllm_samplers, "vllm_sampling_params", sampling_params)
    policy = _policy(tokenizer)
    policy.config.name_or_path = "stand-in/tiny"
    after_step = [_checksums(policy)]  # the weights each rollout should sample with
    train_online(
        algorithm="grpo",
        model=policy,
        tokenizer=tokenizer,
        prompts=synthetic_prompts(0)[0][:8],
        steps=3,
        prompts_per_step=2,
        num_samples=2,
        max_new_tokens=6,
        generation_backend="vllm",
        output_dir=str(tmp_path / "run"),
        checkpoint_every=0,
        progress=False,
        num_threads=1,
        on_step=lambda step, record: after_step.append(_checksums(policy)),
    )
    assert _kinds(llm.events) == ["push", "reset", "generate"] * 3
    pushes = [_pushed(llm.events[: llm.events.index(("reset",))])]
    resets = [i for i, e in enumerate(llm.events) if e == ("reset",)]
    pushes += [_pushed(llm.events[a:b]) for a, b in zip(resets, resets[1:])]
    assert pushes == after_step[:3]  # rollout s samples with the policy after step s − 1's updates
    assert after_step[0] != after_step[1] != after_step[2]
