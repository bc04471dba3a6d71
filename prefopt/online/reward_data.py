"""Reward-model data: preference rows → batches of scored sequences, and the scores → the loss's inputs.

A reward model r_φ(x, y) reads one prompt + completion sequence and returns a scalar. Training batches
come from the data layer unchanged (`load_preferences` → `tokenize_preferences` → `collate_preferences`):
a batch of B rows with K completions each is a group-major `TokenBatch` of S = K·B padded sequences,

    paired   K = 2   rows 0..B−1 chosen, B..2B−1 rejected    → chosen_rewards [B], rejected_rewards [B]
    ranked   K ≥ 2   block k holds every row's k-th best     → rewards [B, K] (best first)

and one forward of the sequence-classification model over the S rows gives the S scores. Scoring new
completions (`LearnedReward`, evaluation) goes through `encode_completions`, which uses the same
`PromptCompletionEncoder` and `TokenizeConfig` as training, so a completion is scored on exactly the
tokens it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from prefopt.batch import TokenBatch
from prefopt.data.collate import collate_preferences
from prefopt.data.tokenize import PromptCompletionEncoder

__all__ = ["RM_KINDS", "encode_completions", "sequence_scores", "loss_arguments", "reward_batches", "pad_token_id"]

RM_KINDS = ("paired", "ranked")  # data kinds a reward-model loss (scores="rewards") consumes


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, or its EOS id when it has no pad token (GPT-2 style)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad_token nor an eos_token; set tokenizer.pad_token")
    return int(pad)


def encode_completions(
    tokenizer: Any, tokenize_config: Any, prompts: Sequence[str], completions: Sequence[str]
) -> TokenBatch:
    """B (prompt, completion) strings → a padded `TokenBatch` of B sequences (group_size 1).

    Tokenised by `prefopt.data.PromptCompletionEncoder` under `tokenize_config` (the boundary rule, BOS,
    EOS and truncation of training), then collated by `prefopt.data.collate_preferences`.

    Args:
        prompts, completions: B strings each; row b scores completions[b] as an answer to prompts[b].
    Returns:
        TokenBatch with input_ids / attention_mask [B, T] (right-padded), num_sequences = B.
    """
    if isinstance(prompts, str) or isinstance(completions, str):
        raise TypeError("prompts and completions must be sequences of strings, not one string")
    if len(prompts) != len(completions):
        raise ValueError(
            f"got {len(prompts)} prompts but {len(completions)} completions; row b scores "
            "completions[b] for prompts[b], so pass one prompt per completion"
        )
    if not prompts:
        raise ValueError("got no (prompt, completion) rows to score")
    encoder = PromptCompletionEncoder(tokenizer, tokenize_config)
    rows = encoder.encode_batch(list(prompts), [[c] for c in completions])
    return collate_preferences(rows, pad_token_id=pad_token_id(tokenizer))


def sequence_scores(model: Any, batch: TokenBatch) -> Tensor:
    """One forward of a sequence-classification model (num_labels = 1) over a padded batch.

    The model's own pooling reads the score head at each row's last non-padding token (transformers'
    `*ForSequenceClassification`: the right-most token that is not `config.pad_token_id`).

    Args:
        model: a `*ForSequenceClassification` with num_labels = 1.
        batch: a padded (not packed) `TokenBatch` of S sequences, one per row, on the model's device.
    Returns:
        scores [S] float32 (differentiable when grad is enabled).
    """
    if batch.packed:
        raise ValueError("reward models score padded batches (one sequence per row); collate with packed=False")
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # (S, 1)
    if logits.dim() != 2 or logits.shape[1] != 1:
        raise ValueError(
            f"the reward model returned logits of shape {tuple(logits.shape)}; a reward model has "
            "num_labels=1 (AutoModelForSequenceClassification.from_pretrained(path, num_labels=1))"
        )
    return logits[:, 0].float()


def loss_arguments(kind: str, scores: Tensor, batch: TokenBatch) -> dict[str, Tensor]:
    """The keyword inputs of a reward-model loss from the S = K·B scores of a group-major batch.

    paired: chosen_rewards = scores[:B], rejected_rewards = scores[B:] (+ `margin` [B] when the data has
    a margin column, for `bradley_terry`'s −log σ(r_w − r_l − m)); ranked: rewards [B, K] with
    rewards[b, k] = scores[k·B + b], best first.
    """
    groups, k = batch.num_groups, batch.group_size
    if kind == "paired":
        if k != 2:
            raise ValueError(f"paired reward-model batches have 2 sequences per row, got group_size={k}")
        out = {"chosen_rewards": scores[:groups], "rejected_rewards": scores[groups:]}
        if "margin" in batch.extras:
            out["margin"] = batch.extras["margin"].to(scores.device)
        return out
    if kind == "ranked":
        return {"rewards": scores.view(k, groups).T}  # (B, K)
    raise ValueError(f"reward models train on {RM_KINDS} data, not {kind!r}")


def reward_batches(
    rows: Sequence[dict[str, Any]], batch_size: int, *, pad: int, generator: torch.Generator | None = None
) -> list[TokenBatch]:
    """Split tokenised rows (`tokenize_preferences(...).to_list()`) into collated batches of ≤ `batch_size`.

    One pass over the rows (an epoch). Rows are shuffled by `generator` (None: dataset order). Rows with
    different numbers of completions K (ranked data may mix them) never share a batch: rows are bucketed by
    K, cut into batches, and the batches shuffled, so every batch has one K as `collate_preferences` requires.
    """
    count = len(rows)
    order = torch.randperm(count, generator=generator).tolist() if generator is not None else list(range(count))
    ks = [len(r["completion_ids"]) for r in rows]
    buckets: dict[int, list[int]] = {}
    for i in order:
        buckets.setdefault(ks[i], []).append(i)
    chunks = [idx[j : j + batch_size] for _, idx in sorted(buckets.items()) for j in range(0, len(idx), batch_size)]
    if generator is not None and len(buckets) > 1:
        chunks = [chunks[j] for j in torch.randperm(len(chunks), generator=generator).tolist()]
    return [collate_preferences([rows[i] for i in chunk], pad_token_id=pad) for chunk in chunks]
