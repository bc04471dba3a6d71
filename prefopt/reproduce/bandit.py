"""Tabular bandits as length-1 "sequences", so that reproductions train with the registered losses.

A bandit policy over K actions is a softmax over free logits θ ∈ R^K. An action is a completion of
one token, so its sequence log-probability is log π_θ(y) = log softmax(θ)_y: exactly what the engine
hands a loss for a real model. Many independent bandits ("problems": seeds × settings) are stacked
along leading dimensions and trained at once; each problem's loss is the mean over its own
mini-batch, and the optimiser is element-wise (Adam), so stacking changes no problem's trajectory.

Shapes: P... = any leading problem dimensions, K = actions, B = pairs (or rows) per mini-batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from prefopt.registry import BoundLoss

__all__ = [
    "uniform_log_probs",
    "paired_bandit_losses",
    "unpaired_bandit_losses",
    "train_adam",
    "total_variation",
    "kl_divergence",
]


def uniform_log_probs(n_actions: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """log π_ref for the uniform reference, [K] filled with −log K."""
    if n_actions < 2:
        raise ValueError(f"uniform_log_probs: n_actions must be ≥ 2, got {n_actions}.")
    return torch.full((n_actions,), -math.log(n_actions), dtype=dtype)


def _gather(logps: Tensor, actions: Tensor) -> Tensor:
    """logps [P..., K] at actions [P..., B] → [P..., B]."""
    return logps.gather(-1, actions)


def paired_bandit_losses(
    loss: BoundLoss, logps: Tensor, ref_logps: Tensor, chosen: Tensor, rejected: Tensor, weights: Tensor | None = None
) -> Tensor:
    """Per-problem loss of a registered paired loss on bandit pairs.

    Args:
        loss: a paired loss with its hyper-parameters bound (`get_loss("dpo", beta=0.1)`).
        logps: [P..., K] policy log-probabilities log softmax(θ).
        ref_logps: [K] or [P..., K] reference log-probabilities.
        chosen, rejected: [P..., B] action indices of the preferred and dispreferred member of each pair.
        weights: optional [P..., B] non-negative pair weights (counts); the problem's loss is then
            Σ_b w_b ℓ_b / Σ_b w_b instead of the mean.
    Returns:
        [P...] each problem's loss (its mini-batch mean of the loss's `per_example`).
    """
    if chosen.shape != rejected.shape or chosen.shape[:-1] != logps.shape[:-1]:
        raise ValueError(
            f"paired_bandit_losses: chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} must both be "
            f"[P..., B] with P... = {tuple(logps.shape[:-1])} from logps."
        )
    ref = ref_logps.expand_as(logps)
    out = loss(
        _gather(logps, chosen).reshape(-1),
        _gather(logps, rejected).reshape(-1),
        _gather(ref, chosen).reshape(-1),
        _gather(ref, rejected).reshape(-1),
    )
    per_pair = out.per_example.view(chosen.shape)  # [P..., B]
    if weights is None:
        return per_pair.mean(-1)
    return (per_pair * weights).sum(-1) / weights.sum(-1)


def unpaired_bandit_losses(
    loss: BoundLoss, logps: Tensor, ref_logps: Tensor, actions: Tensor, labels: Tensor, **inputs: Tensor
) -> Tensor:
    """Per-problem loss of a registered unpaired loss (KTO, BCO, ...) on labelled bandit actions.

    Args:
        loss: an unpaired loss with its hyper-parameters bound.
        logps: [P..., K] policy log-probabilities; ref_logps: [K] or [P..., K].
        actions: [P..., B] action indices; labels: [P..., B] bool (True = desirable).
        inputs: extra loss inputs passed through unchanged (KTO's scalar `kl`).
    Returns:
        [P...] each problem's mini-batch mean loss.
    """
    if actions.shape != labels.shape or actions.shape[:-1] != logps.shape[:-1]:
        raise ValueError(
            f"unpaired_bandit_losses: actions {tuple(actions.shape)} and labels {tuple(labels.shape)} must both be "
            f"[P..., B] with P... = {tuple(logps.shape[:-1])} from logps."
        )
    ref = ref_logps.expand_as(logps)
    out = loss(_gather(logps, actions).reshape(-1), _gather(ref, actions).reshape(-1), labels.reshape(-1), **inputs)
    return out.per_example.view(actions.shape).mean(-1)


def train_adam(
    logits: Tensor,
    problem_losses: Callable[[Tensor, int], Tensor],
    *,
    steps: int,
    lr: float,
    record_every: int = 0,
    on_record: Callable[[int, Tensor], None] | None = None,
    on_grad: Callable[[Tensor], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Train stacked bandit logits with Adam (Kingma & Ba 2015; torch defaults β = (0.9, 0.999), ε = 1e-8).

    Args:
        logits: [P..., K] initial logits (copied, not modified).
        problem_losses: `problem_losses(logits, step)` → [P...] per-problem losses; their sum is
            minimised, which gives every problem its own gradient since problems share no parameter.
        steps, lr: number of Adam steps and learning rate.
        record_every, on_record: call `on_record(step, logits)` at step 0 and every `record_every`
            steps after each update (and after the last one).
        on_grad: `on_grad(grad)` with the [P..., K] gradient of every step, before the update.
        progress: `progress(done, steps)` every 1% of the steps.
    Returns:
        [P..., K] the final logits (detached).
    """
    theta = logits.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    tick = max(steps // 100, 1)
    if on_record is not None:
        on_record(0, theta.detach())
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        problem_losses(theta, step).sum().backward()
        if on_grad is not None and theta.grad is not None:
            on_grad(theta.grad.detach())
        opt.step()
        if on_record is not None and record_every and (step % record_every == 0 or step == steps):
            on_record(step, theta.detach())
        if progress is not None and (step % tick == 0 or step == steps):
            progress(step, steps)
    return theta.detach()


def total_variation(p: Tensor, q: Tensor) -> Tensor:
    """TV(p, q) = ½ Σ_y |p(y) − q(y)| over the last dimension."""
    return 0.5 * (p - q).abs().sum(-1)


def kl_divergence(p: Tensor, q: Tensor) -> Tensor:
    """KL(p ‖ q) = Σ_y p(y) log(p(y)/q(y)) over the last dimension, with 0·log 0 = 0."""
    terms = torch.where(p > 0, p * (p.clamp_min(1e-300).log() - q.clamp_min(1e-300).log()), torch.zeros_like(p))
    return terms.sum(-1)
