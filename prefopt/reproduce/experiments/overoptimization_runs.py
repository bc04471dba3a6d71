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
