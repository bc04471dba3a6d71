"""The runs of `prefopt.reproduce.experiments.dpo_frontier`: its settings, the DPO, PPO and best-of-N policies
trained and evaluated on the synthetic task, and the measured reward–KL points.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

from prefopt.data import synthetic
from prefopt.data.synthetic import PreferenceConfig, SFTConfig, sample
from prefopt.eval import evaluate_generations
from prefopt.online.best_of_n_reference import evaluate_best_of_n
from prefopt.online.config import SYNTHETIC_LR
from prefopt.online.trainer import train_online
from prefopt.reproduce.base import Progress, mean_ci
from prefopt.train import train

__all__ = ["DPOFrontierConfig", "Point", "measure"]


@dataclass(frozen=True)
class DPOFrontierConfig:
    """The synthetic task, the DPO and PPO settings, best-of-N, and the evaluation.

    Attributes:
        sft: reference policy recipe, "default" (`SFTConfig()`) or "tiny" (`SFTConfig.tiny()`).
        task_seed: the reference policy and the preference data.
        train_prompts, eval_prompts, heldout_prompts, label_temperature: the preference data (`PreferenceConfig`,
            2 pairs per prompt, Bradley–Terry labels from the gold reward at that temperature; 0 = noiseless).
        dpo_betas: DPO's β values; dpo_epochs, dpo_batch_size, dpo_lr: its training (lr None: the preset's).
        ppo_kl_coefs: PPO's KL coefficients (fixed β of the KL-shaped reward); ppo_steps, ppo_prompts_per_step,
            ppo_samples: rollouts, prompts per rollout, samples per prompt; ppo_lr: None = the online trainer's
            synthetic-task rate (`prefopt.online.config.SYNTHETIC_LR`), passed explicitly.
        bon_ns, bon_samples: best-of-N's N values (1 included: N = 1 is the reference's expected reward, the
            frontiers' origin) and reference samples per prompt (N ≤ samples/4).
        eval_prompts_used: held-out prompts each policy is evaluated on (one sample each).
        max_new_tokens: sampling cap (training rollouts and evaluation).
        seeds: training seeds per setting (seed s also seeds the evaluation samples); best-of-N is measured
            once (one pool of bon_samples per prompt, CI over prompts).
    """

    sft: str = "default"
    task_seed: int = 0
    train_prompts: int = 256
    eval_prompts: int = 32
    heldout_prompts: int = 64
    label_temperature: float = 1.0
    dpo_betas: tuple[float, ...] = (0.05, 0.1, 1.0, 5.0)
    dpo_epochs: float = 1.0
    dpo_batch_size: int = 16
    dpo_lr: float | None = None
    ppo_kl_coefs: tuple[float, ...] = (0.02, 0.1, 0.5)
    ppo_steps: int = 12
    ppo_prompts_per_step: int = 16
    ppo_samples: int = 2
    ppo_lr: float | None = None
    bon_ns: tuple[int, ...] = (1, 2, 4, 8, 16)
    bon_samples: int = 64
    eval_prompts_used: int = 48
    max_new_tokens: int = 48
    seeds: int = 3

    def __post_init__(self) -> None:
        if self.sft not in ("default", "tiny"):
            raise ValueError(f"DPOFrontierConfig.sft={self.sft!r}: use 'default' or 'tiny'.")
        if not self.dpo_betas or min(self.dpo_betas) <= 0 or not self.ppo_kl_coefs or min(self.ppo_kl_coefs) < 0:
            raise ValueError("DPOFrontierConfig: dpo_betas must be > 0 and ppo_kl_coefs ≥ 0 (at least one each).")
        if not 1 <= self.eval_prompts_used <= self.heldout_prompts:
            raise ValueError(
                f"DPOFrontierConfig.eval_prompts_used={self.eval_prompts_used} must lie in [1, "
                f"heldout_prompts={self.heldout_prompts}]."
            )
        if 1 not in self.bon_ns or min(self.bon_ns) < 1 or 4 * max(self.bon_ns) > self.bon_samples:
            raise ValueError(
                f"DPOFrontierConfig.bon_ns={self.bon_ns}: integers ≥ 1, including 1 (the reference's "
                f"reward), with 4·max N ≤ bon_samples={self.bon_samples} (the measured best-of-N needs "
                "M ≫ N)."
            )
        if self.seeds < 1 or self.ppo_steps < 1 or self.dpo_epochs <= 0:
            raise ValueError("DPOFrontierConfig: seeds ≥ 1, ppo_steps ≥ 1 and dpo_epochs > 0 are required.")


@dataclass(frozen=True)
class Point:
    """One policy on the reward–KL plane: algorithm, setting label, mean KL and reward over seeds with CI
    half-widths."""

    algorithm: str
    setting: str
    kl: float
    reward: float
    kl_ci: float = float("nan")
    reward_ci: float = float("nan")


def _sft_config(name: str) -> Any:
    return SFTConfig.tiny() if name == "tiny" else SFTConfig()


def _load_policy(path: Any) -> Any:
    from transformers import AutoModelForCausalLM  # heavy: loaded on first use

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


class _Runner:
    """The task, the held-out prompts and the evaluation every policy shares."""

    def __init__(self, config: DPOFrontierConfig) -> None:
        self.config = config
        self.task = synthetic.synthetic_task(
            config.task_seed,
            sft_config=_sft_config(config.sft),
            progress=False,
            preference_config=PreferenceConfig(
                train_prompts=config.train_prompts,
                eval_prompts=config.eval_prompts,
                heldout_prompts=config.heldout_prompts,
                max_new_tokens=config.max_new_tokens,
                label_temperature=config.label_temperature,
            ),
        )
        self.reference, self.tokenizer = self.task.policy.model.eval(), self.task.policy.tokenizer
        self.prompts = list(self.task.preferences.heldout_prompts)[: config.eval_prompts_used]
        self.train_prompts = [g.prompt for g in self.task.preferences.groups if g.split == "train"]
        self._reference_samples: dict[int, Any] = {}

    def evaluate(self, policy: Any, seed: int) -> dict[str, float]:
        """Gold reward and exact KL of one sample per held-out prompt (the reference's samples drawn once per seed)."""
        eval_seed = 1000 + seed
        if seed not in self._reference_samples:  # what evaluate_generations would draw, drawn once per seed
            self._reference_samples[seed] = sample(
                self.reference,
                self.tokenizer,
                self.prompts,
                generator=torch.Generator().manual_seed(eval_seed + 1),
                max_new_tokens=self.config.max_new_tokens,
            )
        metrics = evaluate_generations(
            policy,
            self.reference,
            self.tokenizer,
            self.prompts,
            reward=self.task.reward,
            seed=eval_seed,
            max_new_tokens=self.config.max_new_tokens,
            kl="exact",
            reference_samples=self._reference_samples[seed],
            n_resamples=200,
        )
        return {"kl": metrics.kl.mean, "reward": metrics.reward.mean, "mean_length": metrics.mean_length.mean}

    def dpo(self, beta: float, seed: int) -> dict[str, float]:
        c = self.config
        with tempfile.TemporaryDirectory(prefix="prefopt-frontier-dpo-") as folder:
            result = train(
                model=copy.deepcopy(self.reference).train().requires_grad_(True),
                tokenizer=self.tokenizer,
                dataset=self.task.preferences.dataset("paired"),
                loss="dpo",
                loss_hparams={"beta": beta},
                seed=seed,
                epochs=c.dpo_epochs,
                batch_size=c.dpo_batch_size,
                lr=c.dpo_lr,
                output_dir=folder,
                progress=False,
                ref_cache=False,
                engine_backend="reference",
            )
            policy = _load_policy(result.model_path)
        return self.evaluate(policy, seed)

    def ppo(self, kl_coef: float, seed: int) -> dict[str, float]:
        c = self.config
        with tempfile.TemporaryDirectory(prefix="prefopt-frontier-ppo-") as folder:
            result = train_online(
                model=copy.deepcopy(self.reference).train().requires_grad_(True),
                tokenizer=self.tokenizer,
                reward=self.task.reward,
                prompts=self.train_prompts,
                reference_model=self.reference,
                algorithm="ppo",
                kl_coef=kl_coef,
                steps=c.ppo_steps,
                prompts_per_step=c.ppo_prompts_per_step,
                num_samples=c.ppo_samples,
                lr=c.ppo_lr if c.ppo_lr is not None else SYNTHETIC_LR,
                max_new_tokens=c.max_new_tokens,
                seed=seed,
                output_dir=folder,
                progress=False,
                num_threads=1,
            )
            policy = _load_policy(result.model_path)
        return self.evaluate(policy, seed)

    def best_of_n(self) -> list[Point]:
        """Best-of-N by the gold reward from one pool of reference samples (the reference is not trained, so
        seeds would only redraw the pool): reward with its bootstrap CI over prompts, KL = the analytic bound."""
        c = self.config
        points = evaluate_best_of_n(
            self.reference,
            self.tokenizer,
            self.prompts,
            self.task.reward,
            ns=c.bon_ns,
            samples=c.bon_samples,
            max_new_tokens=c.max_new_tokens,
            seed=2000,
        )
        return [
            Point("best-of-N", f"N={p.n}", p.kl_bound, p.reward.mean, 0.0, (p.reward.high - p.reward.low) / 2)
            for p in points
        ]


def _aggregate(algorithm: str, setting: str, runs: list[dict[str, float]]) -> Point:
    kl = torch.tensor([r["kl"] for r in runs], dtype=torch.float64)
    reward = torch.tensor([r["reward"] for r in runs], dtype=torch.float64)
    (kl_mean, kl_half), (r_mean, r_half) = mean_ci(kl), mean_ci(reward)
    return Point(algorithm, setting, float(kl_mean), float(r_mean), float(kl_half), float(r_half))


def measure(config: DPOFrontierConfig, progress: Progress) -> tuple[list[Point], dict[str, Any]]:
    """Train and evaluate every DPO and PPO setting for every seed, and evaluate best-of-N; returns the points."""
    runner = _Runner(config)
    total = config.seeds * (len(config.dpo_betas) + len(config.ppo_kl_coefs)) + 2
    done = 1
    progress(done, total, "synthetic task")
    raw: dict[tuple[str, str], list[dict[str, float]]] = {}
    for seed in range(config.seeds):
        for beta in config.dpo_betas:
            raw.setdefault(("DPO", f"β={beta:g}"), []).append(runner.dpo(beta, seed))
            done += 1
            progress(done, total, f"DPO β={beta:g}, seed {seed}")
        for coef in config.ppo_kl_coefs:
            raw.setdefault(("PPO", f"kl_coef={coef:g}"), []).append(runner.ppo(coef, seed))
            done += 1
            progress(done, total, f"PPO kl_coef={coef:g}, seed {seed}")
    best_of_n = runner.best_of_n()
    progress(total, total, "best-of-N")
    points = [_aggregate(algorithm, setting, runs) for (algorithm, setting), runs in raw.items()] + best_of_n
    # The reference's expected reward: best-of-1, the mean over bon_samples samples of every prompt.
    info = {
        "reference_reward": best_of_n[config.bon_ns.index(1)].reward,
        "raw": {f"{a} {s}": runs for (a, s), runs in raw.items()},
    }
    return points, info
