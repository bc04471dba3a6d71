"""Every tabular reproduction, in its quick setting, reproduces its paper's claims; plus the closed forms behind
them."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from prefopt.registry import get_loss
from prefopt.reproduce import get_reproduction, list_reproductions, run_reproduction
from prefopt.reproduce.bandit import kl_divergence, paired_bandit_losses, total_variation, train_adam
from prefopt.reproduce.experiments import dpo_optimum, ipo_bandits, kto_contradictory
from prefopt.reproduce.report import RunResult, figure_png

# The tabular reproductions (seconds on CPU): their quick settings must pass every check. The synthetic-task
# ones train models; their own test files assert what their quick settings show robustly.
TABULAR = ("ipo-bandits", "dpo-optimum", "best-of-n", "kto-contradictory", "single-pair")
NAMES = [r.name for r in list_reproductions() if r.name in TABULAR]


def test_every_reproduction_is_tested() -> None:
    import importlib
    from pathlib import Path

    from prefopt.reproduce import REPRODUCTIONS

    here = Path(__file__).parent
    names = {m: importlib.import_module(f"prefopt.reproduce.experiments.{m}").REPRODUCTION.name for m in REPRODUCTIONS}
    untested = [m for m, name in names.items() if name not in TABULAR and not (here / f"test_{m}.py").exists()]
    assert not untested, f"reproductions without a test file: {untested}"
    assert set(NAMES) == set(TABULAR)


@pytest.fixture(scope="module")
def quick_results() -> dict:
    return {}


def _quick(name: str, cache: dict) -> RunResult:
    if name not in cache:
        cache[name] = run_reproduction(name, quick=True)
    return cache[name]


@pytest.mark.parametrize("name", NAMES)
def test_quick_run_passes_every_check_and_draws(name: str, quick_results: dict) -> None:
    result = _quick(name, quick_results)
    failed = [c for c in result.outcome.checks if not c.passed]
    assert not failed, "\n".join(f"{c.claim}: ours {c.ours}, wanted {c.tolerance}" for c in failed)
    assert len(result.outcome.checks) >= 3 and all(c.paper and c.tolerance for c in result.outcome.checks)
    png = figure_png(result.outcome)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_ipo_bandits_match_the_closed_form_per_setting(quick_results: dict) -> None:
    data = _quick("ipo-bandits", quick_results).outcome.data
    mean = np.array(data["final_mean"])  # [loss, τ, dataset, action]
    optimum = np.array(data["ipo_optimum"])  # [τ, dataset, action]
    assert np.abs(mean[1] - optimum).max() < 0.03  # IPO
    assert (mean[0, :, :, 0] > 0.9).all()  # DPO's top action, every τ and dataset
    assert (np.diff(mean[1, :, :, 0], axis=0) < 0).all()  # IPO: larger τ, less mass on a


def test_ipo_least_squares_optimum_by_hand() -> None:
    """Total order: the normal equations give θ_a − θ_b = θ_b − θ_c = 1/(3τ); chain a≻b≻c: 1/(2τ) each."""
    for tau in (0.1, 0.5, 2.0):
        p = ipo_bandits.ipo_least_squares_optimum(ipo_bandits.DATASETS["total order"], 3, tau)
        assert np.log(p[0] / p[1]) == pytest.approx(1 / (3 * tau)) and np.log(p[1] / p[2]) == pytest.approx(
            1 / (3 * tau)
        )
        p = ipo_bandits.ipo_least_squares_optimum(ipo_bandits.DATASETS["(a,c) unobserved"], 3, tau)
        assert np.log(p[0] / p[1]) == pytest.approx(1 / (2 * tau)) and np.log(p[1] / p[2]) == pytest.approx(
            1 / (2 * tau)
        )
    ref = np.log([0.5, 0.3, 0.2])  # a non-uniform reference shifts each log-ratio target by ref_w − ref_l
    p = ipo_bandits.ipo_least_squares_optimum(((0, 1), (1, 2)), 3, 1.0, ref)
    assert np.log(p[0] / p[1]) - (ref[0] - ref[1]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unconnected"):
        ipo_bandits.ipo_least_squares_optimum(((0, 1),), 3, 1.0)


def test_ipo_least_squares_optimum_is_where_the_registered_loss_is_flat() -> None:
    pairs = ((0, 1), (1, 2), (0, 2), (0, 1))  # a repeated pair weighs twice
    p = torch.tensor(ipo_bandits.ipo_least_squares_optimum(pairs, 3, 0.5))
    theta = p.log().clone().requires_grad_(True)
    chosen, rejected = torch.tensor([[w for w, _ in pairs]]), torch.tensor([[lo for _, lo in pairs]])
    loss = paired_bandit_losses(
        get_loss("ipo_sum", beta=0.5),
        torch.log_softmax(theta, -1).unsqueeze(0),
        torch.full((3,), -math.log(3), dtype=torch.float64),
        chosen,
        rejected,
    )
    (grad,) = torch.autograd.grad(loss.sum(), theta)
    assert grad.abs().max() < 1e-12


def test_dpo_optimum_is_the_closed_form() -> None:
    ref, r = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    pi = dpo_optimum.optimal_policy(ref, r, 0.5)
    assert pi.tolist() == pytest.approx((ref * torch.exp(r / 0.5) / (ref * torch.exp(r / 0.5)).sum()).tolist())
    wins = torch.tensor([[0, 1, 0], [0, 0, 1], [0, 0, 0]])  # a→b→c only: c never wins, no finite optimum
    assert not bool(dpo_optimum._strongly_connected(wins))
    assert bool(dpo_optimum._strongly_connected(wins + wins.T))


def test_dpo_optimum_distance_falls_with_data(quick_results: dict) -> None:
    data = _quick("dpo-optimum", quick_results).outcome.data
    assert data["population_tv"] < 1e-6
    assert all(a > b for a, b in zip(data["kl_mean"], data["kl_mean"][1:]))


def test_kto_gradient_is_exactly_zero_and_dpo_closed_form(quick_results: dict) -> None:
    data = _quick("kto-contradictory", quick_results).outcome.data
    assert data["kto_max_grad"] == 0.0
    assert data["final_pi_a"]["kto"] == pytest.approx(0.8, abs=1e-6)
    ratio = kto_contradictory.dpo_optimum_ratio(0.6, 1.0, (0.3, 0.7))
    assert ratio == pytest.approx(0.3 / 0.7 * 1.5)
    assert data["final_pi_a"]["dpo_t"] == pytest.approx(ratio / (1 + ratio), abs=1e-3)


def test_single_pair_optima(quick_results: dict) -> None:
    data = _quick("single-pair", quick_results).outcome.data
    eps, beta = data["config"]["epsilon"], data["config"]["beta"]
    assert beta * data["final_margin"]["cdpo"] == pytest.approx(math.log((1 - eps) / eps), abs=1e-3)
    assert data["final_margin"]["ipo_sum"] == pytest.approx(1 / (2 * beta), abs=1e-3)
    assert data["final_margin"]["dpo"] > data["final_margin"]["cdpo"]
    assert data["robust_slope"] == pytest.approx(-eps * beta / (1 - 2 * eps), rel=0.01)


def test_stacked_bandits_train_like_separate_ones() -> None:
    """Adam is element-wise and problems share no parameter: stacking must not change a trajectory."""
    loss = get_loss("dpo", beta=0.3)
    ref = torch.log(torch.tensor([0.2, 0.3, 0.5]))
    chosen, rejected = torch.tensor([[0, 1], [2, 2]]), torch.tensor([[1, 2], [0, 1]])
    start = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))

    def fn(ch: torch.Tensor, rj: torch.Tensor) -> Callable[[torch.Tensor, int], torch.Tensor]:
        return lambda theta, step: paired_bandit_losses(loss, torch.log_softmax(theta, -1), ref, ch, rj)

    together = train_adam(start, fn(chosen, rejected), steps=50, lr=0.05)
    for i in range(2):
        alone = train_adam(start[i : i + 1], fn(chosen[i : i + 1], rejected[i : i + 1]), steps=50, lr=0.05)
        torch.testing.assert_close(together[i : i + 1], alone, rtol=0, atol=1e-6)


def test_weighted_pairs_equal_repeated_pairs() -> None:
    loss = get_loss("cdpo", beta=0.2, epsilon=0.1)
    logps = torch.log_softmax(torch.randn(1, 3, generator=torch.Generator().manual_seed(1)), -1)
    ref = torch.full((3,), -math.log(3))
    weighted = paired_bandit_losses(
        loss, logps, ref, torch.tensor([[0, 1]]), torch.tensor([[1, 2]]), torch.tensor([[3.0, 1.0]])
    )
    repeated = paired_bandit_losses(loss, logps, ref, torch.tensor([[0, 0, 0, 1]]), torch.tensor([[1, 1, 1, 2]]))
    torch.testing.assert_close(weighted, repeated)


def test_distances() -> None:
    p, q = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.25, 0.25, 0.5])
    assert float(total_variation(p, q)) == pytest.approx(0.5)
    assert float(kl_divergence(p, q)) == pytest.approx(math.log(2))  # 0·log 0 = 0
    assert math.isinf(float(kl_divergence(q, p)))


def test_seeds_override_and_configs_validate() -> None:
    rep = get_reproduction("ipo-bandits")
    assert rep.make_config(True, 2).seeds == 2 and rep.make_config(False, None).seeds == 10
    assert rep.make_config(False, None).steps == 18_000 and rep.make_config(False, None).batch_size == 9
    with pytest.raises(ValueError, match="taus"):
        ipo_bandits.IPOBanditConfig(taus=(0.0,))
    with pytest.raises(ValueError, match="theorem_p"):
        kto_contradictory.KTOContradictionConfig(theorem_p=0.5)
    with pytest.raises(ValueError, match="reference"):
        dpo_optimum.DPOOptimumConfig(reference=(0.5, 0.2, 0.2, 0.05, 0.03, 0.01))
