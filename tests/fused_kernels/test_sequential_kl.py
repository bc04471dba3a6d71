"""`linear_sequential_kl` (TDPO's per-position KL(π_ref ‖ π_θ)) against the plain formula on materialised logits.

apple/ml-cross-entropy's rule as in _accuracy.py: a float64 truth from the same (dtype-rounded) inputs; the kernel's
error in the KL and in the gradients of hidden, weight and bias is no worse than the same-dtype plain torch
computation's plus a small tolerance, in float32 and bfloat16, on odd shapes with bias, temperature and softcap.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from prefopt.kernels import linear_sequential_kl, sequential_kl_from_logits

TOLERANCE = {torch.float32: 1e-6, torch.bfloat16: 2e-3}
SETTINGS = {"temperature": 0.7, "softcap": 4.0, "ref_temperature": 1.3, "ref_softcap": None}


def _inputs(dtype: torch.dtype, n: int = 23, d: int = 24, d_ref: int = 16, v: int = 301) -> list[Tensor]:
    g = torch.Generator().manual_seed(0)
    hidden, ref_hidden = torch.randn(n, d, generator=g), torch.randn(n, d_ref, generator=g)
    weight = torch.randn(v, d, generator=g) * (2.0 / d**0.5)
    ref_weight = torch.randn(v, d_ref, generator=g) * (2.0 / d_ref**0.5)
    bias = torch.randn(v, generator=g) * 0.3
    return [t.to(dtype) for t in (hidden, weight, bias, ref_hidden, ref_weight)]


def _plain(hidden: Tensor, weight: Tensor, bias: Tensor, ref_hidden: Tensor, ref_weight: Tensor) -> Tensor:
    """The obvious computation: both [N, V] logits in the inputs' dtype, tempered and capped, then the formula."""
    z = (hidden @ weight.T + bias).float() / SETTINGS["temperature"]
    z = SETTINGS["softcap"] * torch.tanh(z / SETTINGS["softcap"])
    z_ref = (ref_hidden @ ref_weight.T).float() / SETTINGS["ref_temperature"]
    return sequential_kl_from_logits(z.double() if hidden.dtype == torch.float64 else z, z_ref)


def _kernel(hidden: Tensor, weight: Tensor, bias: Tensor, ref_hidden: Tensor, ref_weight: Tensor) -> Tensor:
    return linear_sequential_kl(hidden, weight, ref_hidden, ref_weight, bias=bias, chunk_size=5, **SETTINGS)


def _results(fn, inputs: list[Tensor]) -> dict[str, Tensor]:
    leaves = [t.detach().clone().requires_grad_(i < 3) for i, t in enumerate(inputs)]
    kl = fn(*leaves)
    weights = torch.linspace(-1.0, 2.0, kl.shape[0], dtype=kl.dtype)
    grads = torch.autograd.grad((kl * weights).sum(), leaves[:3])
    return {"kl": kl.detach().double(), **{k: g.double() for k, g in zip(("hidden", "weight", "bias"), grads)}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kernel_no_less_accurate_than_plain_torch(dtype: torch.dtype) -> None:
    inputs = _inputs(dtype)
    truth = _results(_plain, [t.double() for t in inputs])
    plain, got = _results(_plain, inputs), _results(_kernel, inputs)
    assert float(truth["kl"].min()) > 0.05  # real divergences, not ~0
    for key, true in truth.items():
        err_plain = (plain[key] - true).abs().max().item()
        err = (got[key] - true).abs().max().item()
        assert err <= err_plain + TOLERANCE[dtype] * (1.0 + true.abs().max().item()), (key, err, err_plain)


def test_gradcheck_float64_and_no_gradient_into_the_reference() -> None:
    hidden, weight, bias, ref_hidden, ref_weight = (t.double() for t in _inputs(torch.float32, n=5, d=4, d_ref=3, v=11))
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    assert torch.autograd.gradcheck(lambda h, w, b: _kernel(h, w, b, ref_hidden, ref_weight), tuple(leaves))
    ref = ref_hidden.clone().requires_grad_()
    _kernel(*leaves, ref, ref_weight).sum().backward()
    assert ref.grad is None


def test_equal_models_give_zero_and_blocks_do_not_matter() -> None:
    hidden, weight, bias, _, _ = _inputs(torch.float32)
    same = linear_sequential_kl(hidden, weight, hidden, weight, bias=bias, ref_bias=bias)
    assert same.abs().max() < 1e-5
    args = _inputs(torch.float32)
    by_rows = [
        linear_sequential_kl(args[0], args[1], args[3], args[4], bias=args[2], chunk_size=c) for c in (1, 7, None)
    ]
    for other in by_rows[1:]:
        torch.testing.assert_close(other, by_rows[0], rtol=1e-6, atol=1e-5)


def test_mismatched_vocabularies_are_refused() -> None:
    hidden, weight, _, ref_hidden, ref_weight = _inputs(torch.float32)
    with pytest.raises(ValueError, match="share the vocabulary V"):
        linear_sequential_kl(hidden, weight, ref_hidden, ref_weight[:-1])
