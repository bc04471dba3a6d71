"""Reward-model overoptimisation under best-of-N (Gao, Schulman & Hilton 2022), on the synthetic task.

Gao et al. ("Scaling Laws for Reward Model Overoptimization", arXiv:2210.10760) label data with a
"gold" reward model, train proxy reward models of several sizes on it, and optimise against each proxy
with best-of-N. The gold reward of the proxy-selected sample first rises with N and then falls (§3,
Fig. 1a): the proxy is being overoptimised. As a function of d = √KL_bon, KL_bon = log N − (N−1)/N, the
gold gain over the reference follows R_bon(d) = d(α_bon − β_bon·d) (§3, Eq. 1), with α_bon growing and
β_bon shrinking as the proxy grows (§3.2, Fig. 3), so the peak d* = α/(2β) moves out.

Here the synthetic gold reward (`prefopt.data.synthetic.gold_reward`) plays the gold RM: it labels
Bradley–Terry preference pairs sampled from the synthetic reference policy, and proxy reward models of
several sizes are trained on those pairs from scratch (`prefopt.online.reward_model`). For held-out
prompts, M samples are drawn once from the reference and scored by the gold reward and every proxy;
the expected gold and proxy reward of best-of-N-by-proxy for every N ≤ M come from the unbiased
order-statistics estimator of `prefopt.reproduce.bon_sampling` (Gao et al. App. I). CIs are over
prompts (Student's t).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.data import synthetic
from prefopt.data.synthetic import GoldReward, PreferenceConfig, SFTConfig, build_preferences, sample
from prefopt.online.reward_model import LearnedReward, synthetic_reward_model, train_reward_model
from prefopt.reproduce.base import Check, Outcome, Progress, Reproduction, Table, check_at_least, fmt, mean_ci
from prefopt.reproduce.bon_sampling import GaoFit, best_of_n_from_pool, bon_kl, fit_gao_bon
from prefopt.threads import torch_threads

__all__ = ["OveroptimizationConfig", "CONFIG", "QUICK", "PAPER", "ProxyTrainer", "measure", "run"]

PAPER = {
    "source": "Gao, Schulman & Hilton 2022, Scaling Laws for Reward Model Overoptimization, arXiv:2210.10760 "
    "(§3 Eq. 1, Fig. 1a, Fig. 3; App. I estimator)",
    "form": "R_bon(d) = d(α − β d) fits the gold curve (§3, Eq. 1)",
    "overopt": "gold rises then falls: α > 0, β > 0 (Fig. 1a)",
    "peak": "peak d* = α/(2β) moves out as the proxy grows (Fig. 3: α ↑, β ↓)",
}

# A proxy trainer: (reference policy, hidden_size, num_layers, train rows, eval rows, seed)
# → (a RewardFunction, its held-out pair accuracy).
ProxyTrainer = Callable[[Any, int, int, Any, Any, int], tuple[Any, float]]


@dataclass(frozen=True)
class OveroptimizationConfig:
    """The reference policy, the gold-labelled preference data, the proxy sizes and the best-of-N pool.

    Attributes:
        sft: the synthetic reference policy's recipe: "default" (`SFTConfig()`) or "tiny" (`SFTConfig.tiny()`).
        seed: the reference policy, the prompts, the samples and the labels.
        train_prompts, eval_prompts, completions_per_prompt, label_temperature: the proxies' training data
            (`PreferenceConfig`; Bradley–Terry labels from the gold reward at that temperature).
        proxy_sizes: (hidden_size, num_layers) of each proxy reward model, smallest first.
        proxy_init: "sft": each proxy's body is a synthetic SFT policy of its shape (trained once by the
            task's recipe and cached; (64, 2) is `SFTConfig.tiny()`, (160, 4) the default), as Gao et al.
            fine-tune pretrained models of each size; "scratch": random initialisation.
        rm_epochs, rm_lr, rm_batch_size: the proxies' training recipe.
        heldout_prompts: P prompts for best-of-N; pool: M samples drawn per prompt; ns: the N values (≤ M).
        max_new_tokens: sampling cap. r2_min: the fit-quality threshold of the check.
        seeds: proxy replicas per size (different initialisation and data order); curves are averaged.
    """

    sft: str = "default"
    seed: int = 0
    train_prompts: int = 512
    eval_prompts: int = 64
    completions_per_prompt: int = 4
    label_temperature: float = 0.0
    proxy_sizes: tuple[tuple[int, int], ...] = ((32, 1), (64, 2), (160, 4))
    proxy_init: str = "sft"
    rm_epochs: float = 3.0
    rm_lr: float = 3e-3
    rm_batch_size: int = 32
    heldout_prompts: int = 32
    pool: int = 256
    ns: tuple[int, ...] = tuple(2**k for k in range(9))
    max_new_tokens: int = 64
    r2_min: float = 0.8
    seeds: int = 1

    def __post_init__(self) -> None:
        if self.sft not in ("default", "tiny"):
            raise ValueError(f"OveroptimizationConfig.sft={self.sft!r}: use 'default' or 'tiny'.")
        if self.proxy_init not in ("sft", "scratch"):
            raise ValueError(f"OveroptimizationConfig.proxy_init={self.proxy_init!r}: use 'sft' or 'scratch'.")
        if len(self.proxy_sizes) < 2 or any(h < 1 or n < 1 for h, n in self.proxy_sizes):
            raise ValueError(
                f"OveroptimizationConfig.proxy_sizes={self.proxy_sizes}: give ≥ 2 (hidden_size, "
                "num_layers) pairs of positive integers, smallest first."
            )
        if not self.ns or min(self.ns) < 1 or max(self.ns) > self.pool or 1 not in self.ns:
            raise ValueError(
                f"OveroptimizationConfig.ns={self.ns}: integers in [1, pool={self.pool}], including 1 "
                "(the reference point the gains are measured from)."
            )
        if len(set(self.ns)) < 3:
            raise ValueError("OveroptimizationConfig.ns: at least three distinct N (two beyond N = 1) to fit α and β.")
        if self.heldout_prompts < 2 or self.seeds < 1 or self.rm_epochs <= 0 or self.rm_lr <= 0:
            raise ValueError("OveroptimizationConfig: heldout_prompts ≥ 2, seeds ≥ 1, rm_epochs > 0 and rm_lr > 0.")


CONFIG = OveroptimizationConfig()
QUICK = OveroptimizationConfig(
    sft="tiny",
    train_prompts=96,
    eval_prompts=16,
    proxy_sizes=((8, 1), (32, 1)),
    proxy_init="scratch",
    rm_epochs=2.0,
    heldout_prompts=12,
    pool=32,
    ns=(1, 2, 4, 8, 16, 32),
    r2_min=0.5,
)


def _sft_config(name: str) -> Any:
    return SFTConfig.tiny() if name == "tiny" else SFTConfig()


def proxy_sft_config(hidden_size: int, num_layers: int) -> Any:
    """The SFT recipe of a proxy body: `SFTConfig.tiny()` for (64, 2), `SFTConfig()` for (160, 4), else the
    default recipe at that shape (MLP width 2.8 × hidden, as in both)."""
    if (hidden_size, num_layers) == (64, 2):
        return SFTConfig.tiny()
    if (hidden_size, num_layers) == (160, 4):
        return SFTConfig()
    return SFTConfig(hidden_size=hidden_size, num_layers=num_layers, intermediate_size=round(2.8 * hidden_size))


def train_proxy_reward_model(
    policy: Any,
    hidden_size: int,
    num_layers: int,
    train_rows: Any,
    eval_rows: Any,
    seed: int,
    *,
    config: OveroptimizationConfig,
) -> tuple[Any, float]:
    """Train one proxy reward model on gold-labelled pairs → (LearnedReward, held-out accuracy).

    The proxy is a `LlamaForSequenceClassification` (`prefopt.online.reward_model.synthetic_reward_model`)
    of shape (hidden_size, num_layers): its body copied from a synthetic SFT policy of that shape
    (proxy_init "sft") or random (the reference policy's architecture resized, "scratch"), trained with the
    registered Bradley–Terry loss by `train_reward_model` in a temporary run folder.
    """
    if config.proxy_init == "sft":
        body = synthetic.reference_policy(config.seed, proxy_sft_config(hidden_size, num_layers), progress=False)
        model = synthetic_reward_model(body.model, init="policy", seed=seed)
    else:
        model = synthetic_reward_model(
            policy.model, init="scratch", hidden_size=hidden_size, num_layers=num_layers, seed=seed
        )
    with tempfile.TemporaryDirectory(prefix="prefopt-proxy-rm-") as folder:
        result = train_reward_model(
            model=model,
            tokenizer=policy.tokenizer,
            dataset=train_rows,
            eval_dataset=eval_rows,
            epochs=config.rm_epochs,
            lr=config.rm_lr,
            batch_size=config.rm_batch_size,
            seed=seed,
            output_dir=folder,
            progress=False,
            device="cpu",
            num_threads=1,
        )
    reward = LearnedReward(model, policy.tokenizer, batch_size=256, device="cpu")
    return reward, float(result.eval_accuracy if result.eval_accuracy is not None else math.nan)


@dataclass
class ProxyCurves:
    """Best-of-N curves of one proxy size: per-prompt gold and proxy values [J, P], fits, eval accuracy."""

    size: tuple[int, int]
    gold: Tensor
    proxy: Tensor
    accuracy: float
    gold_fit: GaoFit
    proxy_fit: GaoFit


def _score_pool(reward: Any, prompts: Sequence[str], completions: Sequence[str], shape: tuple[int, int]) -> Tensor:
    scores = torch.as_tensor(reward.score(list(prompts), list(completions)), dtype=torch.float64).reshape(shape)
    if not torch.isfinite(scores).all():
        raise ValueError("a reward model returned non-finite scores on the best-of-N pool")
    return scores


def measure(
    config: OveroptimizationConfig, progress: Progress, train_proxy: ProxyTrainer
) -> tuple[list[ProxyCurves], dict[str, Any]]:
    """Build the task, train every proxy with `train_proxy`, draw the pool and compute the best-of-N curves."""
    total = 2 + len(config.proxy_sizes) * config.seeds
    policy = synthetic.reference_policy(config.seed, _sft_config(config.sft), progress=False)
    prefs = build_preferences(
        policy.model,
        policy.tokenizer,
        seed=config.seed,
        config=PreferenceConfig(
            train_prompts=config.train_prompts,
            eval_prompts=config.eval_prompts,
            heldout_prompts=config.heldout_prompts,
            completions_per_prompt=config.completions_per_prompt,
            label_temperature=config.label_temperature,
            max_new_tokens=config.max_new_tokens,
        ),
    )
    progress(1, total, "gold-labelled preference data")
    prompts = prefs.heldout_prompts
    repeated = [p for p in prompts for _ in range(config.pool)]  # prompt-major: row p·M + m
    drawn = sample(
        policy.model,
        policy.tokenizer,
        repeated,
        generator=torch.Generator().manual_seed(config.seed + 7),
        max_new_tokens=config.max_new_tokens,
    )
    shape = (len(prompts), config.pool)
    gold = _score_pool(GoldReward(), repeated, drawn.completions, shape)
    progress(2, total, f"best-of-N pool ({shape[0]} prompts × {shape[1]} samples)")
    train_rows, eval_rows = prefs.dataset("paired", "train"), prefs.dataset("paired", "eval")
    d = bon_kl(config.ns).sqrt()
    curves: list[ProxyCurves] = []
    done = 2
    for hidden, layers in config.proxy_sizes:
        gold_runs, proxy_runs, accuracies = [], [], []
        for replica in range(config.seeds):
            reward, accuracy = train_proxy(policy, hidden, layers, train_rows, eval_rows, config.seed + 1000 * replica)
            scores = _score_pool(reward, repeated, drawn.completions, shape)
            gold_runs.append(best_of_n_from_pool(scores, gold, config.ns))  # [J, P]
            proxy_runs.append(best_of_n_from_pool(scores, scores, config.ns))
            accuracies.append(accuracy)
            done += 1
            progress(done, total, f"proxy RM hidden={hidden} layers={layers}, replica {replica + 1}")
        gold_curve, proxy_curve = torch.stack(gold_runs).mean(0), torch.stack(proxy_runs).mean(0)
        base = config.ns.index(1)
        curves.append(
            ProxyCurves(
                (hidden, layers),
                gold_curve,
                proxy_curve,
                sum(accuracies) / len(accuracies),
                fit_gao_bon(d, gold_curve.mean(1) - gold_curve.mean(1)[base]),
                fit_gao_bon(d, proxy_curve.mean(1) - proxy_curve.mean(1)[base]),
            )
        )
    info = {
        "reference_gold": float(gold.mean()),
        "pool_finished_rate": float(drawn.finished.double().mean()),
        "preferences": prefs.summary(),
        "policy": {k: v for k, v in policy.report.items() if k != "examples"},
    }
    return curves, info


def run(config: OveroptimizationConfig, progress: Progress) -> Outcome:
    """Train the proxies, measure best-of-N against each, fit Gao et al.'s form and check the claims."""
    with torch_threads(1):
        curves, info = measure(config, progress, lambda *args: train_proxy_reward_model(*args, config=config))
    return outcome(config, curves, info)


def bootstrap_fit(
    d: Tensor, curve: Tensor, base: int, *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap over prompts of the gold fit: (low, high) of α, β and the peak d* = α/(2β).

    Args:
        d: [J] √KL_bon; curve: [J, P] per-prompt best-of-N values; base: the index of N = 1 in d.
    A resample with β ≤ 0 has d* = ∞, so the upper end of d*'s interval may be ∞.
    """
    gen = torch.Generator().manual_seed(seed)
    prompts = curve.shape[1]
    picks = torch.randint(prompts, (resamples, prompts), generator=gen)  # [R, P]
    means = curve.T[picks].mean(1)  # (R, J)
    gains = means - means[:, base : base + 1]
    # The normal equations of `fit_gao_bon` (columns d and −d²), solved for all resamples at once.
    s11, s12, s22 = float((d**2).sum()), float(-(d**3).sum()), float((d**4).sum())
    b1, b2 = gains @ d, -(gains @ d**2)
    det = s11 * s22 - s12 * s12
    alpha, beta = (s22 * b1 - s12 * b2) / det, (s11 * b2 - s12 * b1) / det
    peak = torch.where(beta > 0, alpha / (2 * beta), torch.full_like(alpha, math.inf))
    values = {"alpha": alpha, "beta": beta, "peak_d": peak}
    tail = (1 - level) / 2
    out = {}
    for name, v in values.items():
        ordered = v.sort().values
        low, high = ordered[int(tail * (resamples - 1))], ordered[int(round((1 - tail) * (resamples - 1)))]
        out[name] = (float(low), float(high))
    return out


def _interval(bounds: tuple[float, float]) -> str:
    return "[" + ", ".join("∞" if math.isinf(b) else fmt(b, 3) for b in bounds) + "]"


def _init_note(config: OveroptimizationConfig) -> str:
    if config.proxy_init == "scratch":
        return "randomly initialised (the reference architecture resized)"
    return (
        "initialised from synthetic SFT policies of their shape (seed "
        f"{config.seed}; the (160, 4) body is the reference policy itself, as Gao et al. initialise RMs from the "
        "pretrained models of the policy's family)"
    )


def _json_number(x: float) -> float | None:
    """x, or None where it is infinite (a fit that never turns down): strict JSON has no ∞."""
    return None if math.isinf(x) else x


def _peak_check(curves: list[ProxyCurves]) -> Check:
    peaks = [c.gold_fit.peak_d for c in curves]
    increasing = all(b > a for a, b in zip(peaks, peaks[1:]))
    ours = " < ".join("∞" if math.isinf(p) else fmt(p, 3) for p in peaks)
    return Check(
        "fitted gold peak d* = α/(2β), smallest → largest proxy",
        PAPER["peak"],
        ours,
        "strictly increasing",
        increasing,
        float(increasing),
    )


def outcome(config: OveroptimizationConfig, curves: list[ProxyCurves], info: dict[str, Any]) -> Outcome:
    """The checks, tables, figure and data of measured curves (pure; `run` = `measure` + this)."""
    d = bon_kl(config.ns).sqrt()
    checks: list[Check] = []
    for c in curves:
        label = f"proxy h={c.size[0]} L={c.size[1]}"
        checks.append(check_at_least(f"{label}: R² of the gold fit", PAPER["form"], c.gold_fit.r2, config.r2_min, 3))
        both = min(c.gold_fit.alpha, c.gold_fit.beta)
        checks.append(
            Check(
                f"{label}: gold fit α, β",
                PAPER["overopt"],
                f"α = {fmt(c.gold_fit.alpha, 3)}, β = {fmt(c.gold_fit.beta, 3)}",
                "both > 0",
                both > 0,
                both,
            )
        )
    checks.append(_peak_check(curves))
    rows = []
    for c in curves:
        gold_mean, gold_half = mean_ci(c.gold.T)
        proxy_mean, _ = mean_ci(c.proxy.T)
        for j, n in enumerate(config.ns):
            rows.append(
                [
                    f"{c.size[0]}×{c.size[1]}",
                    str(n),
                    fmt(float(d[j] ** 2), 3),
                    fmt(float(d[j]), 3),
                    f"{fmt(float(gold_mean[j]))} ± {fmt(float(gold_half[j]), 2)}",
                    fmt(float(proxy_mean[j])),
                ]
            )
    base = config.ns.index(1)
    intervals = [bootstrap_fit(d, c.gold, base, seed=config.seed) for c in curves]
    fits = [
        [
            f"{c.size[0]}×{c.size[1]}",
            fmt(c.accuracy, 3),
            f"{fmt(c.gold_fit.alpha, 3)} {_interval(ci['alpha'])}",
            f"{fmt(c.gold_fit.beta, 3)} {_interval(ci['beta'])}",
            fmt(c.gold_fit.r2, 3),
            f"{'∞' if math.isinf(c.gold_fit.peak_d) else fmt(c.gold_fit.peak_d, 3)} {_interval(ci['peak_d'])}",
            str(config.ns[int(c.gold.mean(1).argmax())]),
            fmt(c.proxy_fit.alpha, 3),
            fmt(c.proxy_fit.beta, 3),
            fmt(c.proxy_fit.r2, 3),
        ]
        for c, ci in zip(curves, intervals)
    ]
    tables = [
        Table(
            "Gao fits per proxy (gain over N = 1 against d = √KL_bon; gold: [95% bootstrap CI over prompts])",
            [
                "proxy hidden×layers",
                "eval acc.",
                "gold α",
                "gold β",
                "gold R²",
                "gold peak d*",
                "best N (measured)",
                "proxy α",
                "proxy β",
                "proxy R²",
            ],
            fits,
        ),
        Table(
            "Best-of-N by proxy: mean gold (± 95% CI over prompts) and proxy reward",
            ["proxy", "N", "KL_bon", "d", "gold", "proxy"],
            rows,
        ),
    ]
    notes = [
        f"Synthetic task (SFT '{config.sft}', seed {config.seed}); {config.train_prompts} training prompts × "
        f"{config.completions_per_prompt // 2} Bradley–Terry pairs labelled by the gold reward at temperature "
        f"{config.label_temperature} (0 = noiseless); proxies {_init_note(config)}, trained with Bradley–Terry for "
        f"{config.rm_epochs} epochs at lr {config.rm_lr}, {config.seeds} replica(s) per size.",
        f"Best-of-N: {config.heldout_prompts} held-out prompts × M = {config.pool} reference samples, the unbiased "
        f"subset estimator for every N ≤ M; KL_bon = log N − (N−1)/N (the paper's convention, an upper bound on "
        f"the exact KL for discrete outcomes). Reference gold reward {fmt(info['reference_gold'])}.",
        "Fits are of the gain over N = 1, least squares without intercept, R² against the centred total sum of "
        "squares. A β ≤ 0 fit never turns down (peak d* = ∞).",
    ]

    def draw(fig: Any) -> None:
        axes = fig.subplots(1, len(curves), sharey=False, squeeze=False)[0]
        dense = torch.linspace(0, float(d.max()), 100, dtype=torch.float64)
        for ax, c in zip(axes, curves):
            base_gold, base_proxy = float(c.gold.mean(1)[base]), float(c.proxy.mean(1)[base])
            gold_mean, gold_half = mean_ci(c.gold.T)
            ax.errorbar(
                d.tolist(),
                (gold_mean - base_gold).tolist(),
                yerr=gold_half.tolist(),
                fmt="o",
                color="tab:orange",
                label="gold (measured)",
                capsize=2,
            )
            ax.plot(
                dense.tolist(),
                c.gold_fit.predict(dense).tolist(),
                "-",
                color="tab:orange",
                label=f"gold fit α={c.gold_fit.alpha:.2f} β={c.gold_fit.beta:.2f}",
            )
            ax.plot(
                d.tolist(), (c.proxy.mean(1) - base_proxy).tolist(), "s", color="tab:blue", label="proxy (measured)"
            )
            ax.plot(dense.tolist(), c.proxy_fit.predict(dense).tolist(), "--", color="tab:blue", label="proxy fit")
            ax.set_title(f"proxy hidden {c.size[0]}, {c.size[1]} layer(s)", fontsize=9)
            ax.set_xlabel("d = √KL_bon (nats^½)")
            ax.set_ylabel("reward gain over N = 1")
            ax.legend(fontsize=7)
        fig.suptitle("Best-of-N against proxy reward models of growing size (Gao et al. 2022, Fig. 1a form)")

    data = {
        "config": dataclasses.asdict(config),
        "d": d.tolist(),
        "info": info,
        "proxies": [
            {
                "size": list(c.size),
                "eval_accuracy": c.accuracy,
                "gold": c.gold.mean(1).tolist(),
                "proxy": c.proxy.mean(1).tolist(),
                "gold_fit": dataclasses.asdict(c.gold_fit),
                "proxy_fit": dataclasses.asdict(c.proxy_fit),
                "gold_peak_d": _json_number(c.gold_fit.peak_d),
                "gold_fit_ci95": {k: [_json_number(v) for v in b] for k, b in ci.items()},
            }
            for c, ci in zip(curves, intervals)
        ],
    }
    return Outcome(checks, tables, draw, (5.0 * len(curves), 4.5), notes, data)


def make_config(quick: bool, seeds: int | None) -> OveroptimizationConfig:
    """The full or quick setting; `seeds` sets the proxy replicas per size."""
    config = QUICK if quick else CONFIG
    return dataclasses.replace(config, seeds=seeds) if seeds is not None else config


REPRODUCTION = Reproduction(
    name="rm-overoptimization",
    title="Reward-model overoptimisation: best-of-N against proxy RMs of growing size, gold = d(α − βd)",
    paper=PAPER["source"],
    checks="the gold curve fits d(α − βd) with α, β > 0 per proxy; the fitted peak moves out as the proxy grows",
    runtime="≈ 5.6 min (shared 2-core CPU under load; first run also trains a 32×1 SFT body, ≈ 1 min)",
    make_config=make_config,
    run=run,
    seeded=True,
)
