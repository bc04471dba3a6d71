"""The public op `linear_logprobs` and the choice of backend.

    logits  = (hidden @ weight.T + bias) / temperature              # (N, V), never materialised by
    logits  = softcap · tanh(logits / softcap)        (if softcap)  #  the chunked / triton backends
    logp[i] = logits[i, labels[i]] − logsumexp(logits[i])           # float32, 0 where ignored
    entropy[i] = logsumexp(logits[i]) − Σ_v softmax(logits[i])_v · logits[i, v]
    stats[i]   = LogitStats(mean_v logits[i, v],  logits[i, labels[i]] = max_v logits[i, v],
                            log Σ_v softmax(logits[i])_v²)                                   # detached

Backends: "reference" (plain torch, the truth in tests), "chunked" (torch autograd.Function over
row blocks × vocab tiles, any device), "triton" (CUDA kernels with an online log-sum-exp over vocab
tiles). "auto" picks triton on CUDA when Triton imports, else chunked. Triton is imported only here,
on first use, so `import prefopt` works without it.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from prefopt.kernels.chunked import linear_logprobs_chunked
from prefopt.kernels.params import (
    BACKENDS,
    LinearLogprobsParams,
    LinearLogprobsResult,
    LogitStats,
    check_inputs,
    pack_outputs,
)
from prefopt.kernels.reference import linear_logprobs_reference

__all__ = ["linear_logprobs", "resolve_backend", "triton_available"]


@functools.cache
def triton_available() -> bool:
    """True when the Triton backend module imports (Triton installed and usable)."""
    try:
        import prefopt.kernels.triton_function  # noqa: F401  # heavy: the optional Triton extra
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend for `backend` on `device`: "auto" → "triton" on CUDA with Triton, else "chunked"."""
    if backend not in BACKENDS:
        raise ValueError(f"linear_logprobs: unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "chunked"
    if backend == "triton" and not triton_available():
        raise RuntimeError("linear_logprobs: backend='triton' needs the triton package; pip install 'prefopt[triton]'")
    return backend


def linear_logprobs(
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
    backend: str = "auto",
    chunk_size: int | None = None,
) -> LinearLogprobsResult:
    """Per-row log-probability of `labels` under softmax(hidden @ weight.T + bias), without the N×V logits.

    Args:
        hidden: [N, D] last hidden states (any float dtype; the matmul runs in it, the softmax in float32).
        weight: [V, D] lm_head weight, same dtype/device as hidden.
        labels: [N] integer targets in [0, V), or `ignore_index` for rows to skip.
        bias: optional [V] lm_head bias.
        temperature, softcap, ignore_index, return_entropy, return_stats, backend, chunk_size: see
            `LinearLogprobsParams`.

    Returns:
        logp [N] float32 (0 at ignored rows), differentiable in hidden, weight and bias; with
        return_entropy, also entropy [N] float32 (0 at ignored rows), differentiable as well; with
        return_stats, last, a detached `LogitStats` (mean logit [N], label = argmax [N] bool, log Σ_v p_v² [N])
        read from the logits tiles the kernel computes anyway: `logp, stats = linear_logprobs(..., return_stats=True)`.
    """
    params = LinearLogprobsParams(
        temperature=float(temperature),
        softcap=None if softcap is None else float(softcap),
        ignore_index=ignore_index,
        return_entropy=return_entropy,
        return_stats=return_stats,
        backend=backend,
        chunk_size=chunk_size,
    )
    check_inputs(hidden, weight, labels, bias, ignore_index)
    labels = labels.long()
    chosen = resolve_backend(params.backend, hidden.device)
    if chosen == "reference" or hidden.shape[0] == 0:  # no rows: nothing to tile or launch
        return linear_logprobs_reference(
            hidden,
            weight,
            labels,
            bias=bias,
            temperature=params.temperature,
            softcap=params.softcap,
            ignore_index=ignore_index,
            return_entropy=return_entropy,
            return_stats=return_stats,
        )
    if chosen == "chunked":
        logp, entropy, stats = linear_logprobs_chunked(hidden, weight, labels, bias, params)
    else:
        from prefopt.kernels.triton_function import linear_logprobs_triton  # heavy: loaded on first use

        logp, entropy, stats = linear_logprobs_triton(hidden, weight, labels, bias, params)
    return pack_outputs(
        logp,
        entropy if return_entropy else None,
        LogitStats(stats[0], stats[1].bool(), stats[2]) if return_stats else None,  # [3, N]: mean, correct, log Σp²
    )
