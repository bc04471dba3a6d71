"""The loss-fused head (`linear_logprobs_with_grad`) against autograd through `linear_logprobs`.

Truth: the reference backend in float64 on the same (dtype-rounded) inputs, its per-token log-probs summed per
sequence and fed to a separable objective (a DPO-like softplus of each group's chosen − rejected margin plus a
quadratic term, so g differs per sequence and per group), differentiated by autograd. The fused kernel must be
no less accurate than the same-dtype reference path (`_accuracy.TOLERANCE`), for the kept path (three
matmuls), the recomputed path (a group larger than the budget, four matmuls), both in one call, several vocab
tiles, bias, temperature, softcap, the logit statistics, and a frozen weight.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

import prefopt.kernels.fused_head_run as fused_head_run
from prefopt.kernels import linear_logprobs, linear_logprobs_with_grad
from prefopt.kernels.fused_head import plan_chunks
from prefopt.threads import torch_threads

from ._accuracy import TOLERANCE


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    with torch_threads(1):  # tiny tensors: extra OpenMP threads only spin on a busy machine
        yield


LENGTHS = [5, 7, 3, 9, 4, 6]  # sequences 0..2 chosen, 3..5 rejected: groups {0, 3}, {1, 4}, {2, 5} of 14, 11, 9 rows
GROUPS = 3


def _layout(seed: int = 0) -> Tensor:
    """[N] sequence id of each row, rows of different sequences interleaved (as a packed batch's are)."""
    seq = torch.cat([torch.full((n,), s) for s, n in enumerate(LENGTHS)])
    return seq[torch.randperm(seq.shape[0], generator=torch.Generator().manual_seed(seed))]


def _inputs(dtype: torch.dtype, v: int = 301, d: int = 24, bias: bool = True) -> dict[str, Tensor | None]:
    gen = torch.Generator().manual_seed(1)
    n = sum(LENGTHS)
    return {
        "hidden": torch.randn(n, d, generator=gen).to(dtype),
        "weight": (torch.randn(v, d, generator=gen) * (2.0 / d**0.5)).to(dtype),
        "bias": (torch.randn(v, generator=gen) * 0.5).to(dtype) if bias else None,
        "labels": torch.randint(0, v, (n,), generator=gen),
    }


REF_SUMS = torch.tensor([-30.0, -41.0, -17.0, -52.0, -22.0, -35.0], dtype=torch.float64)


def _objective(sums: Tensor) -> Tensor:
    """Separable over the groups b: softplus(−0.3·(ρ_b − ρ_{B+b})) + 0.01·s_b², averaged."""
    rho = sums.double() - REF_SUMS
    margin = rho[:GROUPS] - rho[GROUPS:]
    return (torch.nn.functional.softplus(-0.3 * margin) + 0.01 * sums[:GROUPS].double() ** 2).mean()


def _grad_fn(sums: Tensor, done: Tensor, stats: object) -> Tensor:
    leaf = sums.detach().double().requires_grad_()
    with torch.enable_grad():
        (g,) = torch.autograd.grad(_objective(leaf), leaf)
    return g


def _unfused(inputs: dict, seq: Tensor, **kwargs) -> dict[str, Tensor]:
    """logp, sums and the objective's gradients by the reference backend and autograd, as float64."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if k != "labels" and v is not None}
    logp = linear_logprobs(
        leaves["hidden"], leaves["weight"], inputs["labels"], bias=leaves.get("bias"), backend="reference", **kwargs
    )
    sums = torch.zeros(len(LENGTHS), dtype=torch.float64).index_add(0, seq, logp.double()).to(logp.dtype)
    _objective(sums).backward()
    out = {"logp": logp, "sums": sums, **{f"grad_{k}": v.grad for k, v in leaves.items()}}
    return {k: v.detach().double() for k, v in out.items()}


def _fused(inputs: dict, seq: Tensor, **kwargs) -> dict[str, Tensor]:
    result = linear_logprobs_with_grad(
        inputs["hidden"], inputs["weight"], inputs["labels"], seq, len(LENGTHS), seq % GROUPS, _grad_fn,
        bias=inputs["bias"], **kwargs,
    )  # fmt: skip
    out = {"logp": result.logp, "sums": result.sums, "grad_hidden": result.grad_hidden}
    out["grad_weight"] = result.grad_weight
    if inputs["bias"] is not None:
        out["grad_bias"] = result.grad_bias
    return {k: v.double() for k, v in out.items()}


def _rows(budget_rows: int, v: int = 301, element: int = 4) -> int:
    return budget_rows * v * element


# (name, kernel kwargs) — budgets in rows of kept logits: 12 rows keeps groups {1, 4} (11) and {2, 5} (9) and
# recomputes {0, 3} (14); 100 keeps everything in one chunk; 1 recomputes every group.
CASES = [
    ("kept", {}),
    ("mixed", {"max_chunk_bytes": _rows(12)}),
    ("recomputed", {"max_chunk_bytes": 1}),
    ("tempered", {"temperature": 0.7, "max_chunk_bytes": _rows(12)}),
    ("softcap", {"temperature": 1.3, "softcap": 4.0, "max_chunk_bytes": _rows(12)}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name,kwargs", CASES, ids=[c[0] for c in CASES])
def test_matches_autograd_through_the_reference(name: str, kwargs: dict, dtype: torch.dtype, monkeypatch) -> None:
    monkeypatch.setattr(fused_head_run, "KEEP_TILE_BYTES", 128 * 40 * 4)  # three vocab tiles of 128, 128, 45 columns
    monkeypatch.setattr(fused_head_run, "SWEEP_TILE_BYTES", 1)  # unshifted sweeps in tiles of 128, 128, 45 too
    inputs, seq = _inputs(dtype), _layout()
    head = {k: v for k, v in kwargs.items() if k in ("temperature", "softcap")}
    as64 = {k: v.double() if k != "labels" and v is not None else v for k, v in inputs.items()}
    truth = _unfused(as64, seq, **head)
    ref = _unfused(inputs, seq, **head)
    got = _fused(inputs, seq, **kwargs)
    for key, true in truth.items():
        err_ref = (ref[key] - true).abs().max().item()
        err_got = (got[key] - true).abs().max().item()
        allowed = err_ref + TOLERANCE[dtype] * (1.0 + true.abs().max().item())
        assert err_got <= allowed, f"{name} {dtype} {key}: {err_got:.3g} > {allowed:.3g} (reference path {err_ref:.3g})"


@pytest.mark.parametrize("case", ["ordinary", "large", "very negative"])
def test_unshifted_sweep_falls_back_where_exp_leaves_its_range(case: str, monkeypatch) -> None:
    """A kept chunk keeps e^{Z} unshifted when every row's Σ e^{z} lies in `UNSHIFTED`, else it sweeps again
    with the row maxima subtracted: row maxima of 60–140 (hidden × 15) and all logits below −100 (bias − 150)
    give results as close to the truth as ordinary logits do, and only they take the second sweep, after which
    the call's later chunks sweep shifted at once."""
    sweeps: list[bool] = []
    sweep = fused_head_run.FusedHeadRun._sweep

    def recorded(self, chunk, shifted):
        sweeps.append(shifted)
        return sweep(self, chunk, shifted)

    monkeypatch.setattr(fused_head_run.FusedHeadRun, "_sweep", recorded)
    inputs, seq = _inputs(torch.float32), _layout()
    if case == "large":
        inputs["hidden"] = inputs["hidden"] * 15.0
    elif case == "very negative":
        inputs["bias"] = inputs["bias"] - 150.0
    as64 = {k: v.double() if k != "labels" and v is not None else v for k, v in inputs.items()}
    truth, ref, got = _unfused(as64, seq), _unfused(inputs, seq), _fused(inputs, seq, max_chunk_bytes=_rows(12))
    for key, true in truth.items():
        allowed = (ref[key] - true).abs().max().item() + TOLERANCE[torch.float32] * (1.0 + true.abs().max().item())
        assert (got[key] - true).abs().max().item() <= allowed, f"{case} {key}"
    # two kept chunks; after a chunk out of range the call sweeps shifted at once (one wasted sweep per call)
    assert sweeps == ([False, False] if case == "ordinary" else [False, True, True])


def test_stats_match_linear_logprobs() -> None:
    """Mean logit, label = argmax and log Σ p² of every row, on the kept and recomputed paths, with and without
    softcap, equal `linear_logprobs(..., return_stats=True)`; the loss sees the rows done so far."""
    inputs, seq = _inputs(torch.float32), _layout()
    for kwargs in ({"max_chunk_bytes": _rows(12)}, {"softcap": 3.0, "max_chunk_bytes": _rows(12)}):
        seen: list[tuple[Tensor, Tensor]] = []

        def grad_fn(sums: Tensor, done: Tensor, stats) -> Tensor:
            seen.append((done.clone(), stats.mean.clone()))
            return _grad_fn(sums, done, stats)

        result = linear_logprobs_with_grad(
            inputs["hidden"], inputs["weight"], inputs["labels"], seq, len(LENGTHS), seq % GROUPS, grad_fn,
            bias=inputs["bias"], return_stats=True, **kwargs,
        )  # fmt: skip
        _, want = linear_logprobs(
            inputs["hidden"], inputs["weight"], inputs["labels"], bias=inputs["bias"], return_stats=True,
            softcap=kwargs.get("softcap"), backend="reference",
        )  # fmt: skip
        torch.testing.assert_close(result.stats.mean, want.mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(result.stats.log_sum_sq_probs, want.log_sum_sq_probs, rtol=1e-5, atol=1e-5)
        assert torch.equal(result.stats.correct, want.correct)
        assert [int(done.sum()) for done, _ in seen] == [2, 4, 6]  # one group per chunk, both its sequences done
        # the first chunk is group 0 (sequences 0 and 3, recomputed): the loss sees its rows' stats, 0 elsewhere
        assert torch.equal(seen[0][1] != 0, torch.isin(seq, torch.tensor([0, 3])))


def test_frozen_weight_and_no_bias_gradient() -> None:
    """With need_grads=(True, False, False) only dH is formed (a frozen head: LoRA elsewhere), and it is the same."""
    inputs, seq = _inputs(torch.float32), _layout()
    full = _fused(inputs, seq)
    result = linear_logprobs_with_grad(
        inputs["hidden"], inputs["weight"], inputs["labels"], seq, len(LENGTHS), seq % GROUPS, _grad_fn,
        bias=inputs["bias"], need_grads=(True, False, False),
    )  # fmt: skip
    assert result.grad_weight is None and result.grad_bias is None
    torch.testing.assert_close(result.grad_hidden.double(), full["grad_hidden"], rtol=0, atol=0)


def test_plan_chunks_keeps_groups_whole() -> None:
    groups = torch.tensor([2, 0, 1, 0, 2, 1, 1, 0, 0, 0, 3, 4, 4, 4, 4, 4])  # group sizes 5, 3, 2, 1, 5
    chunks = plan_chunks(groups, max_rows=4)
    assert [(rows.tolist(), keep) for rows, keep in chunks] == [
        ([1, 3, 7, 8, 9, 11, 12, 13, 14, 15], False),  # groups 0 and 4: 5 rows > 4, recomputed together, first
        ([2, 5, 6], True),  # group 1
        ([0, 4, 10], True),  # groups 2 and 3 share a chunk: 2 + 1 ≤ 4
    ]
    assert plan_chunks(torch.zeros(0, dtype=torch.long), max_rows=4) == []


def test_refuses_unscored_rows() -> None:
    inputs, seq = _inputs(torch.float32), _layout()
    labels = inputs["labels"].clone()
    labels[3] = -100
    with pytest.raises(ValueError, match="every row is a scored token"):
        linear_logprobs_with_grad(inputs["hidden"], inputs["weight"], labels, seq, 6, seq % GROUPS, _grad_fn)
    with pytest.raises(ValueError, match="group_ids must be"):
        linear_logprobs_with_grad(inputs["hidden"], inputs["weight"], inputs["labels"], seq, 6, seq[:3], _grad_fn)
