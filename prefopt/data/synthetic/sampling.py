"""Ancestral sampling from a causal LM for the synthetic task, reproducible from a `torch.Generator`.

Prompts are grouped by token length so each forward pass is unpadded (no attention-mask subtleties,
and a row's samples do not depend on which other prompts share its batch length); a KV cache makes
each new token one forward of a single position. A row stops at EOS; rows that reach
`max_new_tokens` without EOS are kept as they are (`finished[i]` False).

The returned tensors use the `TokenBatch` alignment: `completion_mask[i, t]` is True where token t of
row i is a completion token (EOS included) whose log-prob is log π(input_ids[i, t] | tokens < t).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.data.batch import TokenBatch
from prefopt.hf_compat import cache_kwarg, output_cache

__all__ = ["Samples", "sample", "torch_threads"]


@dataclass
class Samples:
    """B sampled completions and their token layout (right-padded).

    Attributes:
        prompts: B prompt strings (as given).
        completions: B completion strings (" " + decoded words, EOS and padding removed).
        input_ids: [B, T] long, BOS + prompt + completion (+ EOS) then padding.
        attention_mask: [B, T] long, 1 on real tokens.
        completion_mask: [B, T] bool, True on completion tokens (EOS included).
        finished: [B] bool, True if the row ended with EOS.
    """

    prompts: list[str]
    completions: list[str]
    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    finished: Tensor

    def token_batch(self) -> TokenBatch:
        """The samples as a padded `TokenBatch` (group_size 1, one sequence per row), for the engine."""
        return TokenBatch.from_rows(self.input_ids, self.attention_mask, self.completion_mask)


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with `num_threads` torch threads (None: leave as is), restoring the count after.

    The synthetic models are tiny: one thread is about as fast as several, and on a busy machine extra
    OpenMP threads spin-wait (steps ≈15× slower measured on a loaded 2-core box).
    """
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _sample_group(model: Any, prompt_ids: Tensor, *, eos_id: int, max_new_tokens: int, temperature: float,
                  generator: torch.Generator) -> Tensor:
    """New tokens [G, N ≤ max_new_tokens] (CPU) for G prompts of equal length (prompt_ids [G, P], on the
    model's device). Draws happen on the CPU generator, so samples do not depend on the model's device
    beyond its floating-point results."""
    out = model(input_ids=prompt_ids, use_cache=True)
    past, logits = output_cache(out), out.logits[:, -1].float()  # (G, V)
    done = torch.zeros(prompt_ids.shape[0], dtype=torch.bool)
    new: list[Tensor] = []
    for step in range(max_new_tokens):
        probs = torch.softmax(logits / temperature, dim=-1).cpu()
        token = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (G,)
        token = torch.where(done, torch.full_like(token, eos_id), token)
        new.append(token)
        done |= token == eos_id
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        position = torch.full((prompt_ids.shape[0], 1), prompt_ids.shape[1] + step, device=prompt_ids.device)
        out = model(input_ids=token[:, None].to(prompt_ids.device), position_ids=position,
                    **cache_kwarg(model, past), use_cache=True)
        past, logits = output_cache(out), out.logits[:, -1].float()
    return torch.stack(new, dim=1)


@torch.no_grad()
def sample(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    generator: torch.Generator,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    batch_size: int = 256,
    progress: bool = False,
) -> Samples:
    """Draw one completion per prompt from `model` (ancestral sampling at `temperature`).

    Args:
        model: a causal LM (e.g. `LlamaForCausalLM`) on CPU; put in eval mode by the caller.
        tokenizer: the synthetic tokenizer (BOS prepended, EOS ends a completion).
        prompts: B prompt strings; repeat a prompt to draw several completions for it.
        generator: the only source of randomness (same generator state → same samples).
        max_new_tokens: cap on completion tokens (EOS included).
        temperature: > 0; logits are divided by it.
        batch_size: prompts per forward pass (memory, not results, apart from grouping order).
        progress: show a tqdm bar over prompts.
    Returns:
        `Samples` (CPU tensors) with B rows in the order of `prompts`.
    """
    from tqdm.auto import tqdm

    if temperature <= 0:
        raise ValueError(f"sample: temperature={temperature} must be > 0")
    if max_new_tokens < 1:
        raise ValueError(f"sample: max_new_tokens={max_new_tokens} must be ≥ 1")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    generated: list[list[int]] = [[] for _ in prompts]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    device = next(model.parameters()).device
    bar = tqdm(total=len(prompts), desc="sampling completions", disable=not progress)
    for length in sorted(by_length):
        rows = by_length[length]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            prompt_ids = torch.tensor([encoded[i] for i in chunk], dtype=torch.long, device=device)
            new = _sample_group(model, prompt_ids, eos_id=eos, max_new_tokens=max_new_tokens,
                                temperature=temperature, generator=generator)
            for row, tokens in zip(chunk, new.tolist()):
                generated[row] = tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
            bar.update(len(chunk))
    bar.close()
    width = max(len(p) + len(c) for p, c in zip(encoded, generated))
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    completion_mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for i, (p, c) in enumerate(zip(encoded, generated)):
        input_ids[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        attention_mask[i, : len(p) + len(c)] = 1
        completion_mask[i, len(p): len(p) + len(c)] = True
    finished = torch.tensor([c[-1:] == [eos] for c in generated], dtype=torch.bool)
    texts = [" " + tokenizer.decode([t for t in c if t != eos], skip_special_tokens=False) for c in generated]
    return Samples(list(prompts), texts, input_ids, attention_mask, completion_mask, finished)
