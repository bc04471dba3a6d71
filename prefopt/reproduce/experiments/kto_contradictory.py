"""KTO on contradictory preferences: equal-weight KTO does not move, DPO does; with a majority, they disagree.

Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", arXiv:2402.01306,
§4 (the theorem on contradictory preferences). A pair y_w ≻ y_l becomes two KTO rows: (y_w,
desirable) and (y_l, undesirable). Two checks on a two-action bandit {a, b}:

1. Exactly contradictory data, {a ≻ b, b ≻ a}: every action is once desirable and once undesirable.
   With λ_D = λ_U = λ, its two KTO terms are λ(1 − σ(u)) + λ(1 − σ(−u)) = λ, a constant, so KTO's
   gradient is exactly zero at every policy and training leaves the policy where it started. DPO's
   loss on the same pairs, −log σ(βΔ) − log σ(−βΔ), is minimised only at Δ = 0, so from any start
   with π/π_ref unequal across a and b DPO moves the policy (to π(a)/π(b) = π_ref(a)/π_ref(b)).
2. The theorem: a fraction p > ½ of pairs say a ≻ b, the rest b ≻ a. DPO's optimum satisfies
   σ(βΔ) = p, i.e. π(a)/π(b) = (π_ref(a)/π_ref(b))·(p/(1−p))^{1/β}, so when p^{1/β}π_ref(a) <
   (1−p)^{1/β}π_ref(b) DPO prefers the minority-preferred b; KTO with λ_D = λ_U raises a (its
   per-action gradient is −(2p − 1)·βσ'(·) < 0 in ρ_a) and produces the majority-preferred a.

KTO's reference point z₀ is `kto_kl_estimate` over the batch's actions (all rows share the bandit's
single prompt, so every other row's action is a valid y'); it is detached, as in the paper.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.losses.unpaired import kto_kl_estimate
from prefopt.registry import BoundLoss, get_loss
from prefopt.reproduce.bandit import paired_bandit_losses, total_variation, train_adam, unpaired_bandit_losses
from prefopt.reproduce.base import (
    Check,
    Outcome,
    Progress,
    Reproduction,
    Table,
    check_at_least,
    check_close,
    fmt,
    single_thread,
)

__all__ = ["KTOContradictionConfig", "CONFIG", "QUICK", "PAPER", "dpo_optimum_ratio", "run"]

PAPER = {
    "source": "Ethayarajh et al. 2024, arXiv:2402.01306, §4 (theorem on contradictory preferences)",
    "zero": "λ(1−σ(u)) + λ(1−σ(−u)) = λ: KTO's gradient is exactly 0",
    "moves": "DPO's optimum is Δ = 0: it moves a policy with Δ ≠ 0",
    "dpo_minority": "DPO prefers the minority-preferred y_b when p^{1/β}π_ref(a) < (1−p)^{1/β}π_ref(b)",
    "kto_majority": "KTO (λ_D = λ_U) produces the majority-preferred y_a",
}


@dataclass(frozen=True)
class KTOContradictionConfig:
    """Both experiments: the contradictory start and reference, and the theorem's p, β and reference."""

    beta: float = 0.1
    start: tuple[float, float] = (0.8, 0.2)  # π_0 for experiment 1 (≠ π_ref so that Δ ≠ 0)
    reference: tuple[float, float] = (0.5, 0.5)
    random_policies: int = 1000  # policies at which KTO's gradient is evaluated
    theorem_p: float = 0.6
    theorem_beta: float = 1.0
    theorem_reference: tuple[float, float] = (0.3, 0.7)
    pairs: int = 10  # dataset size for the theorem (p·pairs must be an integer)
    steps: int = 2_000
    lr: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 < self.theorem_p < 1:
            raise ValueError(f"KTOContradictionConfig: theorem_p must lie in (0.5, 1), got {self.theorem_p}.")
        if abs(self.theorem_p * self.pairs - round(self.theorem_p * self.pairs)) > 1e-9:
            raise ValueError(f"KTOContradictionConfig: theorem_p·pairs = {self.theorem_p * self.pairs} must be whole.")
        if min(self.start + self.reference + self.theorem_reference) <= 0 or self.steps < 1:
            raise ValueError("KTOContradictionConfig: probabilities must be > 0 and steps ≥ 1.")


CONFIG = KTOContradictionConfig()
QUICK = KTOContradictionConfig(steps=600, random_policies=100)


def dpo_optimum_ratio(p: float, beta: float, reference: tuple[float, float]) -> float:
    """π(a)/π(b) at DPO's optimum on a fraction p of a ≻ b pairs: (π_ref(a)/π_ref(b))·(p/(1−p))^{1/β}."""
    return reference[0] / reference[1] * (p / (1 - p)) ** (1 / beta)


def _losses(
    kind: str, loss: BoundLoss, ref: Tensor, chosen: Tensor, rejected: Tensor
) -> Callable[[Tensor, int], Tensor]:
    """problem_losses(theta, step) for `train_adam`: DPO on the pairs, or KTO on their two rows each."""
    actions = torch.cat([chosen, rejected], -1)  # KTO rows: winners desirable, losers undesirable
    labels = torch.cat([torch.ones_like(chosen, dtype=torch.bool), torch.zeros_like(rejected, dtype=torch.bool)], -1)

    def problem_losses(theta: Tensor, step: int) -> Tensor:
        logps = torch.log_softmax(theta, -1)
        if kind == "dpo":
            return paired_bandit_losses(loss, logps, ref, chosen, rejected)
        rows = logps.gather(-1, actions).reshape(-1)
        z0 = kto_kl_estimate(rows, ref.expand_as(logps).gather(-1, actions).reshape(-1))
        return unpaired_bandit_losses(loss, logps, ref, actions, labels, kl=z0)

    return problem_losses


def _train(
    kind: str,
    loss: BoundLoss,
    start: Tensor,
    ref: Tensor,
    chosen: Tensor,
    rejected: Tensor,
    config: KTOContradictionConfig,
    progress: Progress,
    stage: str,
) -> tuple[Tensor, float]:
    """Full-batch Adam; returns the final logits and the largest |gradient| seen at any step."""
    largest: list[Tensor] = []
    final = train_adam(
        start.log().unsqueeze(0),
        _losses(kind, loss, ref, chosen, rejected),
        steps=config.steps,
        lr=config.lr,
        on_grad=lambda grad: largest.append(grad.abs().max()),
        progress=lambda done, total: progress(done, total, stage),
    )
    return final[0], float(torch.stack(largest).max())


def run(config: KTOContradictionConfig, progress: Progress) -> Outcome:
    """Experiment 1 (exact contradiction) and experiment 2 (the theorem), each with DPO and KTO."""
    dpo = get_loss("dpo", beta=config.beta)
    kto = get_loss("kto", beta=config.beta)
    ref = torch.tensor(config.reference).log()
    start = torch.tensor(config.start)
    both_orders = (torch.tensor([[0, 1]]), torch.tensor([[1, 0]]))  # pairs a ≻ b and b ≻ a
    with single_thread():
        kto_final, kto_grad = _train("kto", kto, start, ref, *both_orders, config, progress, "KTO, contradictory")
        dpo_final, _ = _train("dpo", dpo, start, ref, *both_orders, config, progress, "DPO, contradictory")
        gen = torch.Generator().manual_seed(config.seed)
        random_logits = torch.randn(config.random_policies, 2, generator=gen) * 3
        random_grad = _random_policy_gradient(kto, ref, random_logits, *both_orders)
        majority = round(config.theorem_p * config.pairs)
        chosen = torch.tensor([[0] * majority + [1] * (config.pairs - majority)])
        rejected = 1 - chosen
        t_ref = torch.tensor(config.theorem_reference)
        t_dpo, t_kto = (get_loss(k, beta=config.theorem_beta) for k in ("dpo", "kto"))
        dpo_t, _ = _train("dpo", t_dpo, t_ref, t_ref.log(), chosen, rejected, config, progress, "DPO, theorem")
        kto_t, _ = _train("kto", t_kto, t_ref, t_ref.log(), chosen, rejected, config, progress, "KTO, theorem")
    pi = {
        k: torch.softmax(v, -1) for k, v in {"kto": kto_final, "dpo": dpo_final, "dpo_t": dpo_t, "kto_t": kto_t}.items()
    }
    ratio = dpo_optimum_ratio(config.theorem_p, config.theorem_beta, config.theorem_reference)
    dpo_target = ratio / (1 + ratio)
    moved = float(total_variation(pi["dpo"], start))
    kto_moved = float((kto_final - start.log()).abs().max())
    checks = [
        Check(
            "equal weights, {a≻b, b≻a}: max |∇KTO| over training and random policies",
            PAPER["zero"],
            fmt(max(kto_grad, random_grad)),
            "= 0 (exact)",
            max(kto_grad, random_grad) == 0.0,
            max(kto_grad, random_grad),
        ),
        Check(
            "KTO: max |θ_T − θ_0| after training",
            "the policy does not move",
            fmt(kto_moved),
            "= 0 (exact)",
            kto_moved == 0.0,
            kto_moved,
        ),
        check_at_least("DPO on the same pairs: TV(π_T, π_0)", PAPER["moves"], moved, 0.25),
        check_close(
            f"p = {config.theorem_p}, β = {config.theorem_beta}: DPO's final π(a)",
            f"{PAPER['dpo_minority']}; closed form {fmt(dpo_target)}",
            float(pi["dpo_t"][0]),
            dpo_target,
            1e-3,
        ),
        check_at_least(f"p = {config.theorem_p}: KTO's final π(a)", PAPER["kto_majority"], float(pi["kto_t"][0]), 0.9),
    ]
    rows = [
        ["contradictory {a≻b, b≻a}", "start", fmt(config.start[0]), "—"],
        ["contradictory {a≻b, b≻a}", "KTO", fmt(float(pi["kto"][0]), 6), "= start"],
        ["contradictory {a≻b, b≻a}", "DPO", fmt(float(pi["dpo"][0]), 6), fmt(config.reference[0])],
        [f"p = {config.theorem_p} a≻b", "start = π_ref", fmt(config.theorem_reference[0]), "—"],
        [f"p = {config.theorem_p} a≻b", "DPO", fmt(float(pi["dpo_t"][0]), 6), fmt(dpo_target, 6)],
        [f"p = {config.theorem_p} a≻b", "KTO", fmt(float(pi["kto_t"][0]), 6), "→ 1"],
    ]
    notes = [
        f"Experiment 1: β = {config.beta}, π_ref = {config.reference}, start π_0 = {config.start}; full-batch Adam "
        f"(lr {config.lr}, {config.steps} steps); KTO's gradient is also evaluated at {config.random_policies} random "
        "policies. Experiment 2: "
        f"{config.pairs} pairs, p = {config.theorem_p}, β = {config.theorem_beta}, π_ref = {config.theorem_reference}, "
        "policy started at π_ref. λ_D = λ_U = 1 throughout.",
    ]
    table = Table("Final π(a)", ["data", "loss", "π(a)", "closed form"], rows)

    def draw(fig: Any) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        ax1.bar(
            ["start", "KTO", "DPO"],
            [config.start[0], float(pi["kto"][0]), float(pi["dpo"][0])],
            color=["grey", "tab:green", "tab:blue"],
        )
        ax1.axhline(config.reference[0], color="k", ls=":", label="DPO's optimum (π_ref ratio)")
        ax1.set_title("{a ≻ b, b ≻ a}: π(a) after training", fontsize=9)
        ax1.legend(fontsize=8)
        ax2.bar(
            ["π_ref", "KTO", "DPO"],
            [config.theorem_reference[0], float(pi["kto_t"][0]), float(pi["dpo_t"][0])],
            color=["grey", "tab:green", "tab:blue"],
        )
        ax2.axhline(0.5, color="k", ls=":", lw=1)
        ax2.axhline(dpo_target, color="tab:blue", ls="--", lw=1, label="DPO closed form")
        ax2.set_title(f"{config.theorem_p:.0%} a ≻ b: π(a) after training", fontsize=9)
        ax2.legend(fontsize=8)
        fig.suptitle("KTO vs DPO on contradictory preferences (Ethayarajh et al. 2024, §4)")

    data = {
        "config": dataclasses.asdict(config),
        "final_pi_a": {k: float(v[0]) for k, v in pi.items()},
        "kto_max_grad": max(kto_grad, random_grad),
        "dpo_target": dpo_target,
    }
    return Outcome(checks, [table], draw, (10.0, 4.0), notes, data)


def _random_policy_gradient(loss: BoundLoss, ref: Tensor, logits: Tensor, chosen: Tensor, rejected: Tensor) -> float:
    """Largest |∇θ KTO| over many policies [P, 2] on the contradictory pairs (each its own problem)."""
    theta = logits.clone().requires_grad_(True)
    fn = _losses("kto", loss, ref, chosen, rejected)
    grads = []
    for p in range(theta.shape[0]):  # one KTO call per policy: z₀ is a per-batch scalar
        grads.append(torch.autograd.grad(fn(theta[p : p + 1], 0).sum(), theta)[0].abs().max())
    return float(torch.stack(grads).max())


def make_config(quick: bool, seeds: int | None) -> KTOContradictionConfig:
    """The full or quick setting; the experiments are deterministic (`seeds` is ignored)."""
    return QUICK if quick else CONFIG


REPRODUCTION = Reproduction(
    name="kto-contradictory",
    title="KTO on contradictory preferences: exactly zero gradient with equal weights; the majority wins with p > ½",
    paper=PAPER["source"],
    checks=(
        "KTO's gradient is exactly 0 and its policy unchanged while DPO moves; DPO picks the minority, KTO the majority"
    ),
    runtime="≈ 6 s (shared 2-core CPU)",
    make_config=make_config,
    run=run,
)
