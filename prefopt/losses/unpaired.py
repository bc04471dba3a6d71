"""Unpaired (binary-feedback) losses: KTO, BCO and APO-zero-unpaired.

Each row is one (x, y) with a label: True = desirable, False = undesirable. Shapes [B]:

    ρ(y) = log π_θ(y|x) − log π_ref(y|x)        summed completion log-ratio
    r̂(y) = β·ρ(y)                               implicit reward

KTO — Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
arXiv:2402.01306, Eq. 7–8. With the reference point z₀ = max(0, KL estimate), not back-propagated:
    v(x, y) = λ_D·σ(β(ρ − z₀))  if y is desirable,   λ_U·σ(β(z₀ − ρ))  if undesirable
    L = E[λ_y − v(x, y)]        i.e. λ_D·(1 − σ(β(ρ − z₀))) or λ_U·(1 − σ(β(z₀ − ρ))) per row
z₀ estimates KL(π_θ ‖ π_ref) from *mismatched* pairs (x_i, y_j), j ≠ i: the paper and TRL/HALOs rotate
completions by one within the batch. It needs a forward pass of both models on those pairs, which a loss
of log-prob tensors cannot do, so `kto` takes it as an input: `prefopt.LossCall("kto", ...)(batch)` and
`prefopt.loss_arguments` build it from a batch; by hand, build the pairs with `mismatched_indices`, score
them, and pass `kl=kto_kl_estimate(policy_kl_logps, ref_kl_logps)`; `kl=None` is an error that says so
(pass `kl=torch.tensor(0.)` to use z₀ = 0 deliberately). `kto` declares that input as a statistic
of the global batch (`batch_inputs={"kl": kto_reference_point}`, `prefopt.loss_state`), so prefopt's
training loop computes z₀ over every row of the global batch. Weight rule (paper §4.2):
λ_D·n_D / (λ_U·n_U) ∈ [1, 4/3], checked over a whole dataset by `kto_weight_check`.

BCO — Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
arXiv:2404.04656, Eq. 9 (reward shift): a binary classifier whose logit is the implicit reward,
    L = −log σ(r̂ − δ) if desirable,   −log σ(−(r̂ − δ)) if undesirable,
with δ the running mean of the implicit rewards, kept by the caller in a `BCOState`; `bco` declares it as
its running state (`state=LossStateSpec(("state",), BCORunningDelta.from_hparams, includes_current=True)`), which
prefopt's training loop keeps across steps and saves in checkpoints. δ includes the batch it shifts, as in TRL's
BCOTrainer (written with the paper's authors): `bco_loss` calls `self.running.update(rewards of this batch,
gathered over processes)` and then reads `self.running.mean` (trl/trainer/bco_trainer.py, TRL 0.19.1), so the
first batch's δ is its own mean reward, not 0. `includes_current` makes the loop (and `LossCall`) update the
state with each micro-batch's rewards, all-gathered, before that micro-batch's loss, exactly as TRL updates per
forward call, gradient accumulation included. The underlying-distribution-matching weights of the paper's §4 are
not included.

APO-zero (unpaired) — D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive
Revisions", arXiv:2408.06266, Eq. 8 applied per row as in TRL's KTO `apo_zero_unpaired`:
    L = 1 − σ(βρ) if desirable,   σ(βρ) if undesirable.

Metrics for a class absent from the batch: class means (`rewards/chosen`, `logps/rejected`, …) are 0,
`rewards/margins` is 0 unless both classes are present, and `count/chosen`, `count/rejected` give the
number of rows behind each mean so a logger can average over steps exactly (Σ mean·count / Σ count).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from prefopt.loss_inputs import EngineOutput, check_labels
from prefopt.loss_state import GlobalBatch, LossStateSpec
from prefopt.losses.base import neg_logsigmoid
from prefopt.losses.kinds import Reported, UnpairedTerms, unpaired_loss
from prefopt.registry import POSITIVE, HParam, LossInputError

__all__ = [
    "BCOState",
    "BCORunningDelta",
    "mismatched_indices",
    "kto_kl_estimate",
    "kto_reference_point",
    "kto_weight_check",
    "kto",
    "bco",
    "apo_zero_unpaired",
]

KTO_WEIGHT_RATIO_RANGE = (1.0, 4.0 / 3.0)


def mismatched_indices(rows: int | Sequence[Hashable] | Tensor) -> Tensor:
    """Completion index j(i) to pair with prompt i for the KTO KL estimate: a rotation within the batch.

    Args:
        rows: the batch size B (rows are assumed to have distinct prompts), or the B prompt ids of
            the batch (a sequence or 1-D tensor; rows with equal ids share a prompt).
    Returns:
        LongTensor [B]: with a batch size, j(i) = (i + 1) mod B (the shift-by-one of TRL/HALOs); with
        prompt ids, j(i) is the first row after i (cyclically) whose prompt differs from row i's, so
        (x_i, y_{j(i)}) is always a mismatched pair.
    Raises:
        LossInputError: B < 2, or every row has the same prompt (no mismatched pair exists).
    """
    if isinstance(rows, bool) or not isinstance(rows, (int, Sequence, Tensor)):
        raise LossInputError(
            f"mismatched_indices: rows must be a batch size or a sequence of prompt ids, got {type(rows).__name__}; "
            f"for a TokenBatch, prefopt.LossCall('kto', engine=..., reference=...)(batch) builds the pairs and z₀."
        )
    if isinstance(rows, int):
        if rows < 2:
            raise LossInputError(
                f"mismatched_indices: batch size {rows} has no mismatched (x_i, y_j) pair; the KTO KL estimate "
                f"needs at least 2 rows per batch (TRL advises ≥ 4 per device)."
            )
        return (torch.arange(rows) + 1) % rows
    ids = rows.tolist() if isinstance(rows, Tensor) else list(rows)
    if isinstance(rows, Tensor) and rows.dim() != 1:
        raise LossInputError(f"mismatched_indices: prompt ids must be 1-D, got shape {tuple(rows.shape)}.")
    n = len(ids)
    if n < 2 or len(set(ids)) < 2:
        raise LossInputError(
            f"mismatched_indices: the {n} rows share one prompt ({ids[:1]}), so no mismatched (x_i, y_j) pair "
            f"exists; batch rows from at least two prompts together (shuffle, or a larger batch)."
        )
    out = []
    for i, prompt in enumerate(ids):
        j = (i + 1) % n
        while ids[j] == prompt:
            j = (j + 1) % n
        out.append(j)
    return torch.tensor(out, dtype=torch.long)


def kto_kl_estimate(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO reference point z₀ = max(0, mean_i [log π_θ(y'_i|x_i) − log π_ref(y'_i|x_i)]), detached (Eq. 7).

    Args:
        policy_kl_logps, ref_kl_logps: [M] summed log-probs of mismatched pairs (x_i, y_{j(i)}), see
            `mismatched_indices`. Under several processes pass the all-gathered tensors so every rank
            uses the same z₀ (as TRL does).
    Returns:
        A detached scalar tensor ≥ 0 (float32 or wider).
    """
    for name, t in (("policy_kl_logps", policy_kl_logps), ("ref_kl_logps", ref_kl_logps)):
        if not isinstance(t, Tensor) or t.dim() != 1 or t.numel() == 0:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise LossInputError(f"kto_kl_estimate: {name} must be a non-empty 1-D tensor [M], got {got}.")
    if policy_kl_logps.shape != ref_kl_logps.shape:
        raise LossInputError(
            f"kto_kl_estimate: policy_kl_logps {tuple(policy_kl_logps.shape)} and ref_kl_logps "
            f"{tuple(ref_kl_logps.shape)} must have the same shape."
        )
    diff = (policy_kl_logps.detach() - ref_kl_logps.detach()).to(
        torch.promote_types(policy_kl_logps.dtype, torch.float32)
    )
    return diff.mean().clamp(min=0.0)


def kto_reference_point(batch: GlobalBatch) -> Tensor:
    """KTO's `kl` input in a training loop: z₀ over the whole global batch (`LossSpec.batch_inputs`).

        z₀ = max(0, mean over every row i of the global batch of log π_θ(y_j|x_i) − log π_ref(y_j|x_i)),
        j = j(i) the next row with a different prompt (`mismatched_indices`), detached (Eq. 7)

    Each process scores the pairs of its own positions; the sum and the count are all-reduced, so z₀ is the
    same however the batch is split over processes and accumulation steps. (TRL computes it per device batch
    and gathers.) Returns a detached scalar ≥ 0.
    """
    rows = batch.rows
    partner = mismatched_indices([tuple(r["prompt_ids"]) for r in rows])
    pairs = [
        {"prompt_ids": rows[i]["prompt_ids"], "completion_ids": rows[int(partner[i])]["completion_ids"]}
        for i in batch.positions
    ]  # (x_i, y_j(i))
    policy, reference = batch.score(pairs)
    diff = policy.sum.float() - reference.sum.float()  # [M] this process's pairs
    totals = batch.all_reduce_sum(torch.stack([diff.sum(), diff.new_tensor(float(diff.numel()))]))
    return (totals[0] / totals[1]).clamp(min=0.0).detach()


def kto_weight_check(
    labels: Tensor | Sequence[bool], desirable_weight: float = 1.0, undesirable_weight: float = 1.0
) -> float:
    """λ_D·n_D / (λ_U·n_U) over a dataset; warns when it lies outside [1, 4/3] (KTO paper §4.2, Eq. 9).

    Args:
        labels: [N] bools (or 0/1 integers) for the whole training set (True = desirable); any other value
            raises instead of counting as desirable.
        desirable_weight, undesirable_weight: λ_D and λ_U as passed to `kto`.
    Returns:
        The ratio (inf when there are no undesirable rows, 0 when there are no desirable ones).
    """
    if desirable_weight <= 0 or undesirable_weight <= 0:
        raise LossInputError(
            f"kto_weight_check: weights must be > 0, got desirable_weight={desirable_weight}, "
            f"undesirable_weight={undesirable_weight}."
        )
    values = labels if isinstance(labels, Tensor) else torch.as_tensor(list(labels))
    flags = check_labels("kto_weight_check", values.bool() if values.numel() == 0 else values).reshape(-1).tolist()
    n_desirable = sum(flags)
    n_undesirable = len(flags) - n_desirable
    if n_desirable == 0 or n_undesirable == 0:
        missing = "desirable" if n_desirable == 0 else "undesirable"
        warnings.warn(
            f"KTO data has no {missing} examples ({len(flags)} rows); one side of the loss never trains.",
            UserWarning,
            stacklevel=2,
        )
        return 0.0 if n_desirable == 0 else math.inf
    ratio = desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
    lo, hi = KTO_WEIGHT_RATIO_RANGE
    if not lo <= ratio <= hi:
        base = n_undesirable / n_desirable
        warnings.warn(
            f"KTO weights: λ_D·n_D/(λ_U·n_U) = {desirable_weight}·{n_desirable}/({undesirable_weight}·{n_undesirable}) "
            f"= {ratio:.3g} lies outside [1, 4/3] (Ethayarajh et al. 2024 §4.2). With undesirable_weight=1, use "
            f"desirable_weight in [{base:.3g}, {base * hi:.3g}]; or with desirable_weight=1, undesirable_weight in "
            f"[{1 / (base * hi):.3g}, {1 / base:.3g}].",
            UserWarning,
            stacklevel=2,
        )
    return ratio


def _prospect_loss(logits: Tensor, labels: Tensor, desirable_weight: float, undesirable_weight: float) -> Tensor:
    """λ_D·(1 − σ(u)) for desirable rows and λ_U·(1 − σ(−u)) for undesirable rows, [B].

    Written as λ·½(1 ∓ tanh(u/2)) so both branches differentiate through the same tanh(u/2): a
    completion seen once as desirable and once as undesirable (equal λ, equal u) gets gradients that
    cancel to exactly zero, as the math says they must.
    """
    sign = labels.to(logits.dtype) * 2 - 1  # +1 desirable, −1 undesirable
    weight = torch.where(labels, desirable_weight, undesirable_weight).to(logits.dtype)
    return weight * 0.5 * (1 - sign * torch.tanh(0.5 * logits))


BETA = HParam("beta", 0.1, "inverse temperature β of the implicit reward β·ρ (paper: 0.1)", POSITIVE)


@unpaired_loss(
    "kto",
    batch_inputs={"kl": kto_reference_point},
    paper="Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization, arXiv:2402.01306 "
    "(Eq. 7–8; β = 0.1, λ_D = λ_U = 1, §4.2)",
    formula="λ_D·(1 − σ(β(ρ − z₀))) if desirable, λ_U·(1 − σ(β(z₀ − ρ))) if undesirable; z₀ = max(0, KL) detached",
    hparams=[
        BETA,
        HParam("desirable_weight", 1.0, "λ_D; keep λ_D·n_D/(λ_U·n_U) in [1, 4/3] (kto_weight_check)", POSITIVE),
        HParam("undesirable_weight", 1.0, "λ_U; keep λ_D·n_D/(λ_U·n_U) in [1, 4/3] (kto_weight_check)", POSITIVE),
    ],
)
def kto(
    t: UnpairedTerms, *, kl: Tensor | float | None, beta: float, desirable_weight: float, undesirable_weight: float
) -> Reported:
    """Kahneman–Tversky Optimization: a prospect-theoretic value of each labelled completion.

    Args:
        kl: scalar reference point (the KL estimate from mismatched pairs, `kto_kl_estimate`); it is
            detached and clamped at 0 here. Required: None raises an error explaining how to get it.
        beta, desirable_weight, undesirable_weight: β, λ_D, λ_U. Lengths are not used (summed log-ratios).

    Metrics: `kl` (the z₀ used), `rewards/*` = β·ρ class means, `logps/*`, `count/*` (module doc).
    """
    if kl is None:
        raise LossInputError(
            "kto needs kl, the reference point z₀ ≈ KL(π_θ‖π_ref) from mismatched pairs (x_i, y_j): "
            "prefopt.LossCall('kto', engine=policy_engine, reference=reference)(batch) builds it from the batch "
            "(so does prefopt.loss_arguments(..., policy=, reference=)); or score pairs from "
            "mismatched_indices(prompt_ids) and pass kl=kto_kl_estimate(policy_kl_logps, ref_kl_logps), or "
            "kl=torch.tensor(0.) for z₀ = 0."
        )
    kl_tensor = kl if isinstance(kl, Tensor) else torch.tensor(float(kl), dtype=t.logps.dtype)
    if kl_tensor.numel() != 1:
        raise LossInputError(f"kto: kl must be a scalar (one z₀ per batch), got shape {tuple(kl_tensor.shape)}.")
    z0 = kl_tensor.detach().to(device=t.logps.device, dtype=t.logps.dtype).reshape(()).clamp(min=0.0)
    per_example = _prospect_loss(beta * (t.ratio - z0), t.labels, desirable_weight, undesirable_weight)
    return Reported(per_example, metrics={"kl": z0.float()})


@dataclass
class BCOState:
    """Running mean (and variance) of implicit rewards for BCO's reward shift δ, owned by the caller.

    `update` merges a batch with Chan et al.'s parallel form of Welford's algorithm, so the result
    equals the mean over every reward seen so far. Under several processes, update every rank with
    the all-gathered rewards so all ranks keep the same δ. Plain floats: save with `dataclasses.asdict`.
    """

    mean: float = 0.0
    m2: float = 0.0  # Σ (r − mean)² over all rewards seen
    count: int = 0

    @property
    def delta(self) -> float:
        """δ, the running mean of the implicit rewards (0 before the first update)."""
        return self.mean

    @property
    def variance(self) -> float:
        """Unbiased running variance of the rewards (0 with fewer than two)."""
        return self.m2 / (self.count - 1) if self.count > 1 else 0.0

    def update(self, rewards: Tensor) -> None:
        """Merge a batch of implicit rewards r̂ = β·ρ (any shape; both classes) into the running moments."""
        values = rewards.detach().double().reshape(-1)
        n = values.numel()
        if n == 0:
            return
        if not torch.isfinite(values).all():
            raise LossInputError("BCOState.update: rewards contain inf/NaN; the running mean would be poisoned.")
        batch_mean = float(values.mean())
        batch_m2 = float(((values - batch_mean) ** 2).sum())
        total = self.count + n
        shift = batch_mean - self.mean
        self.mean += shift * n / total
        self.m2 += batch_m2 + shift * shift * self.count * n / total
        self.count = total


@dataclass
class BCORunningDelta:
    """BCO's running state in a training loop (`LossSpec.state`, `prefopt.loss_state.LossState`).

    A `BCOState` declared `includes_current`: before each micro-batch's loss the loop merges that micro-batch's
    implicit rewards r̂ = β·(log π_θ − log π_ref), all-gathered over processes, so its δ is the mean over every
    earlier micro-batch and itself, as TRL's BCOTrainer computes it (module docstring). Saved in checkpoints as
    the `BCOState`'s fields, after the step's last micro-batch, so a resumed run continues exactly.
    """

    beta: float
    running: BCOState = field(default_factory=BCOState)

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> BCORunningDelta:
        return cls(float(hparams["beta"]))

    def inputs(self) -> dict[str, Any]:
        return {"state": self.running}

    def observe(self, policy: EngineOutput, reference: EngineOutput | None) -> Tensor:
        """r̂ = β·(log π_θ − log π_ref) per sequence [S], detached."""
        if reference is None:
            raise LossInputError("bco: the running δ needs the reference's log-probs")
        return (self.beta * (policy.sum - reference.sum)).detach()

    def update(self, stats: Tensor) -> None:
        self.running.update(stats)

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.running)

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        self.running = BCOState(**saved)


@unpaired_loss(
    "bco",
    paper="Jung et al. 2024, Binary Classifier Optimization for Large Language Model Alignment, arXiv:2404.04656 "
    "(Eq. 9, reward shift δ; β = 0.01 as listed in TRL's paper index, TRL BCOConfig default 0.1)",
    formula="−log σ(βρ − δ) if desirable, −log σ(δ − βρ) if undesirable; δ = running mean of βρ",
    hparams=[HParam("beta", 0.01, "inverse temperature β of the implicit reward β·ρ", POSITIVE)],
    state=LossStateSpec(inputs=("state",), init=BCORunningDelta.from_hparams, includes_current=True),
)
def bco(t: UnpairedTerms, *, state: BCOState | None, beta: float) -> Reported:
    """Binary Classifier Optimization: logistic regression of the label on the shifted implicit reward.

    Args:
        state: the caller's running mean; δ = state.delta (0 when None). The loss never mutates it: as TRL
            does, update it with the current batch first, `state.update(beta * (policy_logps - ref_logps))`,
            then call the loss (`prefopt.LossCall('bco', ...)` and prefopt's training loop do).
        beta: β. Lengths are not used.

    Metrics: `delta`, `rewards/*` = β·ρ class means, `logps/*`, `count/*` (module doc).
    """
    if state is not None and not isinstance(state, BCOState):
        raise LossInputError(
            f"bco: state must be a prefopt.losses.BCOState (or None for δ = 0), got {type(state).__name__}."
        )
    delta = 0.0 if state is None else float(state.delta)
    shifted = beta * t.ratio - delta  # r̂ − δ, [B]
    per_example = neg_logsigmoid(torch.where(t.labels, shifted, -shifted))
    return Reported(per_example, metrics={"delta": per_example.new_tensor(delta)})


@unpaired_loss(
    "apo_zero_unpaired",
    paper="D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions, "
    "arXiv:2408.06266 (APO-zero, Eq. 8, per row as TRL's unpaired variant; β = 0.1)",
    formula="1 − σ(βρ) if desirable, σ(βρ) if undesirable",
    hparams=[BETA],
)
def apo_zero_unpaired(t: UnpairedTerms, *, beta: float) -> Tensor:
    """Anchored Preference Optimization (zero), unpaired: push desirable rewards up, undesirable down.

    Args:
        beta: β. Lengths are not used.

    Metrics: `rewards/*` = β·ρ class means, `logps/*`, `count/*` (module doc).
    """
    return _prospect_loss(beta * t.ratio, t.labels, 1.0, 1.0)
