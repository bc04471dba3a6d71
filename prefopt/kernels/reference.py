"""Plain-torch reference of the fused linear → log-prob op: the truth in tests.

    logits = (hidden @ weight.T + bias) / temperature            # (N, V), float32
    logits = softcap · tanh(logits / softcap)                     # if softcap
    logp[i] = log_softmax(logits[i])[labels[i]]                   # 0 where labels[i] == ignore_index
    entropy[i] = −Σ_v p_iv log p_iv,  p_i = softmax(logits[i])
    stats[i]   = (mean_v logits[i, v],  logits[i, labels[i]] = max_v logits[i, v],
                  log Σ_v softmax(logits[i])_v²)                                      # detached

Memory traffic: writes and re-reads the full N×V float32 logits (and their gradient) — the cost the
fused backends avoid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefopt.kernels.params import LinearLogprobsResult, LogitStats, pack_outputs

__all__ = ["linear_logprobs_reference"]


def linear_logprobs_reference(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    ignore_index: int = -100,
    return_entropy: bool = False,
    return_stats: bool = False,
) -> LinearLogprobsResult:
    """Reference `linear_logprobs`: logp [N] (and entropy [N], `LogitStats` if asked), formulas in the module
    docstring.

    hidden [N, D], weight [V, D], labels [N], bias [V] | None. Results are float32 (float64 when the
    inputs are float64, so that gradcheck can run on it); 0 at rows whose label is ignore_index.
    """
    logits = hidden @ weight.T  # (N, V) in the input dtype, like an lm_head
    if bias is not None:
        logits = logits + bias
    logits = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32) / temperature
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    logprobs = torch.log_softmax(logits, dim=-1)  # (N, V) float32
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    logp = logprobs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    logp = torch.where(valid, logp, torch.zeros_like(logp))
    entropy = None
    if return_entropy:
        entropy = -(logprobs.exp() * logprobs).sum(-1)
        entropy = torch.where(valid, entropy, torch.zeros_like(entropy))
    stats = _stats(logits.detach(), logprobs.detach(), safe, valid) if return_stats else None
    return pack_outputs(logp, entropy, stats)


def _stats(logits: Tensor, logprobs: Tensor, safe: Tensor, valid: Tensor) -> LogitStats:
    """Mean logit over the vocabulary, whether the label's logit is the largest, and log Σ_v p_v², per row
    (0 / False if ignored)."""
    target = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    zero = torch.zeros((), dtype=logits.dtype)
    mean = torch.where(valid, logits.mean(-1), zero)
    log_sum_sq = torch.where(valid, torch.logsumexp(2.0 * logprobs, dim=-1), zero)
    return LogitStats(mean, valid & (target >= logits.amax(-1)), log_sum_sq)
