"""Likelihood displacement: DPO lowers the chosen log-probability; DPOP's penalty keeps it.

Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive",
arXiv:2402.13228. The paper shows (in theory, then when fine-tuning LLMs; see its abstract) that the
DPO loss can be lowered while log π_θ(y_w|x) itself falls, as long as log π_θ(y_l|x) falls faster, and
proposes DPOP (their Eq. 3):

    L_DPOP = −log σ(β·(ρ_w − ρ_l − λ·max(0, −ρ_w))),   ρ = log π_θ(y|x) − log π_ref(y|x)

whose penalty is active exactly when the chosen likelihood drops below the reference's.

Here: the synthetic task (a tiny Llama reference policy, Bradley–Terry labels from the gold reward).
Each replicate draws its own preference data from π_ref and trains DPO and DPOP from π_ref with the
same data, seed, β, optimiser and steps; every few steps the mean ρ_w and ρ_l are measured on fixed
training pairs and on held-out pairs. Claims checked (95% Student-t CIs over replicates):

    1. DPO's held-out ρ_w ends below 0 (likelihood displacement),
    2. and so does its ρ_w on the training pairs themselves.
    3. DPO's held-out margin ρ_w − ρ_l ends above 0: it learns the preference while ρ_w falls.
    4. DPOP's training-pair ρ_w stays ≥ 0 within a tolerance (its penalty's target).
    5. DPOP's held-out ρ_w ends above DPO's (paired by replicate): it drops much less.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.data.synthetic import PreferenceConfig, SFTConfig
from prefopt.reproduce.base import Check, Outcome, Progress, Reproduction, Table, fmt, mean_ci, single_thread
from prefopt.reproduce.synthetic_runs import (
    Arm,
    Curve,
    TrainSchedule,
    pair_batches,
    pair_logps,
    preferences_for,
    reference_policy_for,
    run_arms,
    stack_curves,
    stack_final,
)

__all__ = ["DisplacementConfig", "CONFIG", "QUICK", "PAPER", "run", "make_config", "REPRODUCTION"]

PAPER = {
    "source": "Pal et al. 2024, Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive, "
    "arXiv:2402.13228 (abstract: DPO can reduce the preferred likelihood, DPOP avoids it; Eq. 3: DPOP)",
    "dpo_drops": "DPO can reduce the likelihood of the preferred completion: Δ log π(y_w) < 0",
    "dpo_learns": "… while the relative probability of y_w over y_l increases: ρ_w − ρ_l > 0",
    "dpop_keeps": "DPOP's penalty keeps log π_θ(y_w) ≥ log π_ref(y_w) on its training pairs",
    "dpop_less": "DPOP avoids the failure mode: its ρ_w ends above DPO's",
}
PROBES = ("train_chosen", "train_rejected", "eval_chosen", "eval_rejected")


@dataclass(frozen=True)
class DisplacementConfig:
    """The synthetic task, the two losses and the training schedule.

    Attributes:
        model_size: "default" (SFTConfig(), ≈1.2M parameters) or "tiny" (SFTConfig.tiny()) reference policy.
        task_seed: seed of the reference policy.
        train_prompts, eval_prompts: prompts of each replicate's data (two pairs per prompt).
        probe_pairs: training pairs on which ρ is tracked (the first of the training split).
        seeds: replicates (data draw and training seed).
        steps, batch_size, lr, probe_every: the shared schedule (AdamW, constant lr).
        beta: β of both losses (the same, so that the penalty is the only difference).
        dpop_lambda: DPOP's λ (Smaug's 50, the registry default).
        dpop_tolerance: how far below 0 DPOP's training ρ_w may end (nats, CI lower end).
    """

    model_size: str = "default"
    task_seed: int = 0
    train_prompts: int = 256
    eval_prompts: int = 64
    probe_pairs: int = 128
    seeds: int = 4
    steps: int = 96
    batch_size: int = 16
    lr: float = 1e-4
    probe_every: int = 16
    beta: float = 0.1
    dpop_lambda: float = 50.0
    dpop_tolerance: float = 0.05

    def __post_init__(self) -> None:
        if self.model_size not in ("default", "tiny"):
            raise ValueError(f"DisplacementConfig.model_size={self.model_size!r}: use 'default' or 'tiny'")
        for name in ("train_prompts", "eval_prompts", "probe_pairs", "seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"DisplacementConfig.{name}={getattr(self, name)!r} must be ≥ 1")
        if self.seeds < 2:
            raise ValueError("DisplacementConfig.seeds must be ≥ 2: the checks use confidence intervals over seeds")
        if self.beta <= 0 or self.dpop_lambda < 0 or self.dpop_tolerance < 0:
            raise ValueError("DisplacementConfig: beta > 0, dpop_lambda ≥ 0 and dpop_tolerance ≥ 0 are required")
        self.schedule()  # validates steps, batch_size, lr, probe_every

    def schedule(self) -> TrainSchedule:
        """The shared optimiser schedule."""
        return TrainSchedule(self.steps, self.batch_size, self.lr, self.probe_every)

    def arms(self) -> tuple[Arm, Arm]:
        """DPO and DPOP at the same β."""
        return (
            Arm("DPO", "dpo", (("beta", self.beta),)),
            Arm("DPOP", "dpop", (("beta", self.beta), ("lambda_", self.dpop_lambda))),
        )


CONFIG = DisplacementConfig()
QUICK = DisplacementConfig(
    model_size="tiny", train_prompts=128, eval_prompts=32, probe_pairs=64, seeds=3, steps=60, lr=3e-4, probe_every=20
)


def _replicate(reference: Any, config: DisplacementConfig) -> Any:
    """r → (training data, probe of ρ_w and ρ_l on fixed training and held-out pairs) for `run_arms`."""
    prefs_config = PreferenceConfig(
        train_prompts=config.train_prompts, eval_prompts=config.eval_prompts, heldout_prompts=0
    )

    def replicate(r: int) -> tuple[Any, Any]:
        prefs = preferences_for(reference, r, prefs_config)
        train_batches = pair_batches(prefs.rows("paired")[: config.probe_pairs], reference.tokenizer)
        eval_batches = pair_batches(prefs.rows("paired", "eval"), reference.tokenizer)
        ref_train, ref_eval = pair_logps(reference.model, train_batches), pair_logps(reference.model, eval_batches)

        def probe(policy: Any) -> dict[str, float]:
            train = (pair_logps(policy, train_batches) - ref_train).mean(0)  # [2]: mean ρ_w, ρ_l
            held = (pair_logps(policy, eval_batches) - ref_eval).mean(0)
            return dict(zip(PROBES, (*train.tolist(), *held.tolist())))

        return prefs.dataset("paired"), probe

    return replicate


def _ci_cell(x: Tensor) -> tuple[str, float, float]:
    """'mean ± half-width' for a table cell, with the CI's lower and upper ends."""
    mean, half = mean_ci(x)
    return f"{fmt(float(mean), 3)} ± {fmt(float(half), 2)}", float(mean - half), float(mean + half)


def checks_from_curves(curves: dict[str, list[Curve]], config: DisplacementConfig) -> list[Check]:
    """The five checks of the module docstring from the runs' curves (label → [seeds] curves)."""
    dpo, dpop = curves["DPO"], curves["DPOP"]
    dpo_eval = stack_final(dpo, "eval_chosen")
    dpo_train = stack_final(dpo, "train_chosen")
    dpo_margin = dpo_eval - stack_final(dpo, "eval_rejected")
    dpop_train = stack_final(dpop, "train_chosen")
    gap = stack_final(dpop, "eval_chosen") - dpo_eval
    checks = []
    cell, _, high = _ci_cell(dpo_eval)
    checks.append(
        Check(
            "DPO: held-out Δ log π(y_w) at the end (nats, mean ± 95% CI)",
            PAPER["dpo_drops"],
            cell,
            "CI upper end < 0",
            high < 0,
            float(dpo_eval.mean()),
        )
    )
    cell, _, high = _ci_cell(dpo_train)
    checks.append(
        Check(
            "DPO: training-pair Δ log π(y_w) at the end",
            PAPER["dpo_drops"],
            cell,
            "CI upper end < 0",
            high < 0,
            float(dpo_train.mean()),
        )
    )
    cell, low, _ = _ci_cell(dpo_margin)
    checks.append(
        Check(
            "DPO: held-out margin ρ_w − ρ_l at the end",
            PAPER["dpo_learns"],
            cell,
            "CI lower end > 0",
            low > 0,
            float(dpo_margin.mean()),
        )
    )
    cell, low, _ = _ci_cell(dpop_train)
    checks.append(
        Check(
            "DPOP: training-pair Δ log π(y_w) at the end",
            PAPER["dpop_keeps"],
            cell,
            f"CI lower end ≥ −{fmt(config.dpop_tolerance, 2)}",
            low >= -config.dpop_tolerance,
            float(dpop_train.mean()),
        )
    )
    cell, low, _ = _ci_cell(gap)
    checks.append(
        Check(
            "DPOP − DPO: held-out Δ log π(y_w) at the end (paired by seed)",
            PAPER["dpop_less"],
            cell,
            "CI lower end > 0",
            low > 0,
            float(gap.mean()),
        )
    )
    return checks


def run(config: DisplacementConfig, progress: Progress) -> Outcome:
    """Train DPO and DPOP on every replicate; track ρ_w and ρ_l over steps; check the claims."""
    with single_thread():
        sft = SFTConfig() if config.model_size == "default" else SFTConfig.tiny()
        reference = reference_policy_for(config.task_seed, sft)
        curves = run_arms(
            reference, config.arms(), config.seeds, config.schedule(), _replicate(reference, config), progress
        )
    checks = checks_from_curves(curves, config)
    rows = []
    for label, runs in curves.items():
        for r, curve in enumerate(runs):
            final = {name: curve.values[name][-1] for name in PROBES}
            rows.append(
                [
                    label,
                    str(r),
                    *(fmt(final[name], 3) for name in PROBES),
                    fmt(curve.final_metrics.get("rewards/accuracies", float("nan")), 3),
                ]
            )
    table = Table(
        "Final mean ρ = log π_θ(y|x) − log π_ref(y|x) per replicate (nats)",
        ["loss", "seed", "train ρ_w", "train ρ_l", "held-out ρ_w", "held-out ρ_l", "last-batch accuracy"],
        rows,
    )
    steps = curves["DPO"][0].steps
    notes = [
        f"Synthetic task, {config.model_size} reference policy (task seed {config.task_seed}); each of "
        f"{config.seeds} replicates draws {config.train_prompts} training prompts × 2 pairs and "
        f"{config.eval_prompts} held-out prompts from π_ref (data seed = training seed = replicate). DPO and DPOP "
        f"share β = {config.beta} (DPOP λ = {config.dpop_lambda}), AdamW lr {config.lr}, batch {config.batch_size}, "
        f"{config.steps} steps; ρ is measured on the first {config.probe_pairs} training pairs and on every "
        f"held-out pair every {config.probe_every} steps.",
        "The paper fine-tunes 7B–72B LLMs on MetaMath/ARC/HellaSwag pairs and reports the effect qualitatively; "
        "there is no number to match, so the checks test the direction of each claim with 95% CIs over replicates.",
    ]
    data = {
        "config": dataclasses.asdict(config),
        "steps": steps,
        "curves": {
            label: {name: stack_curves(runs, name).tolist() for name in PROBES} for label, runs in curves.items()
        },
    }

    def draw(fig: Any) -> None:
        axes = fig.subplots(1, 2, sharey=True)
        x = torch.tensor(steps, dtype=torch.float64)
        for ax, split, title in ((axes[0], "train", "training pairs"), (axes[1], "eval", "held-out pairs")):
            for label, color in (("DPO", "tab:blue"), ("DPOP", "tab:orange")):
                for side, style in (("chosen", "-"), ("rejected", ":")):
                    values = stack_curves(curves[label], f"{split}_{side}")
                    mean, half = mean_ci(values)
                    ax.plot(x, mean, style, color=color, label=f"{label} ρ_{'w' if side == 'chosen' else 'l'}")
                    ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.15)
            ax.axhline(0, color="k", lw=0.8)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("optimiser step")
        axes[0].set_ylabel("mean log π_θ(y|x) − log π_ref(y|x) (nats)")
        axes[0].legend(fontsize=8)
        fig.suptitle("Likelihood displacement: DPO vs DPOP (Pal et al. 2024); bands: 95% CI over seeds")

    return Outcome(checks, [table], draw, (10.0, 4.2), notes, data)


def make_config(quick: bool, seeds: int | None) -> DisplacementConfig:
    """The full or quick setting; `seeds` replaces the number of replicates (≥ 2)."""
    config = QUICK if quick else CONFIG
    return config if seeds is None else dataclasses.replace(config, seeds=seeds)


REPRODUCTION = Reproduction(
    name="likelihood-displacement",
    title="Likelihood displacement: DPO lowers log π(y_w) on the synthetic task, DPOP keeps it",
    paper=PAPER["source"],
    checks="DPO's chosen log-ratio ends below 0 while its margin grows; DPOP's stays ≥ 0 on its training pairs "
    "and above DPO's on held-out pairs",
    runtime="≈ 7 min (2-core CPU shared with other jobs, load ≈ 5); --quick ≈ 25 s of CPU",
    make_config=make_config,
    run=run,
    seeded=True,
)
