"""Which prompts share one HF `generate` call (`GenerationConfig.batching`), and their left-padded inputs.

    calls = plan_calls([len(ids) for ids in encoded], batch_size=64, batching="auto")   # [[prompt index, …], …]
    input_ids, attention_mask, width = left_padded([encoded[i] for i in calls[0]], pad, device)

- "length": one call per prompt token length (chunks of `batch_size`): every call unpadded. Each call decodes until
  its own longest sample ends, so a step whose prompts have L distinct lengths makes L calls of the decode loop.
- "padded": the prompts, sorted by length, in chunks of `batch_size`, each chunk one call, left-padded to its
  longest prompt with an attention mask (as TRL's GRPOTrainer calls `generate`). transformers' `generate` makes
  the position ids from the mask (`cumsum(mask) − 1`, Llama and GPT-2 alike), and the padded keys are masked
  out, so each row's logits are those of its prompt alone (to float rounding:
  `tests/online/test_generation_batching.py` checks greedy decodes identical and the sampler's per-token
  log-probs equal to 1e-5).
- "auto": "padded" for a chunk whose padding is at most `AUTO_PAD_FRACTION` of its padded prompt positions,
  else "length" for that chunk. The padding costs prefill work on pad positions and attention over masked keys
  at every decode step; a call per length costs a whole decode loop (one forward per new token) per length.

Sampling draws: a call draws every row's tokens from one stream, so which prompts share a call decides which
draws each prompt gets. The samples of one seed therefore differ between "length" and "padded" (the
distribution does not); with greedy decoding they are the same. Under a launcher each prompt is sampled alone
from its own seed (`prefopt.online.distributed.prompt_seeds`), one call per prompt whatever the batching, so P
processes still sample what one does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["BATCHING", "AUTO_PAD_FRACTION", "plan_calls", "pad_fraction", "left_padded"]

BATCHING = ("auto", "length", "padded")
# "auto" pads a chunk when at most this share of its padded prompt positions is padding. Measured on the
# benchmark's policy (benchmarks/online_step.py; prompts of 7-10 tokens, 32 new tokens): one padded call
# (~15% padding) took 0.14 s a step against 0.19 s for a call per length; prefill is a small part of a
# decode, so the bound is loose.
AUTO_PAD_FRACTION = 0.5


def pad_fraction(lengths: Sequence[int]) -> float:
    """The share of padding in the left-padded [len(lengths), max(lengths)] prompt block."""
    if not lengths:
        return 0.0
    width = max(lengths)
    return 1.0 - sum(lengths) / (width * len(lengths))


def _by_length(rows: Sequence[int], lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for i in rows:
        groups.setdefault(lengths[i], []).append(i)
    return [groups[n][s : s + batch_size] for n in sorted(groups) for s in range(0, len(groups[n]), batch_size)]


def plan_calls(lengths: Sequence[int], batch_size: int, batching: str) -> list[list[int]]:
    """The prompt indices of each `generate` call (module docstring), every prompt in exactly one call."""
    if batching not in BATCHING:
        raise ValueError(f"GenerationConfig.batching={batching!r}: use one of {BATCHING}")
    if batching == "length":
        return _by_length(range(len(lengths)), lengths, batch_size)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    calls: list[list[int]] = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        if batching == "padded" or pad_fraction([lengths[i] for i in chunk]) <= AUTO_PAD_FRACTION:
            calls.append(chunk)
        else:
            calls += _by_length(chunk, lengths, batch_size)
    return calls


def left_padded(prompts: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor, int]:
    """(input_ids, attention_mask) [N, W] of `prompts` left-padded with `pad` to the longest, W."""
    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for j, ids in enumerate(prompts):
        input_ids[j, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        attention_mask[j, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device), width
