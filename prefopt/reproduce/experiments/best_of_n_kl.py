"""Best-of-N: the exact KL against log N − (N−1)/N and Beirami et al.'s estimate; the win rate against N/(N+1).

Stiennon et al. 2020 (arXiv:2009.01325) give KL(π_N ‖ π_ref) = log N − (N−1)/N for best-of-N
sampling; Beirami et al. 2024 ("Theoretical guarantees on the best-of-n alignment policy",
arXiv:2401.01879) show it is an upper bound that is tight only when the reference has no outcome of
sizeable mass (§3), propose an estimate from the mass of the best outcome (§4), and bound the win
rate by N/(N+1) (§5). All values here are exact (`prefopt.eval.bon_math`) on three reference
distributions: many distinct outcomes (10⁵, near-continuous), few distinct outcomes (4), and tied
rewards (10 outcomes on 3 reward levels). A Monte-Carlo run of best-of-N sampling checks the exact
PMF, ties included.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.eval import bon_math
from prefopt.reproduce.bandit import total_variation
from prefopt.reproduce.base import (
    Outcome,
    Progress,
    Reproduction,
    Table,
    check_at_least,
    check_at_most,
    fmt,
    single_thread,
)

__all__ = ["BestOfNConfig", "CONFIG", "QUICK", "PAPER", "reference_distributions", "run"]

PAPER = {
    "source": (
        "Stiennon et al. 2020, arXiv:2009.01325; "
        "Beirami et al. 2024, arXiv:2401.01879 (§3 KL, §4 estimator, §5 win rate)"
    ),
    "bound": "KL ≤ log N − (N−1)/N (§3)",
    "tight": "tight when no outcome has sizeable mass (§3)",
    "loose": "loose with few outcomes: KL saturates at log 1/ε (§3)",
    "estimator": "the estimator is a tight approximation (§4)",
    "win": "win rate ≤ N/(N+1) (§5)",
    "win_tight": "= N/(N+1) for continuous rewards (§5)",
}


@dataclass(frozen=True)
class BestOfNConfig:
    """N values, the size of the near-continuous reference, and the Monte-Carlo check."""

    ns: tuple[int, ...] = tuple(2**k for k in range(9))  # 1, 2, 4, ..., 256
    many_outcomes: int = 100_000
    seed: int = 0
    mc_n: int = 16
    mc_samples: int = 400_000
    tight_atol: float = 1e-3  # |classical − exact| on the near-continuous reference
    estimator_atol: float = 0.1  # |Beirami − exact| in nats, every N and reference
    mc_tv_atol: float = 0.01

    def __post_init__(self) -> None:
        if not self.ns or min(self.ns) < 1:
            raise ValueError(f"BestOfNConfig: ns must be integers ≥ 1, got {self.ns}.")
        if self.many_outcomes < 2 or self.mc_samples < 1 or self.mc_n < 1:
            raise ValueError("BestOfNConfig: many_outcomes ≥ 2, mc_samples ≥ 1 and mc_n ≥ 1 are required.")


CONFIG = BestOfNConfig()
QUICK = BestOfNConfig(many_outcomes=20_000, mc_samples=100_000, tight_atol=5e-3, mc_tv_atol=0.02)


def reference_distributions(config: BestOfNConfig) -> dict[str, tuple[Tensor, Tensor]]:
    """name → (π_ref [M], rewards [M]), float64.

    many distinct: masses ∝ Exp(1) draws (a flat Dirichlet), rewards a random permutation of 0..M−1;
    few distinct: masses (0.4, 0.3, 0.2, 0.1) on rewards (0, 1, 2, 3);
    tied: 10 outcomes of mass 0.1 on reward levels 0 (×4), 1 (×3), 2 (×3).
    """
    gen = torch.Generator().manual_seed(config.seed)
    draws = -torch.log(torch.rand(config.many_outcomes, generator=gen, dtype=torch.float64))
    many = (draws / draws.sum(), torch.randperm(config.many_outcomes, generator=gen).double())
    few = (torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64), torch.arange(4, dtype=torch.float64))
    tied = (torch.full((10,), 0.1, dtype=torch.float64), torch.tensor([0.0] * 4 + [1.0] * 3 + [2.0] * 3))
    return {"many distinct": many, "few distinct": few, "tied": tied}


def _monte_carlo_pmf(probs: Tensor, rewards: Tensor, n: int, samples: int, seed: int) -> Tensor:
    """Empirical PMF [M] of best-of-n: draw n outcomes, keep a highest-reward one (uniform tie-break)."""
    gen = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(probs.expand(samples, -1), n, replacement=True, generator=gen)  # [S, n]
    # A uniform random key below the reward gap breaks ties without changing the reward order.
    key = rewards[draws] + 0.5 * torch.rand(samples, n, generator=gen, dtype=torch.float64) * _min_gap(rewards)
    best = draws[torch.arange(samples), key.argmax(1)]
    return torch.bincount(best, minlength=probs.numel()).double() / samples


def _min_gap(rewards: Tensor) -> float:
    values = torch.unique(rewards)
    return float((values[1:] - values[:-1]).min()) if values.numel() > 1 else 1.0


def run(config: BestOfNConfig, progress: Progress) -> Outcome:
    """Evaluate the exact and approximate KL and win rates for every N and reference."""
    with single_thread():
        return _run(config, progress)


def _run(config: BestOfNConfig, progress: Progress) -> Outcome:
    refs = reference_distributions(config)
    results: dict[str, dict[str, list[float]]] = {}
    rows: list[list[str]] = []
    for i, (name, (probs, rewards)) in enumerate(refs.items()):
        top_mass = float(bon_math.reward_levels(probs, rewards).masses[-1])
        res: dict[str, list[float]] = {"exact": [], "classical": [], "beirami": [], "win": [], "bound": []}
        for n in config.ns:
            res["exact"].append(bon_math.best_of_n_kl(probs, rewards, n))
            res["classical"].append(bon_math.classical_kl_formula(n))
            res["beirami"].append(bon_math.beirami_kl_estimate(n, top_mass))
            res["win"].append(bon_math.best_of_n_win_rate(probs, rewards, n))
            res["bound"].append(bon_math.win_rate_bound(n))
            rows.append(
                [name, str(n), *(fmt(res[k][-1], 5) for k in ("exact", "classical", "beirami", "win", "bound"))]
            )
        results[name] = res
        progress(i + 1, len(refs) + 1, "exact best-of-N")
    mc_probs, mc_rewards = refs["tied"]
    empirical = _monte_carlo_pmf(mc_probs, mc_rewards, config.mc_n, config.mc_samples, config.seed + 1)
    mc_tv = float(total_variation(empirical, bon_math.best_of_n_pmf(mc_probs, mc_rewards, config.mc_n)))
    progress(len(refs) + 1, len(refs) + 1, "Monte-Carlo check")

    def worst(name: str | None, fn: Any) -> float:
        names = [name] if name else list(results)
        return max(fn(results[k], j) for k in names for j in range(len(config.ns)))

    big = config.ns.index(max(config.ns))
    checks = [
        check_at_most(
            "exact KL − classical formula, max over N and references",
            PAPER["bound"],
            worst(None, lambda r, j: r["exact"][j] - r["classical"][j]),
            1e-9,
        ),
        check_at_most(
            "many distinct: |classical − exact KL|, max over N",
            PAPER["tight"],
            worst("many distinct", lambda r, j: abs(r["classical"][j] - r["exact"][j])),
            config.tight_atol,
        ),
        check_at_least(
            f"few distinct: classical − exact KL at N = {max(config.ns)} (nats)",
            PAPER["loose"],
            results["few distinct"]["classical"][big] - results["few distinct"]["exact"][big],
            1.0,
        ),
        check_at_most(
            "|Beirami estimate − exact KL|, max over N and references",
            PAPER["estimator"],
            worst(None, lambda r, j: abs(r["beirami"][j] - r["exact"][j])),
            config.estimator_atol,
        ),
        check_at_most(
            "win rate − N/(N+1), max over N and references",
            PAPER["win"],
            worst(None, lambda r, j: r["win"][j] - r["bound"][j]),
            1e-12,
        ),
        check_at_most(
            "many distinct: N/(N+1) − win rate, max over N",
            PAPER["win_tight"],
            worst("many distinct", lambda r, j: r["bound"][j] - r["win"][j]),
            config.tight_atol,
        ),
        check_at_most(
            f"tied: TV(Monte-Carlo best-of-{config.mc_n}, exact PMF)",
            "π_N(y) = F(y)^N − F⁻(y)^N per level (§2)",
            mc_tv,
            config.mc_tv_atol,
        ),
    ]
    notes = [
        "Exact values from `prefopt.eval.bon_math` (float64). Win rates count ties as ½. The Beirami estimate "
        "uses ε = the reference mass of the highest reward level; its closed form is derived in `beirami_kl_estimate` "
        "(exact for an atom of mass ε on top of a continuous remainder).",
        f"Monte-Carlo: {config.mc_samples} best-of-{config.mc_n} draws from the tied reference, ties broken uniformly.",
    ]
    table = Table(
        "KL (nats) and win rate",
        ["reference", "N", "exact KL", "log N − (N−1)/N", "Beirami est.", "win rate", "N/(N+1)"],
        rows,
    )

    def draw(fig: Any) -> None:
        ax_kl, ax_win = fig.subplots(1, 2)
        colours = dict(zip(results, ("tab:blue", "tab:orange", "tab:green")))
        ax_kl.plot(config.ns, results["few distinct"]["classical"], "k--", label="log N − (N−1)/N")
        for name, res in results.items():
            ax_kl.plot(config.ns, res["exact"], "o-", color=colours[name], label=f"exact, {name}")
            ax_kl.plot(config.ns, res["beirami"], ":", color=colours[name], label=f"Beirami est., {name}")
            ax_win.plot(config.ns, res["win"], "o-", color=colours[name], label=name)
        ax_win.plot(config.ns, results["few distinct"]["bound"], "k--", label="N/(N+1)")
        for ax, label in ((ax_kl, "KL(π_N ‖ π_ref) (nats)"), (ax_win, "win rate vs π_ref (ties ½)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("N")
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
        fig.suptitle("Best-of-N: exact KL and win rate against the classical formulas")

    data = {"config": dataclasses.asdict(config), "results": results, "mc_tv": mc_tv}
    return Outcome(checks, [table], draw, (12.0, 4.5), notes, data)


def make_config(quick: bool, seeds: int | None) -> BestOfNConfig:
    """The full or quick setting; exact computation has no seeds (`seeds` is ignored)."""
    return QUICK if quick else CONFIG


REPRODUCTION = Reproduction(
    name="best-of-n",
    title="Best-of-N KL and win rate: exact values against log N − (N−1)/N, Beirami et al.'s estimate and N/(N+1)",
    paper=PAPER["source"],
    checks="log N − (N−1)/N bounds the exact KL, tight only for many outcomes; the estimate is close; win ≤ N/(N+1)",
    runtime="≈ 1 s (shared 2-core CPU)",
    make_config=make_config,
    run=run,
)
