"""Weighted sums of registered losses (`prefopt.combine_losses`, MPO): values, gradients, metrics, the engine-output
call, the merged declaration, hyper-parameter routing, running state, and every mistake as one clear error."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import prefopt
from prefopt import registry
from prefopt.engine import SequenceLogProbs
from prefopt.loss_state import LossStateSpec
from prefopt.losses.base import neg_logsigmoid
from prefopt.losses.combine import parse_combination
from prefopt.losses.combined import weight_text
from prefopt.losses.kinds import Reported, UnpairedTerms, unpaired_loss
from prefopt.registry import POSITIVE, HParam, LossInputError, UnknownLossError

F64 = torch.float64
# Two pairs, as in docs/losses.md: ρ_w = [0.5, 0.5], ρ_l = [−1, 0.5], Δ = [1.5, 0].
POLICY_CHOSEN, POLICY_REJECTED = [-12.0, -30.5], [-14.0, -29.0]
REF_CHOSEN, REF_REJECTED = [-12.5, -31.0], [-13.0, -29.5]
CHOSEN_LENGTHS, REJECTED_LENGTHS = [4.0, 10.0], [5.0, 9.0]


def _pair(dtype: torch.dtype = F64) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    tensors = [
        torch.tensor(POLICY_CHOSEN, dtype=dtype, requires_grad=True),
        torch.tensor(POLICY_REJECTED, dtype=dtype, requires_grad=True),
        torch.tensor(REF_CHOSEN, dtype=dtype),
        torch.tensor(REF_REJECTED, dtype=dtype),
    ]
    lengths = {
        "chosen_lengths": torch.tensor(CHOSEN_LENGTHS, dtype=dtype),
        "rejected_lengths": torch.tensor(REJECTED_LENGTHS, dtype=dtype),
    }
    return tensors, lengths


@pytest.fixture
def scratch_registry() -> Iterator[None]:
    """Losses registered inside a test are removed afterwards (the registry is process-wide)."""
    prefopt.list_losses()
    before = set(registry._REGISTRY)
    yield
    for name in set(registry._REGISTRY) - before:
        del registry._REGISTRY[name]


# ── values and gradients ────────────────────────────────────────────────────────────────────────────────────


def test_dpo_plus_sft_by_hand() -> None:
    """dpo:0.8+sft:1 at β = 0.5 (not DPO's default 0.1):
    dpo  = −log σ(β·Δ) = [log(1 + e^−0.75), log 2]            (Δ = [1.5, 0])
    sft  = −logπ(y_w)/|y_w| = [12/4, 30.5/10] = [3, 3.05]
    per_example = 0.8·dpo + 1·sft = [0.8·0.386959… + 3, 0.8·0.693147… + 3.05], loss = its mean."""
    dpo = [math.log1p(math.exp(-0.75)), math.log(2.0)]
    sft = [3.0, 3.05]
    want = [0.8 * d + s for d, s in zip(dpo, sft)]
    tensors, lengths = _pair()
    out = prefopt.combine_losses({"dpo": 0.8, "sft": 1.0}, beta=0.5)(*tensors, **lengths)
    assert out.per_example.tolist() == pytest.approx(want, abs=1e-12)
    assert out.loss.item() == pytest.approx(sum(want) / 2, abs=1e-12)
    assert float(out.metrics["dpo/loss"]) == pytest.approx(sum(dpo) / 2, abs=1e-12)
    assert float(out.metrics["sft/loss"]) == pytest.approx(3.025, abs=1e-12)
    assert float(out.metrics["dpo/rewards/margins"]) == pytest.approx(0.5 * 0.75, abs=1e-12)  # β·mean(Δ)


def test_the_documented_mpo_example() -> None:
    """docs/losses.md's numbers: dpo 0.6571, bco_pair 1.3499, sft 3.0250 at β = 0.1, and their weighted sum."""
    tensors, lengths = _pair(torch.float32)
    out = prefopt.combine_losses({"dpo": 0.8, "bco_pair": 0.2, "sft": 1.0}, beta=0.1)(*tensors, **lengths)
    parts = {n: float(out.metrics[f"{n}/loss"]) for n in ("dpo", "bco_pair", "sft")}
    assert parts == pytest.approx({"dpo": 0.6571, "bco_pair": 1.3499, "sft": 3.025}, abs=1e-4)
    assert out.loss.item() == pytest.approx(0.8 * parts["dpo"] + 0.2 * parts["bco_pair"] + parts["sft"], abs=1e-6)
    assert out.loss.item() == pytest.approx(3.8206, abs=1e-4)


def test_gradients_are_the_weighted_sum_of_the_parts() -> None:
    g = torch.Generator().manual_seed(0)
    weights = {"dpo": 0.8, "bco_pair": 0.2, "sft": 1.0}
    values = [-torch.rand(5, generator=g, dtype=F64) * 20 - 1 for _ in range(4)]
    lengths = {"chosen_lengths": torch.full((5,), 7.0, dtype=F64), "rejected_lengths": torch.full((5,), 3.0, dtype=F64)}

    def grads(loss: Any) -> list[torch.Tensor]:
        policy = [values[0].clone().requires_grad_(True), values[1].clone().requires_grad_(True)]
        loss(*policy, values[2], values[3], **lengths).loss.backward()
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in policy]

    combined = grads(prefopt.combine_losses(weights, beta=0.3))
    parts = [grads(prefopt.get_loss(n, **({} if n == "sft" else {"beta": 0.3}))) for n in weights]
    for i in range(2):
        want = sum(w * part[i] for w, part in zip(weights.values(), parts))
        torch.testing.assert_close(combined[i], want, rtol=0, atol=1e-12)
    assert combined[1].abs().sum() > 0  # the rejected side trains through dpo and bco_pair, not sft


def test_metrics_are_every_parts_under_its_name() -> None:
    tensors, lengths = _pair()
    out = prefopt.combine_losses({"dpo": 0.8, "sft": 1.0}, beta=0.5)(*tensors, **lengths)
    dpo = prefopt.get_loss("dpo", beta=0.5)(*tensors, **lengths)
    sft = prefopt.get_loss("sft")(*tensors, **lengths)
    want = {"dpo/loss": dpo.loss, "sft/loss": sft.loss}
    want.update({f"dpo/{k}": v for k, v in dpo.metrics.items()})
    want.update({f"sft/{k}": v for k, v in sft.metrics.items()})
    assert set(out.metrics) == set(want)
    for key, value in want.items():
        assert out.metrics[key].item() == pytest.approx(value.item(), abs=1e-12), key
        assert not out.metrics[key].requires_grad


def test_engine_outputs_in_place_of_tensors() -> None:
    """combo(policy_out, ref_out): the counts become every part's lengths, as for a single loss."""
    tensors, lengths = _pair()
    count = torch.tensor(CHOSEN_LENGTHS + REJECTED_LENGTHS).long()
    policy_out = SequenceLogProbs(torch.cat([tensors[0], tensors[1]]), count, group_size=2)
    ref_out = SequenceLogProbs(torch.cat([tensors[2], tensors[3]]), count, group_size=2)
    combo = prefopt.get_loss("dpo:0.8+bco_pair:0.2+sft:1", beta=0.1)
    from_outputs, from_tensors = combo(policy_out, ref_out), combo(*tensors, **lengths)
    torch.testing.assert_close(from_outputs.per_example, from_tensors.per_example, rtol=0, atol=1e-12)
    assert float(from_outputs.metrics["sft/loss"]) == pytest.approx(3.025, abs=1e-12)


# ── the declaration and the spelling ────────────────────────────────────────────────────────────────────────


def test_spec_merges_the_parts_declarations() -> None:
    mpo = prefopt.combine_losses({"dpo": 0.8, "bco_pair": 0.2, "sft": 1.0}).spec
    assert mpo.name == "dpo:0.8+bco_pair:0.2+sft:1"
    assert (mpo.kind, mpo.scores, mpo.needs_reference, mpo.needs_lengths) == ("paired", "logps", True, True)
    assert mpo.needs_nonpositive_logps and not mpo.batch_dependent and mpo.state is None
    assert [h.name for h in mpo.hparams] == ["dpo.beta", "bco_pair.beta"]
    assert mpo.defaults() == {"dpo.beta": 0.1, "bco_pair.beta": 0.01}
    free = prefopt.loss_spec("orpo:1+sft:0.5")
    assert (free.needs_reference, free.needs_lengths) == (False, True)
    assert prefopt.loss_spec("dpo:1+bco_pair:1").needs_lengths is False
    assert prefopt.loss_spec("aot:1+dpo:1").batch_dependent is True
    unpaired = prefopt.loss_spec("kto:1+bco:0.5")
    assert unpaired.kind == "unpaired" and set(unpaired.extra_inputs) == {"kl", "state"}
    assert unpaired.state is not None and unpaired.state.inputs == ("state",)
    assert list(unpaired.batch_inputs) == ["kl"] and set(unpaired.loop_inputs) == {"kl", "state"}


def test_the_spelling_names_the_combination_everywhere() -> None:
    combo = prefopt.combine_losses({"dpo": 0.8, "bco_pair": 0.2, "sft": 1.0}, beta=0.1)
    assert prefopt.loss_spec(combo.spec.name) is combo.spec
    assert prefopt.loss_spec("dpo:0.80 + bco_pair:.2 + sft") is combo.spec  # read, then written shortest
    bound = prefopt.get_loss("dpo:0.8+bco_pair:0.2+sft:1", beta=0.1)
    assert isinstance(bound, prefopt.CombinedLoss) and bound.hparams == combo.hparams
    assert not any(":" in n or "+" in n for n in prefopt.list_losses())
    assert parse_combination("dpo:0.8+sft") == (("dpo", 0.8), ("sft", 1.0))
    assert [weight_text(w) for w in (1.0, 0.2, 1e20, 2.5e-7, 3)] == ["1", "0.2", "1e20", "2.5e-07", "3"]
    assert prefopt.loss_spec("dpo:1e20+sft:1").parts[0][1] == 1e20


def test_hyper_parameters_shared_per_part_and_bound() -> None:
    """`beta` goes to every part that takes it, `dpo.beta` to one part and wins; a BoundLoss keeps its values; a
    call's values override the bound ones for that call."""
    combo = prefopt.combine_losses({"dpo": 0.8, "bco_pair": 0.2, "sft": 1.0}, beta=0.3, **{"dpo.beta": 0.2})
    assert combo.hparams == {"dpo.beta": 0.2, "bco_pair.beta": 0.3}
    kept = prefopt.combine_losses([(prefopt.get_loss("dpo", beta=0.05), 0.8), ("bco_pair", 0.2)], beta=0.3)
    assert kept.hparams == {"dpo.beta": 0.05, "bco_pair.beta": 0.3}
    tensors, lengths = _pair()
    called = combo(*tensors, **lengths, beta=0.7)
    rebound = prefopt.combine_losses({"dpo": 0.8, "bco_pair": 0.2, "sft": 1.0}, beta=0.7)(*tensors, **lengths)
    torch.testing.assert_close(called.per_example, rebound.per_example, rtol=0, atol=0)
    assert float(called.metrics["dpo/rewards/margins"]) == pytest.approx(0.7 * 0.75, abs=1e-7)  # float32 metric


@pytest.mark.parametrize(
    ("hparams", "words"),
    [
        ({"gamma": 1.0}, ("dpo:1+sft:1", "no part takes hyper-parameter 'gamma'", "dpo: beta", "sft: none")),
        ({"ipo.beta": 0.1}, ("unknown part", "'ipo'", "PART.NAME")),
        ({"dpo.bta": 0.1}, ("'dpo.bta'", "Did you mean 'dpo.beta'")),
        ({"beta": -1.0}, ("dpo.beta=-1.0", "domain")),
    ],
)
def test_hyper_parameter_mistakes(hparams: dict[str, float], words: tuple[str, ...]) -> None:
    with pytest.raises((UnknownLossError, LossInputError)) as err:
        prefopt.get_loss("dpo:1+sft:1", **hparams)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    ("parts", "error", "words"),
    [
        ({"dpo": 0.8, "kto": 1.0}, LossInputError, ("different data kinds", "dpo: paired", "kto: unpaired")),
        ("dpoo:1+sft:1", UnknownLossError, ("unknown loss", "'dpoo'", "Did you mean 'dpo'")),
        ({"dpo": -0.5, "sft": 1.0}, LossInputError, ("weight of dpo is -0.5", "≥ 0")),
        ({"dpo": math.nan}, LossInputError, ("weight of dpo is nan",)),
        ({"dpo": True}, LossInputError, ("weight of dpo is True",)),
        ("dpo:x+sft:1", LossInputError, ("weight of dpo is 'x'", "not a number")),
        ("dpo:1+sft:1+", LossInputError, ("incomplete", "NAME:WEIGHT")),
        ([("dpo", 1.0), ("dpo", 2.0)], LossInputError, ("dpo is listed twice",)),
        ({"dpo": 0.0, "sft": 0.0}, LossInputError, ("every weight is 0",)),
        ({"ppo": 1.0, "grpo": 1.0}, LossInputError, ("rollout", "offline log-prob losses")),
        ({"bradley_terry": 1.0}, LossInputError, ("reward-model",)),
        ([("dpo:1+sft:1", 1.0)], LossInputError, ("one registered loss",)),
        (["dpo"], LossInputError, ("mapping name → weight",)),
    ],
)
def test_combination_mistakes(parts: Any, error: type[Exception], words: tuple[str, ...]) -> None:
    with pytest.raises(error) as err:
        prefopt.combine_losses(parts)
    for word in words:
        assert word in str(err.value)


def test_a_weight_of_zero_logs_without_training() -> None:
    tensors, lengths = _pair()
    out = prefopt.combine_losses({"dpo": 1.0, "sft": 0.0})(*tensors, **lengths)
    alone = prefopt.get_loss("dpo")(*tensors, **lengths)
    torch.testing.assert_close(out.per_example, alone.per_example, rtol=0, atol=0)
    assert float(out.metrics["sft/loss"]) == pytest.approx(3.025, abs=1e-12)


# ── running state and batch inputs ──────────────────────────────────────────────────────────────────────────


def test_kto_and_bco_share_one_call_and_keep_their_state_by_name() -> None:
    """kto takes `kl` (a batch input), bco `state` (running δ): the combination's call takes both, its state is
    bco's under the name "bco", observe is [S, 1], and a fresh state after load_state_dict is the same."""
    combo = prefopt.combine_losses({"kto": 1.0, "bco": 0.5}, beta=0.2)
    spec = combo.spec
    state = spec.state.init({**spec.defaults(), **combo.hparams})
    assert state.states["bco"].beta == 0.2
    policy, ref = torch.tensor([-3.0, -4.0, -5.0], dtype=F64), torch.tensor([-3.5, -4.0, -4.0], dtype=F64)
    labels = torch.tensor([True, False, True])
    out = combo(policy, ref, labels, kl=torch.tensor(0.1, dtype=F64), **state.inputs())
    kto = prefopt.get_loss("kto", beta=0.2)(policy, ref, labels, kl=torch.tensor(0.1, dtype=F64))
    bco = prefopt.get_loss("bco", beta=0.2)(policy, ref, labels, **state.inputs())
    torch.testing.assert_close(out.per_example, kto.per_example + 0.5 * bco.per_example, rtol=0, atol=1e-12)
    engine_policy = SequenceLogProbs(policy, torch.tensor([2, 3, 4]))
    engine_ref = SequenceLogProbs(ref, torch.tensor([2, 3, 4]))
    stats = state.observe(engine_policy, engine_ref)
    assert stats.shape == (3, 1)
    torch.testing.assert_close(stats[:, 0], 0.2 * (policy - ref))
    state.update(stats)
    saved = state.state_dict()
    assert set(saved) == {"bco"} and saved["bco"]["count"] == 3
    fresh = spec.state.init(spec.defaults())
    fresh.load_state_dict(saved)
    assert fresh.state_dict() == saved


@dataclass
class _Shift:
    """A running mean of β·ρ under the input name `shift` (two scratch losses declare it, each its own way)."""

    beta: float
    total: float = 0.0

    def inputs(self) -> dict[str, Any]:
        return {"shift": self.total}

    def observe(self, policy: Any, reference: Any) -> torch.Tensor:
        return (self.beta * (policy.sum - reference.sum)).detach()

    def update(self, stats: torch.Tensor) -> None:
        self.total += float(stats.sum())

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total}

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        self.total = saved["total"]


def _register_shifted(name: str) -> None:
    @unpaired_loss(
        name,
        paper="(test)",
        formula="−log σ(βρ − shift)",
        hparams=[HParam("beta", 0.1, "β", POSITIVE)],
        state=LossStateSpec(inputs=("shift",), init=lambda hparams: _Shift(hparams["beta"])),
    )
    def body(t: UnpairedTerms, *, shift: float | None, beta: float) -> Reported:
        return Reported(neg_logsigmoid(beta * t.ratio - (shift or 0.0)))


def test_two_parts_serving_one_input_differently_are_refused(scratch_registry) -> None:
    _register_shifted("shift_a")
    _register_shifted("shift_b")
    with pytest.raises(LossInputError, match="shift_a and shift_b both take the input 'shift'"):
        prefopt.combine_losses({"shift_a": 1.0, "shift_b": 1.0})
    assert prefopt.loss_spec("shift_a:1+kto:1").state is not None  # one stateful part combines fine
