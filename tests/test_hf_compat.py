"""prefopt.hf_compat picks the argument names of the installed transformers and warns about nothing."""

from __future__ import annotations

import warnings

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prefopt.hf_compat import cache_kwarg, enable_checkpointing, output_cache


def _tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(cfg).eval()


def test_cached_step_equals_full_forward_without_warnings() -> None:
    model, ids = _tiny(), torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error")
        full = model(input_ids=ids).logits[:, -1]
        out = model(input_ids=ids[:, :4], use_cache=True)
        step = model(
            input_ids=ids[:, 4:],
            position_ids=torch.full((2, 1), 4),
            use_cache=True,
            **cache_kwarg(model, output_cache(out)),
        )
    torch.testing.assert_close(step.logits[:, -1], full, rtol=1e-5, atol=1e-5)


def test_checkpointing_enabled_without_warnings_and_gradients_flow() -> None:
    model = _tiny().train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enable_checkpointing(model)
        model(input_ids=torch.randint(0, 50, (1, 6))).logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


class _OldModel:
    """The transformers 4.x names: `past_key_values` in and out, `gradient_checkpointing_enable`."""

    def __init__(self) -> None:
        self.enabled: dict = {}

    def forward(self, input_ids=None, past_key_values=None, use_cache=None):  # noqa: ANN001, ANN202
        return None

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:  # noqa: ANN001
        self.enabled = gradient_checkpointing_kwargs


class _OldOutput(dict):
    past_key_values = "kv"


def test_older_transformers_names() -> None:
    model = _OldModel()
    assert cache_kwarg(model, "kv") == {"past_key_values": "kv"}
    assert output_cache(_OldOutput(logits=1)) == "kv"
    enable_checkpointing(model)
    assert model.enabled == {"use_reentrant": False}
