"""`loss_arguments`: (positional, keyword) arguments of any registered loss from engine outputs and the batch,
by the loss's declaration (the table of `prefopt.loss_call`)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.batch import TokenBatch
from prefopt.engine import SequenceLogProbs
from prefopt.errors import LossInputError
from prefopt.loss_call.views import KindView, Scorer, batch_rows, kind_view
from prefopt.loss_inputs import LENGTH_INPUTS
from prefopt.loss_state import LossState
from prefopt.registry import BoundLoss, LossSpec, get_loss, list_losses, loss_spec

__all__ = [
    "BATCH_EXTRAS",
    "ENGINE_INPUTS",
    "Prepared",
    "bind_loss",
    "check_loss",
    "engine_call",
    "engine_inputs",
    "loss_arguments",
    "missing_reference",
    "prepare",
]

# Batch extras the collator provides (prefopt.data.collate): an extra input of one of these names is fed from it.
BATCH_EXTRAS = ("margin", "weight", "ranks", "pair_ids", "prompt_lengths")

# Per-sequence statistics of the policy's engine output (`SequenceLogProbs` attributes) a loss may take as extra
# inputs, with the engine call that makes them: a paired loss takes `chosen_<name>` and `rejected_<name>` [B], an
# unpaired loss `<name>` [S], a ranked one `<name>` [B, K] (WPO's Σ_t log Σ_v p², TDPO's sequential KL, the prompt
# tokens' log-probs and count of ORPO's NLL over the whole chosen sequence).
ENGINE_INPUTS = {
    "log_sum_sq_probs": "engine(batch, return_stats=True)",
    "seq_kl": "engine(batch, kl_reference=reference)",
    "prompt_sum": "engine(batch, score_prompt=True)",
    "prompt_count": "engine(batch, score_prompt=True)",
}


def engine_inputs(spec: LossSpec) -> dict[str, tuple[str, int]]:
    """The extra inputs of `spec` that are engine statistics: {input name: (SequenceLogProbs attribute, the
    position in the kind's split: 0 chosen / 1 rejected for a paired loss, else 0)}."""
    out: dict[str, tuple[str, int]] = {}
    for name in spec.extra_inputs:
        for base in ENGINE_INPUTS:
            if spec.kind == "paired" and name in (f"chosen_{base}", f"rejected_{base}"):
                out[name] = (base, 0 if name.startswith("chosen_") else 1)
            elif spec.kind in ("unpaired", "ranked") and name == base:
                out[name] = (base, 0)
    return out


def bind_loss(loss: str | BoundLoss | LossSpec | Any, hparams: Mapping[str, Any] | None = None) -> Any:
    """`loss` (a name, a `BoundLoss` from `get_loss`, a `LossSpec`) with `hparams` bound, as a `BoundLoss`."""
    hparams = dict(hparams or {})
    if isinstance(loss, str):
        return get_loss(loss, **hparams)
    if isinstance(loss, LossSpec):
        return BoundLoss(loss, loss.validate_hparams(hparams))
    if isinstance(loss, BoundLoss):
        return BoundLoss(loss.spec, {**loss.hparams, **loss.spec.validate_hparams(hparams)})
    if isinstance(getattr(loss, "spec", None), LossSpec) and callable(loss) and not hparams:
        return loss  # a loss object with its own spec and bound hyper-parameters
    raise LossInputError(
        f"the loss must be a registered name (prefopt.list_losses()), get_loss(name, ...) or a LossSpec, got "
        f"{type(loss).__name__}{' with hyper-parameters' if hparams else ''}."
    )


def loss_arguments(
    loss: str | BoundLoss | LossSpec | Any,
    policy_out: SequenceLogProbs,
    ref_out: SequenceLogProbs | None,
    batch: TokenBatch,
    *,
    policy: Scorer | None = None,
    reference: Scorer | SequenceLogProbs | None = None,
    loss_state: LossState | None = None,
    **inputs: Any,
) -> tuple[list[Any], dict[str, Any]]:
    """(positional, keyword) arguments of `loss` for one batch, by its declaration (`prefopt.loss_call`).

    Args:
        loss: a registered name, `get_loss(name, ...)` or a `LossSpec` (its hyper-parameters are not returned:
            call the bound loss with the arguments).
        policy_out: `engine(batch)` with gradient (rollout losses: `engine(batch, return_tokens=True)`).
        ref_out: the reference's output for `batch`, or None (reference-free loss, or computed by `reference`).
        batch: the `TokenBatch` both were computed on.
        policy, reference: the policy's engine and the reference (`ReferenceLogProbs` or any batch →
            SequenceLogProbs): score rows a batch statistic builds (KTO's mismatched pairs), and the reference
            gives `ref_out` when it is None.
        loss_state: the loss's running state (`LossSpec.state.init(hparams)`, or `LossCall.state`): its inputs
            are passed; updating it is the caller's (`LossCall` does).
        inputs: keyword inputs passed to the loss as they are (e.g. `rewards=`, `old_logps=`, `kl=`).
    Raises:
        LossInputError: the batch is of another data kind, a reference or labels are missing, a rollout
            loss without per-token log-probs; each message names the fix.
    """
    return prepare(bind_loss(loss), policy_out, ref_out, batch, policy, reference, loss_state, inputs).arguments


@dataclass
class Prepared:
    arguments: tuple[list[Any], dict[str, Any]]
    view: KindView | None = None  # None for rollout losses (no state to observe)


def prepare(
    loss: Any,
    policy_out: Any,
    ref_out: Any,
    batch: Any,
    policy: Scorer | None,
    reference: Any,
    loss_state: LossState | None,
    inputs: Mapping[str, Any],
) -> Prepared:
    spec: LossSpec = loss.spec
    check_loss(spec)
    if not isinstance(batch, TokenBatch):
        raise LossInputError(
            f"{spec.name}: batch must be the TokenBatch the engine scored, got {type(batch).__name__}."
        )
    _check_output(spec, "policy_out", policy_out, batch)
    if ref_out is None and reference is not None and wants_reference(spec, inputs):
        ref_out = _score_reference(reference, batch, tokens=spec.kind == "rollout")
    if ref_out is not None:
        _check_output(spec, "ref_out", ref_out, batch)
        _check_same_counts(spec, policy_out, ref_out)
    if spec.kind == "rollout":
        return Prepared(_rollout_arguments(spec, policy_out, ref_out, batch, inputs))
    view = kind_view(spec, policy_out, ref_out, batch)
    args: list[Any] = _by_kind(spec.kind, view.policy, view.policy.sum)
    if spec.needs_reference:
        if view.reference is None:
            raise missing_reference(spec)
        args += _by_kind(spec.kind, view.reference, view.reference.sum)
    else:
        args += [None] * len(args)  # reference-free: the uniform call, nothing to read
    if spec.kind == "unpaired":
        args.append(view.extras["labels"].to(policy_out.sum.device))
    kwargs: dict[str, Any] = {}
    accepted = set(inspect.signature(spec.fn).parameters)
    lengths = _by_kind(spec.kind, view.policy, view.policy.count.to(view.policy.sum.dtype))
    kwargs.update({n: v for n, v in zip(LENGTH_INPUTS[spec.kind], lengths) if n in accepted})
    kwargs.update(_extra_inputs(loss, view, policy, reference, loss_state, inputs))
    kwargs.update(_engine_statistics(spec, view, inputs))
    return Prepared((args, kwargs), view)


def check_loss(spec: LossSpec) -> None:
    if spec.scores != "logps":
        raise LossInputError(
            f"{spec.name} is a reward-model loss: it takes reward scores, not the engine's log-probs; call it with "
            f"scores, or train it with `prefopt train-rm`."
        )


def _check_output(spec: LossSpec, name: str, out: Any, batch: TokenBatch) -> None:
    """`out` is an engine output (sum, count, group_size) of `batch`."""
    if isinstance(out, TokenBatch):
        raise LossInputError(
            f"{spec.name}: {name} is a TokenBatch; pass the engine's output, engine(batch), or let "
            f"prefopt.LossCall({spec.name!r}, engine=...) run the engine on the batch."
        )
    if not all(hasattr(out, a) for a in ("sum", "count", "group_size")):
        raise LossInputError(f"{spec.name}: {name} must be the engine's SequenceLogProbs, got {type(out).__name__}.")
    if out.sum.shape[0] != batch.num_sequences or out.group_size != batch.group_size:
        raise LossInputError(
            f"{spec.name}: {name} holds {out.sum.shape[0]} sequences in groups of {out.group_size} but the batch "
            f"{batch.num_sequences} in groups of {batch.group_size}: pass the output for this batch."
        )


def _check_same_counts(spec: LossSpec, policy_out: SequenceLogProbs, ref_out: SequenceLogProbs) -> None:
    differ = (ref_out.count.to(policy_out.count.device) != policy_out.count).nonzero().flatten()
    if differ.numel():
        raise LossInputError(
            f"{spec.name}: the reference counts different tokens than the policy at sequences {differ[:10].tolist()}: "
            f"score the same batch (same tokenisation) under both."
        )


def wants_reference(spec: LossSpec, inputs: Mapping[str, Any]) -> bool:
    if spec.kind == "rollout":
        return "ref_logps" in spec.extra_inputs and inputs.get("ref_logps") is None
    return spec.needs_reference


def _score_reference(reference: Any, batch: TokenBatch, *, tokens: bool = False) -> SequenceLogProbs:
    """The reference's detached output for `batch` (per-token values too with `tokens`): `reference` is a
    `SequenceLogProbs` of the batch, a `ReferenceLogProbs`, or any callable batch → SequenceLogProbs."""
    if hasattr(reference, "sum") and hasattr(reference, "count"):
        return reference
    if not callable(reference):
        raise LossInputError(
            f"reference must be a ReferenceLogProbs, a callable batch → SequenceLogProbs or the SequenceLogProbs "
            f"of the batch, got {type(reference).__name__}."
        )
    with torch.no_grad():
        return (reference(batch, return_tokens=True) if tokens else reference(batch)).detach()


def missing_reference(spec: LossSpec) -> LossInputError:
    free = [n for n in list_losses(spec.kind) if not loss_spec(n).needs_reference and loss_spec(n).scores == "logps"]
    instead = f", or use a reference-free {spec.kind} loss ({', '.join(free)})" if free else ""
    return LossInputError(
        f"{spec.name} needs reference log-probs: give reference= (ReferenceLogProbs.from_model(ref_model), "
        f".from_disabled_adapter(peft_model), .from_cache(cache)) or the reference's SequenceLogProbs{instead}."
    )


def _by_kind(kind: str, out: SequenceLogProbs, values: Tensor) -> list[Tensor]:
    """Per-sequence `values` [S] split into the kind's tensors (the module's table)."""
    if kind == "paired":
        return [out.chosen(values), out.rejected(values)]
    if kind == "ranked":
        return [out.grouped(values)]
    return [values]


def _extra_inputs(
    loss: Any,
    view: KindView,
    policy: Scorer | None,
    reference: Any,
    loss_state: LossState | None,
    inputs: Mapping[str, Any],
) -> dict[str, Any]:
    """The loss's extra inputs, first found of: the call's inputs, the state, a batch statistic, batch extras."""
    spec: LossSpec = loss.spec
    state_inputs = loss_state.inputs() if loss_state is not None else {}
    out: dict[str, Any] = {}
    for name in spec.extra_inputs:
        if name in inputs:
            continue
        if name in state_inputs:
            out[name] = state_inputs[name]
        elif name in spec.batch_inputs:
            out[name] = spec.batch_inputs[name](batch_rows(loss, name, view, policy, reference))
        elif name in view.extras:
            out[name] = view.extras[name].to(view.policy.sum.device)
    return {**out, **inputs}


def engine_call(spec: LossSpec, reference: Any) -> dict[str, Any]:
    """The policy engine's keyword arguments that make the statistics `spec` takes (`ENGINE_INPUTS`):
    `return_stats=True` for Σ_t log Σ_v p², `kl_reference=reference` for the sequential KL (a reference that can
    give its model's head: `ReferenceLogProbs.from_model` or `.from_disabled_adapter`), `score_prompt` for the
    prompt tokens' log-probs (`"chosen"` when a paired loss reads the chosen sequences' only)."""
    taken = engine_inputs(spec)
    bases = {base for base, _ in taken.values()}
    call: dict[str, Any] = {}
    if "log_sum_sq_probs" in bases:
        call["return_stats"] = True
    prompt_blocks = {index for base, index in taken.values() if base in ("prompt_sum", "prompt_count")}
    if prompt_blocks:
        call["score_prompt"] = "chosen" if spec.kind == "paired" and prompt_blocks == {0} else True
    if "seq_kl" in bases:
        if reference is None or not callable(getattr(reference, "head_inputs", None)):
            raise LossInputError(
                f"{spec.name} takes the sequential KL of the policy from the reference, which needs the reference "
                f"model's next-token distributions: give reference=ReferenceLogProbs.from_model(ref_model) or "
                f".from_disabled_adapter(peft_model) (a cache or log-probs cannot give them)."
            )
        call["kl_reference"] = reference
    return call


def _engine_statistics(spec: LossSpec, view: KindView, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The loss's engine-statistic inputs (`ENGINE_INPUTS`) not given in the call, from the policy's output; one
    the output lacks is an error naming the engine call that makes it."""
    out: dict[str, Any] = {}
    for name, (base, index) in engine_inputs(spec).items():
        if name in inputs:
            continue
        values = getattr(view.policy, base, None)
        if values is None:
            raise LossInputError(
                f"{spec.name} takes {name}, the policy's {base} per sequence, which this engine output lacks: score "
                f"the batch with {ENGINE_INPUTS[base]} (prefopt.LossCall and prefopt train do), or pass {name}=."
            )
        out[name] = _by_kind(spec.kind, view.policy, values)[index]
    return out


def _rollout_arguments(
    spec: LossSpec, policy_out: Any, ref_out: Any, batch: TokenBatch, inputs: Mapping[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """A rollout loss's per-token inputs [S, T] (one sequence per row of a padded batch) and keyword inputs."""
    if policy_out.tokens is None:
        raise LossInputError(
            f"{spec.name} is a rollout loss of per-token log-probs: pass engine(batch, return_tokens=True) "
            f"(prefopt.LossCall does)."
        )
    if batch.input_ids.shape[0] != batch.num_sequences:
        raise LossInputError(
            f"{spec.name} takes per-token tensors [S, T], one sequence per row: collate the batch with "
            f"packed=False and share_prompt=False ({batch.num_sequences} sequences in {batch.input_ids.shape[0]} rows)."
        )
    given = dict(inputs)
    args = [policy_out.tokens, given.pop("old_logps", None), batch.completion_mask]
    kwargs: dict[str, Any] = {}
    if "ref_logps" in spec.extra_inputs and given.get("ref_logps") is None and ref_out is not None:
        if ref_out.tokens is None:
            raise LossInputError(
                f"{spec.name} takes per-token reference log-probs: pass reference(batch, return_tokens=True), or "
                f"ref_logps= yourself."
            )
        kwargs["ref_logps"] = ref_out.tokens
    if "token_entropy" in spec.extra_inputs and policy_out.token_entropy is not None:
        kwargs["token_entropy"] = policy_out.token_entropy
    kwargs.update({k: v for k, v in given.items() if v is not None or k not in kwargs})  # a None never hides one
    return args, kwargs
