"""Silent mistakes in library calls are clear errors, checked over the whole registry.

1. Zero-length completions. An engine output (`SequenceLogProbs`) may stand in for a kind's log-prob
   tensors; its counts become the lengths, and a count of 0 raises for every paired, unpaired and ranked
   log-prob loss (plain tensors with a length of 0 raise too: tests/losses/test_contract.py). Rollout
   losses see lengths through their mask, where an empty row contributes 0 by contract.
2. Labels are bool or 0/1: every loss that takes labels refuses 2, −1 and 0.5 instead of reading True.
3. A loss that reads the policy's log-probs as probabilities (declares `needs_nonpositive_logps`: an NLL,
   odds, exp as a weight) refuses a positive one, naming the argument; LOGP_TOLERANCE per token is allowed.
4. β = 0 leaves a rollout loss's KL term out entirely: a reference gap that overflows exp gives the same
   loss as no reference (it used to be 0·∞ = NaN in dr_grpo).
5. Every exp of a log-ratio sees it clamped to ±20 (verl's convention), so |log ρ| and |log π_ref/π| of 100
   and 1000 give a finite loss with finite gradients for every registered rollout loss.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import prefopt
from prefopt.engine import SequenceLogProbs
from prefopt.loss_inputs import LOGP_TOLERANCE
from prefopt.losses.policy_gradient import clipped_surrogate
from prefopt.losses.unpaired import kto_weight_check
from prefopt.registry import LossInputError, LossSpec, loss_spec
from prefopt.rl import LOG_RATIO_CLAMP, kl_k3, kl_penalized_rewards

from .test_contract import extra_inputs
from .test_rollout_contract import TRAINABLE, S, _mask, rollout_inputs

SEQUENCE_KINDS = ("paired", "unpaired", "ranked")
SEQUENCE_LOSSES = [
    n for n in prefopt.list_losses() if loss_spec(n).kind in SEQUENCE_KINDS and loss_spec(n).scores == "logps"
]
ROLLOUT = prefopt.list_losses("rollout")
GROUP = {"paired": 2, "unpaired": 1, "ranked": 3}
B = 3
LABELS = torch.tensor([True, False, True])


def _extras(spec: LossSpec) -> dict[str, object]:
    return extra_inputs(spec, torch.float64, n=B)


def engine_outputs(
    spec: LossSpec, *, empty: int | None = None, empty_ref: int | None = None, seed: int = 0
) -> tuple[SequenceLogProbs, SequenceLogProbs]:
    """Policy and reference outputs of one batch of `spec`'s kind (group-major, K = GROUP[kind]); the
    sequence `empty` (or only the reference's `empty_ref`) has no tokens: count 0 and sum 0."""
    g = torch.Generator().manual_seed(seed)
    k = GROUP[spec.kind]
    counts = torch.randint(1, 9, (k * B,), generator=g)
    policy = -(torch.rand(k * B, generator=g, dtype=torch.float64) * 2 + 0.1) * counts
    ref = -(torch.rand(k * B, generator=g, dtype=torch.float64) * 2 + 0.1) * counts
    ref_counts = counts.clone()
    if empty is not None:
        counts[empty], ref_counts[empty], policy[empty], ref[empty] = 0, 0, 0.0, 0.0
    if empty_ref is not None:
        ref_counts[empty_ref], ref[empty_ref] = 0, 0.0
    return SequenceLogProbs(policy.requires_grad_(True), counts, k), SequenceLogProbs(ref, ref_counts, k)


def _call_with_outputs(spec: LossSpec, policy: SequenceLogProbs, ref: SequenceLogProbs) -> prefopt.LossOutput:
    labels = [LABELS] if spec.kind == "unpaired" else []
    return spec.fn(policy, ref, *labels, **_extras(spec))


def _call_with_tensors(spec: LossSpec, policy: SequenceLogProbs, ref: SequenceLogProbs) -> prefopt.LossOutput:
    if spec.kind == "paired":
        args = [policy.chosen(), policy.rejected(), ref.chosen(), ref.rejected()]
        lengths = {"chosen_lengths": policy.chosen(policy.count), "rejected_lengths": policy.rejected(policy.count)}
    elif spec.kind == "unpaired":
        args, lengths = [policy.sum, ref.sum, LABELS], {"lengths": policy.count}
    else:
        args, lengths = [policy.grouped(), ref.grouped()], {"lengths": policy.grouped(policy.count)}
    return spec.fn(*args, **lengths, **_extras(spec))


# ------------------------------------------------------------------ 1. engine outputs and zero counts


@pytest.mark.parametrize("name", SEQUENCE_LOSSES)
def test_engine_outputs_equal_tensors_with_their_counts(name: str) -> None:
    """loss(policy_out, ref_out) is the plain call with the outputs' sums and counts as lengths."""
    spec = loss_spec(name)
    policy, ref = engine_outputs(spec)
    via_outputs = _call_with_outputs(spec, policy, ref)
    via_tensors = _call_with_tensors(spec, policy, ref)
    torch.testing.assert_close(via_outputs.loss, via_tensors.loss, rtol=0, atol=0)
    torch.testing.assert_close(via_outputs.per_example, via_tensors.per_example, rtol=0, atol=0)
    via_outputs.loss.backward()
    assert policy.sum.grad is not None and torch.isfinite(policy.sum.grad).all()


@pytest.mark.parametrize("name", SEQUENCE_LOSSES)
def test_zero_count_in_an_engine_output_is_a_clear_error(name: str) -> None:
    """Sequence 4 has no tokens: pair 1's rejected completion (paired), row 1 (ranked: its 2nd completion)."""
    spec = loss_spec(name)
    empty = 4 if spec.kind != "unpaired" else 1
    where = "policy_rejected_logps" if spec.kind == "paired" else "policy_logps"
    with pytest.raises(
        LossInputError,
        match=rf"{name}: {where} comes from an engine output whose completions "
        rf"have no tokens at rows \[1\].*raise max_length",
    ):
        _call_with_outputs(spec, *engine_outputs(spec, empty=empty))


@pytest.mark.parametrize("name", SEQUENCE_LOSSES)
def test_zero_count_in_the_reference_output_alone_is_a_clear_error(name: str) -> None:
    spec = loss_spec(name)
    where = "ref_chosen_logps" if spec.kind == "paired" else "ref_logps"
    with pytest.raises(
        LossInputError,
        match=rf"{where} comes from an engine output whose completions have no "
        rf"tokens at rows \[2\]",
    ):
        _call_with_outputs(spec, *engine_outputs(spec, empty_ref=2))


def test_engine_output_misuse_is_a_clear_error() -> None:
    paired, paired_ref = engine_outputs(loss_spec("dpo"))
    single, _ = engine_outputs(loss_spec("kto"))
    dpo = prefopt.get_loss("dpo")
    with pytest.raises(LossInputError, match=r"dpo\(policy, reference\).*got ref_chosen_logps"):
        dpo(paired, paired_ref, paired_ref.chosen(), paired_ref.rejected())
    with pytest.raises(LossInputError, match=r"policy_rejected_logps is an engine output with group_size=2"):
        dpo(paired.chosen(), paired)
    with pytest.raises(
        LossInputError,
        match=r"the reference \(second argument\) is an engine output with "
        r"group_size=1",
    ):
        dpo(paired, single)
    with pytest.raises(LossInputError, match=r"kto: policy_logps is an engine output with group_size=2"):
        prefopt.get_loss("kto")(paired, paired_ref, torch.tensor([True] * 6), kl=0.0)
    with pytest.raises(LossInputError, match=r"plackett_luce: policy_logps is an engine output with group_size=1"):
        prefopt.get_loss("plackett_luce")(single, single)


def test_policy_and_reference_outputs_must_count_the_same_tokens() -> None:
    policy, ref = engine_outputs(loss_spec("ipo"))
    longer = SequenceLogProbs(ref.sum, ref.count + (torch.arange(6) == 3).long(), 2)  # pair 0's rejected
    with pytest.raises(
        LossInputError,
        match=r"ipo: ref_rejected_logps and policy_rejected_logps count different "
        r"tokens at rows \[0\]",
    ):
        prefopt.get_loss("ipo")(policy, longer)
    with pytest.raises(LossInputError, match=r"chosen_lengths and policy_chosen_logps count different tokens"):
        prefopt.get_loss("ipo")(policy, ref, chosen_lengths=policy.chosen(policy.count) + 1)


# ------------------------------------------------------------------ 2. labels


LABELLED = [n for n in prefopt.list_losses() if "labels" in inspect.signature(loss_spec(n).fn).parameters]


@pytest.mark.parametrize(
    "bad", [[2, 0, 1], [1, -1, 0], [0.5, 1.0, 0.0], [1.0, 0.0, 1.0]], ids=["two", "minus-one", "half", "float-ones"]
)
@pytest.mark.parametrize("name", LABELLED)
def test_labels_other_than_bool_or_zero_one_are_refused(name: str, bad: list[float]) -> None:
    spec = loss_spec(name)
    policy, ref = engine_outputs(spec)
    call = lambda labels: spec.fn(policy.sum, ref.sum, labels, **_extras(spec))  # noqa: E731
    with pytest.raises(LossInputError, match=rf"{name}: labels must be bool \(True = desirable\) or 0/1 integers"):
        call(torch.tensor(bad))
    as_ints = call(LABELS.long())
    torch.testing.assert_close(as_ints.per_example, call(LABELS).per_example, rtol=0, atol=0)


def test_kto_weight_check_refuses_labels_that_are_not_binary() -> None:
    assert set(LABELLED) == set(prefopt.list_losses("unpaired")) >= {"kto", "bco", "apo_zero_unpaired"}
    with pytest.raises(LossInputError, match=r"kto_weight_check: labels .* got \[2\] at rows \[0\]"):
        kto_weight_check(torch.tensor([2, 0, 1, 0]))
    with pytest.raises(LossInputError, match=r"kto_weight_check: labels .* got \[-1\] at rows \[1\]"):
        kto_weight_check([1, -1, 0])
    assert kto_weight_check([1, 0, 1, 0, 1, 0, 1, 0, 1]) == kto_weight_check([True, False] * 4 + [True])


# ------------------------------------------------------------------ 3. log-probs read as probabilities


# The audit: losses that read the policy's log-probs as probabilities. orpo, orpo_seq: odds e^ℓ/(1 − e^ℓ) via
# log1mexp, and −ℓ_w; cpo, rpo, sft, cpo_simpo: a token-mean NLL; slic: a sequence NLL; wpo, wpo_unaligned: weights
# exp(ℓ − …); best_of_n: a token NLL; ilql: AWAC's weighted token NLL. Every other loss uses differences of
# log-probs (log-ratios, margins, β·ℓ or β·r_α rewards), unchanged by a common shift, so a positive value is wrong
# there but not read as a probability.
READS_PROBABILITIES = {
    *("orpo", "orpo_seq", "cpo", "rpo", "sft", "slic", "wpo", "wpo_unaligned", "cpo_simpo", "best_of_n", "ilql"),
}
NONPOSITIVE = [n for n in prefopt.list_losses() if loss_spec(n).needs_nonpositive_logps]


def test_the_losses_that_read_probabilities_declare_it() -> None:
    assert set(NONPOSITIVE) == READS_PROBABILITIES


def _paired_tensors(chosen: list[float], lengths: list[int]) -> dict[str, torch.Tensor]:
    return {
        "policy_chosen_logps": torch.tensor(chosen, dtype=torch.float64),
        "policy_rejected_logps": torch.tensor([-4.0, -6.0, -2.0], dtype=torch.float64),
        "ref_chosen_logps": torch.tensor([-3.0, -5.0, -2.5], dtype=torch.float64),
        "ref_rejected_logps": torch.tensor([-3.5, -5.0, -1.0], dtype=torch.float64),
        "chosen_lengths": torch.tensor(lengths),
        "rejected_lengths": torch.tensor([2, 3, 4]),
    }


@pytest.mark.parametrize("argument", ["policy_chosen_logps", "policy_rejected_logps"])
@pytest.mark.parametrize("name", [n for n in NONPOSITIVE if loss_spec(n).kind == "paired"])
def test_positive_policy_logps_are_refused(name: str, argument: str) -> None:
    """Row 1 (3 tokens) at +0.5 nats per token, an NLL passed as a log-prob, is refused; rounding within
    LOGP_TOLERANCE per token is not."""
    inputs = {**_paired_tensors([-3.0, -5.0, -1.0], [2, 3, 4]), **extra_inputs(loss_spec(name), torch.float64, n=3)}
    inputs[argument] = inputs[argument].clone()
    inputs[argument][1] = 0.5 * 3
    with pytest.raises(
        LossInputError,
        match=rf"{name}: {argument} is above 0 at rows \[1\] \(largest 0.5 per "
        rf"token\).*not a negative log-likelihood",
    ):
        loss_spec(name).fn(**inputs)
    inputs[argument][1] = 0.5 * LOGP_TOLERANCE * 3
    assert torch.isfinite(loss_spec(name).fn(**inputs).loss)


def test_orpo_refuses_a_positive_log_prob_instead_of_returning_a_negative_loss() -> None:
    with pytest.raises(LossInputError, match=r"orpo: policy_chosen_logps is above 0 at rows \[0\]"):
        prefopt.get_loss("orpo")(
            torch.tensor([2.0]),
            torch.tensor([-3.0]),
            chosen_lengths=torch.tensor([4]),
            rejected_lengths=torch.tensor([4]),
        )


def test_slic_without_lengths_checks_the_sequence_log_prob() -> None:
    with pytest.raises(LossInputError, match=r"slic: policy_chosen_logps is above 0 at rows \[0\] \(largest 1\);"):
        prefopt.get_loss("slic")(torch.tensor([1.0, -2.0]), torch.tensor([-3.0, -1.0]))


@pytest.mark.parametrize("name", [n for n in NONPOSITIVE if loss_spec(n).kind == "rollout"])
def test_rollout_losses_refuse_positive_token_log_probs_but_not_padding(name: str) -> None:
    spec = loss_spec(name)
    kwargs = rollout_inputs(spec, torch.float32, adversarial=False)
    policy = kwargs["policy_logps"].detach().clone()  # type: ignore[union-attr]
    policy[~_mask()] = 5.0  # padding holds anything
    assert torch.isfinite(spec.fn(**{**kwargs, "policy_logps": policy}).loss)
    policy[2, 0] = 0.7
    with pytest.raises(
        LossInputError,
        match=rf"{name}: policy_logps is above 0 at rows \[2\] \(largest 0.7 per "
        rf"token\).*SequenceLogProbs.tokens",
    ):
        spec.fn(**{**kwargs, "policy_logps": policy})


# ------------------------------------------------------------------ 4. β = 0 skips the KL term


def _beta_zero_losses() -> list[str]:
    out = []
    for name in ROLLOUT:
        spec = loss_spec(name)
        if "beta" in spec.defaults():
            try:
                spec.validate_hparams({"beta": 0.0})
            except LossInputError:
                continue  # online_dpo: β is DPO's temperature, not a KL weight
            out.append(name)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", _beta_zero_losses())
def test_beta_zero_leaves_the_kl_term_out(name: str, dtype: torch.dtype) -> None:
    """A reference gap u = log π_ref − log π of 1e4 overflows exp even in float64; at β = 0 the loss is the
    loss without a reference, with finite gradients."""
    spec = loss_spec(name)
    kwargs = rollout_inputs(spec, dtype, adversarial=False)
    policy = kwargs["policy_logps"]
    kwargs["ref_logps"] = (policy.detach() + 1e4).requires_grad_(True)  # type: ignore[union-attr]
    out = spec.fn(**kwargs, beta=0.0)
    without = spec.fn(**{k: v for k, v in kwargs.items() if k != "ref_logps"}, beta=0.0)
    assert torch.isfinite(out.loss), f"{name}: loss {out.loss} at β = 0"
    torch.testing.assert_close(out.loss, without.loss, rtol=0, atol=0)
    out.loss.backward()
    assert torch.isfinite(policy.grad).all()  # type: ignore[union-attr]


def test_kl_penalized_rewards_with_beta_zero_ignore_an_infinite_kl() -> None:
    logps = torch.tensor([[-1.0, -2.0, 0.0]])
    ref = torch.tensor([[float("-inf"), -2.0, 0.0]])  # a token the reference cannot produce: k1 = +inf
    mask = torch.tensor([[True, True, False]])
    rewards, kl = kl_penalized_rewards(torch.tensor([3.0]), logps, ref, mask, beta=0.0)
    assert torch.equal(rewards, torch.tensor([[0.0, 3.0, 0.0]]))
    assert kl[0, 0] == float("inf"), "the estimate itself is still reported"


# ------------------------------------------------------------------ 5. huge log-ratios


@pytest.mark.parametrize("log_ratio", [100.0, 1000.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ROLLOUT)
def test_huge_log_ratios_give_finite_loss_and_gradients(name: str, dtype: torch.dtype, log_ratio: float) -> None:
    """log ρ = log π_θ − log π_old and u = log π_ref − log π_θ of ±log_ratio (±log_ratio/2, 0) per token,
    beyond e^88 where float32 exp overflows; losses whose β defaults to 0 run with β = 0.1 so k3 is used."""
    spec = loss_spec(name)
    kwargs = rollout_inputs(spec, dtype, adversarial=True)
    policy = kwargs["policy_logps"].detach().double()  # type: ignore[union-attr]
    shifts = torch.tensor([1.0, -1.0, 0.0, 0.5, -0.5], dtype=torch.float64).repeat(S, 1) * log_ratio
    kwargs["old_logps"] = (policy - shifts).to(dtype).requires_grad_(True)
    if "ref_logps" in kwargs:
        kwargs["ref_logps"] = (policy + shifts.roll(1, 1)).to(dtype).requires_grad_(True)
    if spec.defaults().get("beta") == 0.0:
        kwargs["beta"] = 0.1
    out = spec.fn(**kwargs)
    assert torch.isfinite(out.loss) and torch.isfinite(out.per_example).all(), f"{name}: loss {out.loss}"
    for key, value in out.metrics.items():
        assert torch.isfinite(value), f"{name}: metric {key} = {value}"
    out.loss.backward()
    for n in TRAINABLE:
        if isinstance(kwargs.get(n), torch.Tensor):
            grad = kwargs[n].grad  # type: ignore[union-attr]
            assert grad is not None and torch.isfinite(grad.float()).all(), f"{name}: gradient of {n}: {grad}"


def test_k3_and_the_ratio_are_clamped_at_twenty() -> None:
    """k3(u) = e^u − 1 − u is evaluated at clamp(u, ±20): k3(±1000) = k3(±20), finite, with no gradient."""
    assert LOG_RATIO_CLAMP == 20.0
    logps = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([1000.0, 20.0, -20.0, -1000.0], dtype=torch.float64)
    k3 = kl_k3(logps, ref)
    e20 = torch.tensor(20.0, dtype=torch.float64).exp()
    torch.testing.assert_close(k3, torch.stack([e20 - 21, e20 - 21, 1 / e20 + 19, 1 / e20 + 19]))
    k3.sum().backward()
    assert logps.grad[0] == 0 and logps.grad[3] == 0 and torch.isfinite(logps.grad).all()  # type: ignore[index]
    # A negative advantage keeps the unclipped branch −A·ρ: ρ = e^20 at log ρ = 100, not inf.
    policy = torch.tensor([[100.0]], requires_grad=True)
    valid = torch.ones(1, 1, dtype=torch.bool)
    loss, log_ratio, _ = clipped_surrogate(policy, torch.zeros(1, 1), torch.tensor([[-1.0]]), valid, 0.2)
    assert torch.isfinite(loss).all() and log_ratio.item() == 100.0, "the metrics see the unclamped log-ratio"
    loss.sum().backward()
    assert policy.grad is not None and policy.grad.item() == 0.0
