"""The runs of `prefopt.reproduce.experiments.dpo_frontier`: its settings, the DPO, PPO (learned reward model and
gold reward) and best-of-N policies trained and evaluated on the synthetic task, and the measured reward–KL points.
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
from prefopt.online.reward_model import LearnedReward, synthetic_reward_model, train_reward_model
from prefopt.online.trainer import train_online
from prefopt.reproduce.base import Progress, mean_ci
from prefopt.reproduce.experiments.dpo_frontier_training import all_pair_rows, train_dpo_to_convergence

__all__ = ["DPOFrontierConfig", "Point", "measure", "PPO_RM", "PPO_GT"]

PPO_RM, PPO_GT = "PPO", "PPO-GT"  # the paper's PPO (learned reward model) and PPO on the gold reward


@dataclass(frozen=True)
class DPOFrontierConfig:
    """The synthetic task, the DPO, reward-model and PPO settings, best-of-N, and the evaluation.

    Attributes:
        sft: reference policy recipe, "default" (`SFTConfig()`) or "tiny" (`SFTConfig.tiny()`).
        task_seed: the reference policy and the preference data.
        train_prompts, eval_prompts, heldout_prompts, completions_per_prompt: the preference data: K completions
            per prompt from π_ref, all K(K−1)/2 pairs labelled by the gold reward (`dpo_frontier_training`);
            eval pairs drive early stopping and the reward model's accuracy; held-out prompts the evaluation.
        ablation_prompts: smaller training sets (the first n training prompts) DPO is also trained on.
        dpo_betas: DPO's β values; dpo_batch_size, dpo_lr (None: the synthetic preset's); dpo_max_steps (a cap in
            optimiser steps, not epochs: a small training set takes more epochs to converge), dpo_eval_every
            (steps), dpo_patience (evaluations): early stopping on the held-out DPO loss.
        rm_epochs, rm_lr, rm_batch_size: the reward model of PPO (Bradley–Terry on the same training pairs).
        ppo_kl_coefs: PPO's KL coefficients; ppo_steps, ppo_prompts_per_step, ppo_samples: rollouts, prompts per
            rollout, samples per prompt; ppo_lr: None = `prefopt.online.config.SYNTHETIC_LR`.
        bon_ns, bon_samples: best-of-N's N values (1 included: the reference) and reference samples per prompt.
        eval_prompts_used: held-out prompts each policy is evaluated on (one sample each, exact KL).
        max_new_tokens: sampling cap (data, training rollouts and evaluation).
        seeds: training seeds per setting (seed s also seeds the evaluation samples); ablation_seeds: the same for
            the smaller training sets.
    """

    sft: str = "tiny"
    task_seed: int = 0
    train_prompts: int = 96
    eval_prompts: int = 16
    heldout_prompts: int = 128
    completions_per_prompt: int = 4
    ablation_prompts: tuple[int, ...] = (24, 48)
    dpo_betas: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0)
    dpo_batch_size: int = 16
    dpo_lr: float | None = None
    dpo_max_steps: int = 300
    dpo_eval_every: int = 12
    dpo_patience: int = 2
    rm_epochs: float = 3.0
    rm_lr: float = 3e-3
    rm_batch_size: int = 32
    ppo_kl_coefs: tuple[float, ...] = (0.01, 0.1, 0.5)
    ppo_steps: int = 12
    ppo_prompts_per_step: int = 16
    ppo_samples: int = 2
    ppo_lr: float | None = None
    bon_ns: tuple[int, ...] = (1, 2, 4, 8, 16)
    bon_samples: int = 64
    eval_prompts_used: int = 128
    max_new_tokens: int = 48
    seeds: int = 5
    ablation_seeds: int = 2

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
        if any(not 1 <= n < self.train_prompts for n in self.ablation_prompts):
            raise ValueError(
                f"DPOFrontierConfig.ablation_prompts={self.ablation_prompts}: each in [1, train_prompts="
                f"{self.train_prompts}) (the full set is the main run)."
            )
        if self.ablation_seeds > self.seeds:
            raise ValueError(
                f"DPOFrontierConfig.ablation_seeds={self.ablation_seeds} must be ≤ seeds={self.seeds} (the "
                "ablation's runs are paired with PPO's by seed)."
            )
        if min(self.seeds, self.ablation_seeds, self.ppo_steps, self.dpo_max_steps, self.eval_prompts) < 1:
            raise ValueError(
                "DPOFrontierConfig: seeds, ablation_seeds, ppo_steps, dpo_max_steps and eval_prompts must be ≥ 1."
            )


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
    """The task, its pairs, the held-out prompts and the evaluation every policy shares."""

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
                completions_per_prompt=config.completions_per_prompt,
                max_new_tokens=config.max_new_tokens,
                label_temperature=0.0,
            ),
        )
        self.reference, self.tokenizer = self.task.policy.model.eval(), self.task.policy.tokenizer
        self.prompts = list(self.task.preferences.heldout_prompts)[: config.eval_prompts_used]
        train_groups = [g for g in self.task.preferences.groups if g.split == "train"]
        self.train_prompts = [g.prompt for g in train_groups]
        self.train_rows = {n: all_pair_rows(train_groups[:n], "train") for n in config.ablation_prompts}
        self.train_rows[config.train_prompts] = all_pair_rows(train_groups, "train")
        self.eval_rows = all_pair_rows(self.task.preferences.groups, "eval")
        self._reference_samples: dict[int, Any] = {}
        self.reward_model: Any = None
        self.rm_accuracy = float("nan")

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

    def dpo(self, beta: float, seed: int, prompts: int) -> dict[str, float]:
        c = self.config
        policy, info = train_dpo_to_convergence(
            self.reference,
            self.tokenizer,
            self.train_rows[prompts],
            self.eval_rows,
            beta=beta,
            seed=seed,
            batch_size=c.dpo_batch_size,
            lr=c.dpo_lr,
            max_steps=c.dpo_max_steps,
            eval_every=c.dpo_eval_every,
            patience=c.dpo_patience,
        )
        return {**self.evaluate(policy, seed), **info}

    def train_reward_model(self) -> None:
        """The paper's RLHF reward model: Bradley–Terry on the same training pairs, from the reference's body."""
        c = self.config
        model = synthetic_reward_model(self.reference, init="policy", seed=c.task_seed)
        with tempfile.TemporaryDirectory(prefix="prefopt-frontier-rm-") as folder:
            result = train_reward_model(
                model=model,
                tokenizer=self.tokenizer,
                dataset=self._dataset(self.train_rows[c.train_prompts]),
                eval_dataset=self._dataset(self.eval_rows),
                epochs=c.rm_epochs,
                lr=c.rm_lr,
                batch_size=c.rm_batch_size,
                seed=c.task_seed,
                output_dir=folder,
                progress=False,
                device="cpu",
                num_threads=1,
            )
        self.reward_model = LearnedReward(model.eval(), self.tokenizer, batch_size=256, device="cpu")
        self.rm_accuracy = float(result.eval_accuracy) if result.eval_accuracy is not None else float("nan")

    @staticmethod
    def _dataset(rows: list[dict[str, str]]) -> Any:
        import datasets  # heavy: loaded on first use

        return datasets.Dataset.from_list(rows)

    def ppo(self, kl_coef: float, seed: int, learned: bool) -> dict[str, float]:
        c = self.config
        with tempfile.TemporaryDirectory(prefix="prefopt-frontier-ppo-") as folder:
            result = train_online(
                model=copy.deepcopy(self.reference).train().requires_grad_(True),
                tokenizer=self.tokenizer,
                reward=self.reward_model if learned else self.task.reward,
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


def dpo_label(config: DPOFrontierConfig, prompts: int) -> str:
    """The algorithm label of DPO trained on the first `prompts` training prompts ("DPO" for the full set)."""
    return "DPO" if prompts == config.train_prompts else f"DPO ({prompts} prompts)"


def _jobs(config: DPOFrontierConfig) -> list[tuple[str, str, int, Any]]:
    """(algorithm, setting, seed, call) of every trained policy, in run order."""
    jobs: list[tuple[str, str, int, Any]] = []
    for seed in range(config.seeds):
        for beta in config.dpo_betas:
            jobs.append(("DPO", f"β={beta:g}", seed, ("dpo", beta, config.train_prompts)))
        for coef in config.ppo_kl_coefs:
            jobs.append((PPO_RM, f"kl_coef={coef:g}", seed, ("ppo", coef, True)))
            jobs.append((PPO_GT, f"kl_coef={coef:g}", seed, ("ppo", coef, False)))
    for seed in range(config.ablation_seeds):
        for n in config.ablation_prompts:
            for beta in config.dpo_betas:
                jobs.append((dpo_label(config, n), f"β={beta:g}", seed, ("dpo", beta, n)))
    return jobs


def measure(config: DPOFrontierConfig, progress: Progress) -> tuple[list[Point], dict[str, Any]]:
    """Train and evaluate every DPO and PPO setting for every seed, and evaluate best-of-N; returns the points."""
    runner = _Runner(config)
    jobs = _jobs(config)
    total, done = len(jobs) + 3, 1
    progress(done, total, "synthetic task")
    runner.train_reward_model()
    done += 1
    progress(done, total, f"reward model (held-out accuracy {runner.rm_accuracy:.3f})")
    raw: dict[tuple[str, str], list[dict[str, float]]] = {}
    for algorithm, setting, seed, (kind, value, arg) in jobs:
        run = runner.dpo(value, seed, arg) if kind == "dpo" else runner.ppo(value, seed, arg)
        raw.setdefault((algorithm, setting), []).append(run)
        done += 1
        progress(done, total, f"{algorithm} {setting}, seed {seed}")
    best_of_n = runner.best_of_n()
    progress(total, total, "best-of-N")
    points = [_aggregate(algorithm, setting, runs) for (algorithm, setting), runs in raw.items()] + best_of_n
    # The reference's expected reward: best-of-1, the mean over bon_samples samples of every prompt.
    info = {
        "reference_reward": best_of_n[config.bon_ns.index(1)].reward,
        "rm_eval_accuracy": runner.rm_accuracy,
        "pairs": {str(n): len(rows) for n, rows in sorted(runner.train_rows.items())},
        "eval_pairs": len(runner.eval_rows),
        "raw": {f"{a}|{s}": runs for (a, s), runs in raw.items()},
    }
    return points, info
