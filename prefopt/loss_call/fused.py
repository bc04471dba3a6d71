"""A registered loss through the loss-fused head: when it is taken, and the step itself.

    out, objective, policy = fused_loss(loss, engine, batch, reference=reference)
    objective.backward()      # = out.loss.backward() of the unfused path: the body's backward from dH, dW into the head

The engine's fused step (`prefopt.engine.fused_step`) asks, once per chunk of whole example groups, for
g_s = d objective / d sum_s. Here that is the loss itself: its arguments are built from the partial sums by
`prepare` (the same function the unfused path calls), the loss runs on the whole batch, and autograd gives the
gradient of the objective with respect to the sums; the kernel reads it at the finished groups. After the last
chunk the loss runs once more on the final sums (detached): that call's `LossOutput` (loss, per-example losses,
metrics) is what the step returns, the numbers of the unfused path. `objective(out)` is `out.loss` by default;
prefopt's training loop passes `out.per_example.sum() · P/G` (`prefopt.train.loop`).

Taken when the loss is separable (`LossSpec.separable`: no batch dependence, running state or batch statistics)
and the engine splits its model (not the logits path) with a fused backend (not "reference"), and gradients are
being recorded; `fused_head_reason` says why not otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from prefopt.batch import TokenBatch
from prefopt.engine import LogProbEngine, SequenceLogProbs
from prefopt.engine.fused_step import fused_head_step
from prefopt.loss_call.arguments import _score_reference, engine_inputs, prepare, wants_reference
from prefopt.losses.base import LossOutput
from prefopt.registry import LossSpec

__all__ = ["FUSED_ENGINE_INPUTS", "Objective", "fused_head_reason", "fused_loss"]

# The scalar whose gradient the step forms, from the loss's output on the batch.
Objective = Callable[[LossOutput], Tensor]

# Engine statistics (`ENGINE_INPUTS`) the fused head computes: detached per-token values of the logits it holds
# (WPO's Σ_t log Σ_v p²). TDPO's sequential KL carries a gradient through every token's whole distribution, not
# through the sums, so a loss taking it keeps the unfused path.
FUSED_ENGINE_INPUTS = ("log_sum_sq_probs",)


def fused_head_reason(spec: LossSpec, engine: Any = None) -> str | None:
    """Why `spec` cannot run through `engine`'s loss-fused head, or None when it can (engine None: the loss's
    side only, what `prefopt losses` shows)."""
    if not spec.separable:
        return f"{spec.name} is not separable over examples: {_coupling(spec)}"
    other = sorted({base for base, _ in engine_inputs(spec).values()} - set(FUSED_ENGINE_INPUTS))
    if other:
        return f"{spec.name} takes the engine statistic {other[0]}, whose gradient the fused head does not form"
    if engine is None:
        return None
    if not isinstance(engine, LogProbEngine):
        return "the policy is not scored by a LogProbEngine"
    if not engine.fused:
        return f"the engine takes the logits path ({engine.fallback_reason})"
    if engine.backend == "reference":
        return "the engine's backend is 'reference' (the plain-torch head)"
    return None


def _coupling(spec: LossSpec) -> str:
    """What ties one example's loss of `spec` to the rest of the batch, or to earlier batches."""
    if spec.batch_dependent:
        return "its loss depends on the whole batch"
    if spec.state is not None:
        return f"it reads a running state ({', '.join(spec.state.inputs)})"
    if spec.batch_inputs:
        return f"it reads statistics of the whole batch ({', '.join(spec.batch_inputs)})"
    return f"a {spec.kind} loss of {spec.scores}"


def fused_loss(
    loss: Any,
    engine: LogProbEngine,
    batch: TokenBatch,
    *,
    reference: Any = None,
    ref_out: SequenceLogProbs | None = None,
    inputs: Mapping[str, Any] | None = None,
    objective: Objective | None = None,
    return_stats: bool = False,
    max_chunk_bytes: int | None = None,
) -> tuple[LossOutput, Tensor, SequenceLogProbs]:
    """Run the bound `loss` (`prefopt.loss_call.bind_loss`) on `batch` through the loss-fused head.

    Args:
        loss: a `BoundLoss` whose spec is separable (see `fused_head_reason`).
        engine: the policy's `LogProbEngine`.
        batch: the `TokenBatch` to score.
        reference, ref_out: the reference (scorer) or its output for `batch`, as for `loss_arguments`.
        inputs: keyword inputs of the loss (`margin=`, ...).
        objective: the scalar to differentiate, from the loss's output (default `out.loss`).
        return_stats: logit statistics on the returned log-probs.
        max_chunk_bytes: budget of one chunk's kept logits.
    Returns:
        (out, attached, policy): the loss's detached `LossOutput` on the batch, `objective(out)` as a scalar
        tensor to backpropagate once, and the policy's detached `SequenceLogProbs`.
    """
    spec: LossSpec = loss.spec
    given = dict(inputs or {})
    return_stats = return_stats or any(base in FUSED_ENGINE_INPUTS for base, _ in engine_inputs(spec).values())
    chosen_objective: Objective = objective if objective is not None else (lambda out: out.loss)
    if ref_out is None and reference is not None and wants_reference(spec, given):
        ref_out = _score_reference(reference, batch)  # once, not per chunk

    def call(policy_out: SequenceLogProbs) -> LossOutput:
        args, kwargs = prepare(loss, policy_out, ref_out, batch, engine, reference, None, given).arguments
        with torch.autocast(device_type=batch.input_ids.device.type, enabled=False):  # as outside the engine
            return loss(*args, **kwargs)

    def grad_fn(partial: SequenceLogProbs, done: Tensor) -> Tensor:
        sums = partial.sum.detach().requires_grad_()
        value = chosen_objective(call(replace(partial, sum=sums)))
        (grad,) = torch.autograd.grad(value, sums, allow_unused=True)
        return torch.zeros_like(sums) if grad is None else grad

    step = fused_head_step(engine, batch, grad_fn, return_stats=return_stats, max_chunk_bytes=max_chunk_bytes)
    out = call(step.logps)  # the whole batch's loss, per-example losses and metrics, from the final sums
    out = LossOutput(out.loss.detach(), out.per_example.detach(), out.metrics)
    return out, step.attach(chosen_objective(out)), step.logps
