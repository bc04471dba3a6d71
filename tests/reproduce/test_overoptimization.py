"""Reward-model overoptimisation (Gao et al. 2022): the best-of-N subset estimator against brute-force
enumeration, the closed-form fit of R(d) = d(α − βd), and the reproduction's machinery on the tiny task."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import pytest
import torch

from prefopt.reproduce.bon_sampling import (
    GaoFit,
    best_of_n_from_pool,
    bon_kl,
    fit_gao_bon,
    subset_max_weights,
    tie_averaged,
)
from prefopt.reproduce.experiments import overoptimization as oo
from prefopt.reproduce.experiments.overoptimization_stats import (
    accuracy_samples,
    difference_interval,
    percentile_interval,
)
from prefopt.reproduce.report import figure_png, render_markdown


def _brute_force(proxy: list[float], gold: list[float], n: int) -> float:
    """Mean over every n-subset of the gold reward of its proxy-best member, ties split evenly."""
    values = []
    for subset in itertools.combinations(range(len(proxy)), n):
        top = max(proxy[i] for i in subset)
        best = [gold[i] for i in subset if proxy[i] == top]
        values.append(sum(best) / len(best))
    return sum(values) / len(values)


def test_subset_weights_are_the_distribution_of_the_subset_maximum() -> None:
    """M = 6, N = 3: the max of a 3-subset is rank i (0-based) with probability C(i, 2)/C(6, 3) = C(i, 2)/20."""
    w = subset_max_weights(6, [1, 3, 6])
    assert torch.allclose(w.sum(1), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(w[0], torch.full((6,), 1 / 6, dtype=torch.float64))
    assert torch.allclose(w[1], torch.tensor([0, 0, 1, 3, 6, 10], dtype=torch.float64) / 20)
    assert w[2].tolist() == pytest.approx([0, 0, 0, 0, 0, 1])
    big = subset_max_weights(4096, [1, 64, 4096])  # log-gamma keeps this finite
    assert torch.isfinite(big).all() and torch.allclose(big.sum(1), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="in \\[1, M=6\\]"):
        subset_max_weights(6, [7])


def test_pool_estimator_equals_brute_force_enumeration_with_ties() -> None:
    gen = torch.Generator().manual_seed(3)
    m = 9
    proxy = torch.randint(0, 4, (3, m), generator=gen).double()  # many proxy ties
    gold = torch.randn(3, m, generator=gen, dtype=torch.float64)
    ns = list(range(1, m + 1))
    estimate = best_of_n_from_pool(proxy, gold, ns)  # [J, P]
    for p in range(3):
        for j, n in enumerate(ns):
            assert float(estimate[j, p]) == pytest.approx(
                _brute_force(proxy[p].tolist(), gold[p].tolist(), n), abs=1e-12
            )
    assert torch.allclose(estimate[0], gold.mean(1))  # N = 1: the reference's mean
    same = best_of_n_from_pool(gold, gold, [m])
    assert torch.allclose(same[0], gold.max(1).values)  # N = M by the gold itself: the best sample


def test_pool_estimator_is_unbiased_for_iid_best_of_n() -> None:
    """Averaged over many pools, the estimate matches E[gold(argmax proxy)] of N fresh draws (by Monte Carlo)."""
    gen = torch.Generator().manual_seed(0)
    pools = 4000
    proxy = torch.randn(pools, 6, generator=gen, dtype=torch.float64)
    gold = proxy - 0.5 * proxy**2  # gold peaks inside the proxy's range: best-of-N overshoots it
    estimate = float(best_of_n_from_pool(proxy, gold, [3]).mean())
    fresh = torch.randn(200_000, 3, generator=gen, dtype=torch.float64)
    best = fresh.max(1).values
    assert estimate == pytest.approx(float((best - 0.5 * best**2).mean()), abs=0.03)


def test_tie_averaging_and_input_errors() -> None:
    proxy = torch.tensor([[1.0, 1.0, 2.0]])
    assert tie_averaged(proxy, torch.tensor([[0.0, 4.0, 7.0]])).tolist() == [[2.0, 2.0, 7.0]]
    with pytest.raises(ValueError, match="share one"):
        best_of_n_from_pool(torch.zeros(2, 3), torch.zeros(2, 4), [1])
    with pytest.raises(ValueError, match="finite"):
        best_of_n_from_pool(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2), [1])


def test_gao_fit_recovers_alpha_and_beta() -> None:
    ns = [2**k for k in range(12)]
    d = bon_kl(ns).sqrt()
    assert float(d[0]) == 0 and float(bon_kl([2])[0]) == pytest.approx(math.log(2) - 0.5)
    exact = fit_gao_bon(d, d * (1.3 - 0.4 * d))
    assert (exact.alpha, exact.beta, exact.r2) == pytest.approx((1.3, 0.4, 1.0))
    assert exact.peak_d == pytest.approx(1.3 / 0.8) and exact.peak_kl == pytest.approx((1.3 / 0.8) ** 2)
    noise = 0.01 * torch.randn(len(ns), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    noisy = fit_gao_bon(d, d * (0.8 - 0.3 * d) + noise)
    assert abs(noisy.alpha - 0.8) < 0.05 and abs(noisy.beta - 0.3) < 0.05 and 0.95 < noisy.r2 <= 1
    assert GaoFit(1.0, -0.1, 0.9).peak_d == math.inf  # never turns down
    with pytest.raises(ValueError, match="two distinct"):
        fit_gao_bon([0.0, 1.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="one gain per d"):
        fit_gao_bon([0.0, 1.0, 2.0], [0.0, 1.0])


def test_config_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="including 1"):
        dataclasses.replace(oo.QUICK, ns=(2, 4, 8))
    with pytest.raises(ValueError, match="pool"):
        dataclasses.replace(oo.QUICK, ns=(1, 2, 64))
    with pytest.raises(ValueError, match="proxy_sizes"):
        dataclasses.replace(oo.QUICK, proxy_sizes=((8, 1),))
    with pytest.raises(ValueError, match="ablation_fractions"):
        dataclasses.replace(oo.QUICK, ablation_fractions=(1.0,))
    assert oo.make_config(True, 2).seeds == 2 and oo.make_config(False, None) == oo.CONFIG


def test_size_slope_by_hand() -> None:
    """x = [0, 1, 2], y = [1, 2, 4]: x̄ = 1, ȳ = 7/3, slope = Σ(x−x̄)(y−ȳ)/Σ(x−x̄)² = (−1·(−4/3) + 1·(5/3))/2 = 1.5."""
    ys = torch.tensor([[1.0, 0.0], [2.0, 0.0], [4.0, 0.0]], dtype=torch.float64)  # [S, R]: two "resamples"
    assert oo.size_slope([0.0, 1.0, 2.0], ys).tolist() == pytest.approx([1.5, 0.0])


def test_paired_bootstrap_helpers() -> None:
    """The same seed resamples the same pairs for every proxy; ∞ − ∞ counts as 0, ∞ − x as ∞."""
    a = torch.tensor([1.0, 0.0, 1.0, 1.0])
    assert torch.equal(
        accuracy_samples(a, seed=3) - accuracy_samples(a, seed=3), torch.zeros(1000, dtype=torch.float64)
    )
    shifted = accuracy_samples(torch.ones(4), seed=3) - accuracy_samples(a, seed=3)  # paired: 1 − acc of the same picks
    assert float(shifted.min()) >= 0 and percentile_interval(torch.arange(101.0)) == (2.0, 98.0)
    inf = torch.full((5,), math.inf)
    assert difference_interval(inf, inf) == (0.0, 0.0)
    assert difference_interval(inf, torch.zeros(5)) == (math.inf, math.inf)


def _curves(
    config: oo.OveroptimizationConfig, params: list[tuple[float, float]], accuracies: tuple[float, ...] = (0.6, 0.8)
) -> list[oo.ProxyCurves]:
    """Per-prompt gold curves d(α − βd) + 0.3 + prompt noise for each (α, β), fitted like `measure` does; held-out
    pairs [1, 200] right at the given accuracies."""
    d = bon_kl(config.ns).sqrt()
    gen = torch.Generator().manual_seed(0)
    out = []
    for (alpha, beta), size, acc in zip(params, config.proxy_sizes, accuracies):
        gold = (d * (alpha - beta * d) + 0.3)[:, None] + 0.01 * torch.randn(
            len(d), 20, generator=gen, dtype=torch.float64
        )
        proxy = (d * alpha + 0.3)[:, None].expand(-1, 20)
        mean = gold.mean(1)
        correct = (torch.arange(200) < round(acc * 200)).double()[None]
        out.append(
            oo.ProxyCurves(
                size,
                gold,
                proxy,
                acc,
                fit_gao_bon(d, mean - mean[0]),
                fit_gao_bon(d, proxy.mean(1) - proxy.mean(1)[0]),
                correct,
                gold[None],
                1000 * size[0],
                500,
            )
        )
    return out


def test_checks_follow_the_fitted_curves() -> None:
    """Peaks α/(2β) = 1, 2 (KL* 1 → 4, moving out) with accuracy 0.6 → 0.8 pass every check; swapped, the KL*
    and gold-at-optimum trends fail; β < 0 fails α, β > 0 (KL* = ∞ still counts as further out); equal
    accuracies fail the accuracy trend."""
    config = dataclasses.replace(oo.QUICK, ns=tuple(2**k for k in range(9)), pool=256)
    info = {"reference_gold": 0.3, "train_pairs": 500, "eval_pairs": 200}

    def result_of(params: list[tuple[float, float]], accuracies: tuple[float, ...] = (0.6, 0.8)) -> Any:
        return oo.outcome(config, oo.Measurement(_curves(config, params, accuracies), [], info))

    result = result_of([(1.0, 0.5), (1.0, 0.25)])
    assert [c.passed for c in result.checks] == [True] * 7, [(c.claim, c.ours) for c in result.checks]
    assert result.data["proxies"][1]["gold_peak_d"] == pytest.approx(2.0, abs=0.05)
    low, high = result.data["proxies"][1]["gold_fit_ci95"]["peak_d"]
    assert low < 2.0 < high
    for name in ("alpha", "beta"):  # the vectorised bootstrap brackets the closed-form fit of the full sample
        low, high = result.data["proxies"][0]["gold_fit_ci95"][name]
        assert low <= result.data["proxies"][0]["gold_fit"][name] <= high and high - low < 0.05
    low, high = result.data["proxies"][0]["eval_accuracy_ci95"]
    assert low < 0.6 < high
    swapped = result_of([(1.0, 0.25), (1.0, 0.5)])
    assert [c.passed for c in swapped.checks] == [True] * 5 + [False, False]
    rising = result_of([(1.0, 0.5), (1.0, -0.1)])
    assert not rising.checks[3].passed and rising.data["proxies"][1]["gold_peak_d"] is None  # ∞ → null in JSON
    assert rising.checks[5].passed  # KL* 1 → ∞ (capped at 10× the largest measured KL): still a rising trend
    equal = result_of([(1.0, 0.5), (1.0, 0.25)], accuracies=(0.7, 0.7))
    assert not equal.checks[4].passed  # equal accuracy: size is not what varies
    assert figure_png(result)[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(t.header[:2] == ["dimension", "paper"] for t in result.tables)  # the distance from the paper


def test_quick_run_with_learned_proxies() -> None:
    """The real pipeline on the tiny task: proxies trained by `train_reward_model`, one shared pool, and the
    data-size ablation on half the pairs."""
    stages: list[str] = []
    result = oo.run(oo.QUICK, lambda done, total, stage: stages.append(stage))
    assert len(stages) == 2 + len(oo.QUICK.proxy_sizes) * (oo.QUICK.seeds + len(oo.QUICK.ablation_fractions))
    proxies, ablation = result.data["proxies"], result.data["ablation"]
    assert len(proxies) == 2 and all(0.0 <= p["eval_accuracy"] <= 1.0 for p in proxies)
    assert [p["train_pairs"] for p in ablation] == [round(proxies[0]["train_pairs"] / 2)] * 2
    assert proxies[0]["parameters"] < proxies[1]["parameters"]
    # N = 1 is the reference's mean gold reward on the shared pool, whatever the proxy.
    assert (
        proxies[0]["gold"][0]
        == pytest.approx(proxies[1]["gold"][0])
        == pytest.approx(result.data["info"]["reference_gold"])
    )
    for p in proxies:  # best-of-N by a reward never lowers that reward's expectation as N grows
        assert all(b >= a - 1e-9 for a, b in zip(p["proxy"], p["proxy"][1:]))
    assert len(result.checks) == 2 * 2 + 3 and all(c.paper and c.tolerance for c in result.checks)
    fake_run = type(
        "R",
        (),
        {
            "reproduction": oo.REPRODUCTION,
            "quick": True,
            "seconds": 1.0,
            "config": oo.QUICK,
            "outcome": result,
            "environment": {"machine": "test"},
        },
    )()
    assert "rm-overoptimization" in render_markdown(fake_run) and figure_png(result)[:4] == b"\x89PNG"
