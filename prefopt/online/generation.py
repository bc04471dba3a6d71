"""Sampling completions from a policy for the online algorithms: K samples per prompt, batched.

    rollout = generate(policy, tokenizer, prompts, GenerationConfig(num_samples=4, max_new_tokens=64), seed=0)
    rollout.completions[k * B + b]      # sample k of prompt b (group-major, like every prefopt batch)
    rollout.token_batch()               # the samples as a TokenBatch for the log-prob engine

Decoding (temperature, top-p, max new tokens, stop at EOS, K samples per prompt) is transformers' `generate`, or
on Llama-family models the lean decoder that draws the same tokens with fewer operations (`GenerationConfig.decoder`,
`prefopt.online.lean_decoder`). Which prompts share a call is `GenerationConfig.batching`
(`prefopt.online.generation_batching`: by token length, or left-padded with positions from the attention mask).
Sampling is reproducible: the draws come from torch's global generator, forked and seeded for the call, so the
caller's random state is left untouched.

vLLM is used instead when `backend="vllm"` (or `"auto"` with vLLM installed, CUDA available and the model given
as a path or Hub name); a policy being trained samples through `prefopt.online.samplers` (this path, or a vLLM
engine its weights are pushed to after each update).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.batch import TokenBatch
from prefopt.data.tokenize import PromptCompletionEncoder, TokenizeConfig
from prefopt.online.generation_batching import BATCHING
from prefopt.online.hf_generation import hf_generate, trim
from prefopt.online.lean_decoder import DECODERS
from prefopt.online.sampler_logprobs import vllm_logprobs
from prefopt.sampling import decode_completion

__all__ = ["GenerationConfig", "Rollout", "generate", "vllm_available", "encode_prompts", "special_ids", "assemble"]

BACKENDS = ("auto", "hf", "vllm")


@dataclass(frozen=True)
class GenerationConfig:
    """How completions are sampled.

    Attributes:
        max_new_tokens: cap on completion tokens (EOS included); a row that reaches it unfinished is kept.
        temperature: > 0; logits are divided by it (ignored when do_sample is False).
        top_p: nucleus sampling mass in (0, 1]; 1 keeps the whole distribution.
        num_samples: K completions per prompt.
        batch_size: prompts per `generate` call (memory, not results).
        do_sample: False = greedy decoding (ReMax's baseline); then num_samples must be 1.
        backend: "hf" (transformers `generate`), "vllm", or "auto" (vLLM when it can be used, see the
            module docstring).
        logprobs: record the sampler's log-prob of every sampled token (`Rollout.sampler_logps`,
            `prefopt.online.sampler_logprobs`), for importance-sampling correction; the samples are the same.
        batching: which prompts share a `generate` call: "length" (one call per prompt token length, unpadded),
            "padded" (left-padded chunks of `batch_size`) or "auto" (padded where padding is a small share of
            the prompt block); `prefopt.online.generation_batching`. HF path only; with a `logits_processor`
            (which sees the prompts without their attention mask) always "length".
        decoder: HF path: "auto" (`prefopt.online.lean_decoder` where it decodes the model as `generate` does, else
            `generate`), "hf" (`generate` always) or "lean" (the lean decoder, or an error naming why it cannot).
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    num_samples: int = 1
    batch_size: int = 64
    do_sample: bool = True
    backend: str = "auto"
    logprobs: bool = False
    batching: str = "length"
    decoder: str = "auto"

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "num_samples", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GenerationConfig.{name}={value!r} must be an integer ≥ 1")
        if not self.temperature > 0:
            raise ValueError(f"GenerationConfig.temperature={self.temperature!r} must be > 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationConfig.top_p={self.top_p!r} must be in (0, 1]")
        if not self.do_sample and self.num_samples != 1:
            raise ValueError(
                f"GenerationConfig: greedy decoding (do_sample=False) gives one completion per prompt; "
                f"num_samples={self.num_samples} must be 1"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"GenerationConfig.backend={self.backend!r}: use one of {BACKENDS}")
        if self.batching not in BATCHING:
            raise ValueError(f"GenerationConfig.batching={self.batching!r}: use one of {BATCHING}")
        if self.decoder not in DECODERS:
            raise ValueError(f"GenerationConfig.decoder={self.decoder!r}: use one of {DECODERS}")


@dataclass
class Rollout:
    """K sampled completions of each of B prompts, token layout included (CPU tensors, right-padded).

    Rows are group-major: row s = k·B + b holds sample k of prompt b (`prefopt.rl.grouped_to_sequences`
    maps [B, K] rewards to this order).

    Attributes:
        prompts: the B prompts as given (strings or conversations).
        completions: S = K·B completion texts (EOS and padding removed).
        input_ids: [S, T] long, the prompt's tokens + completion (+ EOS), then padding.
        attention_mask: [S, T] long, 1 on real tokens.
        completion_mask: [S, T] bool, True at completion tokens (EOS included): `TokenBatch` alignment.
        finished: [S] bool, True where the completion ended with EOS.
        num_samples: K.
        sampler_logps: [S, T] float32, the sampling engine's log-prob of each completion token (at
            completion_mask; NaN where it reported none), or None (the `generate` path: the learner's own).
    """

    prompts: list[Any]
    completions: list[str]
    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    finished: Tensor
    num_samples: int
    sampler_logps: Tensor | None = None

    @property
    def num_prompts(self) -> int:
        """B."""
        return len(self.prompts)

    def row_prompts(self) -> list[Any]:
        """The S prompts aligned with `completions` (prompt of row s is prompts[s % B])."""
        return list(self.prompts) * self.num_samples

    def lengths(self) -> Tensor:
        """[S] long, completion tokens per row (EOS included)."""
        return self.completion_mask.sum(1)

    def token_batch(self, rows: Tensor | Sequence[int] | None = None) -> TokenBatch:
        """The rows (all, or the indices `rows`, e.g. a PPO minibatch) as a padded `TokenBatch`, one
        sequence per row (group_size 1), trimmed to the longest selected row."""
        input_ids, attention, completion = self.input_ids, self.attention_mask, self.completion_mask
        if rows is not None:
            index = torch.as_tensor(rows, dtype=torch.long)
            input_ids, attention, completion = input_ids[index], attention[index], completion[index]
        width = max(int(attention.sum(1).max()), 1) if attention.numel() else 1
        return TokenBatch.from_rows(input_ids[:, :width], attention[:, :width], completion[:, :width])


def vllm_available() -> bool:
    """True when vLLM is installed and a CUDA device is visible (vLLM's own requirement)."""
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def special_ids(tokenizer: Any) -> tuple[int, int]:
    """(eos, pad) token ids of `tokenizer` (pad = eos when it has none)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None:
        raise ValueError(
            "generate: the tokenizer has no eos_token_id; completions could never end. Set "
            "tokenizer.eos_token (and check the model's generation_config.eos_token_id)"
        )
    return int(eos), int(pad if pad is not None else eos)


def encode_prompts(tokenizer: Any, prompts: Sequence[Any]) -> list[list[int]]:
    """Prompt token ids by the data layer's rule (`prefopt.data.tokenize`): a conversation is rendered with the
    chat template and its generation prompt, and BOS is added once where the tokenizer adds one, so a template
    that already writes BOS is not given a second (what `tokenizer(text)` would do)."""
    if isinstance(prompts, str) or not all(isinstance(p, (str, list)) for p in prompts):
        raise ValueError(
            "generate: prompts must be a list of prompts, each a string (e.g. rendered with "
            "tokenizer.apply_chat_template(..., tokenize=False, add_generation_prompt=True)) or a "
            "conversation (a list of {'role', 'content'} messages)"
        )
    encoder = PromptCompletionEncoder(tokenizer, TokenizeConfig(append_eos=False))
    encoded = [row["prompt_ids"] for row in encoder.encode_batch(list(prompts), [[] for _ in prompts])]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(
            f"generate: prompt(s) at index {empty[:5]} tokenise to no tokens; give each prompt some "
            "text or a tokenizer that adds BOS"
        )
    return encoded


def _vllm_generate(
    model: str, encoded: list[list[int]], config: GenerationConfig, eos: int, seed: int
) -> tuple[list[list[list[int]]], list[list[list[float]]] | None]:
    """completion tokens [b][k] from vLLM (`model`: a path or Hub name vLLM loads itself), and their sampler
    log-probs [b][k] when `config.logprobs` (`prefopt.online.sampler_logprobs.vllm_logprobs`; else None)."""
    from vllm import LLM, SamplingParams  # heavy: optional, `pip install prefopt[vllm]`

    params = SamplingParams(
        n=config.num_samples,
        max_tokens=config.max_new_tokens,
        seed=seed,
        stop_token_ids=[eos],
        temperature=config.temperature if config.do_sample else 0.0,
        top_p=config.top_p if config.do_sample else 1.0,
        logprobs=0 if config.logprobs else None,  # the sampled token's log-prob only
    )
    llm = LLM(model=model, seed=seed)
    results = llm.generate([{"prompt_token_ids": ids} for ids in encoded], params)
    out, logps = [], []
    for result in results:
        samples, sample_logps = [], []
        for completion in result.outputs:  # vLLM drops the stop token; put EOS back where it stopped
            tokens = list(completion.token_ids)
            stopped = completion.finish_reason == "stop" and (not tokens or tokens[-1] != eos)
            samples.append(trim(tokens + [eos] if stopped else tokens, eos))
            sample_logps.append(vllm_logprobs(completion, samples[-1]))
        out.append(samples)
        logps.append(sample_logps)
    return out, (logps if config.logprobs else None)


def _decode(tokenizer: Any, prompt_ids: list[int], completion_ids: list[int]) -> str:
    return decode_completion(tokenizer, prompt_ids, completion_ids)


def _layout(
    encoded: list[list[int]], samples: list[list[list[int]]], num_samples: int, eos: int, pad: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[tuple[int, int]]]:
    """Right-padded group-major tensors of the rollout and the (prompt, sample) of each row."""
    order = [(b, k) for k in range(num_samples) for b in range(len(encoded))]  # row s = k·B + b
    width = max(len(encoded[b]) + len(samples[b][k]) for b, k in order)
    input_ids = torch.full((len(order), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(order), width), dtype=torch.long)
    completion_mask = torch.zeros((len(order), width), dtype=torch.bool)
    for s, (b, k) in enumerate(order):
        prompt, completion = encoded[b], samples[b][k]
        end = len(prompt) + len(completion)
        input_ids[s, :end] = torch.tensor(prompt + completion, dtype=torch.long)
        attention_mask[s, :end] = 1
        completion_mask[s, len(prompt) : end] = True
    finished = torch.tensor([samples[b][k][-1:] == [eos] for b, k in order], dtype=torch.bool)
    return input_ids, attention_mask, completion_mask, finished, order


def _use_vllm(model: Any, config: GenerationConfig) -> bool:
    if config.backend == "hf":
        return False
    if config.backend == "vllm":
        if not vllm_available():
            raise ValueError(
                "generate: backend='vllm' needs vLLM installed (`pip install vllm`) and a CUDA device; "
                "use backend='hf' or 'auto'"
            )
        if not isinstance(model, (str, os.PathLike)):
            raise ValueError(
                "generate: backend='vllm' loads the model itself: pass a path or Hub name, not an "
                "in-memory model (a policy being trained samples with backend='hf')"
            )
        return True
    return isinstance(model, (str, os.PathLike)) and vllm_available()


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    config: GenerationConfig | None = None,
    *,
    seed: int = 0,
    progress: bool = False,
    logits_processor: Any = None,
) -> Rollout:
    """Sample `config.num_samples` completions of every prompt (see the module docstring).

    Args:
        model: a causal LM (any device; put in eval mode for the call and restored), or a path / Hub name
            (loaded with transformers, or by vLLM when that backend is used).
        tokenizer: its tokenizer (pad = eos when it has no pad token).
        prompts: B prompts: strings, or conversations (lists of messages, rendered with the chat template and
            its generation prompt), tokenised exactly as the data layer tokenises training prompts.
        config: sampling settings (default `GenerationConfig()`).
        seed: the draws' seed (same seed, model and prompts → same samples on the same device).
        progress: a tqdm bar over samples.
        logits_processor: a transformers logits processor `(input_ids, scores) -> scores` applied before
            temperature and top-p (NLPO's action mask, `prefopt.online.action_mask`); transformers path only.
    Returns:
        `Rollout` with S = K·B rows, group-major.
    """
    config = config or GenerationConfig()
    eos, pad = special_ids(tokenizer)
    encoded = encode_prompts(tokenizer, prompts)
    if not encoded:
        raise ValueError("generate: no prompts given")
    if logits_processor is not None and _use_vllm(model, config):
        raise ValueError("generate: a logits_processor needs backend='hf' (vLLM takes no transformers processor)")
    if _use_vllm(model, config):
        samples, logps = _vllm_generate(str(model), encoded, config, eos, seed)
    else:
        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoModelForCausalLM  # heavy: loaded on first use

            model = AutoModelForCausalLM.from_pretrained(str(model))
        was_training = model.training
        device = next(model.parameters()).device
        devices = [device] if device.type == "cuda" else []
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                samples, logps = hf_generate(model, encoded, config, eos, pad, progress, logits_processor)
        finally:
            model.train(was_training)
    return assemble(tokenizer, prompts, encoded, samples, config.num_samples, logps)


def assemble(
    tokenizer: Any,
    prompts: Sequence[Any],
    encoded: list[list[int]],
    samples: list[list[list[int]]],
    num_samples: int,
    logps: list[list[list[float]]] | None = None,
) -> Rollout:
    """The `Rollout` of prompt tokens `encoded` [b] and completion tokens `samples` [b][k] (EOS included where a
    sample stopped), with the sampler's per-token log-probs `logps` [b][k] (one per completion token) if given."""
    eos, pad = special_ids(tokenizer)
    input_ids, attention_mask, completion_mask, finished, order = _layout(encoded, samples, num_samples, eos, pad)
    completions = [_decode(tokenizer, encoded[b], [t for t in samples[b][k] if t != eos]) for b, k in order]
    sampler_logps = None
    if logps is not None:
        sampler_logps = torch.zeros(input_ids.shape, dtype=torch.float32)
        for s, (b, k) in enumerate(order):
            start = len(encoded[b])
            sampler_logps[s, start : start + len(samples[b][k])] = torch.tensor(logps[b][k], dtype=torch.float32)
    rollout = Rollout(list(prompts), completions, input_ids, attention_mask, completion_mask, finished, num_samples)
    rollout.sampler_logps = sampler_logps
    return rollout
