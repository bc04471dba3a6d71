"""Non-tensor arguments of `linear_logprobs` in one frozen dataclass, and the checks on its tensors.

Every backend receives the same validated `LinearLogprobsParams`, so the rules live in one place:

    hidden  [N, D]  float32 | bfloat16 | float16 | float64
    weight  [V, D]  same dtype and device as hidden
    bias    [V]     same dtype and device as weight (optional)
    labels  [N]     integer, each in [0, V) or equal to ignore_index
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["BACKENDS", "LinearLogprobsParams", "LinearLogprobsResult", "LogitStats", "check_inputs", "pack_outputs"]

BACKENDS: tuple[str, ...] = ("auto", "reference", "chunked", "triton")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@dataclass(frozen=True)
class LinearLogprobsParams:
    """Settings of one `linear_logprobs` call.

    temperature:    logits are divided by it before the softmax (> 0).
    softcap:        if set, logits ← softcap · tanh(logits / softcap) after the temperature (> 0).
    ignore_index:   label value of rows to skip: their log-prob (and entropy) is 0 and gets no gradient.
    return_entropy: also return the per-row entropy H = lse − Σ_v p_v z_v of the (tempered, capped) softmax.
    return_stats:   also return `LogitStats` (mean logit over the vocabulary, label = argmax, log Σ_v p_v²), detached.
    backend:        one of `BACKENDS`; "auto" = "triton" on CUDA when Triton imports, else "chunked".
    chunk_size:     rows per block of the chunked backend (None = chosen from V and a memory budget).
    """

    temperature: float = 1.0
    softcap: float | None = None
    ignore_index: int = -100
    return_entropy: bool = False
    return_stats: bool = False
    backend: str = "auto"
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        if not (
            isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0
        ):
            raise ValueError(f"linear_logprobs: temperature must be a finite number > 0, got {self.temperature!r}")
        if self.softcap is not None and not (math.isfinite(self.softcap) and self.softcap > 0):
            raise ValueError(f"linear_logprobs: softcap must be None or a finite number > 0, got {self.softcap!r}")
        if self.backend not in BACKENDS:
            raise ValueError(
                f"linear_logprobs: unknown backend {self.backend!r}; valid backends: {', '.join(BACKENDS)}"
            )
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or self.chunk_size < 1):
            raise ValueError(f"linear_logprobs: chunk_size must be None or a positive int, got {self.chunk_size!r}")


class LogitStats(NamedTuple):
    """Detached per-row statistics of the logits z (after temperature and softcap) of `linear_logprobs`,
    computed on the tiles the kernel already holds (the logits are still never stored).

    mean:    [N] float32, (1/V) Σ_v z_v; 0 at ignored rows.
    correct: [N] bool, z_y = max_v z_v (the label is an argmax of the logits; a tie for the maximum counts);
             False at ignored rows.
    log_sum_sq_probs: [N] float32, log Σ_v p_v² of p = softmax(z) (the log-probability that two samples of the
             row agree; WPO's weight alignment, TRL's `log_sum_sq_probs`), = log Σ e^{2(z−m)} − 2·log Σ e^{z−m};
             0 at ignored rows. None only from code that predates it.
    """

    mean: Tensor
    correct: Tensor
    log_sum_sq_probs: Tensor | None = None


# logp; (logp, entropy) with return_entropy; (logp, stats) with return_stats; (logp, entropy, stats) with both.
LinearLogprobsResult = Tensor | tuple[Tensor, Tensor] | tuple[Tensor, LogitStats] | tuple[Tensor, Tensor, LogitStats]


def pack_outputs(logp: Tensor, entropy: Tensor | None, stats: LogitStats | None) -> LinearLogprobsResult:
    """What `linear_logprobs` returns: logp, then entropy when asked, then the stats when asked."""
    if entropy is None:
        return logp if stats is None else (logp, stats)
    return (logp, entropy) if stats is None else (logp, entropy, stats)


def check_inputs(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None, ignore_index: int) -> None:
    """Raise a ValueError naming the argument when shapes, dtypes, devices or label values do not fit.

    Checking labels syncs with the device once (one reduction over N integers).
    """
    _check_shapes(hidden, weight, labels)
    _check_dtypes(hidden, weight, labels)
    for name, t in (("weight", weight), ("labels", labels), ("bias", bias)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"linear_logprobs: {name} is on {t.device} but hidden is on {hidden.device}; move it")
    if bias is not None:
        _check_bias(bias, weight)
    if labels.numel():
        _check_label_values(labels, weight.shape[0], ignore_index)


def _check_shapes(hidden: Tensor, weight: Tensor, labels: Tensor) -> None:
    """hidden [N, D], weight [V, D], labels [N]."""
    if hidden.dim() != 2:
        raise ValueError(
            f"linear_logprobs: hidden must be [N, D], got shape {tuple(hidden.shape)}; flatten (B, T, D) first"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"linear_logprobs: weight must be [V, D] with D={hidden.shape[1]} (from hidden), got {tuple(weight.shape)}"
        )
    if labels.dim() != 1 or labels.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"linear_logprobs: labels must be [N] with N={hidden.shape[0]}, got shape {tuple(labels.shape)}"
        )


def _check_dtypes(hidden: Tensor, weight: Tensor, labels: Tensor) -> None:
    """hidden floating, weight of hidden's dtype, labels integer."""
    if hidden.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"linear_logprobs: hidden must be a floating tensor, got {hidden.dtype}")
    if weight.dtype != hidden.dtype:
        raise ValueError(
            f"linear_logprobs: weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}; cast one"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dtype.is_complex:
        raise ValueError(f"linear_logprobs: labels must be an integer tensor, got {labels.dtype}")


def _check_bias(bias: Tensor, weight: Tensor) -> None:
    """bias [V], of weight's dtype."""
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"linear_logprobs: bias must be [V] with V={weight.shape[0]}, got shape {tuple(bias.shape)}")
    if bias.dtype != weight.dtype:
        raise ValueError(f"linear_logprobs: bias dtype {bias.dtype} differs from weight dtype {weight.dtype}")


def _check_label_values(labels: Tensor, vocab: int, ignore_index: int) -> None:
    """Every label in [0, vocab) or ignore_index (one device sync)."""
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"linear_logprobs: labels[{row}] = {int(labels[row])} is outside [0, {vocab}) and is not "
            f"ignore_index={ignore_index}; fix the labels or pass the ignore_index your data uses"
        )
