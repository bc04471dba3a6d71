"""Declarations of what a loss reads beyond one micro-batch (`LossSpec.state`, `LossSpec.batch_inputs`) and of
the online loop's per-algorithm choices (`accepts_pair_loss`): checked at registration, and the built-in
declarations of prefopt/losses/unpaired.py (BCO's running δ, KTO's z₀) computed by hand."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor

import prefopt
import prefopt.registry as registry
from prefopt.engine import SequenceLogProbs
from prefopt.loss_state import LossStateSpec
from prefopt.losses.kinds import UnpairedTerms, unpaired_loss
from prefopt.losses.unpaired import BCORunningDelta, BCOState, kto_reference_point
from prefopt.registry import POSITIVE, HParam, loss_spec
from prefopt.train.step import check_loop_can_feed

BETA = [HParam("beta", 0.1, "β", POSITIVE)]


@pytest.fixture
def scratch_registry() -> Iterator[None]:
    prefopt.list_losses()
    before = set(registry._REGISTRY)
    yield
    for name in set(registry._REGISTRY) - before:
        del registry._REGISTRY[name]


def _state(hparams: Mapping[str, Any]) -> BCORunningDelta:
    return BCORunningDelta.from_hparams(hparams)


def test_built_in_declarations() -> None:
    assert loss_spec("bco").loop_inputs == ("state",) and not loss_spec("bco").batch_inputs
    assert loss_spec("kto").loop_inputs == ("kl",) and loss_spec("kto").state is None
    assert loss_spec("alpha_dpo").loop_inputs == ("state",) and loss_spec("alpha_dpo").state.includes_current
    assert [n for n in prefopt.list_losses() if loss_spec(n).loop_inputs] == ["alpha_dpo", "bco", "kto"]
    assert [n for n in prefopt.list_losses() if loss_spec(n).accepts_pair_loss] == ["online_dpo"]
    for name in ("alpha_dpo", "bco", "kto", "dpo"):
        check_loop_can_feed(loss_spec(name))  # the loop feeds what the spec declares


def test_a_served_input_must_be_a_body_input(scratch_registry) -> None:
    with pytest.raises(TypeError, match=r"serve \['delta'\], which the loss does not take"):

        @unpaired_loss(
            "bad_state", paper="p", formula="f", hparams=BETA, state=LossStateSpec(inputs=("delta",), init=_state)
        )
        def bad_state(t: UnpairedTerms, *, beta: float) -> Tensor:
            return t.ratio

    with pytest.raises(ValueError, match="declared twice"):

        @unpaired_loss(
            "twice",
            paper="p",
            formula="f",
            hparams=BETA,
            state=LossStateSpec(inputs=("x",), init=_state),
            batch_inputs={"x": lambda b: 0},
        )
        def twice(t: UnpairedTerms, *, x: float | None, beta: float) -> Tensor:
            return t.ratio


def test_online_declarations_are_for_rollout_losses_only() -> None:
    rest = ("paper", "formula", (), False, "logps", False, False, {})  # LossDeclaration's fields after the kind
    with pytest.raises(ValueError, match="served by the offline training loop"):
        registry.LossDeclaration("stateful_rollout", "rollout", False, *rest, state=LossStateSpec(("s",), _state))
    with pytest.raises(ValueError, match="accepts_pair_loss is for rollout losses"):
        registry.LossDeclaration("offline_pairs", "paired", True, *rest, accepts_pair_loss=True)


def test_bco_running_delta_observes_updates_and_round_trips() -> None:
    """r̂ = β·(log π_θ − log π_ref) = 0.5·((−1) − (−2), (−4) − (−3)) = (0.5, −0.5); after both, δ = 0."""
    state = BCORunningDelta.from_hparams({"beta": 0.5})
    policy = SequenceLogProbs(torch.tensor([-1.0, -4.0]), torch.tensor([3, 3]), group_size=1)
    reference = SequenceLogProbs(torch.tensor([-2.0, -3.0]), torch.tensor([3, 3]), group_size=1)
    rewards = state.observe(policy, reference)
    assert rewards.tolist() == [0.5, -0.5]
    state.update(rewards[:1])
    assert state.inputs()["state"].delta == 0.5
    saved = state.state_dict()
    assert saved == {"mean": 0.5, "m2": 0.0, "count": 1}
    restored = BCORunningDelta.from_hparams({"beta": 0.5})
    restored.load_state_dict(saved)
    state.update(rewards[1:])
    restored.update(rewards[1:])
    assert restored.inputs()["state"] == state.inputs()["state"] == BCOState(mean=0.0, m2=0.5, count=2)


@dataclass
class _FakeBatch:
    """A `GlobalBatch` on one process whose 'models' score a row as −(prompt length)·(completion length) under
    π_θ and −(completion length) under π_ref."""

    rows: Sequence[Mapping[str, Any]]
    positions: Sequence[int]
    hparams: Mapping[str, Any]

    def score(self, rows: Sequence[Mapping[str, Any]]) -> tuple[SequenceLogProbs, SequenceLogProbs]:
        p = torch.tensor([-float(len(r["prompt_ids"]) * len(r["completion_ids"])) for r in rows])
        q = torch.tensor([-float(len(r["completion_ids"])) for r in rows])
        count = torch.tensor([len(r["completion_ids"]) for r in rows])
        return SequenceLogProbs(p, count, group_size=1), SequenceLogProbs(q, count, group_size=1)

    def all_reduce_sum(self, values: Tensor) -> Tensor:
        return values


def test_kto_reference_point_over_mismatched_pairs() -> None:
    """Rows (prompt, completion lengths): (1, 2), (1, 3) share prompt [7], (2, 1) has [8, 9]. Mismatched partners:
    0 → 2, 1 → 2, 2 → 0. Pairs (|x|, |y|) = (1, 1), (1, 1), (2, 2): log-ratios −|x||y| + |y| = 0, 0, −2; the
    mean −2/3 is clamped to z₀ = 0. With π_θ scoring +|x||y| instead it is (2 + 2 + 6)/3 = 10/3."""
    rows = [
        {"prompt_ids": [7], "completion_ids": [1, 2]},
        {"prompt_ids": [7], "completion_ids": [1, 2, 3]},
        {"prompt_ids": [8, 9], "completion_ids": [4]},
    ]
    batch = _FakeBatch(rows, [0, 1, 2], {})
    assert float(kto_reference_point(batch)) == 0.0

    class Flipped(_FakeBatch):
        def score(self, rows):
            policy, reference = super().score(rows)
            return SequenceLogProbs(-policy.sum, policy.count, group_size=1), reference

    assert float(kto_reference_point(Flipped(rows, [0, 1, 2], {}))) == pytest.approx(10 / 3)
