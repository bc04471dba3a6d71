"""The prefix-shared layout of a `TokenBatch`: each group's prompt once, then its K completions.

Paired rows (K = 2), rankings (K completions) and the K online samples of one prompt share the prompt,
so the model needs to read it once per group (Wang et al. 2024, arXiv:2410.20305):

    unshared:  [x_b | y_b,0]  [x_b | y_b,1]  …          K·P_b + Σ_k C_b,k tokens per group
    shared:    [x_b | y_b,0 | y_b,1 | … ]                 P_b + Σ_k C_b,k tokens per group

Field by field (see `prefopt.batch`): `sequence_ids` is −1 on the prompt and s = k·B + b on y_b,k;
`group_ids` is b on every token of the group; `position_ids` count 0..P_b−1 over the prompt and restart
at P_b on every completion, so each completion sits where it would after its own copy of the prompt.
Padded: one group per row (R = B); packed: every group in one row. The engine gives each completion a
mask that shows it the prompt and itself (`prefopt.engine.prompt_sharing`).

The share of the token count that sharing removes is `saved_fraction` = (K − 1)·P / (K·P + Σ_k C_k).
`share_prompt="auto"` shares a batch when its layout then runs at least `MIN_SAVING` fewer positions
(padding included) through the model (`sharing_pays`): the body's work scales with positions, the head's
(completion tokens only) is the same in both layouts, and the block mask's cost is small beside them
(docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from prefopt.batch import TokenBatch

__all__ = ["MIN_SAVING", "collate_shared", "saved_fraction", "shared_segments", "sharing_pays"]

MIN_SAVING = 0.2  # DPO pairs share from prompt:completion ≈ 1:1 on (a quarter of the tokens saved)

Group = tuple[list[int], list[list[int]]]  # (prompt ids, the K completions' ids)


def saved_fraction(prompt_tokens: float, completion_tokens: float, k: int) -> float:
    """The fraction of a group's tokens that sharing its prompt removes: (K − 1)·P / (K·P + C).

    `prompt_tokens` P and `completion_tokens` C (Σ over the K completions) may be means over a dataset.
    """
    total = k * prompt_tokens + completion_tokens
    return (k - 1) * prompt_tokens / total if total > 0 else 0.0


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def sharing_pays(groups: Sequence[Group], *, packed: bool = False, pad_to_multiple_of: int | None = None) -> bool:
    """True when K ≥ 2 and the shared layout of `groups` has at most (1 − MIN_SAVING) of the unshared layout's
    positions (rows × width, padding included; packed: the row's length)."""
    if not groups or len(groups[0][1]) < 2:
        return False
    shared = [len(prompt) + sum(map(len, completions)) for prompt, completions in groups]
    unshared = [len(prompt) + len(c) for prompt, completions in groups for c in completions]
    if packed:
        return sum(shared) <= (1 - MIN_SAVING) * sum(unshared)
    shared_size = len(shared) * _round_up(max(shared), pad_to_multiple_of)
    return shared_size <= (1 - MIN_SAVING) * len(unshared) * _round_up(max(unshared), pad_to_multiple_of)


def collate_shared(
    groups: Sequence[Group],
    *,
    pad_token_id: int,
    packed: bool = False,
    pad_to_multiple_of: int | None = None,
    extras: dict[str, Tensor] | None = None,
) -> TokenBatch:
    """B groups of one prompt and K completions → a prefix-shared `TokenBatch` (module docstring).

    Sequence k·B + b is (prompt_b, completion_{b,k}), as in `collate_preferences`; S = B·K, group_size K.
    """
    b, k = len(groups), len(groups[0][1])
    lengths = [len(prompt) + sum(map(len, completions)) for prompt, completions in groups]
    num_rows, width = (1, sum(lengths)) if packed else (b, max(lengths))
    width = _round_up(width, pad_to_multiple_of)
    shape = (num_rows, width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    completion_mask = torch.zeros(shape, dtype=torch.bool)
    sequence_ids = torch.full(shape, -1, dtype=torch.long)
    group_ids = torch.full(shape, -1, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    offset = 0
    for g, (prompt, completions) in enumerate(groups):
        row, start = (0, offset) if packed else (g, 0)
        end = start + lengths[g]
        input_ids[row, start:end] = torch.tensor(prompt + [t for c in completions for t in c], dtype=torch.long)
        attention_mask[row, start:end] = 1
        group_ids[row, start:end] = g
        position_ids[row, start : start + len(prompt)] = torch.arange(len(prompt))
        t = start + len(prompt)
        for j, completion in enumerate(completions):
            completion_mask[row, t : t + len(completion)] = True
            sequence_ids[row, t : t + len(completion)] = j * b + g
            position_ids[row, t : t + len(completion)] = torch.arange(len(prompt), len(prompt) + len(completion))
            t += len(completion)
        offset = end
    return TokenBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        sequence_ids=sequence_ids,
        num_sequences=b * k,
        group_size=k,
        packed=packed,
        position_ids=position_ids,
        extras=dict(extras or {}),
        shared_prefix=True,
        group_ids=group_ids,
    )


def shared_segments(batch: TokenBatch) -> tuple[list[list[int]], list[list[int]], list[list[bool]]]:
    """Per sequence s of a prefix-shared batch: its group's prompt ids, its completion ids and their
    completion_mask values (the pieces `prefopt.data.uncollate` rebuilds rows from).

    Raises:
        ValueError: a group whose tokens span rows, or a sequence outside its group's row.
    """
    if batch.group_ids is None:
        raise ValueError("shared_segments: the batch has no group_ids (not a prefix-shared batch)")
    b = batch.num_groups
    ids, seqs, groups = (t.cpu().tolist() for t in (batch.input_ids, batch.sequence_ids, batch.group_ids))
    scored = batch.completion_mask.cpu().tolist()
    prompt_of: dict[int, list[int]] = {}
    tokens: list[list[int]] = [[] for _ in range(batch.num_sequences)]
    marks: list[list[bool]] = [[] for _ in range(batch.num_sequences)]
    row_of: dict[int, int] = {}
    for r, (row_ids, row_seqs, row_groups, row_scored) in enumerate(zip(ids, seqs, groups, scored)):
        for token, s, g, is_scored in zip(row_ids, row_seqs, row_groups, row_scored):
            if g < 0:
                continue
            if row_of.setdefault(g, r) != r:
                raise ValueError(f"shared_segments: group {g} spans rows {row_of[g]} and {r}; a group is one row")
            if s < 0:
                prompt_of.setdefault(g, []).append(token)
            else:
                tokens[s].append(token)
                marks[s].append(is_scored)
    prompts = [prompt_of.get(s % b, []) for s in range(batch.num_sequences)]
    return prompts, tokens, marks
