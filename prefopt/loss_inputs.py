"""The input contract of every loss kind: which tensors a loss takes, and the checks the registry runs
on each call (shapes, a missing reference, missing or zero lengths, labels, the sign of log-probs that a
loss reads as probabilities, detaching and upcasting).

`prefopt.registry` applies `check_inputs` in the public function it builds for every loss, so loss bodies
are pure tensor math.

Engine outputs. Wherever a paired, unpaired or ranked loss takes log-prob tensors it also takes the
engine's `SequenceLogProbs` (sum [S], count [S], group_size K), so the counts travel with the sums:

    loss(policy_out, ref_out)                    paired: one output of the paired batch each (K = 2)
    loss(policy_out, ref_out, labels)            unpaired (K = 1);  ranked: loss(policy_out, ref_out) (K ≥ 2)

Each output is replaced by its sums in the kind's layout, its counts become the kind's lengths, and a
count of 0 raises: a completion with no tokens has log-prob sum 0, which a loss would read as certainty.
With plain tensors a zero-length completion is visible only through the lengths, so pass them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from prefopt.batch import TokenBatch
from prefopt.errors import LossInputError

__all__ = [
    "KIND_INPUTS",
    "LENGTH_INPUTS",
    "LOGP_TOLERANCE",
    "ROLLOUT_TOKEN_INPUTS",
    "EngineOutput",
    "LossInputError",
    "check_inputs",
    "check_labels",
]

# The leading tensor parameters each (kind, scores) pair must take, in order. Extending the zoo to a
# new data kind means adding its row here (the online algorithms add "rollout").
KIND_INPUTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("paired", "logps"): ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"),
    ("unpaired", "logps"): ("policy_logps", "ref_logps", "labels"),
    ("ranked", "logps"): ("policy_logps", "ref_logps"),
    ("paired", "rewards"): ("chosen_rewards", "rejected_rewards"),
    ("ranked", "rewards"): ("rewards",),
    # Rollouts are per token, [S, T] right-padded; the mask carries the lengths. The reference, advantages,
    # values, returns and rewards are keyword inputs (see ROLLOUT_TOKEN_INPUTS and _check_rollout_inputs).
    ("rollout", "logps"): ("policy_logps", "old_logps", "completion_mask"),
}
LENGTH_INPUTS: dict[str, tuple[str, ...]] = {
    "paired": ("chosen_lengths", "rejected_lengths"),
    "unpaired": ("lengths",),
    "ranked": ("lengths",),
    "rollout": (),
}
# Per-token keyword inputs of rollout losses: checked to be [S, T] like completion_mask. The heads' current
# outputs (critic, ILQL's Q heads) and NLPO's mask mass carry gradient; the others are targets, detached.
ROLLOUT_TOKEN_INPUTS: tuple[str, ...] = (
    *("ref_logps", "advantages", "values", "old_values", "returns", "token_entropy", "next_values", "target_q_values"),
    *("q_values", "q2_values", "q_logps", "q2_logps", "mask_log_mass", "old_mask_log_mass"),
)
_TRAINABLE = ("policy_logps", "values", "q_values", "q2_values", "q_logps", "q2_logps", "mask_log_mass")


# How far above 0 a log-prob may lie, in nats per token (per sequence when no lengths are given), before a
# loss that reads log-probs as probabilities (`LossSpec.needs_nonpositive_logps`) refuses it. prefopt's
# engine never rounds above 0 (its log-sum-exp is ≥ the largest logit), but log-probs from elsewhere (a
# sampler, a path whose logit and log-sum-exp round differently) can for near-certain tokens; the losses
# treat such values as 0 (log1mexp and WPO's weight clamp there). A real mistake (an NLL, a logit, a
# reward) lies orders of magnitude above 1e-3 per token.
LOGP_TOLERANCE = 1e-3


@runtime_checkable
class EngineOutput(Protocol):
    """The engine's per-sequence output, `prefopt.engine.SequenceLogProbs`, by its shape (this module
    imports nothing above it): sum [S], count [S] and group_size K, sequences in group-major order."""

    @property
    def sum(self) -> Tensor: ...

    @property
    def count(self) -> Tensor: ...

    @property
    def group_size(self) -> int: ...

    def grouped(self, values: Tensor | None = None) -> Tensor: ...


def check_labels(where: str, labels: Tensor) -> Tensor:
    """Binary labels as a bool tensor. Accepts bool, or integers that are all 0 or 1; anything else (2,
    −1, 0.5, any float) raises instead of being read as True."""
    if labels.dtype == torch.bool:
        return labels
    if labels.dtype.is_floating_point or labels.is_complex():
        raise LossInputError(
            f"{where}: labels must be bool (True = desirable) or 0/1 integers, got {labels.dtype}; "
            f"threshold scores yourself (labels = scores > threshold)."
        )
    flat = labels.reshape(-1)
    bad = ((flat != 0) & (flat != 1)).nonzero().flatten()
    if bad.numel():
        raise LossInputError(
            f"{where}: labels must be bool (True = desirable) or 0/1 integers; got {flat[bad[:10]].tolist()} at "
            f"rows {bad[:10].tolist()}."
        )
    return labels.bool()


def check_inputs(spec: Any, values: dict[str, Any], *, reference_free: Callable[[str], list[str]]) -> None:
    """Validate the kind's tensors of a call to the loss `spec` (a `LossSpec`) in place: engine outputs
    unpacked (module docstring), shapes, presence, lengths > 0, labels bool or 0/1, policy log-probs ≤ 0
    where the loss declares `needs_nonpositive_logps`; detach reference inputs and upcast to ≥ float32.
    `reference_free(kind)` names the losses to suggest when a reference is missing."""
    if (batch := next((n for n, v in values.items() if isinstance(v, TokenBatch)), None)) is not None:
        got = f"{spec.name}: {batch} is a TokenBatch; run the engine on it, or call prefopt.LossCall({spec.name!r}, "
        raise LossInputError(got + "engine=..., reference=...)(batch), which runs it and builds every input.")
    if spec.kind == "rollout":
        _check_rollout_inputs(spec, values)
        return
    if spec.scores == "logps":
        _unpack_engine_outputs(spec, values)
    ref_names = [n for n in spec.inputs if n.startswith("ref_")]
    _check_reference_given(spec, values, ref_names, reference_free)
    shape = _check_kind_tensors(spec, values, ref_names)
    _check_lengths(spec, values, shape)
    if spec.needs_nonpositive_logps:
        for n in spec.inputs:
            if n.startswith("policy_"):
                _refuse_positive_logps(spec.name, n, values[n], lengths=values.get(_length_of(spec.kind, n)))


def _check_reference_given(
    spec: Any, values: dict[str, Any], ref_names: list[str], reference_free: Callable[[str], list[str]]
) -> None:
    """All reference inputs or none; all of them when the loss needs a reference."""
    given_refs = [n for n in ref_names if values.get(n) is not None]
    if spec.needs_reference and len(given_refs) < len(ref_names):
        missing = [n for n in ref_names if n not in given_refs]
        raise LossInputError(
            f"{spec.name} needs reference log-probs: pass {', '.join(missing)} (from a frozen reference "
            f"model or a reference cache), or use a reference-free loss ({', '.join(reference_free(spec.kind))})."
        )
    if 0 < len(given_refs) < len(ref_names):
        raise LossInputError(f"{spec.name}: pass all of {ref_names} or none of them; got only {given_refs}.")


def _check_kind_tensors(spec: Any, values: dict[str, Any], ref_names: list[str]) -> Any:
    """The kind's inputs present (the reference may be absent), tensors of one shape ([B] or ranked [B, K]);
    labels checked, the reference detached, floats upcast to ≥ float32. Returns the shape (None: none given)."""
    shape = None
    for n in spec.inputs:
        t = values.get(n)
        if t is None:
            if n in ref_names:
                continue
            raise LossInputError(f"{spec.name}: {n} is required (a tensor of per-sequence values).")
        _check_kind_shape(spec, n, t, shape)
        shape = t.shape
        if n == "labels":
            values[n] = check_labels(spec.name, t)
            continue
        if n in ref_names:
            # The reference is a fixed target: no loss may send gradient into it.
            t = values[n] = t.detach()
        if t.dtype.is_floating_point and t.element_size() < 4:
            values[n] = t.float()
    return shape


def _check_kind_shape(spec: Any, n: str, t: Any, shape: Any) -> None:
    """`t` is a tensor in the kind's layout, of the same shape as the inputs before it (`shape`)."""
    ranked = spec.kind == "ranked"
    if not isinstance(t, Tensor):
        raise LossInputError(f"{spec.name}: {n} must be a torch.Tensor, got {type(t).__name__}.")
    want = 2 if ranked else 1
    if t.dim() != want or t.shape[0] == 0 or (ranked and t.shape[1] < 2):
        layout = "[B, K] with K ≥ 2 completions ordered best first" if ranked else "[B] per-sequence values"
        raise LossInputError(f"{spec.name}: {n} has shape {tuple(t.shape)}; expected {layout}, B ≥ 1.")
    if shape is not None and t.shape != shape:
        raise LossInputError(f"{spec.name}: {n} has shape {tuple(t.shape)} but {spec.inputs[0]} has {tuple(shape)}.")


def _check_lengths(spec: Any, values: dict[str, Any], shape: Any) -> None:
    """Length inputs: given if needed, of the inputs' shape, all > 0; cast to the first input's dtype."""
    inputs = spec.inputs
    for n in LENGTH_INPUTS.get(spec.kind, ()):
        t = values.get(n)
        if t is None:
            if spec.needs_lengths:
                raise LossInputError(
                    f"{spec.name} is length-normalised and needs {n}: the number of completion tokens per "
                    f"sequence (SequenceLogProbs.count from the engine), or pass the engine outputs themselves: "
                    f"{spec.name}(policy_out, ref_out)."
                )
            continue
        if not isinstance(t, Tensor) or t.shape != shape:
            raise LossInputError(f"{spec.name}: {n} must be a tensor of shape {tuple(shape or ())}.")
        bad = (t <= 0).nonzero()
        if bad.numel():
            rows = bad[:10, 0].tolist()
            raise LossInputError(
                f"{spec.name}: {n} is ≤ 0 at rows {rows}: a completion with no tokens has no log-probability. "
                f"Drop such rows (the data layer does) or raise max_length."
            )
        values[n] = t.to(values[inputs[0]].dtype)


def _length_of(kind: str, name: str) -> str:
    """The length input that counts the tokens of log-prob input `name`."""
    if kind == "paired":
        return "chosen_lengths" if "chosen" in name else "rejected_lengths"
    return "lengths"


def _refuse_positive_logps(
    loss: str, name: str, logps: Tensor, *, lengths: Tensor | None = None, mask: Tensor | None = None
) -> None:
    """Raise when a log-prob lies above LOGP_TOLERANCE per token (per sequence when no lengths are given)."""
    per_token = logps.detach() if lengths is None else logps.detach() / lengths
    above = per_token > LOGP_TOLERANCE
    if mask is not None:
        above = above & mask
    if not bool(above.any()):
        return
    rows = above.reshape(above.shape[0], -1).any(1).nonzero().flatten()[:10].tolist()
    unit = "" if lengths is None and mask is None else " per token"
    source = (
        "per-token log π(y_t|x, y_<t) (SequenceLogProbs.tokens)"
        if mask is not None
        else "log π(y|x) summed over the completion's tokens (SequenceLogProbs.sum)"
    )
    raise LossInputError(
        f"{loss}: {name} is above 0 at rows {rows} (largest {float(per_token[above].max()):.4g}{unit}); {loss} "
        f"reads the policy's log-probs as probabilities, so each must be ≤ 0 (up to {LOGP_TOLERANCE:g} per token "
        f"of rounding). Pass {source}, not a negative log-likelihood, a logit or a reward."
    )


def _unpack_engine_outputs(spec: Any, values: dict[str, Any]) -> None:
    """Replace engine outputs among the kind's log-prob inputs by their sums in the kind's layout, refuse zero
    counts, and pass the counts as the kind's lengths (module docstring)."""
    names = [n for n in spec.inputs if n != "labels"]
    if not any(isinstance(values.get(n), EngineOutput) for n in names):
        return
    first = values.get(names[0])
    if spec.kind == "paired" and isinstance(first, EngineOutput) and first.group_size == 2:
        pieces = _paired_batch_pieces(spec, values, names, first)
    else:
        pieces = _per_input_pieces(spec, values, names)
    for n, (logps, counts) in pieces.items():
        empty = (counts <= 0).reshape(counts.shape[0], -1).any(1).nonzero().flatten()
        if empty.numel():
            raise LossInputError(
                f"{spec.name}: {n} comes from an engine output whose completions have no tokens at rows "
                f"{empty[:10].tolist()} (count 0: a log-prob sum of 0 that the loss would read as a certain "
                f"completion). Drop such rows before the engine (the data layer does) or raise max_length."
            )
        values[n] = logps
    _counts_as_lengths(spec, values, {n: c for n, (_, c) in pieces.items()})


def _paired_batch_pieces(
    spec: Any, values: dict[str, Any], names: list[str], first: EngineOutput
) -> dict[str, tuple[Tensor, Tensor]]:
    """loss(policy, reference), each a paired batch (chosen block, rejected block): name → (sums, counts)."""
    reference = values.get(names[1])
    others = [n for n in names[2:] if values.get(n) is not None]
    if others or not (reference is None or isinstance(reference, EngineOutput)):
        got = ", ".join(others) if others else f"{names[1]} = {type(reference).__name__}"
        raise LossInputError(
            f"{spec.name}: the first argument is the engine output of a paired batch, so the call is "
            f"{spec.name}(policy, reference) with the reference's engine output (or None) second and no other "
            f"log-prob argument; got {got}. Or pass four [B] tensors."
        )
    values[names[1]] = None
    pieces: dict[str, tuple[Tensor, Tensor]] = {}
    for side, out in (("policy", first), ("ref", reference)):
        if out is None:
            continue
        _check_group_size(spec, "the reference (second argument)" if side == "ref" else names[0], out, 2)
        for k, block in enumerate(("chosen", "rejected")):
            pieces[f"{side}_{block}_logps"] = (out.grouped()[:, k], out.grouped(out.count)[:, k])
    return pieces


def _per_input_pieces(spec: Any, values: dict[str, Any], names: list[str]) -> dict[str, tuple[Tensor, Tensor]]:
    """One engine output per log-prob input: input name → (log-prob sums, token counts) in the kind's layout."""
    pieces: dict[str, tuple[Tensor, Tensor]] = {}
    for n in names:
        out = values.get(n)
        if isinstance(out, EngineOutput):
            ranked = spec.kind == "ranked"
            _check_group_size(spec, n, out, None if ranked else 1)
            pieces[n] = (out.grouped(), out.grouped(out.count)) if ranked else (out.sum, out.count)
    return pieces


def _counts_as_lengths(spec: Any, values: dict[str, Any], counts: dict[str, Tensor]) -> None:
    """Set each length input from the counts of the engine outputs it measures; the policy's, the reference's
    and any lengths passed explicitly must agree."""
    for length in LENGTH_INPUTS[spec.kind]:
        counted = [(n, c) for n, c in counts.items() if _length_of(spec.kind, n) == length]
        if not counted:
            continue
        if isinstance(values.get(length), Tensor):
            counted.append((length, values[length]))
        (base_name, base), *rest = counted
        for n, c in rest:
            if c.shape != base.shape:
                raise LossInputError(
                    f"{spec.name}: {n} has shape {tuple(c.shape)} but {base_name} has {tuple(base.shape)}."
                )
            differ = (c.to(base.device, base.dtype) != base).reshape(base.shape[0], -1).any(1).nonzero().flatten()
            if differ.numel():
                rows = differ[:10].tolist()
                raise LossInputError(
                    f"{spec.name}: {n} and {base_name} count different tokens at rows {rows} ({c[rows].tolist()} vs "
                    f"{base[rows].tolist()}): the policy and the reference must score the same completions (same "
                    f"tokenisation, same batch)."
                )
        values[length] = base


def _check_group_size(spec: Any, name: str, out: EngineOutput, want: int | None) -> None:
    """`want` completions per group (None: ranked, K ≥ 2)."""
    k = out.group_size
    if (want is None and k >= 2) or k == want:
        return
    layout = {
        "paired": f"{spec.name}(policy, reference) with the outputs of a paired batch (group_size 2), or one "
        f"output of group_size 1 per argument",
        "unpaired": "the output of an unpaired batch (group_size 1)",
        "ranked": "the output of a ranked batch (group_size K ≥ 2, best first)",
    }[spec.kind]
    raise LossInputError(f"{spec.name}: {name} is an engine output with group_size={k}; pass {layout}.")


def _check_rollout_inputs(spec: Any, values: dict[str, Any]) -> None:
    """Rollout tensors: policy_logps [S, T], old_logps and each ROLLOUT_TOKEN_INPUTS of its shape; completion_mask
    bool [S, T]. old_logps=None: one update per rollout (old = policy, detached). ref_logps is required when the KL
    coefficient `beta` is > 0 (without `beta`: if needs_reference). Targets detached; floats upcast to ≥ float32."""
    policy = values.get("policy_logps")
    if not isinstance(policy, Tensor) or policy.dim() != 2 or 0 in policy.shape:
        got = tuple(policy.shape) if isinstance(policy, Tensor) else type(policy).__name__
        raise LossInputError(
            f"{spec.name}: policy_logps has shape {got}; expected [S, T] per-token log-probs of the sampled "
            f"completions (right-padded, S ≥ 1, T ≥ 1), e.g. SequenceLogProbs.tokens."
        )
    shape = policy.shape
    _check_rollout_mask(spec, values, shape)
    if values.get("old_logps") is None:
        values["old_logps"] = policy.detach()
    _check_rollout_reference(spec, values)
    _check_rollout_tensors(spec, values, shape)
    if spec.needs_nonpositive_logps:
        _refuse_positive_logps(spec.name, "policy_logps", values["policy_logps"], mask=values["completion_mask"])


def _check_rollout_mask(spec: Any, values: dict[str, Any], shape: Any) -> None:
    """completion_mask: bool (or 0/1 integers) of policy_logps's shape, stored as bool."""
    mask = values.get("completion_mask")
    if not isinstance(mask, Tensor) or mask.shape != shape:
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise LossInputError(f"{spec.name}: completion_mask has shape {got}; expected {tuple(shape)} like policy_logps")
    not_binary = mask.dtype.is_floating_point or mask.is_complex() or ((mask != 0) & (mask != 1)).any()
    if mask.dtype != torch.bool and not_binary:
        raise LossInputError(f"{spec.name}: completion_mask must be bool (or 0/1 integers), True at completion tokens.")
    values["completion_mask"] = mask.bool()


def _check_rollout_reference(spec: Any, values: dict[str, Any]) -> None:
    """ref_logps given when the KL coefficient `beta` is > 0 (without `beta`: when the loss needs a reference)."""
    beta = values.get("beta", spec.defaults().get("beta"))
    needs_ref = spec.needs_reference if beta is None else beta > 0
    if needs_ref and values.get("ref_logps") is None:
        raise LossInputError(
            f"{spec.name} needs reference log-probs for its KL term: pass ref_logps [S, T] (per-token log-probs "
            f"of the sampled tokens under the frozen reference), or set beta=0 to train without the KL term."
        )


def _check_rollout_tensors(spec: Any, values: dict[str, Any], shape: Any) -> None:
    """Every per-token tensor of policy_logps's shape; targets detached, floats upcast to ≥ float32."""
    for n in ("policy_logps", "old_logps", *ROLLOUT_TOKEN_INPUTS):
        t = values.get(n)
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.shape != shape:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise LossInputError(f"{spec.name}: {n} has shape {got}; expected {tuple(shape)} like policy_logps.")
        if n not in _TRAINABLE:
            t = t.detach()  # behaviour policy, reference and GAE targets are fixed
        if t.dtype.is_floating_point and t.element_size() < 4:
            t = t.float()
        values[n] = t
