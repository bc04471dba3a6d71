"""Means with confidence intervals: a bootstrap over examples, and an aggregate over seeds.

    bootstrap_mean(values)      mean of n per-example values, CI from `scipy.stats.bootstrap`
                                (percentile or BCa, Efron & Tibshirani 1993, ch. 13–14), seedable
    aggregate_seeds(values)     mean over k seeds' results, CI from Student's t (default) or a bootstrap
    hierarchical_bootstrap_mean(groups)
                                mean over k seeds of each seed's per-prompt mean, CI from a two-level
                                bootstrap: seeds with replacement, then prompts within each drawn seed
    aggregate_records(records)  the same for every numeric key of k result dicts

Every interval is a `MeanCI(mean, low, high, n, confidence, method)`. JSON output (`to_dict`) writes a
missing bound (n < 2) as null, never NaN, so the files stay valid JSON.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "BootstrapMethod",
    "MeanCI",
    "bootstrap_mean",
    "bootstrap_statistic",
    "aggregate_seeds",
    "aggregate_records",
    "hierarchical_bootstrap_mean",
    "finite_or_none",
]

BootstrapMethod = Literal["percentile", "BCa"]


def finite_or_none(x: float) -> float | None:
    """`x` as a float, or None when it is NaN or infinite (JSON has no NaN)."""
    return float(x) if math.isfinite(x) else None


@dataclass(frozen=True)
class MeanCI:
    """A mean with a two-sided confidence interval.

    Attributes:
        mean: the point estimate.
        low, high: the interval's bounds (NaN when it is undefined: fewer than 2 values).
        n: how many values (examples, prompts or seeds) the mean is over.
        confidence: the interval's level, e.g. 0.95.
        method: "percentile", "BCa", "t" or "exact" (all values equal: the interval is the point).
    """

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95
    method: str = "percentile"

    @property
    def half_width(self) -> float:
        """(high − low)/2, for `mean ± half_width` displays (NaN when the interval is undefined)."""
        return (self.high - self.low) / 2

    def covers(self, value: float) -> bool:
        """True when low ≤ value ≤ high."""
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: `{mean, low, high, n, confidence, method}` with undefined bounds as None."""
        return {
            "mean": finite_or_none(self.mean),
            "low": finite_or_none(self.low),
            "high": finite_or_none(self.high),
            "n": self.n,
            "confidence": self.confidence,
            "method": self.method,
        }

    def __str__(self) -> str:
        if not math.isfinite(self.low):
            return f"{self.mean:.4g}"
        return f"{self.mean:.4g} [{self.low:.4g}, {self.high:.4g}]"


def _as_values(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name}: no values to average (got an empty sequence)")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name}: values are not finite at positions {bad[:10].tolist()}; drop or fix those rows")
    return array


def _scipy_bootstrap(data: tuple[np.ndarray, ...], statistic: Any, *, seed: int, **kwargs: Any) -> Any:
    """`scipy.stats.bootstrap` seeded with `np.random.default_rng(seed)` (`rng=` since scipy 1.15,
    `random_state=` before)."""
    from scipy.stats import bootstrap  # heavy: loaded on first use

    key = "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"
    return bootstrap(data, statistic, **kwargs, **{key: np.random.default_rng(seed)})


def _check_confidence(confidence: float, name: str) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"{name}: confidence={confidence} must lie in (0, 1), e.g. 0.95")


def bootstrap_statistic(
    data: Sequence[np.ndarray],
    statistic: Any,
    *,
    confidence: float = 0.95,
    method: BootstrapMethod = "percentile",
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of a bootstrap CI for `statistic(*data)` resampling the n rows of the arrays jointly.

    The bounds have the statistic's shape: 0-d arrays for a scalar statistic, [M] for a vector one.

    A thin, seeded wrapper over `scipy.stats.bootstrap(..., paired=True, vectorized=False)`: the arrays of
    `data` share their first axis (rows = prompts or examples) and are resampled together, so a statistic
    of several per-row quantities (e.g. outcomes and length differences) keeps their pairing.
    """
    _check_confidence(confidence, "bootstrap_statistic")
    if method not in ("percentile", "BCa"):
        raise ValueError(f"bootstrap_statistic: method={method!r}; use 'percentile' or 'BCa'")
    if n_resamples < 1:
        raise ValueError(f"bootstrap_statistic: n_resamples={n_resamples} must be ≥ 1")
    result = _scipy_bootstrap(
        tuple(data),
        statistic,
        seed=seed,
        paired=True,
        vectorized=False,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method=method,
    )
    return np.asarray(result.confidence_interval.low), np.asarray(result.confidence_interval.high)


def bootstrap_mean(
    values: Any,
    *,
    confidence: float = 0.95,
    method: BootstrapMethod = "percentile",
    n_resamples: int = 2000,
    seed: int = 0,
) -> MeanCI:
    """Mean of per-example values [n] with a bootstrap confidence interval (resampling examples).

    Args:
        values: [n] finite numbers (list, numpy array or tensor).
        confidence: level of the two-sided interval.
        method: "percentile" or "BCa" (bias-corrected and accelerated; better coverage for skewed
            statistics, Efron 1987).
        n_resamples: bootstrap resamples.
        seed: seeds the resampling, so the same inputs give the same interval.
    Returns:
        `MeanCI`; with all values equal the interval is the point itself (method "exact"), and with one
        value the bounds are NaN.
    """
    array = _as_values(values, "bootstrap_mean")
    _check_confidence(confidence, "bootstrap_mean")
    mean = float(array.mean())
    if array.size == 1:
        return MeanCI(mean, math.nan, math.nan, 1, confidence, method)
    if np.all(array == array[0]):  # every resample has the same mean; scipy's BCa would divide by zero
        return MeanCI(mean, mean, mean, int(array.size), confidence, "exact")
    if method not in ("percentile", "BCa"):
        raise ValueError(f"bootstrap_mean: method={method!r}; use 'percentile' or 'BCa'")
    result = _scipy_bootstrap(
        (array,),
        np.mean,
        seed=seed,
        vectorized=True,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method=method,
    )
    ci = result.confidence_interval
    return MeanCI(mean, float(ci.low), float(ci.high), int(array.size), confidence, method)


def aggregate_seeds(
    values: Any,
    *,
    confidence: float = 0.95,
    method: Literal["t", "percentile", "BCa"] = "t",
    n_resamples: int = 2000,
    seed: int = 0,
) -> MeanCI:
    """Mean over k runs that differ only in their seed, with a CI for the mean over seeds.

    The default is Student's t interval, mean ± t_{k−1, (1+c)/2} · s/√k: with the usual k = 3–5 seeds a
    bootstrap has only C(2k−1, k) distinct resamples and its percentile interval is too narrow.
    `method="percentile"`/`"BCa"` bootstraps instead (`bootstrap_mean`).
    """
    array = _as_values(values, "aggregate_seeds")
    _check_confidence(confidence, "aggregate_seeds")
    if method != "t":
        return bootstrap_mean(array, confidence=confidence, method=method, n_resamples=n_resamples, seed=seed)
    from scipy.stats import t as student_t  # heavy: loaded on first use

    mean = float(array.mean())
    if array.size == 1:
        return MeanCI(mean, math.nan, math.nan, 1, confidence, "t")
    quantile = float(student_t.ppf((1 + confidence) / 2, df=array.size - 1))
    half = quantile * float(array.std(ddof=1)) / math.sqrt(array.size)
    return MeanCI(mean, mean - half, mean + half, int(array.size), confidence, "t")


def aggregate_records(
    records: Sequence[Mapping[str, Any]],
    *,
    confidence: float = 0.95,
    method: Literal["t", "percentile", "BCa"] = "t",
) -> dict[str, MeanCI]:
    """`aggregate_seeds` for every key whose value is a finite number in all k records (one per seed).

    Nested result dicts (e.g. a `MeanCI.to_dict()`) contribute their "mean" under the same key; keys that
    are missing or non-numeric in some record are left out.
    """
    if not records:
        raise ValueError("aggregate_records: no records (pass one result dict per seed)")

    def number(value: Any) -> float | None:
        if isinstance(value, Mapping):
            value = value.get("mean")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)

    out: dict[str, MeanCI] = {}
    for key in records[0]:
        values = [number(r.get(key)) for r in records]
        if all(v is not None for v in values):
            out[key] = aggregate_seeds(values, confidence=confidence, method=method)
    return out


def hierarchical_bootstrap_mean(
    groups: Sequence[Any],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> MeanCI:
    """Mean over k groups (seeds) of each group's mean over its values (prompts), with a two-level bootstrap CI.

    Each resample draws k groups with replacement, then, within each drawn group, its n_g values with
    replacement, and averages the k resampled group means; the interval is the percentile interval of those
    averages (the hierarchical bootstrap of multi-level data: Davison & Hinkley 1997, Sec. 3.8; Saravanan et
    al. 2020). So it holds both the seed-to-seed spread of training and the prompt-to-prompt spread of the
    evaluation, where Student's t over k seed means sees only the first and the bootstrap of one seed's
    prompts only the second.

    Args:
        groups: k sequences of finite numbers, one per seed (lengths may differ).
        confidence, n_resamples, seed: as in `bootstrap_mean`.
    Returns:
        `MeanCI` with n = the number of values in all groups and method "hierarchical"; with one group it
        is `bootstrap_mean` of that group (the flat percentile bootstrap, same seed, same interval), and with
        every value equal the interval is the point (method "exact").
    """
    arrays = [_as_values(g, f"hierarchical_bootstrap_mean: group {i}") for i, g in enumerate(groups)]
    if not arrays:
        raise ValueError("hierarchical_bootstrap_mean: no groups (pass one sequence of values per seed)")
    _check_confidence(confidence, "hierarchical_bootstrap_mean")
    if n_resamples < 1:
        raise ValueError(f"hierarchical_bootstrap_mean: n_resamples={n_resamples} must be ≥ 1")
    if len(arrays) == 1:
        return bootstrap_mean(arrays[0], confidence=confidence, n_resamples=n_resamples, seed=seed)
    k, total = len(arrays), sum(a.size for a in arrays)
    mean = float(np.mean([a.mean() for a in arrays]))
    if all(np.all(a == arrays[0][0]) for a in arrays):
        return MeanCI(mean, mean, mean, total, confidence, "exact")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, k, size=(n_resamples, k))  # [B, k]: which group fills each slot
    group_means = np.empty((n_resamples, k))
    for g, values in enumerate(arrays):
        slots = picks == g
        draws = rng.integers(0, values.size, size=(int(slots.sum()), values.size))
        group_means[slots] = values[draws].mean(axis=1)
    estimates = group_means.mean(axis=1)
    low, high = np.quantile(estimates, [(1 - confidence) / 2, (1 + confidence) / 2])
    return MeanCI(mean, float(low), float(high), total, confidence, "hierarchical")
