"""Fused linear → log-prob kernels: `linear_logprobs` with reference / chunked / triton backends.

    from prefopt.kernels import linear_logprobs
    logp = linear_logprobs(hidden, lm_head.weight, labels)          # [N] float32, never builds N×V logits
    logp, stats = linear_logprobs(hidden, lm_head.weight, labels, return_stats=True)   # + LogitStats
    result = linear_logprobs_with_grad(hidden, W, labels, seq, S, groups, grad_fn)  # + dH, dW of a separable loss
    kl = linear_sequential_kl(hidden, W, ref_hidden, W_ref)    # [N] KL(π_ref ‖ π_θ) per position (TDPO), O(R·V) memory

Triton is imported on first use of the triton backend, never here.
"""

from prefopt.kernels.chunked import ChunkedLinearLogprobs, linear_logprobs_chunked
from prefopt.kernels.dispatch import linear_logprobs, resolve_backend, triton_available
from prefopt.kernels.fused_head import FusedHeadResult, linear_logprobs_with_grad
from prefopt.kernels.params import BACKENDS, LinearLogprobsParams, LogitStats
from prefopt.kernels.reference import linear_logprobs_reference
from prefopt.kernels.sequential_kl import linear_sequential_kl, sequential_kl_from_logits

__all__ = [
    "BACKENDS",
    "ChunkedLinearLogprobs",
    "FusedHeadResult",
    "LinearLogprobsParams",
    "LogitStats",
    "linear_logprobs",
    "linear_logprobs_chunked",
    "linear_logprobs_reference",
    "linear_logprobs_with_grad",
    "linear_sequential_kl",
    "resolve_backend",
    "sequential_kl_from_logits",
    "triton_available",
]
