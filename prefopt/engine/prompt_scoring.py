"""Prompt tokens scored too, for the sequences that ask: `engine(batch, score_prompt=...)`.

Some losses read the log-probability of the whole sequence, prompt included: the official ORPO trainer
(xfactlab/orpo, `--disable_prompt_loss` off) applies its NLL term to every token of the chosen sequence
after the first. The engine normally scores completion tokens only; with `score_prompt` it also scores

    prompt(s) = { t : sequence_ids[r, t] = s, completion_mask[r, t] = 0, sequence_ids[r, t − 1] = s }

for each flagged sequence s (every prompt token but the sequence's first, which has no earlier token), in the
same forward and the same kernel call as the completion tokens, and returns their sums apart:

    prompt_sum[s]   = Σ_{t ∈ prompt(s)} log π(x_t | x_<t)        [S] float32, 0 where s is not flagged
    prompt_count[s] = |prompt(s)|                                 [S] long,    0 where s is not flagged

Every completion statistic (sum, count, tokens, entropy, logit statistics, sequential KL) is the same as
without `score_prompt`. A prefix-shared batch is unshared first (its prompt tokens belong to no sequence).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch
from torch import Tensor

from prefopt.batch import TokenBatch
from prefopt.data.collate import unshare_prompts
from prefopt.errors import BatchError

__all__ = ["ScorePrompt", "prompt_flags", "with_prompt_scored", "split_prompt_tokens"]

# True: every sequence; "chosen": the first block of each group (the chosen completions of a paired batch);
# a bool tensor [S]: the sequences marked True; False: none.
ScorePrompt = bool | Literal["chosen"] | Tensor


def prompt_flags(batch: TokenBatch, score_prompt: ScorePrompt) -> Tensor:
    """[S] bool: which sequences of `batch` get their prompt tokens scored."""
    s = batch.num_sequences
    device = batch.input_ids.device
    if isinstance(score_prompt, Tensor):
        if score_prompt.dtype != torch.bool or tuple(score_prompt.shape) != (s,):
            raise BatchError(
                f"LogProbEngine: score_prompt must be True, 'chosen' or a bool tensor of shape ({s},) (one flag "
                f"per sequence), got a {score_prompt.dtype} tensor of shape {tuple(score_prompt.shape)}"
            )
        return score_prompt.to(device)
    if score_prompt == "chosen":
        if batch.group_size != 2:
            raise BatchError(
                f"LogProbEngine: score_prompt='chosen' needs a paired batch (group_size=2), this one has "
                f"group_size={batch.group_size}; pass a bool tensor of one flag per sequence"
            )
        return torch.arange(s, device=device) < s // 2
    if isinstance(score_prompt, bool):
        return torch.full((s,), score_prompt, dtype=torch.bool, device=device)
    raise BatchError(f"LogProbEngine: score_prompt={score_prompt!r}; use False, True, 'chosen' or a bool tensor")


def with_prompt_scored(batch: TokenBatch, flags: Tensor) -> tuple[TokenBatch, TokenBatch, Tensor]:
    """(`batch` as it runs: unshared if it was prefix-shared; the same with the prompt tokens of the flagged
    sequences added to its completion mask, which the engine scores; those prompt tokens [R, T] bool)."""
    batch = unshare_prompts(batch)
    seq = batch.sequence_ids
    cm = batch.completion_mask.bool()
    flagged = torch.zeros_like(cm)
    real = seq >= 0
    flagged[real] = flags[seq[real]]
    prompt = flagged & ~cm & batch.attention_mask.bool()
    prompt[:, 0] = False
    prompt[:, 1:] &= seq[:, 1:] == seq[:, :-1]  # not a sequence's first token
    return batch, replace(batch, completion_mask=cm | prompt), prompt


def split_prompt_tokens(flat: Any, prompt: Tensor, completion_mask: Tensor) -> tuple[Any, Tensor, Tensor]:
    """Flat results of the extended batch (`TokenLogProbs`) → (the completion tokens' own `TokenLogProbs`, prompt
    log-probs [M], their sequences [M]). `prompt` [R, T] from `with_prompt_scored`, `completion_mask` [R, T] the
    batch's own."""
    is_prompt = prompt[:, 1:][flat.select]  # [N] of the extended batch
    keep = ~is_prompt

    def cut(values: Tensor | None) -> Tensor | None:
        return None if values is None else values[keep]

    stats = flat.stats
    if stats is not None:
        stats = type(stats)(*(cut(v) for v in stats))
    completion = replace(
        flat,
        logp=flat.logp[keep],
        entropy=cut(flat.entropy),
        select=completion_mask[:, 1:].bool(),
        seq=flat.seq[keep],
        stats=stats,
        kl=cut(flat.kl),
    )
    return completion, flat.logp[is_prompt], flat.seq[is_prompt]
