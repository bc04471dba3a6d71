"""Best-of-N measured on a model: M reference samples per prompt, scored, then the exact best-of-N points."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prefopt.data.synthetic.tokenizer import build_tokenizer
from prefopt.online.best_of_n_reference import evaluate_best_of_n


def test_evaluate_best_of_n_samples_and_scores() -> None:
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    points = evaluate_best_of_n(
        model,
        tokenizer,
        ["the soup was", "i liked"],
        lambda ps, cs: [len(c) for c in cs],
        ns=(1, 2),
        samples=8,
        max_new_tokens=4,
    )
    assert [p.n for p in points] == [1, 2] and points[1].reward.mean >= points[0].reward.mean
    assert points[1].samples_per_prompt == 8 and points[1].num_prompts == 2
