"""The chunked backend: float64 gradcheck, memory bound, tiling invariance, partial gradient needs."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import prefopt.kernels.chunked as chunked
from prefopt.kernels import LinearLogprobsParams, linear_logprobs
from prefopt.kernels.chunked import ChunkedLinearLogprobs, tile_shape


def _inputs(n: int, d: int, v: int, dtype: torch.dtype = torch.float64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen, dtype=dtype)
    weight = torch.randn(v, d, generator=gen, dtype=dtype) / d**0.5
    bias = torch.randn(v, generator=gen, dtype=dtype) * 0.3
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[::4] = -100
    return hidden, weight, bias, labels


@pytest.mark.parametrize(
    "params",
    [
        LinearLogprobsParams(chunk_size=3),
        LinearLogprobsParams(temperature=0.7, softcap=2.0, chunk_size=4),
        LinearLogprobsParams(temperature=1.3, return_entropy=True, chunk_size=5),
        LinearLogprobsParams(softcap=1.5, return_entropy=True),
    ],
    ids=["plain", "temp-softcap", "entropy", "softcap-entropy"],
)
def test_gradcheck_float64(params: LinearLogprobsParams, monkeypatch: pytest.MonkeyPatch) -> None:
    """Analytic gradients (hidden, weight, bias) equal finite differences, with several vocab tiles."""
    monkeypatch.setattr(chunked, "TILE_BYTES", 4 * 7 * 128)  # 128-column tiles over V = 300
    hidden, weight, bias, labels = _inputs(7, 5, 300)
    leaves = [t.requires_grad_() for t in (hidden, weight, bias)]

    def fn(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
        logp, entropy, _ = ChunkedLinearLogprobs.apply(h, w, b, labels, params)
        return (logp, entropy) if params.return_entropy else logp

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)
    # the full (slow-mode) check on hidden alone: every column of its Jacobian
    assert torch.autograd.gradcheck(lambda h: fn(h, leaves[1], leaves[2]), leaves[:1], eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("softcap", [None, 2.5])
def test_gradcheck_frozen_weight(softcap: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weight and bias frozen: ∂logp/∂h is accumulated in the forward (online, across tiles) and is exact."""
    monkeypatch.setattr(chunked, "TILE_BYTES", 4 * 7 * 128)
    hidden, weight, bias, labels = _inputs(7, 5, 300)
    params = LinearLogprobsParams(temperature=0.8, softcap=softcap)
    fn = lambda h: ChunkedLinearLogprobs.apply(h, weight, bias, labels, params)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, [hidden.requires_grad_()], eps=1e-6, atol=1e-6)


def test_tiling_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """Row blocks of 1…N rows and vocab tiles of 256…V columns give the same values and gradients."""
    hidden, weight, bias, labels = _inputs(23, 8, 1000, torch.float32)
    results = []
    for chunk_size, tile_bytes in [(None, 2**25), (1, 2**25), (7, 4 * 7 * 256), (23, 4 * 23 * 384)]:
        monkeypatch.setattr(chunked, "TILE_BYTES", tile_bytes)
        leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
        logp = linear_logprobs(leaves[0], leaves[1], labels, bias=leaves[2], backend="chunked", chunk_size=chunk_size)
        logp.sum().backward()
        results.append([logp.detach()] + [t.grad for t in leaves])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)


def test_tile_shape_respects_budget() -> None:
    assert tile_shape(4096, 128256) == (4096, 2048)  # 32 MiB of float32
    assert tile_shape(10, 300) == (10, 300)  # capped at V
    rows, cols = tile_shape(100000, 151936, chunk_size=512)
    assert rows == 512 and cols % 128 == 0 and rows * cols * 4 <= chunked.TILE_BYTES


def _largest_allocation(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(e.cpu_memory_usage for e in prof.events())


def test_never_allocates_n_by_v(monkeypatch: pytest.MonkeyPatch) -> None:
    """The largest single allocation of forward+backward is one tile (or a gradient), not N×V.

    Checked with torch.profiler's per-op CPU memory records; the reference, which does build the
    N×V logits, is measured the same way to show that the check can fail.
    """
    n, d, v = 256, 4, 6000
    monkeypatch.setattr(chunked, "TILE_BYTES", 4 * 64 * 1536)  # 64 rows × 1536 columns
    hidden, weight, _, labels = _inputs(n, d, v, torch.float32)
    n_by_v = n * v * 4

    def run(backend: str) -> None:
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        linear_logprobs(h, w, labels, backend=backend, chunk_size=64).sum().backward()

    largest = _largest_allocation(lambda: run("chunked"))
    assert largest <= max(4 * 64 * 1536, v * d * 4) * 1.1, largest  # a tile or the weight gradient
    assert largest < n_by_v / 8
    assert _largest_allocation(lambda: run("reference")) >= n_by_v


@pytest.mark.parametrize("need", ["hidden", "weight", "bias"])
def test_partial_gradient_needs(need: str) -> None:
    """Only the inputs that require grad get one, and those equal the full computation's."""
    hidden, weight, bias, labels = _inputs(17, 8, 300, torch.float32)
    full = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    linear_logprobs(full[0], full[1], labels, bias=full[2], backend="chunked").sum().backward()
    part = [
        t.clone().requires_grad_(name == need) for t, name in zip((hidden, weight, bias), ("hidden", "weight", "bias"))
    ]
    linear_logprobs(part[0], part[1], labels, bias=part[2], backend="chunked").sum().backward()
    for f, p, name in zip(full, part, ("hidden", "weight", "bias")):
        if name == need:
            torch.testing.assert_close(p.grad, f.grad)
        else:
            assert p.grad is None


def test_all_rows_ignored_gives_zeros() -> None:
    hidden, weight, _, labels = _inputs(5, 4, 50, torch.float32)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    logp, entropy = linear_logprobs(h, w, torch.full_like(labels, -100), return_entropy=True, backend="chunked")
    (logp.sum() + entropy.sum()).backward()
    assert logp.abs().sum() == 0 and entropy.abs().sum() == 0
    assert h.grad.abs().sum() == 0 and w.grad.abs().sum() == 0


def test_entropy_of_uniform_logits_is_log_v() -> None:
    """Zero weight → uniform softmax: logp = −log V and entropy = log V for every row (hand value)."""
    v = 640
    logp, entropy = linear_logprobs(
        torch.randn(6, 4), torch.zeros(v, 4), torch.arange(6), return_entropy=True, backend="chunked"
    )
    expected = torch.full((6,), torch.log(torch.tensor(float(v))).item())
    torch.testing.assert_close(entropy, expected)
    torch.testing.assert_close(logp, -expected)
