"""bitsandbytes 4-bit / 8-bit models, and LoRA on top (QLoRA), through the same engine.

bitsandbytes support differs by version and device; a module-scoped probe quantises a tiny model and
runs it once, and every test here skips with the probe's reason when that fails.
"""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from prefopt.engine import LogProbEngine

from ._engine_batches import VOCAB, make_batch, naive_sequence_logps, ragged_examples, tiny_model

ATOL = 1e-5
QUANTS = ["4bit", "8bit"]


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_model(config).save_pretrained(path)
    return path


def load_quantized(path, bits: str):
    """Load with a bitsandbytes policy on CPU, or skip with the reason it cannot run here."""
    try:
        from transformers import BitsAndBytesConfig

        policy = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_type="nf4")
            if bits == "4bit"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=policy, device_map="cpu")
        model(torch.ones(1, 3, dtype=torch.long))  # the probe: one quantised forward on this device
    except Exception as err:  # any failure here is "this bitsandbytes cannot run on this device"
        version = importlib.metadata.version("bitsandbytes")
        pytest.skip(f"bitsandbytes {version} cannot run {bits} on cpu: {type(err).__name__}: {err}")
    return model.eval()


@pytest.mark.parametrize("bits", QUANTS)
def test_quantized_model_goes_through_the_fused_engine(saved_llama, bits):
    model = load_quantized(saved_llama, bits)
    assert (
        "Linear" in type(model.model.layers[0].self_attn.q_proj).__name__
        and type(model.model.layers[0].self_attn.q_proj) is not torch.nn.Linear
    )  # the body really is quantised
    engine = LogProbEngine(model)
    assert engine.fused
    examples = ragged_examples(5, seed=12)
    expected, _ = naive_sequence_logps(model, make_batch(examples))
    torch.testing.assert_close(engine(make_batch(examples, packed=True)).sum, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("bits", QUANTS)
def test_qlora_gradients_reach_the_adapters(saved_llama, bits):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        load_quantized(saved_llama, bits), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"])
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    examples = ragged_examples(4, seed=13)
    out = LogProbEngine(model)(make_batch(examples))
    expected, _ = naive_sequence_logps(model, make_batch(examples))
    torch.testing.assert_close(out.sum, expected, atol=ATOL, rtol=0)
    out.sum.sum().backward()
    trained = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(g is not None and g.abs().sum() > 0 for g in trained.values())
    assert any("lm_head" in n for n in trained) and any("q_proj" in n for n in trained)
