"""The sampler's own log-prob of every token it samples, recorded while it samples (`GenerationConfig.logprobs`).

Importance-sampling correction (`prefopt.online.importance`) compares the learner's log-probs of a rollout with
those of the distribution each token was actually drawn from: the sampler's logits, in its own dtype and
kernels, after its logits processors, temperature and top-p. Neither backend keeps the whole [steps, N, V]
of scores for this:

- HF `generate`: `SampledLogprobs`, a logits processor that applies the temperature and top-p warpers itself
  (transformers' own `TemperatureLogitsWarper`, `TopPLogitsWarper`, in generate's order: after any other
  processor, e.g. NLPO's mask) and keeps the log-softmax of the last step only ([N, V]); the token drawn from it
  is read at the next step's call (or from the output, for the last step), so memory stays that of one step.
  `generate` is then called with temperature 1 and top-p 1 so the warpers run once; the draws are the same.
  (Warpers a model's own generation_config adds beyond these, e.g. min_p or typical_p, run after the recorder
  and are not in the recorded log-probs; prefopt sets top_k = 0 itself.)
- vLLM: the `logprobs` of the sampled tokens that vLLM returns when asked (`SamplingParams(logprobs=0)`;
  `vllm_logprobs`). Which distribution they are of is vLLM's `logprobs_mode` (processed, i.e. after
  temperature and top-p, with "processed_logprobs"; TRL asks for that mode). A stop token vLLM does not
  return gets NaN: no sampler log-prob, so no correction (weight 1) there.

Per row the log-probs are aligned with the completion tokens (EOS included) and laid out [S, T] like
`Rollout.completion_mask` (`Rollout.sampler_logps`, 0 outside the completion).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["SampledLogprobs", "vllm_logprobs"]


class SampledLogprobs:
    """A transformers logits processor recording log π_sampler of each sampled token (module docstring).

    Args:
        temperature, top_p: the sampling settings; applied here (generate must get temperature=1, top_p=1).
        do_sample: False: greedy decoding, no warpers (the log-probs are those of the softmax of the logits).
    """

    def __init__(self, temperature: float, top_p: float, do_sample: bool = True) -> None:
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper  # heavy: loaded on first use

        self.warpers: list[Any] = []
        if do_sample and temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if do_sample and top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
        self.last: Tensor | None = None  # log-softmax [N, V] of the last step's scores
        self.steps: list[Tensor] = []  # [N] log-probs of the tokens drawn at each earlier step

    def generate_kwargs(self) -> dict[str, Any]:
        """generate's sampling arguments with the warpers left to this processor."""
        return {"temperature": 1.0, "top_p": 1.0} if self.warpers else {}

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        if self.last is not None:  # the token drawn at the previous step is the last input
            self.steps.append(self.last.gather(1, input_ids[:, -1:]).squeeze(1))
        self.last = torch.log_softmax(scores, dim=-1)  # the sampler's dtype
        return scores

    def finish(self, generated: Tensor, prompt_length: int) -> Tensor:
        """[N, steps] float32 (CPU) log-probs of the generated tokens `generated[:, prompt_length:]`; resets."""
        steps = self.steps
        if self.last is not None:
            index = prompt_length + len(steps)
            steps = [*steps, self.last.gather(1, generated[:, index : index + 1]).squeeze(1)]
        self.last, self.steps = None, []
        if not steps:
            return torch.zeros((generated.shape[0], 0))
        return torch.stack(steps, dim=1).float().cpu()


def vllm_logprobs(completion: Any, tokens: list[int]) -> list[float]:
    """The log-probs vLLM returned for the sampled `tokens` of one completion (`completion.logprobs`: per
    position a mapping token id → an object with `.logprob`, or a float); NaN where it gave none."""
    given = list(getattr(completion, "logprobs", None) or [])
    out = []
    for position, token in enumerate(tokens):
        entry = given[position].get(token) if position < len(given) and given[position] else None
        value = getattr(entry, "logprob", entry)
        out.append(float("nan") if value is None else float(value))
    return out
