"""Training runs on the built-in synthetic task for reproductions: one loss, one seed, probed over steps.

A replicate r of a reproduction keeps the reference policy π_ref fixed (trained once from `task_seed`)
and draws its own preference data from π_ref with seed r, then trains a fresh copy of π_ref on it with
`prefopt.train.train` (training seed r). Every `probe_every` optimiser steps, and once before the first,
a probe measures the policy in place (the trainer updates the very module it is given), so a curve over
steps costs no checkpoints:

    probe(policy) -> {"name": value, ...}        e.g. mean log π_θ(y_w|x) − log π_ref(y_w|x) on fixed pairs,
                                                  or the mean length of samples on held-out prompts

Heavy modules (transformers, datasets, the trainer) are imported inside the functions, so importing a
reproduction stays cheap. The trainer's run folder is a temporary directory removed afterwards.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from prefopt.data import PreferenceCollator, TokenizeConfig, load_preferences, synthetic, tokenize_preferences
from prefopt.data.synthetic import build_preferences, sample
from prefopt.engine import LogProbEngine
from prefopt.engine.reference import eval_mode
from prefopt.progress import library_progress_bars
from prefopt.train import train

__all__ = [
    "Arm",
    "Curve",
    "TrainSchedule",
    "pair_batches",
    "pair_logps",
    "preferences_for",
    "reference_policy_for",
    "run_arms",
    "sample_completions",
    "stack_curves",
    "stack_final",
    "train_with_probes",
    "word_counts",
]

Probe = Callable[[Any], Mapping[str, float]]


@dataclass(frozen=True)
class Arm:
    """One loss setting of an experiment: a label for tables and figures, the loss name and its hyper-parameters."""

    label: str
    loss: str
    hparams: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class TrainSchedule:
    """Optimiser settings shared by every loss of a reproduction (AdamW, constant lr, clip 1.0: the trainer's
    `synthetic` preset) and how often the probe runs.

    Attributes:
        steps: optimiser steps per run; batch_size: pairs per step; lr: peak learning rate;
        probe_every: probe the policy every this many steps (and at step 0).
    """

    steps: int
    batch_size: int = 16
    lr: float = 1e-4
    probe_every: int = 10

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "probe_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainSchedule.{name}={value!r} must be an integer ≥ 1")
        if not self.lr > 0:
            raise ValueError(f"TrainSchedule.lr={self.lr!r} must be > 0")


@dataclass
class Curve:
    """Probe values over optimiser steps of one run.

    Attributes:
        steps: [R] the steps probed (0 = before training).
        values: name → [R] probe values.
        final_metrics: the trainer's last record (loss, rewards/…, logps/…).
    """

    steps: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)

    def record(self, step: int, measured: Mapping[str, float]) -> None:
        """Append one probe's values at `step`."""
        self.steps.append(step)
        for key, value in measured.items():
            self.values.setdefault(key, []).append(float(value))

    def tensor(self, name: str) -> Tensor:
        """[R] float64 values of probe `name`."""
        if name not in self.values:
            raise KeyError(f"Curve has no probe value {name!r}; it has {sorted(self.values)}")
        return torch.tensor(self.values[name], dtype=torch.float64)


def reference_policy_for(task_seed: int, sft_config: Any) -> Any:
    """The synthetic task's reference policy for `task_seed` (`ReferencePolicy`; trained once, then cached)."""

    return synthetic.reference_policy(task_seed, sft_config, progress=False)


def preferences_for(policy: Any, seed: int, config: Any) -> Any:
    """Preference data (`SyntheticPreferences`) sampled from `policy` (a `ReferencePolicy`) with `seed`."""
    return build_preferences(policy.model, policy.tokenizer, seed=seed, config=config, num_threads=None)


def pair_batches(rows: Sequence[Mapping[str, Any]], tokenizer: Any, batch_size: int = 64) -> list[Any]:
    """Paired rows (prompt/chosen/rejected dicts) tokenised and collated into padded `TokenBatch`es."""
    import datasets  # heavy: loaded on first use

    if not rows:
        raise ValueError("pair_batches: no rows; the preference config must give this split at least one pair")
    canonical = load_preferences(datasets.Dataset.from_list(list(rows)), kind="paired")
    tokens = tokenize_preferences(canonical, tokenizer, TokenizeConfig())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = PreferenceCollator(int(pad))
    items = [tokens[i] for i in range(len(tokens))]
    return [collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


@torch.no_grad()
def pair_logps(model: Any, batches: Sequence[Any]) -> Tensor:
    """[N, 2] summed completion log-probs log π(y|x) of (chosen, rejected) for every pair in `batches`.

    The model is put in eval mode for the pass and restored to its previous mode afterwards.
    """
    engine = LogProbEngine(model, backend="reference")
    with eval_mode(model):
        return torch.cat([engine(batch).grouped().float() for batch in batches])


@torch.no_grad()
def sample_completions(
    model: Any, tokenizer: Any, prompts: Sequence[str], *, seed: int, max_new_tokens: int
) -> list[str]:
    """One completion per prompt sampled from `model` at temperature 1 with a fixed seed (eval mode for the pass)."""
    with eval_mode(model):
        drawn = sample(
            model,
            tokenizer,
            list(prompts),
            generator=torch.Generator().manual_seed(seed),
            max_new_tokens=max_new_tokens,
        )
    return drawn.completions


def word_counts(completions: Sequence[str]) -> Tensor:
    """[n] float64 words per completion. Words, not tokens: the synthetic tokenizer has one token per word,
    and the labeller's length bias (`PreferenceConfig.length_bias`) is per word."""
    return torch.tensor([len(c.split()) for c in completions], dtype=torch.float64)


def train_with_probes(
    reference: Any,
    dataset: Any,
    *,
    loss: str,
    hparams: Mapping[str, Any],
    seed: int,
    schedule: TrainSchedule,
    probe: Probe,
) -> Curve:
    """Train a copy of `reference.model` with `loss` on `dataset` and probe it every `schedule.probe_every` steps.

    Args:
        reference: the `ReferencePolicy` (model and tokenizer); its model is π_ref and is not modified.
        dataset: paired training rows (`datasets.Dataset` of prompt/chosen/rejected).
        loss, hparams: a registered paired loss and its hyper-parameters.
        seed: the training seed (data order).
        schedule: steps, batch size, learning rate, probe interval.
        probe: `probe(policy) -> {name: value}`, run at step 0 and every `probe_every` steps and at the end.
    Returns:
        The `Curve` of probe values and the trainer's final metrics.
    """
    policy = copy.deepcopy(reference.model).train().requires_grad_(True)
    curve = Curve()
    curve.record(0, probe(policy))

    def on_step(step: int, record: dict[str, float]) -> None:
        if step % schedule.probe_every == 0 or step == schedule.steps:
            curve.record(step, probe(policy))

    with tempfile.TemporaryDirectory(prefix="prefopt-reproduce-") as out, warnings.catch_warnings():
        # Pair counts vary by replicate (pairs of two identical samples are dropped), so the trainer warns that a
        # few pairs per epoch do not fill a batch; the runs train on reshuffled epochs either way.
        warnings.filterwarnings("ignore", message=r".* left out of each epoch", category=UserWarning)
        result = train(
            model=policy,
            tokenizer=reference.tokenizer,
            dataset=dataset,
            loss=loss,
            loss_hparams=dict(hparams),
            seed=seed,
            max_steps=schedule.steps,
            batch_size=schedule.batch_size,
            lr=schedule.lr,
            output_dir=out,
            progress=False,
            engine_backend="reference",
            on_step=on_step,
        )
    curve.final_metrics = dict(result.final_metrics)
    return curve


def run_arms(
    reference: Any,
    arms: Sequence[Arm],
    seeds: int,
    schedule: TrainSchedule,
    replicate: Callable[[int], tuple[Any, Probe]],
    progress: Callable[[int, int, str], None],
) -> dict[str, list[Curve]]:
    """Train every arm on every replicate's data: label → [seeds] curves.

    Args:
        reference: the `ReferencePolicy` every run starts from.
        arms: the loss settings compared.
        seeds: replicates r = 0..seeds−1; replicate r draws its data and probe with `replicate(r)` and trains
            every arm with training seed r, so arms are paired by replicate.
        replicate: r → (paired training dataset, probe).
        progress: `progress(done, total, stage)`.
    """
    curves: dict[str, list[Curve]] = {arm.label: [] for arm in arms}
    total, done = seeds * len(arms), 0
    with library_progress_bars(False):  # the reproduction reports its own progress
        for r in range(seeds):
            dataset, probe = replicate(r)
            for arm in arms:
                progress(done, total, f"{arm.label}, seed {r}")
                curves[arm.label].append(
                    train_with_probes(
                        reference,
                        dataset,
                        loss=arm.loss,
                        hparams=dict(arm.hparams),
                        seed=r,
                        schedule=schedule,
                        probe=probe,
                    )
                )
                done += 1
    progress(total, total, "done")
    return curves


def stack_curves(curves: Sequence[Curve], name: str) -> Tensor:
    """[seeds, R] float64 values of probe `name` over the probed steps of each replicate's run."""
    return torch.stack([c.tensor(name) for c in curves])


def stack_final(curves: Sequence[Curve], name: str) -> Tensor:
    """[seeds] float64 final value of probe `name` of each replicate's run."""
    return stack_curves(curves, name)[:, -1]
