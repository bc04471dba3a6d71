"""The transformers side of `prefopt.online.generation.generate`: each call of a batching plan decoded by the lean
decoder (`prefopt.online.lean_decoder`) or `model.generate`, with the sampler's per-token log-probs when asked.

    samples, logps = hf_generate(model, encoded, config, eos, pad, progress=False)   # [b][k] tokens, log-probs

`config` is a `prefopt.online.generation.GenerationConfig`; a caller's logits processor (NLPO's action mask) sees
each call's `input_ids` without their attention mask, so its calls are by prompt length ("length"), unpadded.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from prefopt.online.generation_batching import left_padded, plan_calls
from prefopt.online.lean_decoder import LeanWeights, decodes_here, lean_generate
from prefopt.online.sampler_logprobs import SampledLogprobs
from prefopt.train.fsdp import is_sharded

__all__ = ["hf_generate", "generate_call", "trim"]


def trim(tokens: list[int], eos: int) -> list[int]:
    """New tokens up to and including the first EOS (the rest is generate's padding)."""
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def generate_call(
    model: Any,
    prompt_ids: Tensor,
    attention_mask: Tensor,
    config: Any,
    eos: int,
    pad: int,
    processor: Any,
    lean: dict[str, LeanWeights] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """One call on left-padded prompts [N, P]: the output [N·K, P + steps] (row j·K + k: sample k of prompt j) of
    the lean decoder or `model.generate` (`config.decoder`), and the sampler's log-probs [N·K, steps] if asked.
    `lean`: where the calls of one `generate` keep the lean decoder's `LeanWeights`, built at its first call."""
    synced = is_sharded(model)  # the same number of forwards on every process: FSDP's collectives need it
    length = prompt_ids.shape[1] + config.max_new_tokens
    common = {"max_new_tokens": config.max_new_tokens, "eos": eos, "pad": pad}
    if decodes_here(config.decoder, model, length, processor=processor is not None, sharded=synced):
        sampling = {"temperature": config.temperature, "top_p": config.top_p, "do_sample": config.do_sample}
        args = {**common, **sampling, "num_samples": config.num_samples, "logprobs": config.logprobs}
        lean = {} if lean is None else lean
        if "weights" not in lean:
            lean["weights"] = LeanWeights(model)
        return lean_generate(model, prompt_ids, attention_mask, **args, weights=lean["weights"])
    recorder = SampledLogprobs(config.temperature, config.top_p, config.do_sample) if config.logprobs else None
    processors = [p for p in (processor, recorder) if p is not None]  # the recorder last: after the mask
    sampling = (
        {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p, "top_k": 0}
        if config.do_sample
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    if recorder is not None:
        sampling.update(recorder.generate_kwargs())  # temperature and top-p applied once, by the recorder
    generated = model.generate(
        input_ids=prompt_ids,
        attention_mask=attention_mask,  # generate takes each row's positions from it (cumsum − 1)
        max_new_tokens=config.max_new_tokens,
        num_return_sequences=config.num_samples,
        eos_token_id=eos,
        pad_token_id=pad,
        use_cache=True,  # the KV cache: each new token attends to cached keys, not the whole prefix
        synced_gpus=synced,  # FSDP: every process steps until all are done (`prefopt.online.fsdp`)
        **sampling,
        **({"logits_processor": processors} if processors else {}),
    )
    return generated, None if recorder is None else recorder.finish(generated, prompt_ids.shape[1])


def hf_generate(
    model: Any,
    encoded: list[list[int]],
    config: Any,
    eos: int,
    pad: int,
    progress: bool,
    logits_processor: Any = None,
) -> tuple[list[list[list[int]]], list[list[list[float]]] | None]:
    """completion tokens [b][k] for every prompt, via the calls of `config.batching` (`plan_calls`) on the lean
    decoder or `model.generate` (`_call`), and their sampler log-probs [b][k] when `config.logprobs` (else None)."""
    device = next(model.parameters()).device
    out: list[list[list[int]]] = [[] for _ in encoded]
    logps: list[list[list[float]]] = [[] for _ in encoded]
    lean: dict[str, LeanWeights] = {}  # the lean decoder's weights, built once for all the calls
    bar = tqdm(total=len(encoded) * config.num_samples, desc="generating", unit="sample", disable=not progress)
    # a caller's logits processor sees input_ids without the mask (NLPO's masking policy): unpadded calls only
    batching = "length" if logits_processor is not None else config.batching
    for chunk in plan_calls([len(ids) for ids in encoded], config.batch_size, batching):
        # left-padded to the chunk's longest prompt (no padding when its prompts have one length)
        prompt_ids, attention_mask, length = left_padded([encoded[i] for i in chunk], pad, device)
        generated, drawn_logps = generate_call(
            model, prompt_ids, attention_mask, config, eos, pad, logits_processor, lean
        )
        new = generated[:, length:].cpu().tolist()  # prompt-major: row j·K + k is sample k of chunk[j]
        new_logps = None if drawn_logps is None else drawn_logps.tolist()
        for j, row in enumerate(chunk):
            out[row] = [trim(new[j * config.num_samples + k], eos) for k in range(config.num_samples)]
            if new_logps is not None:
                logps[row] = [new_logps[j * config.num_samples + k][: len(t)] for k, t in enumerate(out[row])]
        bar.update(len(chunk) * config.num_samples)
    bar.close()
    return out, (logps if config.logprobs else None)
