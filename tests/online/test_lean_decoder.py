"""The lean decoder (`prefopt.online.lean_decoder`) draws what transformers' `generate` draws: the same tokens for
the same seed (sampled, with temperature and top-p, and greedy), the same sampler log-probs to 1e-5, on Llama (grouped
and plain multi-head attention), Qwen2 (q/k/v biases) and Mistral, float32 and bfloat16, with left-padded prompts of
different lengths, K samples per prompt, rows that stop early and rows cut at max_new_tokens; its weights copied
(small models) or read in place. Where it cannot run, "auto" takes `generate` and "lean" is refused by name."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from prefopt.data.synthetic import build_tokenizer
from prefopt.online import lean_decoder
from prefopt.online.config import RESUMABLE, OnlineConfig
from prefopt.online.generation import GenerationConfig, generate
from prefopt.online.lean_decoder import decodes_here, lean_unsupported
from prefopt.online.samplers import check_decoder
from prefopt.settings import SettingsError
from prefopt.train.checkpoint import RunFolderError, check_same_settings
from tests.online.test_generation_batching import _gpt2
from tests.train.tiny_task import tiny_llama

PROMPTS = ["the food was", "service", "we came back for the view", "a long wait", "great"]
SETTINGS = {
    "sampled": {"temperature": 1.0, "top_p": 1.0},
    "warped": {"temperature": 0.7, "top_p": 0.9},
    "greedy": {"do_sample": False, "num_samples": 1},
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _config(tokenizer, **extra):
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 128,
        "pad_token_id": tokenizer.pad_token_id,
        **special,
        **extra,
    }


def _build(tokenizer, kind: str):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    if kind == "llama-gqa":
        return tiny_llama(tokenizer, seed=3)
    torch.manual_seed(3)
    if kind == "llama-mha":  # untied head, attention and MLP biases
        config = _config(tokenizer, num_key_value_heads=4, attention_bias=True, mlp_bias=True)
        return LlamaForCausalLM(LlamaConfig(**config, tie_word_embeddings=False))
    if kind == "qwen2":  # q/k/v biases, no o bias
        return Qwen2ForCausalLM(Qwen2Config(**_config(tokenizer, num_key_value_heads=2), tie_word_embeddings=True))
    assert kind == "mistral"  # a sliding window longer than any call
    return MistralForCausalLM(MistralConfig(**_config(tokenizer, num_key_value_heads=1, sliding_window=64)))


def _both(policy, tokenizer, settings: dict, seed: int = 0, **extra):
    base = {"max_new_tokens": 12, "num_samples": 3, "batching": "padded", "logprobs": True, **extra, **settings}
    hf = generate(policy, tokenizer, PROMPTS, GenerationConfig(**base, decoder="hf"), seed=seed)
    lean = generate(policy, tokenizer, PROMPTS, GenerationConfig(**base, decoder="lean"), seed=seed)
    return hf, lean


def _assert_same(hf, lean) -> None:
    assert lean.completions == hf.completions
    assert torch.equal(lean.input_ids, hf.input_ids) and torch.equal(lean.completion_mask, hf.completion_mask)
    assert torch.equal(lean.finished, hf.finished)
    mask = hf.completion_mask
    torch.testing.assert_close(lean.sampler_logps[mask], hf.sampler_logps[mask], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama-gqa", "llama-mha", "qwen2", "mistral"])
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_the_same_draws_as_generate(tokenizer, kind, setting):
    policy = _build(tokenizer, kind).eval()
    assert lean_unsupported(policy, 64) is None
    for seed in (0, 1):
        hf, lean = _both(policy, tokenizer, SETTINGS[setting], seed=seed)
        _assert_same(hf, lean)
    if setting != "greedy":  # rows stopped at EOS and rows cut at the cap in one call: the finished rows left early
        assert hf.finished.any() and not hf.finished.all(), hf.finished


@pytest.mark.parametrize("copy", [True, False], ids=["weights-copied", "weights-in-place"])
def test_both_weight_paths_draw_the_same(tokenizer, monkeypatch, copy):
    """Above `COPY_BYTES` the call reads each module's weights in place instead of its own concatenated copies."""
    monkeypatch.setattr(lean_decoder, "COPY_BYTES", lean_decoder.COPY_BYTES if copy else 0)
    policy = _build(tokenizer, "qwen2").eval()
    _assert_same(*_both(policy, tokenizer, SETTINGS["warped"], seed=4, max_new_tokens=16))


def test_bfloat16_draws_what_generate_draws(tokenizer):
    """In bfloat16 the decoder computes as transformers does (RMSNorm in float32, SDPA for attention)."""
    policy = _build(tokenizer, "llama-gqa").to(torch.bfloat16).eval()
    for setting in ("sampled", "greedy"):
        _assert_same(*_both(policy, tokenizer, SETTINGS[setting], seed=2))


def test_auto_takes_generate_where_the_lean_decoder_cannot_run(tokenizer, monkeypatch):
    gpt2 = _gpt2(tokenizer).eval()
    assert "GPT2LMHeadModel is not one of" in lean_unsupported(gpt2)
    calls = []
    original = type(gpt2).generate
    monkeypatch.setattr(type(gpt2), "generate", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    auto = generate(gpt2, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=4, batching="padded"), seed=0)
    assert calls == [1] and len(auto.completions) == len(PROMPTS)
    with pytest.raises(ValueError, match="decoder='lean' cannot decode this call: GPT2LMHeadModel is not one of"):
        generate(gpt2, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=4, decoder="lean"))
    llama = _build(tokenizer, "llama-gqa").eval()
    assert decodes_here("auto", llama, 32) and not decodes_here("hf", llama, 32)
    assert not decodes_here("auto", llama, 32, processor=True) and not decodes_here("auto", llama, 32, sharded=True)
    with pytest.raises(ValueError, match="logits processor"):
        decodes_here("lean", llama, 32, processor=True)
    with pytest.raises(ValueError, match="decoder='beam'"):
        GenerationConfig(decoder="beam")


def test_each_reason_is_named(tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = _build(tokenizer, "llama-gqa")
    llama.generation_config.repetition_penalty = 1.3
    assert "repetition_penalty=1.3" in lean_unsupported(llama)
    llama.generation_config.repetition_penalty = 1.0  # the neutral value older transformers write
    assert lean_unsupported(llama) is None
    dynamic = LlamaConfig(**_config(tokenizer), rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    assert "rotary scaling 'dynamic'" in lean_unsupported(LlamaForCausalLM(dynamic))
    mistral = _build(tokenizer, "mistral")
    assert lean_unsupported(mistral, 64) is None and "sliding-window" in lean_unsupported(mistral, 65)
    lora = get_peft_model(_build(tokenizer, "llama-gqa"), LoraConfig(r=2, target_modules=["q_proj"]))
    assert "a LoRA (peft) policy" in lean_unsupported(lora)
    silu = _build(tokenizer, "qwen2")
    silu.config.hidden_act = "gelu"
    assert "hidden_act='gelu'" in lean_unsupported(silu)


def test_online_settings(tokenizer, tmp_path):
    with pytest.raises(SettingsError, match="OnlineConfig.generation_decoder='fast': use one of"):
        OnlineConfig(generation_decoder="fast")
    with pytest.raises(SettingsError, match="generation_decoder='lean': this run samples inside an action mask"):
        OnlineConfig(algorithm="nlpo", generation_decoder="lean")
    lean = OnlineConfig(algorithm="grpo", generation_decoder="lean")
    check_decoder(lean, _build(tokenizer, "llama-gqa"), sharded=False)
    with pytest.raises(SettingsError, match="generation_decoder='lean': GPT2LMHeadModel is not one of"):
        check_decoder(lean, _gpt2(tokenizer), sharded=False)
    with pytest.raises(SettingsError, match="FSDP-sharded"):
        check_decoder(lean, _build(tokenizer, "llama-gqa"), sharded=True)
    # the same draws either way: a run saved before the field, or with another value, resumes with any
    saved = OnlineConfig(algorithm="grpo", output_dir=str(tmp_path)).to_dict()
    del saved["generation_decoder"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    for value in ("auto", "hf", "lean"):
        config = dataclasses.replace(OnlineConfig(algorithm="grpo", output_dir=str(tmp_path)), generation_decoder=value)
        check_same_settings(tmp_path, config.to_dict(), RESUMABLE, OnlineConfig)
    with pytest.raises(RunFolderError, match="generation_decoder"):
        check_same_settings(tmp_path, lean.to_dict() | {"output_dir": str(tmp_path)}, (), OnlineConfig)


def test_the_weights_are_read_once_for_all_the_calls_of_a_generate(tokenizer, monkeypatch):
    """With one call per prompt length the calls share one `LeanWeights` (the weights do not change between them)."""
    built = []
    original = lean_decoder.LeanWeights.__init__
    monkeypatch.setattr(lean_decoder.LeanWeights, "__init__", lambda self, m: built.append(1) or original(self, m))
    policy = _build(tokenizer, "llama-gqa").eval()
    settings = GenerationConfig(max_new_tokens=4, batching="length", decoder="lean")
    generate(policy, tokenizer, PROMPTS, settings, seed=0)
    assert len({len(tokenizer(p)["input_ids"]) for p in PROMPTS}) > 1 and built == [1]
