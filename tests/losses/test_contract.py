"""The contract every registered loss keeps, run automatically over the whole registry.

A loss added to the zoo is covered here without touching this file: finite loss and gradients on an
adversarial grid (log-probs from −1e4 to 0, margins of ±1e4, fp32 and bf16 inputs), shapes of
per_example and metrics, reference-free losses callable without a reference, gradients reaching the
policy inputs only, zero-length completions rejected with a clear error, and a float64 gradcheck.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import prefopt
from prefopt.registry import LENGTH_INPUTS, LossInputError, LossSpec, loss_spec

# Rollout (online) losses take per-token tensors; tests/losses/test_rollout_contract.py covers them.
ALL = [n for n in prefopt.list_losses() if loss_spec(n).kind != "rollout"]
B, K = 6, 3

# Losses whose analytic gradient deliberately stops at a term that depends on the inputs, so a finite-
# difference gradcheck cannot apply; each is checked by its own family test instead.
STOP_GRADIENT = {
    "wpo": "the weights w(y_w)·w(y_l) are detached by design (tests/losses/test_pairwise_regularized.py)",
    "wpo_unaligned": "the weights w(y_w)·w(y_l) are detached by design (tests/losses/test_pairwise_regularized.py)",
}

# Losses that take a policy input for their metrics but do not train on it (its gradient is None).
NOT_TRAINED = {
    "sft": ("policy_rejected_logps", "SFT trains on the chosen; the rejected log-probs feed rewards/* and logps/*"),
}

# Adversarial grid: per-sequence log-probs in [−1e4, 0] giving pairwise margins of ±1e4 and near-ties.
GRID_A = [-1e4, 0.0, -5.0, -1e4, -1e-3, -3.0]
GRID_B = [0.0, -1e4, -5.0, -1e4, -2.0, -1e-6]
GRID_C = [-2.0, -1e4, 0.0, -7.0, -1e4, -1e-2]
LENGTHS = [1.0, 500.0, 3.0, 1000.0, 7.0, 2.0]


def _tensor(values, dtype, grad: bool) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).requires_grad_(grad)


def _paired_inputs(spec: LossSpec, dtype: torch.dtype, values, with_ref: bool):
    names = spec.inputs
    kwargs: dict[str, object] = {
        names[0]: _tensor(values(GRID_A), dtype, True),
        names[1]: _tensor(values(GRID_B), dtype, True),
    }
    if spec.scores != "rewards" and with_ref:
        kwargs[names[2]] = _tensor(values(GRID_C), dtype, True)
        kwargs[names[3]] = _tensor(values(GRID_A[::-1]), dtype, True)
    lengths = {"chosen_lengths": torch.tensor(LENGTHS), "rejected_lengths": torch.tensor(LENGTHS[::-1])}
    return kwargs, lengths


def _unpaired_inputs(spec: LossSpec, dtype: torch.dtype, values, with_ref: bool):
    kwargs: dict[str, object] = {
        "policy_logps": _tensor(values(GRID_A), dtype, True),
        "labels": torch.tensor([True, False] * (B // 2)),
    }
    if with_ref:
        kwargs["ref_logps"] = _tensor(values(GRID_B), dtype, True)
    return kwargs, {"lengths": torch.tensor(LENGTHS)}


def _ranked_inputs(spec: LossSpec, dtype: torch.dtype, values, with_ref: bool):
    rows = [values(GRID_A), values(GRID_B), values(GRID_C)]
    grid = torch.tensor(rows, dtype=torch.float64).T.contiguous()  # (B, K)
    kwargs: dict[str, object] = {spec.inputs[0]: grid.to(dtype).requires_grad_(True)}
    if spec.scores == "logps" and with_ref:
        kwargs["ref_logps"] = grid.flip(1).to(dtype).requires_grad_(True)
    return kwargs, {"lengths": torch.tensor([LENGTHS] * K).T.contiguous()}


_INPUTS = {"paired": _paired_inputs, "unpaired": _unpaired_inputs, "ranked": _ranked_inputs}


def extra_inputs(spec: LossSpec, dtype: torch.dtype, n: int = B) -> dict[str, torch.Tensor]:
    """Values, inside their domains, of the extra inputs a log-prob loss may require, by name (no gradient):
    KTO's z₀ `kl`, ODPO's score difference `margin` > 0, WPO's Σ_t log Σ_v p² ≤ 0, TDPO's sequential KLs ≥ 0,
    orpo_seq's prompt log-probs ≤ 0 and counts.
    Their effect is checked by each family's own tests."""
    if spec.scores != "logps":
        return {}
    lengths = torch.tensor((LENGTHS * n)[:n], dtype=torch.float64)
    values = {
        "kl": torch.tensor(0.5),
        "margin": torch.linspace(0.5, 3.0, n),
        "chosen_log_sum_sq_probs": -0.7 * lengths,
        "rejected_log_sum_sq_probs": -0.4 * lengths.flip(0),
        "chosen_seq_kl": 0.01 * lengths,
        "rejected_seq_kl": 0.02 * lengths.flip(0),
        "chosen_prompt_sum": -1.5 * lengths.flip(0),  # orpo_seq: the prompt tokens' log-probs ≤ 0 and their count
        "chosen_prompt_count": lengths.flip(0),
    }
    return {k: v.to(dtype) for k, v in values.items() if k in spec.extra_inputs}


def make_inputs(spec: LossSpec, dtype: torch.dtype, *, adversarial: bool, with_ref: bool = True, seed: int = 0):
    """Canonical inputs for `spec`'s kind: (policy tensors that need gradients, kwargs for the call)."""
    g = torch.Generator().manual_seed(seed)

    def values(grid):
        if adversarial:
            return grid
        return (-torch.rand(B, generator=g, dtype=torch.float64) * 8 - 0.1).tolist()

    if spec.kind not in _INPUTS:
        pytest.skip(f"kind {spec.kind!r} has its own contract tests")
    kwargs, lengths = _INPUTS[spec.kind](spec, dtype, values, with_ref)
    if spec.scores == "logps":
        kwargs.update({n: lengths[n].to(dtype) for n in LENGTH_INPUTS[spec.kind]})
    kwargs.update(extra_inputs(spec, dtype))
    policy = [
        v for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.requires_grad and not k.startswith("ref_")
    ]
    refs = [v for k, v in kwargs.items() if k.startswith("ref_")]
    return policy, refs, kwargs


@pytest.mark.parametrize("name", ALL)
def test_registered_and_exported(name: str) -> None:
    spec = loss_spec(name)
    assert getattr(prefopt.losses, name) is spec.fn, "each loss is exported as prefopt.losses.<name>"
    assert spec.paper and spec.formula and spec.summary, "paper, formula and docstring summary are required"
    for h in spec.hparams:
        if h.default is not None:
            assert h.validate(name, h.default) == h.default, f"the default of {h.name} lies in its domain"
    sig = inspect.signature(spec.fn)
    assert sig.return_annotation in ("LossOutput", prefopt.LossOutput)


def test_batch_dependent_losses_are_declared() -> None:
    """A loss that is not a mean of independent per-example terms must say so (trainers refuse to split it)."""
    dependent = {n for n in ALL if loss_spec(n).batch_dependent}
    assert {"aot", "aot_unpaired"} <= dependent
    for name in ALL:
        spec = loss_spec(name)
        _, _, kwargs = make_inputs(spec, torch.float64, adversarial=False, seed=3)
        whole = spec.fn(**kwargs).per_example
        half = {k: (v[:3] if isinstance(v, torch.Tensor) and v.dim() >= 1 else v) for k, v in kwargs.items()}
        separable = torch.allclose(spec.fn(**half).per_example, whole[:3], rtol=1e-9, atol=1e-12)
        assert separable != spec.batch_dependent, (
            f"{name}: batch_dependent={spec.batch_dependent} but separable={separable}"
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ALL)
def test_adversarial_grid_is_finite(name: str, dtype: torch.dtype) -> None:
    spec = loss_spec(name)
    policy, refs, kwargs = make_inputs(spec, dtype, adversarial=True)
    out = spec.fn(**kwargs)
    assert isinstance(out, prefopt.LossOutput)
    assert out.loss.dim() == 0 and out.loss.dtype in (torch.float32, torch.float64)
    assert torch.isfinite(out.loss), f"{name}: loss {out.loss} on the adversarial grid"
    assert out.per_example.shape == (B,) and torch.isfinite(out.per_example).all()
    for key, value in out.metrics.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, f"{name}: metric {key} is not a scalar tensor"
        assert not value.requires_grad, f"{name}: metric {key} is not detached"
    out.loss.backward()
    untrained = [kwargs[n] for n in NOT_TRAINED.get(name, ())[:1]]
    for t in policy:
        if any(t is u for u in untrained):
            assert t.grad is None, f"{name}: gradient reaches {NOT_TRAINED[name][0]}, which it does not train on"
            continue
        assert t.grad is not None, f"{name}: no gradient reaches a policy input"
        assert torch.isfinite(t.grad.float()).all(), f"{name}: non-finite gradient {t.grad}"
    for t in refs:
        assert t.grad is None, f"{name}: gradient flows into the reference log-probs"


@pytest.mark.parametrize("name", ALL)
def test_gradients_are_informative_on_moderate_inputs(name: str) -> None:
    spec = loss_spec(name)
    policy, _, kwargs = make_inputs(spec, torch.float32, adversarial=False)
    spec.fn(**kwargs).loss.backward()
    assert any(t.grad.abs().sum() > 0 for t in policy), f"{name}: all policy gradients are zero"


@pytest.mark.parametrize("name", [n for n in ALL if not loss_spec(n).needs_reference])
def test_reference_free_losses_need_no_reference(name: str) -> None:
    spec = loss_spec(name)
    _, _, kwargs = make_inputs(spec, torch.float32, adversarial=False, with_ref=False)
    assert torch.isfinite(spec.fn(**kwargs).loss)


@pytest.mark.parametrize("name", [n for n in ALL if loss_spec(n).needs_reference])
def test_missing_reference_is_a_clear_error(name: str) -> None:
    spec = loss_spec(name)
    _, _, kwargs = make_inputs(spec, torch.float32, adversarial=False, with_ref=False)
    with pytest.raises(LossInputError, match="reference"):
        spec.fn(**kwargs)


@pytest.mark.parametrize("name", [n for n in ALL if loss_spec(n).scores == "logps"])
def test_zero_length_completion_is_a_clear_error(name: str) -> None:
    spec = loss_spec(name)
    _, _, kwargs = make_inputs(spec, torch.float32, adversarial=False)
    length_name = LENGTH_INPUTS[spec.kind][0]
    zeros = kwargs[length_name].clone()
    zeros[2] = 0  # row 2 (all K completions of prompt 2 for ranked data)
    kwargs[length_name] = zeros
    with pytest.raises(LossInputError, match=rf"{length_name} is ≤ 0 at rows \[2"):
        spec.fn(**kwargs)


@pytest.mark.parametrize("name", [n for n in ALL if loss_spec(n).needs_lengths])
def test_missing_lengths_is_a_clear_error(name: str) -> None:
    spec = loss_spec(name)
    _, _, kwargs = make_inputs(spec, torch.float32, adversarial=False)
    for n in LENGTH_INPUTS[spec.kind]:
        kwargs.pop(n)
    with pytest.raises(LossInputError, match="length"):
        spec.fn(**kwargs)


@pytest.mark.parametrize("name", ALL)
def test_gradcheck_float64(name: str) -> None:
    if name in STOP_GRADIENT:
        pytest.skip(STOP_GRADIENT[name])
    spec = loss_spec(name)
    policy, _, kwargs = make_inputs(spec, torch.float64, adversarial=False, seed=1)
    keys = [k for k, v in kwargs.items() if any(v is t for t in policy)]

    def f(*tensors: torch.Tensor) -> torch.Tensor:
        return spec.fn(**{**kwargs, **dict(zip(keys, tensors))}).loss

    assert torch.autograd.gradcheck(f, tuple(kwargs[k] for k in keys), eps=1e-6, atol=1e-5)


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(prefopt.UnknownLossError, match=r"Did you mean .*'dpo'.*Valid: .*dpo"):
        prefopt.get_loss("dpoo")
    with pytest.raises(prefopt.UnknownLossError, match=r"Did you mean 'beta'"):
        prefopt.get_loss("dpo", betta=0.1)
    with pytest.raises(LossInputError, match=r"beta=-1.*domain"):
        prefopt.get_loss("dpo", beta=-1)


def test_bound_loss_equals_direct_call_and_swaps_by_name() -> None:
    pc, pr = torch.tensor([-3.0, -4.0]), torch.tensor([-5.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-4.0, -2.5])
    direct = prefopt.losses.dpo(pc, pr, rc, rr, beta=0.3)
    bound = prefopt.get_loss("dpo", beta=0.3)
    assert torch.equal(bound(pc, pr, rc, rr).loss, direct.loss)
    assert repr(bound) == "dpo(beta=0.3)"
    for name in prefopt.list_losses("paired"):
        spec = loss_spec(name)
        if spec.scores != "logps":
            continue
        lengths = {"chosen_lengths": torch.tensor([3.0, 4.0]), "rejected_lengths": torch.tensor([5.0, 2.0])}
        extras = extra_inputs(spec, torch.float32, n=2)  # a loss's required inputs (loss_arguments serves them)
        assert torch.isfinite(prefopt.get_loss(name)(pc, pr, rc, rr, **lengths, **extras).loss), name
