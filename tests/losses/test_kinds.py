"""The registration helpers of prefopt/losses/kinds.py and the declarations they build.

Checked: the documented example of adding a paired loss runs as written (registry docstring and
docs/architecture.md) and gives the hand-computed value; public signatures take their defaults from the
HParams; a body gets only what it declares (a reference-free body never sees the reference, which is still
checked); bodies with defaults, unread hyper-parameters or direct inputs are refused at registration;
a non-optional body parameter never receives None; rollout defaults of the online loop come from the spec.
"""

from __future__ import annotations

import inspect
import math
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor

import prefopt
import prefopt.registry as registry
from prefopt.losses.bodies import register_body
from prefopt.losses.kinds import PairedTerms, PolicyPair, Reported, paired_loss, rollout_loss
from prefopt.online.rollout_step import Recipe, recipe_for
from prefopt.registry import POSITIVE, HParam, LossInputError, loss_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def scratch_registry() -> Iterator[None]:
    """Losses registered inside a test are removed afterwards (the registry is process-wide)."""
    prefopt.list_losses()  # register the built-in losses first
    before = set(registry._REGISTRY)
    yield
    for name in set(registry._REGISTRY) - before:
        del registry._REGISTRY[name]


def _registry_example() -> str:
    doc = registry.__doc__ or ""
    block = doc.split("This runs as written (tests/losses/test_kinds.py):\n", 1)[1].split("\nWhat the helper", 1)[0]
    return textwrap.dedent(block)


def _architecture_example() -> str:
    section = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").split("### Adding a paired loss", 1)[1]
    return re.findall(r"```python\n(.*?)```", section, re.S)[0]


@pytest.mark.parametrize("source", [_registry_example, _architecture_example], ids=["registry", "architecture"])
def test_the_documented_example_runs_and_gives_the_hand_value(source, scratch_registry) -> None:
    """ρ_w = (0.5, 0.5), ρ_l = (−1, 0.5), Δ = (1.5, 0); with β = 0.1, γ = 0.2 the logits β·Δ − γ are
    (−0.05, −0.2), so the loss is the mean of log(1 + e^0.05) and log(1 + e^0.2)."""
    namespace: dict = {}
    exec(compile(source(), source.__name__, "exec"), namespace)  # noqa: S102 - our own docs
    out = namespace["out"]
    expected = (math.log1p(math.exp(0.05)) + math.log1p(math.exp(0.2))) / 2
    assert abs(float(out.loss.detach()) - expected) < 1e-6
    assert float(out.metrics["rewards/margins"]) == pytest.approx(0.1 * (1.5 + 0.0) / 2)
    assert namespace["policy_chosen"].grad is not None
    assert str(inspect.signature(prefopt.get_loss("margin_dpo").spec.fn)) == (
        "(policy_chosen_logps: 'Tensor', policy_rejected_logps: 'Tensor', ref_chosen_logps: 'Tensor | None' = None, "
        "ref_rejected_logps: 'Tensor | None' = None, *, chosen_lengths: 'Tensor | None' = None, "
        "rejected_lengths: 'Tensor | None' = None, beta: 'float' = 0.1, gamma: 'float' = 0.5) -> 'LossOutput'"
    )


def test_both_copies_of_the_example_are_the_same_code() -> None:
    strip = lambda text: [ln for ln in text.splitlines() if ln.strip()]  # noqa: E731
    assert strip(_registry_example()) == strip(_architecture_example())


@pytest.mark.parametrize("name", prefopt.list_losses())
def test_public_signature_defaults_are_the_hparam_defaults(name: str) -> None:
    spec = loss_spec(name)
    params = inspect.signature(spec.fn).parameters
    for h in spec.hparams:
        assert params[h.name].kind is inspect.Parameter.KEYWORD_ONLY and params[h.name].default == h.default
    assert list(params)[: len(spec.inputs)] == list(spec.inputs)


def test_a_reference_free_body_gets_no_reference_but_the_reference_is_still_checked(scratch_registry) -> None:
    seen: list[object] = []

    @paired_loss("probe_free", needs_reference=False, paper="p", formula="f")
    def probe_free(t: PolicyPair) -> Reported:
        """Probe."""
        seen.append(t)
        return Reported(-t.policy_margin, rewards=(t.chosen_logps, t.rejected_logps))

    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    with_ref = probe_free(pc, pr, torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -1.5]))
    without = probe_free(pc, pr)
    assert torch.equal(with_ref.per_example, without.per_example)
    assert all(type(t) is PolicyPair for t in seen), "a reference-free body never receives the reference"
    with pytest.raises(LossInputError, match="ref_chosen_logps has shape"):
        probe_free(pc, pr, torch.zeros(3), torch.zeros(3))
    with pytest.raises(LossInputError, match="all of .* or none"):
        probe_free(pc, pr, torch.zeros(2), None)
    assert "Reference-free: reference arguments are accepted" in (probe_free.__doc__ or "")


def test_a_reference_free_body_must_report_its_rewards(scratch_registry) -> None:
    @paired_loss("probe_norewards", needs_reference=False, paper="p", formula="f")
    def probe_norewards(t: PolicyPair) -> Tensor:
        """Probe."""
        return -t.policy_margin

    with pytest.raises(TypeError, match="rewards=\\(chosen, rejected\\)"):
        probe_norewards(torch.tensor([-1.0]), torch.tensor([-2.0]))


def test_reading_lengths_that_were_not_given_is_a_clear_error(scratch_registry) -> None:
    beta = HParam("beta", 0.1, "β", POSITIVE)

    @paired_loss("probe_lengths", needs_reference=True, paper="p", formula="f", hparams=[beta])
    def probe_lengths(t: PairedTerms, *, beta: float) -> Tensor:
        """Probe (should have declared needs_lengths=True)."""
        return beta * t.normalized_margin

    x = torch.tensor([-1.0, -2.0])
    with pytest.raises(LossInputError, match="probe_lengths reads chosen_lengths"):
        probe_lengths(x, x, x, x)
    lengths = {"chosen_lengths": torch.tensor([1.0, 2.0]), "rejected_lengths": torch.tensor([1.0, 2.0])}
    assert torch.isfinite(probe_lengths(x, x, x, x, **lengths).loss)


def _declare(**overrides):
    kwargs = dict(needs_reference=True, paper="p", formula="f", hparams=[HParam("beta", 0.1, "β", POSITIVE)])
    return paired_loss("probe_bad", **{**kwargs, **overrides})


def test_bodies_that_would_repeat_or_ignore_declarations_are_refused(scratch_registry) -> None:
    with pytest.raises(TypeError, match="has a default"):

        @_declare()
        def with_default(t: PairedTerms, *, beta: float = 0.1) -> Tensor:
            return beta * t.margin

    with pytest.raises(TypeError, match="does not take"):

        @_declare()
        def ignores_beta(t: PairedTerms) -> Tensor:
            return t.margin

    with pytest.raises(TypeError, match="come in the terms object"):

        @_declare()
        def reads_directly(t: PairedTerms, *, beta: float, chosen_lengths: Tensor) -> Tensor:
            return beta * t.margin

    with pytest.raises(TypeError, match="keyword-only"):

        @_declare()
        def positional(t: PairedTerms, beta: float) -> Tensor:
            return beta * t.margin

    with pytest.raises(TypeError, match="declares a `beta` HParam"):
        _declare(hparams=[])

    with pytest.raises(TypeError, match="cannot take ref_logps"):

        @register_body("probe_bad", kind="ranked", needs_reference=False, paper="p", formula="f")
        def reads_reference(policy_logps: Tensor, ref_logps: Tensor) -> Tensor:
            return policy_logps - ref_logps

    assert "probe_bad" not in registry._REGISTRY


def test_a_non_optional_body_input_never_receives_none(scratch_registry) -> None:
    @rollout_loss("probe_rollout", needs_reference=False, paper="p", formula="f")
    def probe_rollout(policy_logps: Tensor, completion_mask: Tensor, *, rewards: Tensor) -> prefopt.LossOutput:
        """Probe."""
        per_example = -(policy_logps * completion_mask).sum(1) * rewards.reshape(-1)
        return prefopt.LossOutput(per_example.mean(), per_example, {})

    params = inspect.signature(probe_rollout).parameters
    assert params["rewards"].default is None and params["rewards"].annotation == "Tensor | None"
    logps, mask = -torch.rand(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(LossInputError, match="probe_rollout: rewards is required"):
        probe_rollout(logps, None, mask)
    assert torch.isfinite(probe_rollout(logps, None, mask, rewards=torch.ones(2, 1)).loss)


def test_online_defaults_live_in_the_spec(scratch_registry) -> None:
    assert dict(loss_spec("ppo").online_defaults) == {"num_samples": 1, "min_samples": 1, "epochs": 4, "token_mean": 1}
    assert recipe_for(loss_spec("ppo")) == Recipe(num_samples=1, min_samples=1, epochs=4, critic=True, token_mean=True)
    assert recipe_for(loss_spec("remax")) == Recipe(num_samples=1, min_samples=1, greedy_baseline=True)
    assert recipe_for(loss_spec("best_of_n")).min_samples == 1
    assert recipe_for(loss_spec("grpo")) == Recipe()
    with pytest.raises(ValueError, match="online_defaults are for rollout losses"):
        register_body(
            "probe_bad", kind="paired", needs_reference=False, paper="p", formula="f", online_defaults={"epochs": 2}
        )
    with pytest.raises(ValueError, match="keys are"):
        rollout_loss("probe_bad", needs_reference=False, paper="p", formula="f", online_defaults={"epoch": 2})
