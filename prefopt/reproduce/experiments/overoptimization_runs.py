"""The runs of `prefopt.reproduce.experiments.overoptimization`: its settings, the proxy reward models trained
on gold-labelled pairs, the best-of-N pool and the measured gold and proxy curves.
"""

from __future__ import annotations

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
from prefopt.reproduce.base import Progress
from prefopt.reproduce.bon_sampling import GaoFit, best_of_n_from_pool, bon_kl, fit_gao_bon

__all__ = [
    "OveroptimizationConfig",
    "ProxyTrainer",
    "ProxyCurves",
    "Measurement",
    "pair_correct",
    "proxy_sft_config",
    "train_proxy_reward_model",
    "measure",
]

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
        seeds: proxy replicas per size (different score-head initialisation and data order); curves are
            averaged, and the accuracies' and peaks' CIs resample held-out pairs and prompts of that average.
        ablation_fractions: the data-size ablation: each proxy size is also trained (one replica) on the first
            share of the training pairs, for accuracy and peak against data size (empty: none).
    """

    sft: str = "default"
    seed: int = 0
    train_prompts: int = 2048
    eval_prompts: int = 512
    completions_per_prompt: int = 4
    label_temperature: float = 0.0
    proxy_sizes: tuple[tuple[int, int], ...] = ((8, 1), (16, 1), (32, 1), (64, 2))
    proxy_init: str = "sft"
    rm_epochs: float = 2.0
    rm_lr: float = 3e-3
    rm_batch_size: int = 32
    heldout_prompts: int = 32
    pool: int = 256
    ns: tuple[int, ...] = tuple(2**k for k in range(9))
    max_new_tokens: int = 64
    r2_min: float = 0.8
    seeds: int = 3
    ablation_fractions: tuple[float, ...] = (0.125, 0.5)

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
        if any(not 0 < f < 1 for f in self.ablation_fractions):
            raise ValueError(
                f"OveroptimizationConfig.ablation_fractions={self.ablation_fractions}: shares in (0, 1) of the "
                "training pairs (the full data is the main run)."
            )
        if self.heldout_prompts < 2 or self.seeds < 1 or self.rm_epochs <= 0 or self.rm_lr <= 0:
            raise ValueError("OveroptimizationConfig: heldout_prompts ≥ 2, seeds ≥ 1, rm_epochs > 0 and rm_lr > 0.")


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
    """Best-of-N curves of one proxy size trained on one data size.

    Attributes:
        size: (hidden_size, num_layers). gold, proxy: replica-mean per-prompt best-of-N values [J, P].
        accuracy: mean held-out pair accuracy over replicas. gold_fit, proxy_fit: Gao fits of the mean curves.
        correct: [R, E] 1.0 where replica r orders held-out pair e as the gold reward does (None: not kept).
        gold_runs: [R, J, P] each replica's gold curve (None: not kept). params: parameters of the proxy.
        pairs: training pairs it saw.
    """

    size: tuple[int, int]
    gold: Tensor
    proxy: Tensor
    accuracy: float
    gold_fit: GaoFit
    proxy_fit: GaoFit
    correct: Tensor | None = None
    gold_runs: Tensor | None = None
    params: int = 0
    pairs: int = 0


@dataclass
class Measurement:
    """What `measure` returns: the main curves (every proxy on all the data), the data-size ablation
    (every proxy on each `ablation_fractions` share, one replica) and JSON-able facts about the task."""

    curves: list[ProxyCurves]
    ablation: list[ProxyCurves]
    info: dict[str, Any]


@dataclass
class _Pool:
    """The best-of-N pool: prompt-major rows (p·M + m), completions, gold scores [P, M]."""

    prompts: list[str]
    completions: list[str]
    gold: Tensor
    finished_rate: float

    @property
    def shape(self) -> tuple[int, int]:
        return (self.gold.shape[0], self.gold.shape[1])


def _score_pool(reward: Any, prompts: Sequence[str], completions: Sequence[str], shape: tuple[int, int]) -> Tensor:
    scores = torch.as_tensor(reward.score(list(prompts), list(completions)), dtype=torch.float64).reshape(shape)
    if not torch.isfinite(scores).all():
        raise ValueError("a reward model returned non-finite scores on the best-of-N pool")
    return scores


def pair_correct(reward: Any, rows: Any) -> Tensor:
    """[E] 1.0 where r(x, chosen) > r(x, rejected) for each held-out pair (ties count as wrong, as in
    `train_reward_model`'s accuracy)."""
    prompts = list(rows["prompt"])
    scores = torch.as_tensor(reward.score(prompts + prompts, list(rows["chosen"]) + list(rows["rejected"])))
    return (scores[: len(prompts)] > scores[len(prompts) :]).double()


def _num_parameters(reward: Any) -> int:
    model = getattr(reward, "model", None)
    return sum(p.numel() for p in model.parameters()) if model is not None else 0


def _draw_pool(config: OveroptimizationConfig, policy: Any, prompts: Sequence[str]) -> _Pool:
    repeated = [p for p in prompts for _ in range(config.pool)]  # prompt-major: row p·M + m
    drawn = sample(
        policy.model,
        policy.tokenizer,
        repeated,
        generator=torch.Generator().manual_seed(config.seed + 7),
        max_new_tokens=config.max_new_tokens,
    )
    gold = _score_pool(GoldReward(), repeated, drawn.completions, (len(prompts), config.pool))
    return _Pool(repeated, list(drawn.completions), gold, float(drawn.finished.double().mean()))


def _proxy_curves(
    config: OveroptimizationConfig,
    size: tuple[int, int],
    replicas: int,
    train: Callable[[int], tuple[Any, float]],
    eval_rows: Any,
    pool: _Pool,
    pairs: int,
) -> ProxyCurves:
    """Train `replicas` proxies of one size (`train(seed)`), score the pool and the held-out pairs."""
    gold_runs, proxy_runs, correct, params = [], [], [], 0
    for replica in range(replicas):
        reward, _ = train(config.seed + 1000 * replica)
        scores = _score_pool(reward, pool.prompts, pool.completions, pool.shape)
        gold_runs.append(best_of_n_from_pool(scores, pool.gold, config.ns))  # [J, P]
        proxy_runs.append(best_of_n_from_pool(scores, scores, config.ns))
        correct.append(pair_correct(reward, eval_rows))
        params = _num_parameters(reward)
    gold_all, proxy_curve = torch.stack(gold_runs), torch.stack(proxy_runs).mean(0)
    gold_curve, right = gold_all.mean(0), torch.stack(correct)
    d, base = bon_kl(config.ns).sqrt(), config.ns.index(1)
    return ProxyCurves(
        size,
        gold_curve,
        proxy_curve,
        float(right.mean()),
        fit_gao_bon(d, gold_curve.mean(1) - gold_curve.mean(1)[base]),
        fit_gao_bon(d, proxy_curve.mean(1) - proxy_curve.mean(1)[base]),
        right,
        gold_all,
        params,
        pairs,
    )


def _preferences(config: OveroptimizationConfig, policy: Any) -> Any:
    return build_preferences(
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


def measure(config: OveroptimizationConfig, progress: Progress, train_proxy: ProxyTrainer) -> Measurement:
    """Build the task, train every proxy with `train_proxy` (all the data, `seeds` replicas; then each
    ablation share, one replica), draw the pool once and compute the best-of-N curves."""
    sizes = config.proxy_sizes
    total = 2 + len(sizes) * (config.seeds + len(config.ablation_fractions))
    policy = synthetic.reference_policy(config.seed, _sft_config(config.sft), progress=False)
    prefs = _preferences(config, policy)
    progress(1, total, "gold-labelled preference data")
    pool = _draw_pool(config, policy, prefs.heldout_prompts)
    progress(2, total, f"best-of-N pool ({pool.shape[0]} prompts × {pool.shape[1]} samples)")
    train_rows, eval_rows = prefs.dataset("paired", "train"), prefs.dataset("paired", "eval")
    done = 2

    def curves_for(size: tuple[int, int], rows: Any, replicas: int) -> ProxyCurves:
        nonlocal done
        out = _proxy_curves(
            config, size, replicas, lambda s: train_proxy(policy, *size, rows, eval_rows, s), eval_rows, pool, len(rows)
        )
        done += replicas
        progress(done, total, f"proxy RM {size[0]}×{size[1]} on {len(rows)} pairs ({replicas} replica(s))")
        return out

    curves = [curves_for(size, train_rows, config.seeds) for size in sizes]
    ablation = [
        curves_for(size, train_rows.select(range(max(2, round(share * len(train_rows))))), 1)
        for share in config.ablation_fractions
        for size in sizes
    ]
    info = {
        "reference_gold": float(pool.gold.mean()),
        "pool_finished_rate": pool.finished_rate,
        "train_pairs": len(train_rows),
        "eval_pairs": len(eval_rows),
        "preferences": prefs.summary(),
        "policy": {k: v for k, v in policy.report.items() if k != "examples"},
    }
    return Measurement(curves, ablation, info)
