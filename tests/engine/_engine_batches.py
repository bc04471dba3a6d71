"""Private helpers for the engine tests: tiny models from config and TokenBatches built by hand.

The data layer's collator is tested elsewhere; these helpers build padded and packed layouts directly
from lists of (prompt_ids, completion_ids) so the engine tests do not depend on it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, PretrainedConfig

from prefopt.batch import TokenBatch

VOCAB = 97
Example = tuple[list[int], list[int]]


def make_batch(
    examples: list[Example],
    *,
    packed: bool = False,
    row_capacity: int | None = None,
    group_size: int = 1,
    pad_id: int = 0,
    pad_to: int | None = None,
) -> TokenBatch:
    """Sequences in the given (group-major) order; padded: one per row; packed: greedily filled rows
    of `row_capacity` tokens (default: everything in one row), right-padded to the longest row."""
    seqs = [prompt + completion for prompt, completion in examples]
    rows: list[list[int]] = []  # sequence indices per row
    if not packed:
        rows = [[s] for s in range(len(seqs))]
    else:
        capacity = row_capacity or sum(map(len, seqs))
        for s, seq in enumerate(seqs):
            if rows and sum(len(seqs[i]) for i in rows[-1]) + len(seq) <= capacity:
                rows[-1].append(s)
            else:
                rows.append([s])
    width = max(sum(len(seqs[i]) for i in row) for row in rows)
    width = max(width, pad_to or 0)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    attention = torch.zeros(shape, dtype=torch.long)
    completion = torch.zeros(shape, dtype=torch.bool)
    sequence_ids = torch.full(shape, -1, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    for r, row in enumerate(rows):
        t = 0
        for s in row:
            prompt, answer = examples[s]
            n = len(prompt) + len(answer)
            input_ids[r, t : t + n] = torch.tensor(prompt + answer)
            attention[r, t : t + n] = 1
            completion[r, t + len(prompt) : t + n] = True
            sequence_ids[r, t : t + n] = s
            positions[r, t : t + n] = torch.arange(n)
            t += n
    return TokenBatch(
        input_ids, attention, completion, sequence_ids, len(seqs), group_size, packed, positions if packed else None
    )


def ragged_examples(count: int, seed: int = 0, vocab: int = VOCAB) -> list[Example]:
    """`count` random (prompt, completion) pairs of ragged lengths 2..7 and 1..8 tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        p, c = int(torch.randint(2, 8, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
        ids = torch.randint(1, vocab, (p + c,), generator=g).tolist()
        out.append((ids[:p], ids[p:]))
    return out


def naive_sequence_logps(model: torch.nn.Module, batch: TokenBatch, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """The obvious computation on a padded batch: model(...).logits → fp32 log_softmax → gather.

    Returns (sum [S], per-token [R, T] aligned with input_ids)."""
    assert not batch.packed
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float() / temperature
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    mask = batch.completion_mask[:, 1:]
    tokens = torch.cat([logp.new_zeros(logp.shape[0], 1), logp * mask], dim=1)
    sums = torch.zeros(batch.num_sequences).index_add(0, batch.sequence_ids[:, 1:][mask], logp[mask])
    return sums, tokens


def tiny_model(config: PretrainedConfig, seed: int = 0, head_gain: float = 1.0, attn: str = "sdpa") -> torch.nn.Module:
    """A float32 model from `config` with seeded weights; `head_gain` scales the output head so that
    logit soft-capping and scaling actually bite."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    if head_gain != 1.0:
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(head_gain)
    return model.float().eval()
