"""Sampling from a causal LM, reproducible from a `torch.Generator`, and the exact KL of the samples.

    samples = sample(model, tokenizer, prompts, generator=torch.Generator().manual_seed(0))
    kl = sequence_kl(policy, reference, samples.input_ids, samples.attention_mask, samples.completion_mask)

`sample` draws one completion per prompt. Prompts are grouped by token length so each forward pass is
unpadded (no attention-mask subtleties, and a row's samples do not depend on which other prompts share
its batch length); a KV cache makes each new token one forward of a single position. A row stops at
EOS; rows that reach `max_new_tokens` without EOS are kept as they are (`finished[i]` False). It decodes
completions the word-level way of the synthetic task (" " + words); `sample_texts` decodes them with
`decode_completion`, the text the completion tokens add to the prompt, for any Hugging Face tokenizer:

    completion = decode(prompt_ids + completion_ids)[len(decode(prompt_ids)):]

which keeps the leading space of SentencePiece pieces ("▁word") that decoding the completion alone drops,
and is exact for byte-level BPE.

`sequence_kl` is the exact per-sequence KL(π ‖ π_ref) summed over the completion positions of sampled
sequences, computed over the whole vocabulary at each position:

    KL_seq(y) = Σ_{t ∈ completion} KL(π(·|s_t) ‖ π_ref(·|s_t)),   s_t = (x, y_<t)

By the chain rule its expectation over y ~ π(·|x) is the sequence-level KL(π(·|x) ‖ π_ref(·|x)) of the
KL-regularised RLHF objective (DPO paper, Rafailov et al. 2023, Eq. 3), with far lower variance than the
sampled log-ratio log π(y_t|s_t) − log π_ref(y_t|s_t).

The returned tensors use the `TokenBatch` alignment: `completion_mask[i, t]` is True where token t of
row i is a completion token (EOS included) whose log-prob is log π(input_ids[i, t] | tokens < t).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from prefopt.batch import TokenBatch
from prefopt.hf_compat import cache_kwarg, output_cache

__all__ = ["Samples", "decode_completion", "sample", "sample_texts", "sequence_kl"]


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


def _sample_group(
    model: Any, prompt_ids: Tensor, *, eos_id: int, max_new_tokens: int, temperature: float, generator: torch.Generator
) -> Tensor:
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
        out = model(
            input_ids=token[:, None].to(prompt_ids.device),
            position_ids=position,
            **cache_kwarg(model, past),
            use_cache=True,
        )
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
        tokenizer: its tokenizer (its call adds the BOS it wants; `eos_token_id` ends a completion,
            `pad_token_id` pads); completions are decoded the synthetic task's way (see `sample_texts`).
        prompts: B prompt strings; repeat a prompt to draw several completions for it.
        generator: the only source of randomness (same generator state → same samples).
        max_new_tokens: cap on completion tokens (EOS included).
        temperature: > 0; logits are divided by it.
        batch_size: prompts per forward pass (memory, not results, apart from grouping order).
        progress: show a tqdm bar over prompts.
    Returns:
        `Samples` (CPU tensors) with B rows in the order of `prompts`.
    """
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
            chunk = rows[start : start + batch_size]
            prompt_ids = torch.tensor([encoded[i] for i in chunk], dtype=torch.long, device=device)
            new = _sample_group(
                model,
                prompt_ids,
                eos_id=eos,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                generator=generator,
            )
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
        completion_mask[i, len(p) : len(p) + len(c)] = True
    finished = torch.tensor([c[-1:] == [eos] for c in generated], dtype=torch.bool)
    texts = [" " + tokenizer.decode([t for t in c if t != eos], skip_special_tokens=False) for c in generated]
    return Samples(list(prompts), texts, input_ids, attention_mask, completion_mask, finished)


def decode_completion(tokenizer: Any, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> str:
    """The text `completion_ids` add after `prompt_ids` (special tokens, EOS included, skipped)."""
    prompt_text = tokenizer.decode(list(prompt_ids), skip_special_tokens=True)
    full_text = tokenizer.decode(list(prompt_ids) + list(completion_ids), skip_special_tokens=True)
    if full_text.startswith(prompt_text):
        return full_text[len(prompt_text) :]
    return tokenizer.decode(list(completion_ids), skip_special_tokens=True)  # a merge crossed the boundary


@torch.no_grad()
def sample_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    generator: torch.Generator,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    batch_size: int = 256,
) -> Any:
    """`sample` with completions decoded by `decode_completion` (any tokenizer).

    Args:
        model: a causal LM (eval mode); tokenizer: its tokenizer, with `eos_token_id` and `pad_token_id` set.
        prompts: B prompt strings, tokenised with the tokenizer's own special-token convention.
        generator, max_new_tokens, temperature, batch_size: as in `sample`.
    Returns:
        `Samples` (prompts, completions, input_ids [B, T], attention_mask, completion_mask, finished).
    """
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError(
            f"sample_texts: the tokenizer needs eos_token_id and pad_token_id (got "
            f"{tokenizer.eos_token_id}, {tokenizer.pad_token_id}); e.g. set tokenizer.pad_token = "
            "tokenizer.eos_token"
        )
    samples = sample(
        model,
        tokenizer,
        prompts,
        generator=generator,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        batch_size=batch_size,
    )
    completions = []
    for ids, mask in zip(samples.input_ids.tolist(), samples.completion_mask.tolist()):
        start = mask.index(True) if True in mask else len(ids)
        length = sum(mask)
        completions.append(decode_completion(tokenizer, ids[:start], ids[start : start + length]))
    samples.completions = completions
    return samples


@torch.no_grad()
def sequence_kl(
    policy: Any,
    reference: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    batch_size: int = 64,
) -> Tensor:
    """Exact per-sequence KL(π ‖ π_ref) summed over completion positions → float32 [B] (on the CPU).

    Args:
        policy, reference: causal LMs over the same vocabulary (called as `model(input_ids=…,
            attention_mask=…).logits`).
        input_ids: [B, T] prompt + completion tokens, right-padded.
        attention_mask: [B, T], 1 on real tokens.
        completion_mask: [B, T] bool, True where token t is a completion token; the distribution compared
            there is the one that predicts it, from the logits at t − 1 (`TokenBatch` alignment).
        batch_size: rows per forward pass.
    """
    if not (input_ids.shape == attention_mask.shape == completion_mask.shape):
        raise ValueError(
            f"sequence_kl: input_ids {tuple(input_ids.shape)}, attention_mask "
            f"{tuple(attention_mask.shape)} and completion_mask {tuple(completion_mask.shape)} "
            "must have the same [B, T] shape"
        )
    if bool(completion_mask[:, 0].any()):
        raise ValueError(
            "sequence_kl: completion_mask[:, 0] is True, but the first token has no preceding "
            "position to predict it; a sequence must start with at least one prompt token (BOS)"
        )
    p_device, q_device = next(policy.parameters()).device, next(reference.parameters()).device
    # rows by where their last real token is, so that each batch is cut to its own longest row (less padding)
    ends = (attention_mask.long() * torch.arange(1, input_ids.shape[1] + 1)).amax(1)
    order = ends.argsort(stable=True)
    out = torch.empty(input_ids.shape[0])
    for start in range(0, input_ids.shape[0], batch_size):
        rows = order[start : start + batch_size]
        end = max(int(ends[rows].max()), 2)
        ids, mask = input_ids[rows, :end], attention_mask[rows, :end]
        p_in = {"input_ids": ids.to(p_device), "attention_mask": mask.to(p_device)}
        q_in = {"input_ids": ids.to(q_device), "attention_mask": mask.to(q_device)}
        logp = torch.log_softmax(policy(**p_in).logits[:, :-1].float(), -1)  # (b, T-1, V)
        logq = torch.log_softmax(reference(**q_in).logits[:, :-1].float(), -1).to(p_device)
        per_position = (logp.exp() * (logp - logq)).sum(-1)  # (b, T-1)
        out[rows] = (per_position * completion_mask[rows, 1:end].to(p_device).float()).sum(-1).cpu()
    return out
