"""Per-sequence sums are the float64 sum of the float32 per-token values, rounded once to float32.

A float32 running sum over a long completion drifts: 4096 log-probs near −3 sum to ≈ −12300, where one
float32 step (ulp) is 2⁻¹⁰ ≈ 0.001, and a sequential float32 accumulation ends many steps away from the
float64 sum. prefopt accumulates in float64 (`sequence_sums`) and must land within one step of it.
"""

from __future__ import annotations

import math

import torch

from prefopt.engine import LogProbEngine, SequenceLogProbs, sequence_sums
from prefopt.rl import masked_sum

from ._engine_batches import make_batch
from .test_engine import llama


def _ulp(x: torch.Tensor) -> torch.Tensor:
    """The float32 spacing at each value of x."""
    x = x.float()
    return (torch.nextafter(x.abs(), torch.tensor(math.inf)) - x.abs()).double()


def _float64_reference(values: torch.Tensor, seq: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """The definition: the float64 sum of the float32 values of each sequence, rounded once to float32."""
    return torch.zeros(num_sequences, dtype=torch.float64).index_add(0, seq, values.double()).float()


def _long_completions() -> tuple[torch.Tensor, torch.Tensor]:
    """Two sequences of 4096 float32 log-probs near −3 (N(−3, 0.5²)), interleaved, and their sequence ids."""
    gen = torch.Generator().manual_seed(0)
    values = (-3.0 + 0.5 * torch.randn(8192, generator=gen)).float()
    return values, torch.arange(8192) % 2


def test_float32_accumulation_drifts_on_long_completions() -> None:
    """The problem is real: float32 index_add (the old accumulation) ends > 4 float32 steps from float64."""
    values, seq = _long_completions()
    reference = _float64_reference(values, seq, 2)
    float32_sum = torch.zeros(2).index_add(0, seq, values)
    assert ((float32_sum.double() - reference.double()).abs() / _ulp(reference)).min() > 4


def test_sequence_sums_equal_the_float64_reference_rounded_to_float32() -> None:
    values, seq = _long_completions()
    out = SequenceLogProbs.from_tokens(values, seq, 2, group_size=2)
    reference = _float64_reference(values, seq, 2)
    assert out.sum.dtype == torch.float32 and out.count.tolist() == [4096, 4096]
    assert ((out.sum.double() - reference.double()).abs() <= _ulp(reference)).all()
    assert (out.sum.double() - values.double().reshape(-1, 2).sum(0)).abs().max() < 1e-3  # ≈ −12300 each


def test_sequence_sums_keep_the_gradient() -> None:
    """d sum[s] / d value[i] = 1 for the tokens of s: the upstream gradient reaches each token exactly."""
    values, seq = _long_completions()
    leaf = values.clone().requires_grad_()
    weights = torch.tensor([0.25, -3.0])
    (sequence_sums(leaf, seq, 2) * weights).sum().backward()
    assert leaf.grad is not None and leaf.grad.dtype == torch.float32
    assert torch.equal(leaf.grad, weights[seq])


def test_masked_sum_accumulates_in_float64_too() -> None:
    """The per-token sums of the rollout losses and the online loop (`prefopt.rl.masked_sum`)."""
    values, seq = _long_completions()
    rows = values.reshape(-1, 2).T.contiguous()  # [2, 4096]: sequence s in row s
    mask = torch.ones_like(rows, dtype=torch.bool)
    mask[1, -96:] = False
    reference = torch.stack([rows[0].double().sum(), rows[1, :-96].double().sum()]).float()
    got = masked_sum(rows, mask, dim=1)
    assert got.dtype == torch.float32
    assert ((got.double() - reference.double()).abs() <= _ulp(reference)).all()


def test_engine_sums_equal_the_float64_sum_of_its_own_token_values() -> None:
    """Through the engine on a tiny Llama: completions of 600 and 300 tokens; `sum` is the float64 sum of the
    per-token values the same kernel returned (`tokens`), rounded once. (A float32 index_add of the same
    values lands 8 float32 steps away on the first sequence, −2752.)"""
    gen = torch.Generator().manual_seed(3)
    examples = [([1, 2, 3], torch.randint(1, 97, (600,), generator=gen).tolist()), ([4, 5], [7] * 300)]
    batch = make_batch(examples)
    out = LogProbEngine(llama())(batch, return_tokens=True)
    mask = batch.completion_mask
    reference = _float64_reference(out.tokens[mask], batch.sequence_ids[mask], 2)
    assert out.count.tolist() == [600, 300]
    assert ((out.sum.double() - reference.double()).abs() <= _ulp(reference)).all()
