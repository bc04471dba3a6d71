"""Adaptive-margin pairwise losses: SimPO's length-normalised objective with a per-pair target margin read from
the reference model (α-DPO).

Not to be confused with AlphaPO: `alphapo` is AlphaPO (Gupta et al. 2025, arXiv:2501.03884, a reshaped SimPO
reward, `prefopt.losses.reference_free`); `alpha_dpo` here is α-DPO (Wu et al. 2024, arXiv:2410.10148), a
different method. Notation per pair, shapes [B]:

    ℓ(y)     = log π_θ(y|x) / |y|                              length-averaged log-prob, |y| completion tokens
    ℓ_ref(y) = log π_ref(y|x) / |y|
    M        = (ℓ(y_w) − ℓ_ref(y_w)) − (ℓ(y_l) − ℓ_ref(y_l))   the per-token log-ratio margin

α-DPO — Wu, Wang, Yang, Wu, Gao, Ding, Wang & He 2024, "α-DPO: Adaptive Reward Margin is What Direct Preference
Optimization Needs" (ICML 2025 as "AlphaDPO: Adaptive Reward Margin for Direct Preference Optimization"),
arXiv:2410.10148. The paper replaces DPO's reference by an implicit one, π̂_ref(y|x) ∝ U(y|x)·(π_θ(y|x)/π_ref(y|x))^α
(U uniform), so the reward margin becomes SimPO's minus α times the policy-to-reference margin; that margin is
normalised (M*, its z-score) and its gradient stopped, giving the objective

    L = −log σ(β·ℓ(y_w) − β·ℓ(y_l) − β·sg[γ/β + α·M*]),      M* = (M − mean M) / std M

The constants are those of the authors' code (github.com/junkangwu/alpha-DPO, `scripts/dpo_trainer.py`,
loss_type="alpha-dpo", ln=True): the logit is β·(Δℓ − sg[γ/β + α·M*]), so α scales M* in per-token log-prob
units, as γ/β does (`gamma_beta_ratio`); mean and std are exponential moving averages, decay 0.9 starting from
0 with no bias correction, updated before each micro-batch's loss with that micro-batch's M gathered over
processes (`torch.std`, unbiased). Here that is the loss's running state (`AlphaDPORunning`, declared
`includes_current` as BCO's δ), which `prefopt.LossCall` and the training loop keep and checkpoint. Called
directly, the loss reads `state` (an `AlphaDPOMargin` the caller updates with `alpha_dpo_margins(...)` first);
with `state=None` M* = 0 and the loss is SimPO's with γ = β·gamma_beta_ratio. A std of 0 (one pair, or equal
margins) also gives M* = 0, where the official code divides by zero.

Defaults: the authors' Llama-3-8B-Instruct config (training_configs/llama-3-8b-instruct-alpha-dpo.yaml: β = 2.5,
γ/β = 0.6, α = 0.2); their Mistral-7B-Instruct config uses β = 2.5, γ/β = 0.15, α = 0.05 and Gemma-2-9B-it
β = 10, γ/β = 0.4, α = 0.05: tune per model. Not separable over pairs (`LossSpec.separable` is False): through
the stop-gradient the per-pair logit reads the statistics of every pair of the micro-batch (and of earlier
ones), so pair b's gradient is not known from its own log-probs; the loss-fused head is not taken.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from prefopt.loss_inputs import EngineOutput
from prefopt.loss_state import LossStateSpec
from prefopt.losses.base import neg_logsigmoid
from prefopt.losses.kinds import PairedTerms, Reported, paired_loss
from prefopt.registry import NON_NEGATIVE, POSITIVE, HParam, Interval, LossInputError

__all__ = ["AlphaDPOMargin", "AlphaDPORunning", "alpha_dpo_margins", "alpha_dpo"]

# The official code's EMA decay of the margin statistics (`update_and_sync_ref_mean_std(gamma_update=0.9)`).
ALPHA_DPO_EMA_DECAY = 0.9


def alpha_dpo_margins(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
) -> Tensor:
    """M = (ℓ_w − ℓ_ref,w) − (ℓ_l − ℓ_ref,l) per pair [B], detached: what `AlphaDPOMargin.update` takes."""
    chosen = (policy_chosen_logps - ref_chosen_logps) / chosen_lengths
    rejected = (policy_rejected_logps - ref_rejected_logps) / rejected_lengths
    return (chosen - rejected).detach()


@dataclass
class AlphaDPOMargin:
    """The running mean and std of α-DPO's margins M, owned by the caller (the official code's EMA).

    `update(margins)` folds in one micro-batch (NaN entries skipped); `normalise(margins)` gives M*. Plain floats:
    save with `dataclasses.asdict`.
    """

    decay: float = ALPHA_DPO_EMA_DECAY
    mean: float = 0.0
    std: float = 0.0
    updates: int = 0

    def update(self, margins: Tensor) -> None:
        """EMA of the batch mean and unbiased std of `margins` (any shape; NaN = not a margin, skipped)."""
        values = margins.detach().double().reshape(-1)
        values = values[~torch.isnan(values)]
        if values.numel() == 0:
            return
        if not torch.isfinite(values).all():
            raise LossInputError("alpha_dpo: margins contain inf; the running mean and std would be poisoned.")
        batch_std = float(values.std()) if values.numel() > 1 else 0.0
        self.mean = self.decay * self.mean + (1.0 - self.decay) * float(values.mean())
        self.std = self.decay * self.std + (1.0 - self.decay) * batch_std
        self.updates += 1

    def normalise(self, margins: Tensor) -> Tensor:
        """M* = (M − mean)/std [B] (zeros while std is 0)."""
        if self.std <= 0.0:
            return torch.zeros_like(margins)
        return (margins - self.mean) / self.std


@dataclass
class AlphaDPORunning:
    """α-DPO's running state in a training loop (`LossSpec.state`, `prefopt.loss_state.LossState`), declared
    `includes_current`: before each micro-batch's loss the loop folds in that micro-batch's margins, gathered over
    processes, as the official code does (module docstring). `observe` returns [S] for the S = 2B sequences of a
    paired batch (chosen first): M of pair b at position b, NaN on the rejected half, which `update` skips, so the
    statistics are over pairs whatever the processes."""

    running: AlphaDPOMargin = field(default_factory=AlphaDPOMargin)

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> AlphaDPORunning:
        return cls(AlphaDPOMargin(decay=float(hparams["ema_decay"])))

    def inputs(self) -> dict[str, Any]:
        return {"state": self.running}

    def observe(self, policy: EngineOutput, reference: EngineOutput | None) -> Tensor:
        if reference is None:
            raise LossInputError("alpha_dpo: its adaptive margin needs the reference's log-probs")
        per_token = ((policy.sum - reference.sum) / policy.count.clamp(min=1)).detach().double()  # [S]
        b = per_token.numel() // 2
        margins = per_token[:b] - per_token[b:]
        return torch.cat([margins, torch.full_like(margins, float("nan"))])

    def update(self, stats: Tensor) -> None:
        self.running.update(stats)

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.running)

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        self.running = AlphaDPOMargin(**saved)


@paired_loss(
    "alpha_dpo",
    needs_reference=True,
    paper="Wu et al. 2024, α-DPO: Adaptive Reward Margin is What Direct Preference Optimization Needs, "
    "arXiv:2410.10148 (implicit reference π̂_ref ∝ U·(π_θ/π_ref)^α and its objective with sg[γ + α·M*]; constants "
    "and defaults from the authors' code and Llama-3-8B-Instruct config: β = 2.5, γ/β = 0.6, α = 0.2). Not AlphaPO "
    "(arXiv:2501.03884, `alphapo`)",
    formula="−log σ(β·ℓ_w − β·ℓ_l − β·sg[γ/β + α·M*]), ℓ = logπ/|y|, M = (ℓ_w − ℓ_ref,w) − (ℓ_l − ℓ_ref,l), "
    "M* = (M − EMA mean)/EMA std",
    hparams=[
        HParam("beta", 2.5, "scale β of the length-normalised reward β·logπ/|y| (official: 2.5)", POSITIVE),
        HParam(
            "gamma_beta_ratio",
            0.6,
            "γ/β, the target margin in per-token log-prob units (official code's parameter; Llama-3: 0.6)",
            NON_NEGATIVE,
        ),
        HParam(
            "alpha",
            0.2,
            "α, weight of the normalised policy-to-reference margin M* in the target (Llama-3: 0.2; 0 = SimPO)",
            NON_NEGATIVE,
        ),
        HParam(
            "ema_decay",
            ALPHA_DPO_EMA_DECAY,
            "decay of the running mean and std of M (official 0.9, from 0; 0 = each micro-batch's own z-score)",
            Interval(0.0, 1.0, lo_closed=True),
        ),
    ],
    needs_lengths=True,
    state=LossStateSpec(inputs=("state",), init=AlphaDPORunning.from_hparams, includes_current=True),
)
def alpha_dpo(
    t: PairedTerms,
    *,
    state: AlphaDPOMargin | None,
    beta: float,
    gamma_beta_ratio: float,
    alpha: float,
    ema_decay: float,
) -> Reported:
    """α-DPO: SimPO's length-normalised margin loss with a per-pair target γ/β + α·M* from the reference.

    Args:
        state: the running statistics of M (`AlphaDPOMargin`); None: M* = 0 (SimPO with γ = β·gamma_beta_ratio).
            The loss never mutates it: update it with this batch first,
            `state.update(alpha_dpo_margins(...))`, then call the loss (`prefopt.LossCall` and the training
            loop do).
        beta: β; gamma_beta_ratio: γ/β; alpha: α; ema_decay: read by the loop's state (`AlphaDPORunning`).

    Metrics: `rewards/*` = β·(ℓ − α·(ℓ − ℓ_ref)) as the official code logs them, `logps/*` summed, `target`
    (mean of γ/β + α·M*), `margin_mean`, `margin_std` (the state's statistics of M).
    """
    del ema_decay  # the state's decay (AlphaDPORunning.from_hparams), not the loss's
    if state is not None and not isinstance(state, AlphaDPOMargin):
        raise LossInputError(
            "alpha_dpo: state must be a prefopt.losses.AlphaDPOMargin (or None for M* = 0), got "
            f"{type(state).__name__}."
        )
    chosen_avg, rejected_avg = t.chosen_avg_logps, t.rejected_avg_logps  # ℓ_w, ℓ_l [B]
    chosen_ratio, rejected_ratio = t.chosen_ratio / t.chosen_lengths, t.rejected_ratio / t.rejected_lengths
    margins = (chosen_ratio - rejected_ratio).detach()  # M [B]
    normalised = state.normalise(margins) if state is not None else torch.zeros_like(margins)  # M*
    target = (gamma_beta_ratio + alpha * normalised).detach()  # sg[γ/β + α·M*]
    per_example = neg_logsigmoid(beta * (chosen_avg - rejected_avg - target))
    rewards = (
        beta * (chosen_avg - alpha * chosen_ratio).detach(),
        beta * (rejected_avg - alpha * rejected_ratio).detach(),
    )
    stats = (0.0, 0.0) if state is None else (state.mean, state.std)
    return Reported(
        per_example,
        rewards=rewards,
        metrics={
            "target": target,
            "margin_mean": per_example.new_tensor(stats[0]),
            "margin_std": per_example.new_tensor(stats[1]),
        },
    )
