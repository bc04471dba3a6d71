"""The contract every registered `rollout` loss keeps, run over the registry (tests/losses/test_contract.py
skips this kind). A rollout loss added to the zoo is covered here without touching this file, as long as
its keyword inputs are among those `rollout_inputs` knows how to build.

Checked: finite loss and gradients on an adversarial grid (per-token log-ratios of ±20, log-probs down
to −1e4, a fully masked row, padding holding log-ratios of ±1e4 that would overflow exp), fp32 and
bf16 inputs, shapes, detached scalar metrics, gradients into the policy log-probs (and the value
head's outputs) only, invariance to whatever sits at padding, clear errors for bad shapes and a
missing reference, and a float64 gradcheck.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import prefopt
from prefopt.registry import KIND_INPUTS, LossInputError, LossSpec, loss_spec

ROLLOUT = prefopt.list_losses("rollout")
B, K, T = 3, 2, 5
S = B * K
LENGTHS = [5, 3, 1, 0, 4, 2]  # row 3 is fully masked
# the policy's log-probs, its value head's and Q heads' outputs (ILQL), the mask's mass (NLPO)
TRAINABLE = ("policy_logps", "values", "q_values", "q2_values", "q_logps", "q2_logps", "mask_log_mass")
TOKEN_INPUTS = (
    *("old_logps", "ref_logps", "advantages", "values", "old_values", "returns", "token_entropy", "next_values"),
    *("q_values", "q2_values", "q_logps", "q2_logps", "target_q_values", "mask_log_mass", "old_mask_log_mass"),
)
# Losses whose analytic gradient stops, by design, at a weight that depends on the policy: finite differences
# see the weight move, so the float64 gradcheck runs them on-policy (old_logps=None: the weight is 1 and moves
# with the policy); their family test checks the off-policy gradient by hand.
STOP_GRADIENT = {
    "cispo": "the IS weight sg(clip(ρ_t)) is detached by design (tests/losses/test_policy_ratio.py)",
}


def _mask() -> torch.Tensor:
    return torch.arange(T).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)  # [S, T] right-padded


def rollout_inputs(spec: LossSpec, dtype: torch.dtype, *, adversarial: bool, seed: int = 0) -> dict[str, object]:
    """Every input `spec` takes, as leaf tensors with requires_grad=True (targets too, to catch leaks)."""
    g = torch.Generator().manual_seed(seed)
    mask = _mask()

    def tokens(scale: float, offset: float = 0.0) -> torch.Tensor:
        return torch.randn(S, T, generator=g, dtype=torch.float64) * scale + offset

    policy = -tokens(1.0).abs() - 0.1
    if adversarial:
        policy = torch.tensor([-1e4, 0.0, -3.0, -1e-3, -50.0], dtype=torch.float64).repeat(S, 1)
        shifts = torch.tensor([20.0, -20.0, 0.0, 19.5, -19.5], dtype=torch.float64).repeat(S, 1)
    else:
        shifts = tokens(0.3)
    values = {
        "policy_logps": policy,
        "old_logps": policy - shifts,  # log ρ = ±20 on the adversarial grid
        "ref_logps": policy + shifts.roll(1, 1),  # u = log π_ref − log π = ±20
        "advantages": tokens(1.0) if not adversarial else torch.tensor([3.0, -3.0, 0.0, 1e-3, -50.0]).repeat(S, 1),
        "values": tokens(1.0),
        "old_values": tokens(1.0),
        "returns": tokens(2.0),
        "token_entropy": tokens(1.0).abs(),
        "q_values": tokens(1.0),
        "q2_values": tokens(1.0),
        "q_logps": -tokens(1.0).abs(),
        "q2_logps": -tokens(1.0).abs(),
        "target_q_values": tokens(1.0),
        "next_values": tokens(1.0),
        "mask_log_mass": -tokens(0.2).abs(),
        "old_mask_log_mass": -tokens(0.2).abs(),
    }
    if adversarial:
        # Padding holds garbage a careless loss would exponentiate: log ρ = 1e4 and |V − G| = 1e4.
        values["old_logps"] = torch.where(mask, values["old_logps"], torch.full_like(policy, -1e4))
        values["returns"] = torch.where(mask, values["returns"], torch.full_like(policy, 1e4))
    kwargs: dict[str, object] = {"completion_mask": mask}
    if any(h.name == "max_length" for h in spec.hparams):  # a required constant (Dr. GRPO's L_max): the loop's T
        kwargs["max_length"] = T
    for name in ("policy_logps", "old_logps"):
        kwargs[name] = values[name].to(dtype).requires_grad_(True)
    for name in spec.extra_inputs:
        if name in values:
            kwargs[name] = values[name].to(dtype).requires_grad_(True)
        elif name == "rewards":
            rewards = torch.tensor([[1.0, 0.0], [0.5, 0.5], [-2.0, 3.0]], dtype=torch.float64)
            kwargs[name] = (
                (rewards if adversarial else torch.randn(B, K, generator=g, dtype=torch.float64))
                .to(dtype)
                .requires_grad_(True)
            )
        elif name == "greedy_rewards":
            kwargs[name] = torch.randn(B, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
        else:
            raise AssertionError(f"{spec.name}: teach rollout_inputs to build the extra input {name!r}")
    return kwargs


def _trainable(kwargs: dict[str, object]) -> list[str]:
    return [n for n in TRAINABLE if isinstance(kwargs.get(n), torch.Tensor)]


def _targets(kwargs: dict[str, object]) -> list[str]:
    return [n for n, v in kwargs.items() if isinstance(v, torch.Tensor) and v.requires_grad and n not in TRAINABLE]


def test_rollout_kind_has_per_token_canonical_inputs() -> None:
    assert KIND_INPUTS[("rollout", "logps")] == ("policy_logps", "old_logps", "completion_mask")
    assert set(ROLLOUT) >= {"ppo", "rloo", "grpo", "dr_grpo", "remax", "best_of_n"}


@pytest.mark.parametrize("name", ROLLOUT)
def test_registered_and_exported(name: str) -> None:
    spec = loss_spec(name)
    assert getattr(prefopt.losses, name) is spec.fn
    assert spec.paper and spec.formula and spec.summary
    assert inspect.signature(spec.fn).return_annotation in ("LossOutput", prefopt.LossOutput)
    for h in spec.hparams:
        if h.default is not None:
            assert h.validate(name, h.default) == h.default


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ROLLOUT)
def test_adversarial_grid_is_finite(name: str, dtype: torch.dtype) -> None:
    spec = loss_spec(name)
    kwargs = rollout_inputs(spec, dtype, adversarial=True)
    out = spec.fn(**kwargs)
    assert isinstance(out, prefopt.LossOutput)
    assert out.loss.dim() == 0 and out.loss.dtype == torch.float32, "bf16 inputs are upcast"
    assert torch.isfinite(out.loss), f"{name}: loss {out.loss}"
    assert out.per_example.shape == (S,) and torch.isfinite(out.per_example).all()
    assert out.per_example[3] == 0, "a fully masked row contributes nothing"
    for key, value in out.metrics.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, f"{name}: metric {key} is not a scalar"
        assert not value.requires_grad and torch.isfinite(value), f"{name}: metric {key} = {value}"
    out.loss.backward()
    for n in _trainable(kwargs):
        grad = kwargs[n].grad  # type: ignore[union-attr]
        assert grad is not None and torch.isfinite(grad.float()).all(), f"{name}: gradient of {n}: {grad}"
        assert (grad[~_mask()] == 0).all(), f"{name}: gradient reaches padding of {n}"
    for n in _targets(kwargs):
        assert kwargs[n].grad is None, f"{name}: gradient flows into {n}"  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ROLLOUT)
def test_fully_masked_batch_is_finite_and_zero(name: str) -> None:
    spec = loss_spec(name)
    kwargs = rollout_inputs(spec, torch.float32, adversarial=False)
    kwargs["completion_mask"] = torch.zeros(S, T, dtype=torch.bool)
    out = spec.fn(**kwargs)
    assert out.loss == 0 and (out.per_example == 0).all()
    out.loss.backward()
    assert (kwargs["policy_logps"].grad == 0).all()  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ROLLOUT)
def test_padding_contents_do_not_matter(name: str) -> None:
    spec = loss_spec(name)
    kwargs = rollout_inputs(spec, torch.float64, adversarial=False)
    mask = _mask()
    first = spec.fn(**kwargs)
    scrambled = dict(kwargs)
    for n in ("policy_logps", *TOKEN_INPUTS):
        if isinstance(kwargs.get(n), torch.Tensor):
            t = kwargs[n].detach()  # type: ignore[union-attr]
            scrambled[n] = torch.where(mask, t, torch.full_like(t, 123.0 if n != "old_logps" else -1e3))
    second = spec.fn(**scrambled)
    torch.testing.assert_close(second.loss, first.loss)
    torch.testing.assert_close(second.per_example, first.per_example)


@pytest.mark.parametrize("name", ROLLOUT)
def test_gradients_are_informative(name: str) -> None:
    """A non-zero policy gradient on-policy (ρ = 1 lies inside every clip range), and off-policy unless the
    clipped branch is active at every token (GSPO clips its sequence ratio at 1 ± 4e-4: the grid's log-ratios
    of ~0.3 per token can leave every sequence clipped)."""
    spec = loss_spec(name)
    kwargs = rollout_inputs(spec, torch.float32, adversarial=False)
    on_policy = {**kwargs, "policy_logps": kwargs["policy_logps"].detach().requires_grad_(True), "old_logps": None}
    spec.fn(**on_policy).loss.backward()
    assert on_policy["policy_logps"].grad.abs().sum() > 0, f"{name}: zero policy gradient on-policy"
    out = spec.fn(**kwargs)
    out.loss.backward()
    all_clipped = float(out.metrics.get("policy/clipfrac", 0.0)) == 1.0
    grad = kwargs["policy_logps"].grad  # type: ignore[union-attr]
    assert all_clipped or grad.abs().sum() > 0, f"{name}: zero policy gradient"


@pytest.mark.parametrize("name", ROLLOUT)
def test_gradcheck_float64(name: str) -> None:
    spec = loss_spec(name)
    kwargs = rollout_inputs(spec, torch.float64, adversarial=False, seed=1)
    keys = _trainable(kwargs)
    if name in STOP_GRADIENT:
        kwargs["old_logps"] = None

    def f(*tensors: torch.Tensor) -> torch.Tensor:
        return spec.fn(**{**kwargs, **dict(zip(keys, tensors))}).loss

    assert torch.autograd.gradcheck(f, tuple(kwargs[k] for k in keys), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ROLLOUT)
def test_old_logps_none_means_on_policy(name: str) -> None:
    spec = loss_spec(name)
    kwargs = rollout_inputs(spec, torch.float64, adversarial=False)
    explicit = spec.fn(**{**kwargs, "old_logps": kwargs["policy_logps"].detach()})  # type: ignore[union-attr]
    implicit = spec.fn(**{**kwargs, "old_logps": None})
    torch.testing.assert_close(implicit.loss, explicit.loss)


@pytest.mark.parametrize("name", ROLLOUT)
def test_bad_shapes_are_clear_errors(name: str) -> None:
    spec = loss_spec(name)
    kwargs = rollout_inputs(spec, torch.float32, adversarial=False)
    with pytest.raises(LossInputError, match="completion_mask has shape"):
        spec.fn(**{**kwargs, "completion_mask": _mask()[:, :-1]})
    with pytest.raises(LossInputError, match="completion_mask must be bool"):
        spec.fn(**{**kwargs, "completion_mask": _mask().float()})
    with pytest.raises(LossInputError, match=r"policy_logps has shape \(6,\)"):
        spec.fn(**{**kwargs, "policy_logps": torch.zeros(S)})
    with pytest.raises(LossInputError, match="old_logps has shape"):
        spec.fn(**{**kwargs, "old_logps": torch.zeros(S, T + 1)})
    if "rewards" in spec.extra_inputs:
        with pytest.raises(LossInputError, match="rewards"):
            spec.fn(**{**kwargs, "rewards": torch.zeros(B + 1, K)})
        with pytest.raises(LossInputError, match="rewards is required"):
            spec.fn(**{**kwargs, "rewards": None})


@pytest.mark.parametrize("name", [n for n in ROLLOUT if loss_spec(n).needs_reference])
def test_missing_reference_is_a_clear_error_unless_beta_is_zero(name: str) -> None:
    spec = loss_spec(name)
    kwargs = rollout_inputs(spec, torch.float32, adversarial=False)
    kwargs.pop("ref_logps")
    with pytest.raises(LossInputError, match="ref_logps"):
        spec.fn(**kwargs)
    if "beta" in spec.defaults() and _beta_can_be_zero(spec):  # online_dpo's β is DPO's, not a KL weight
        assert torch.isfinite(spec.fn(**kwargs, beta=0.0).loss)


def _beta_can_be_zero(spec: LossSpec) -> bool:
    try:
        spec.validate_hparams({"beta": 0.0})
    except (LossInputError, ValueError):
        return False
    return True


@pytest.mark.parametrize("name", [n for n in ROLLOUT if "beta" in loss_spec(n).defaults()])
def test_positive_beta_needs_the_reference_even_when_the_default_is_zero(name: str) -> None:
    spec = loss_spec(name)
    kwargs = rollout_inputs(spec, torch.float32, adversarial=False)
    kwargs.pop("ref_logps")
    with pytest.raises(LossInputError, match="ref_logps"):
        spec.fn(**kwargs, beta=0.5)


def test_registry_binds_rollout_losses_by_name() -> None:
    spec = loss_spec("grpo")
    kwargs = rollout_inputs(spec, torch.float32, adversarial=False)
    bound = prefopt.get_loss("grpo", beta=0.1)
    torch.testing.assert_close(bound(**kwargs).loss, prefopt.losses.grpo(**kwargs, beta=0.1).loss)
    with pytest.raises(LossInputError, match="clip_range"):
        prefopt.get_loss("ppo", clip_range=1.5)


def test_integer_masks_are_accepted_only_as_zero_one() -> None:
    spec = loss_spec("grpo")
    kwargs = rollout_inputs(spec, torch.float32, adversarial=False)
    as_bool = spec.fn(**kwargs).loss
    torch.testing.assert_close(spec.fn(**{**kwargs, "completion_mask": _mask().long()}).loss, as_bool)
    with pytest.raises(LossInputError, match="0/1 integers"):
        spec.fn(**{**kwargs, "completion_mask": _mask().long() * 2})
