"""Run by test_triton.py in a subprocess: the Triton backend under TRITON_INTERPRET=1 on CPU tensors.

The variable must be set before the kernels are defined, hence a fresh process. Prints one JSON
object: {case id: {quantity: [err_triton, err_reference, allowed]}}, with the `return_stats` checks under
"stats" in the same form.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

import prefopt.kernels.triton_function as triton_function  # noqa: E402
from prefopt.kernels import linear_logprobs  # noqa: E402
from tests.fused_kernels._accuracy import (  # noqa: E402
    CASES,
    STATS_CASES,
    Case,
    accuracy_report,
    make_inputs,
    stats_report,
)

# Small tiles so that every shape has partial row, vocab and D blocks and several vocab splits.
triton_function.BLOCKS = triton_function.TritonBlocks(block_n=16, block_v=64, block_d=16, num_warps=1, min_programs=8)


def _nan_padded(t: torch.Tensor) -> torch.Tensor:
    """A view of `t` inside a larger NaN-filled buffer: any unmasked out-of-bounds load poisons the result."""
    big = torch.full([s + 3 for s in t.shape], float("nan"), dtype=t.dtype)
    view = big[tuple(slice(0, s) for s in t.shape)]
    view.copy_(t)
    return view


def mask_report(case: Case) -> dict[str, list[float]]:
    """Triton on NaN-padded strided views vs the reference on clean tensors: errors must be finite and small."""
    hidden, weight, bias, labels = make_inputs(case, torch.float32)
    out = {}
    for name, (h, w, b) in {
        "ref": (hidden, weight, bias),
        "tri": tuple(map(_nan_padded, (hidden, weight, bias))),
    }.items():
        leaves = [t.clone().requires_grad_() if name == "ref" else t.requires_grad_() for t in (h, w, b)]
        logp = linear_logprobs(
            leaves[0], leaves[1], labels, bias=leaves[2], backend="reference" if name == "ref" else "triton"
        )
        logp.sum().backward()
        out[name] = [logp.detach()] + [t.grad for t in leaves]
    return {k: [(a - b).abs().max().item()] for k, a, b in zip(["logp", "dh", "dw", "db"], out["ref"], out["tri"])}


def main() -> None:
    results: dict[str, dict[str, list[float]]] = {}
    for case in CASES:
        results[f"{case.name}-fp32"] = {k: list(v) for k, v in accuracy_report(case, "triton", torch.float32).items()}
    for case in CASES[1:3]:
        results[f"{case.name}-bf16"] = {k: list(v) for k, v in accuracy_report(case, "triton", torch.bfloat16).items()}
    results["nan-padded-masks"] = mask_report(Case(37, 48, 517, bias=True, ignore_every=6))
    results["stats"] = {
        f"{case.name}-{name}": {k: list(v) for k, v in stats_report(case, "triton", dtype).items()}
        for case in STATS_CASES[1:]
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
