"""A tiny on-disk training task for the trainer's tests: the synthetic task's tokenizer and grammar, a
random-init 2-layer Llama (≈30k parameters) and grammar-sampled preference pairs labelled by the gold reward.

Nothing is trained or downloaded, so building it takes well under a second.
"""

from __future__ import annotations

import json
import random
from pathlib import Path


def tiny_llama(tokenizer, *, seed: int = 0):
    """A 2-layer, 32-wide Llama (fp32, random init from `seed`) sized to `tokenizer`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def write_tiny_task(root: Path, *, pairs: int = 32, seed: int = 0) -> dict[str, Path]:
    """Write `root/model` (weights + tokenizer), `root/paired.jsonl`, `root/unpaired.jsonl`, `root/ranked.jsonl`."""

    from prefopt.data.synthetic import build_tokenizer, gold_reward, sample_review

    tokenizer = build_tokenizer()
    model = tiny_llama(tokenizer, seed=seed)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rng = random.Random(seed)
    paired, unpaired, ranked = [], [], []
    for i in range(pairs):
        first = sample_review(rng)
        others = [sample_review(rng, item=first.item).completion for _ in range(2)]
        completions = [first.completion, *others]
        scores = gold_reward([first.prompt] * 3, completions).tolist()
        order = sorted(range(3), key=lambda k: -scores[k])
        chosen, rejected = completions[order[0]], completions[order[-1]]
        paired.append({"id": f"p{i}", "prompt": first.prompt, "chosen": chosen, "rejected": rejected})
        unpaired += [
            {"id": f"u{i}-1", "prompt": first.prompt, "completion": chosen, "label": True},
            {"id": f"u{i}-0", "prompt": first.prompt, "completion": rejected, "label": False},
        ]
        ranked.append(
            {"id": f"r{i}", "prompt": first.prompt, "completions": [completions[k] for k in order], "ranks": [1, 2, 3]}
        )
    paths = {"model": model_dir}
    for name, rows in (("paired", paired), ("unpaired", unpaired), ("ranked", ranked)):
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths[name] = path
    return paths
