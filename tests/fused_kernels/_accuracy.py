"""Accuracy harness shared by the in-process tests and the Triton interpreter subprocess.

apple/ml-cross-entropy's rule: compute a float64 ground truth from the same (dtype-rounded) inputs,
the same-dtype `reference` result and the backend's result; the backend passes when its error is no
worse than the reference's plus a small tolerance — for logp, entropy and the gradients of hidden,
weight and bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prefopt.kernels import linear_logprobs

# Added to the reference's error, relative to the size of the true values.
TOLERANCE = {torch.float32: 1e-6, torch.bfloat16: 2e-3, torch.float16: 5e-4}


@dataclass(frozen=True)
class Case:
    n: int
    d: int
    v: int
    bias: bool = False
    temperature: float = 1.0
    softcap: float | None = None
    entropy: bool = False
    ignore_every: int = 0  # every k-th row gets ignore_index (0 = none)

    @property
    def name(self) -> str:
        parts = [f"{self.n}x{self.d}x{self.v}"]
        parts += ["bias"] * self.bias + [f"T{self.temperature}"] * (self.temperature != 1.0)
        parts += [f"cap{self.softcap}"] * (self.softcap is not None) + ["ent"] * self.entropy
        parts += [f"ign{self.ignore_every}"] * bool(self.ignore_every)
        return "-".join(parts)


def make_inputs(case: Case, dtype: torch.dtype, seed: int = 0) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """hidden [N,D], weight [V,D] scaled so that logits have unit-ish spread, bias [V] | None, labels [N]."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(case.n, case.d, generator=gen).to(dtype)
    weight = (torch.randn(case.v, case.d, generator=gen) * (2.0 / case.d**0.5)).to(dtype)
    bias = (torch.randn(case.v, generator=gen) * 0.5).to(dtype) if case.bias else None
    labels = torch.randint(0, case.v, (case.n,), generator=gen)
    if case.ignore_every:
        labels[:: case.ignore_every] = -100
    return hidden, weight, bias, labels


def _results(
    case: Case, backend: str, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor
) -> dict[str, Tensor]:
    """logp, entropy and the gradients of a fixed weighted sum of them, all as float64."""
    leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight) + ((bias,) if bias is not None else ())]
    out = linear_logprobs(
        leaves[0],
        leaves[1],
        labels,
        bias=leaves[2] if bias is not None else None,
        temperature=case.temperature,
        softcap=case.softcap,
        return_entropy=case.entropy,
        backend=backend,
    )
    logp, entropy = out if case.entropy else (out, None)
    row_w = torch.linspace(-1.0, 2.0, case.n, dtype=logp.dtype)
    loss = (logp * row_w).sum() + ((entropy * row_w.flip(0)).sum() if entropy is not None else 0.0)
    grads = torch.autograd.grad(loss, leaves)
    res = {"logp": logp, "grad_hidden": grads[0], "grad_weight": grads[1]}
    if entropy is not None:
        res["entropy"] = entropy
    if bias is not None:
        res["grad_bias"] = grads[2]
    return {k: v.detach().double() for k, v in res.items()}


def accuracy_report(case: Case, backend: str, dtype: torch.dtype) -> dict[str, tuple[float, float, float]]:
    """{quantity: (err_backend, err_reference, allowed)} with errors = max |x − truth| against float64."""
    hidden, weight, bias, labels = make_inputs(case, dtype)
    truth = _results(
        case, "reference", hidden.double(), weight.double(), None if bias is None else bias.double(), labels
    )
    ref = _results(case, "reference", hidden, weight, bias, labels)
    got = _results(case, backend, hidden, weight, bias, labels)
    report = {}
    for key, true in truth.items():
        err_ref = (ref[key] - true).abs().max().item()
        err_got = (got[key] - true).abs().max().item()
        report[key] = (err_got, err_ref, err_ref + TOLERANCE[dtype] * (1.0 + true.abs().max().item()))
    ignored = labels == -100
    report["ignored_rows_zero"] = (
        got["logp"][ignored].abs().sum().item() + got["grad_hidden"][ignored].abs().sum().item(),
        0.0,
        0.0,
    )
    return report


CASES = [
    Case(37, 48, 517),
    Case(37, 48, 517, bias=True, ignore_every=5),
    Case(33, 40, 1031, temperature=0.7, softcap=5.0, ignore_every=4),
    Case(19, 24, 300, bias=True, temperature=1.3, entropy=True, ignore_every=3),
    Case(21, 64, 777, softcap=3.0, entropy=True),
]


# Rows whose two largest float64 logits are closer than this (relative to the largest |logit|) are left out
# of the argmax comparison: there rounding decides which one is larger (the bf16 reference rounds each logit
# to bf16, a relative 2^-9).
ARGMAX_GAP = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def stats_report(case: Case, backend: str, dtype: torch.dtype) -> dict[str, tuple[float, float, float]]:
    """`return_stats` against float64 logits of the same (dtype-rounded) inputs; every second kept row's
    label is its true argmax, so both outcomes occur.

    {"logit_mean": (err_backend, err_reference, allowed),
     "log_sum_sq_probs": (err_backend, err_reference, allowed): log Σ_v p_v² (0 at ignored rows),
     "correct": (rows where the backend's argmax flag is wrong, the reference's, 0),
     "both_outcomes": (0 if clear rows of both outcomes exist else 1, 0, 0)}
    """
    hidden, weight, bias, labels = make_inputs(case, dtype)
    logits = hidden.double() @ weight.double().T + (0.0 if bias is None else bias.double())
    logits = logits / case.temperature
    if case.softcap is not None:
        logits = case.softcap * torch.tanh(logits / case.softcap)
    labels = labels.clone()
    keep = labels != -100
    argmax_rows = keep & (torch.arange(case.n) % 2 == 1)
    labels[argmax_rows] = logits.argmax(-1)[argmax_rows]
    top2 = logits.topk(2, dim=-1).values
    clear = keep & ((top2[:, 0] - top2[:, 1]) > ARGMAX_GAP[dtype] * logits.abs().amax(-1))
    true_mean = torch.where(keep, logits.mean(-1), 0.0)
    true_correct = keep & (logits.gather(-1, labels.clamp(min=0)[:, None]).squeeze(-1) >= top2[:, 0])
    true_sq = torch.where(keep, torch.logsumexp(2.0 * torch.log_softmax(logits, -1), -1), 0.0)
    results = {}
    for name in ("reference", backend):
        _, stats = linear_logprobs(
            hidden,
            weight,
            labels,
            bias=bias,
            temperature=case.temperature,
            softcap=case.softcap,
            return_stats=True,
            backend=name,
        )
        assert stats.mean.requires_grad is False and stats.correct.dtype == torch.bool
        assert stats.log_sum_sq_probs is not None and stats.log_sum_sq_probs.requires_grad is False
        results[name] = (
            (stats.mean.double() - true_mean).abs().max().item(),
            float((stats.correct != true_correct)[clear].sum()) + float(stats.correct[~keep].sum()),
            (stats.log_sum_sq_probs.double() - true_sq).abs().max().item(),
        )
    (err_ref, wrong_ref, sq_ref), (err, wrong, sq) = results["reference"], results[backend]
    both = bool(true_correct[clear].any()) and bool((~true_correct)[clear].any())
    allowed = err_ref + TOLERANCE[dtype] * (1.0 + logits.abs().max().item())
    return {
        "logit_mean": (err, err_ref, allowed),
        "log_sum_sq_probs": (sq, sq_ref, sq_ref + TOLERANCE[dtype] * (1.0 + true_sq.abs().max().item())),
        "correct": (wrong, wrong_ref, 0.0),
        "both_outcomes": (0.0 if both else 1.0, 0.0, 0.0),
    }


STATS_CASES = [CASES[1], CASES[2], Case(21, 64, 777, softcap=3.0, entropy=True, ignore_every=3)]
