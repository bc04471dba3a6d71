"""The settings of `prefopt compare`: which losses, sweeps and seeds, on which data and model, and the
settings of each run (a `TrainConfig` for an offline loss, an `OnlineConfig` for an online algorithm).

    config = CompareConfig(losses=("dpo", "ipo"), hparams={"dpo": {"beta": [0.05, 0.1, 0.5]}}, seeds=(0, 1))
    config.runs()                       # every (loss, sweep point, seed) as a RunPlan
    run_settings(plan, config, run_dir) # ("paired", TrainConfig fields) or ("rollout", OnlineConfig fields)

Every run is built once when the config is, so a bad shared setting stops the comparison before anything
runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefopt.compare.defaults import (
    COMPARE_EVAL_PROMPTS,
    all_losses,
    check_holdout,
    compare_preferences,
    tiny_task,
    train_defaults,
)
from prefopt.compare.heldout import HOLDOUT_DEFAULT
from prefopt.compare.online_settings import ONLINE_PER_RUN, check_online_settings, online_settings
from prefopt.data.schema import IDENTICAL_POLICIES
from prefopt.data.synthetic import PreferenceConfig, SFTConfig
from prefopt.online.config import OnlineConfig
from prefopt.online.reward_spec import check_reward_columns, reward_folders, reward_parts
from prefopt.preflight import check_engine_backend, check_model_source, check_output_dir, expand_user
from prefopt.registry import loss_spec
from prefopt.settings import Settings, SettingsError, coerce_settings
from prefopt.train.config import TrainConfig

__all__ = [
    "DEFAULT_LOSSES",
    "ONLINE_PER_RUN",
    "CompareConfig",
    "RunPlan",
    "check_online_settings",
    "online_settings",
    "run_settings",
    "tiny_task",
]

# The README's main job: the five losses named in the mission, at their paper defaults.
DEFAULT_LOSSES = ("dpo", "ipo", "kto", "orpo", "simpo")

# TrainConfig fields a run sets itself; the shared `train` overrides may not.
_PER_RUN = ("loss", "loss_hparams", "seed", "output_dir", "data", "model", "model_revision", "resume", "progress")


@dataclass(frozen=True)
class RunPlan:
    """One run: a loss, its explicit hyper-parameters (paper defaults for the rest) and a seed."""

    loss: str
    hparams: tuple[tuple[str, Any], ...]
    seed: int

    @property
    def label(self) -> str:
        """The table row this run belongs to, e.g. `dpo` or `dpo(beta=0.5)`."""
        if not self.hparams:
            return self.loss
        return (
            f"{self.loss}({', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}' for k, v in self.hparams)})"
        )

    @property
    def run_id(self) -> str:
        """A folder name: the label made filesystem-safe, plus the seed."""
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.label).strip("_") + f"-seed{self.seed}"


@dataclass(frozen=True)
class CompareConfig(Settings):
    """Settings of a comparison (keyword arguments; YAML is read only by the CLI).

    Attributes:
        losses: registered policy losses to compare (`prefopt losses`): offline ones, and online ones on
            the synthetic task or with a `reward`; "all": every one (`prefopt.compare.defaults.all_losses`; the
            atlas, docs/atlas.md).
        hparams: per-loss hyper-parameters; a list value is a sweep, e.g. {"dpo": {"beta": [0.05, 0.5]}}.
        seeds: training seeds; several seeds give mean ± CI over seeds and prompts in the table.
        data, model: a preference dataset and a causal LM (path or hub name); None and None = the
            built-in synthetic task (same data and reference policy for every run).
        model_revision: with a hub name for `model`, the branch, tag or commit to load.
        output_dir: results folder; re-running with it resumes.
        train: TrainConfig settings shared by every run (lr, epochs, batch_size, lora_r, ...); on the synthetic
            task each default loss starts from its own lr and epochs (`prefopt.compare.defaults`). Its LoRA settings
            (lora_r, lora_alpha, lora_dropout, lora_targets, quantization) reach the online runs too
            (`prefopt.compare.online_settings`).
        task_seed: seed of the synthetic task (its data and reference policy), fixed across runs.
        eval_prompts, max_new_tokens, eval_seed: generation evaluation on held-out prompts (synthetic task).
        holdout: share of the prompts of your data held out for evaluation when it has no eval split (0: none).
        progress: progress bars.
        num_threads: torch CPU threads while comparing (restored afterwards); None = 1 on the synthetic task
            (its ≈1M-parameter model gains little from more, and on a busy CPU OpenMP spin-waiting made two
            threads 15× slower than one here), torch's default otherwise.
        sft_config, preference_config: sizes of the synthetic task (`SFTConfig`, `PreferenceConfig`;
            None = the defaults; `tiny_task()` gives a seconds-scale task for smoke tests).
        reward: what scores samples: the online algorithms train on it and the generation columns
            (reward, win rates) report it. The folder of a reward model saved by `prefopt train-rm`, or
            Python functions `module:function` (TRL's convention, several comma-separated;
            `prefopt.online.reward_spec`), or "gold". None: the gold reward on the synthetic task, no
            generation columns and no online algorithms on your data.
        reward_weights: one weight per function of `reward` (None: 1 each), TRL's `reward_weights`.
        online: OnlineConfig settings shared by the online runs (steps, prompts_per_step, lr, ...) of the
            online algorithms (ppo, rloo, grpo, dr_grpo, remax, best_of_n, online_dpo).
        bon_n, bon_samples: with `best_of_n` among the losses, the inference-time best-of-N policy at each
            N is added to the table and the frontier, evaluated from `bon_samples` reference samples per
            held-out prompt (`prefopt.online.best_of_n_reference`).
        jobs: runs trained at once, each in a worker process of its own (`prefopt.compare.workers`): up to
            `jobs`× faster on as many free cores; each run's result is the one it gets alone. None: on the
            synthetic task one per core this process may use (its runs use one thread each), 1 on your data. Under
            torchrun / accelerate launch every run trains on all processes, one at a time: None or 1
            (`prefopt.compare.launched`).
        overwrite: what to do with runs in `output_dir` made with other settings (`prefopt.compare.reuse`):
            False refuses, naming them and what differs; True removes those runs and trains them again.
            Runs made with the same settings are loaded (finished) or resumed (interrupted) either way.
    """

    losses: tuple[str, ...] = DEFAULT_LOSSES
    hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    data: str | None = None
    model: str | None = None
    output_dir: str = "runs/compare"
    train: Mapping[str, Any] = field(default_factory=dict)
    task_seed: int = 0
    eval_prompts: int = COMPARE_EVAL_PROMPTS
    holdout: float = HOLDOUT_DEFAULT
    max_new_tokens: int = 64
    eval_seed: int = 1234
    progress: bool = True
    sft_config: Any = None
    preference_config: Any = None
    num_threads: int | None = None
    reward: str | None = None
    reward_weights: tuple[float, ...] | None = None
    online: Mapping[str, Any] = field(default_factory=dict)
    bon_n: tuple[int, ...] = (1, 2, 4, 8, 16)
    bon_samples: int = 64
    model_revision: str | None = None
    overwrite: bool = False
    jobs: int | None = None

    def __post_init__(self) -> None:
        for name in ("data", "model", "reward", "output_dir"):
            object.__setattr__(self, name, expand_user(getattr(self, name)))
        losses = (self.losses,) if isinstance(self.losses, str) else tuple(self.losses)
        if "all" in losses and len(losses) > 1:
            raise SettingsError(f'CompareConfig.losses={list(losses)}: give "all" alone, or name the losses')
        object.__setattr__(self, "losses", all_losses(self.synthetic, self.reward) if losses == ("all",) else losses)
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        self._check_names()
        self._check_losses()
        self._check_hparams()
        self._check_shared_settings()
        self._check_best_of_n()
        self._check_sources()
        self._check_stage_configs()
        self._check_evaluation()
        self._check_runs()

    def _check_names(self) -> None:
        """At least one loss, no loss twice, distinct seeds."""
        if not self.losses:
            raise ValueError("CompareConfig.losses is empty; name at least one loss (see `prefopt losses`)")
        if len(set(self.losses)) != len(self.losses):
            raise ValueError(f"CompareConfig.losses repeats a name: {list(self.losses)}; use hparams sweeps instead")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"CompareConfig.seeds={list(self.seeds)} must be distinct and non-empty")

    def _check_losses(self) -> None:
        """Every loss trains a policy; an online one on your data needs a reward."""
        for name in self.losses:
            spec = loss_spec(name)  # unknown names raise, listing the valid ones
            if spec.scores != "logps":
                raise ValueError(
                    f"compare: {name!r} is a reward-model loss (it scores completions, it does not train "
                    "a policy); train reward models with `prefopt train-rm`"
                )
            if spec.kind == "rollout" and self.reward is None and not (self.data is None and self.model is None):
                raise ValueError(
                    f"compare: {name!r} is an online algorithm and needs a reward for its samples: "
                    "give reward=RM_FOLDER (a reward model saved by `prefopt train-rm`) or "
                    "reward=module:function (a Python function) with your data and model (the synthetic "
                    "task uses its gold reward)"
                )

    def _check_hparams(self) -> None:
        """Sweeps only of compared losses, none empty, every value valid; kept as lists."""
        extra = sorted(set(self.hparams) - set(self.losses))
        if extra:
            raise ValueError(f"CompareConfig.hparams names {extra}, which are not in losses={list(self.losses)}")
        hparams = {}
        for name, settings in self.hparams.items():
            spec = loss_spec(name)
            grid = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in settings.items()}
            for key, values in grid.items():
                if not values:
                    raise ValueError(f"CompareConfig.hparams[{name!r}][{key!r}] is an empty sweep")
                for value in values:
                    spec.validate_hparams({key: value})
            hparams[name] = grid
        object.__setattr__(self, "hparams", hparams)

    def _check_shared_settings(self) -> None:
        """`train` and `online`: settings every run shares, coerced to the trainers' field types."""
        bad = sorted(set(self.train) & set(_PER_RUN))
        unknown = sorted(set(self.train) - {f.name for f in dataclasses.fields(TrainConfig)})
        if bad or unknown:
            raise ValueError(
                f"CompareConfig.train: {bad + unknown} cannot be set there (set per run: {list(_PER_RUN)}; "
                f"valid: TrainConfig fields)"
            )
        object.__setattr__(self, "train", coerce_settings(TrainConfig, self.train, owner="CompareConfig.train"))
        if self.train.get("identical", "warn") not in IDENTICAL_POLICIES:
            raise SettingsError(
                f"CompareConfig.train.identical={self.train['identical']!r}: use one of {IDENTICAL_POLICIES}"
            )
        online = check_online_settings(self.online)
        object.__setattr__(self, "online", coerce_settings(OnlineConfig, online, owner="CompareConfig.online"))

    def _check_best_of_n(self) -> None:
        object.__setattr__(self, "bon_n", tuple(int(n) for n in self.bon_n))
        if self.bon_samples < 4:
            raise SettingsError(
                f"CompareConfig.bon_samples={self.bon_samples} must be ≥ 4 (best-of-N draws N ≤ "
                "bon_samples/4 of them per prompt)"
            )
        if not self.bon_n or min(self.bon_n) < 1 or max(self.bon_n) > self.bon_samples // 4:
            raise ValueError(
                f"CompareConfig.bon_n={list(self.bon_n)} must be integers in [1, bon_samples/4 = "
                f"{self.bon_samples // 4}] (the measured best-of-N KL needs M ≫ N samples per prompt)"
            )

    def _check_sources(self) -> None:
        """Data and model together (or neither); a reward of reward-model folders and importable functions."""
        if (self.data is None) != (self.model is None):
            raise ValueError("CompareConfig: give both data and model, or neither (the built-in synthetic task)")
        if self.reward_weights is not None:
            object.__setattr__(self, "reward_weights", tuple(self.reward_weights))
            if self.reward is None:
                raise SettingsError("CompareConfig.reward_weights weigh the functions of reward, which is not set")
        if self.reward is not None:
            reward_parts(self.reward, "CompareConfig.reward", self.reward_weights)
            if self.synthetic:  # your data's columns are checked when it is read (`compare.task.check_user_data`)
                check_reward_columns(self.reward, (), "CompareConfig.reward", "the synthetic task's prompts")

    def _check_stage_configs(self) -> None:
        """The SFT and preference stages' configs, from YAML mappings or given as objects."""
        if self.synthetic:  # the comparison's own sizes (`prefopt.compare.defaults`) under a partial mapping
            object.__setattr__(self, "preference_config", compare_preferences(self.preference_config))
        for name, cls in (("sft_config", SFTConfig), ("preference_config", PreferenceConfig)):
            value = getattr(self, name)
            if isinstance(value, Mapping):  # from YAML
                object.__setattr__(self, name, cls(**coerce_settings(cls, value, owner=f"CompareConfig.{name}")))
            elif value is not None and not isinstance(value, cls):
                raise ValueError(f"CompareConfig.{name} must be a {cls.__name__} or a mapping of its fields")

    def _check_evaluation(self) -> None:
        """Evaluation counts ≥ 1, and a model revision only with a model."""
        for name in ("eval_prompts", "max_new_tokens", "jobs"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"CompareConfig.{name} must be ≥ 1")
        check_holdout(self.holdout)
        if self.model_revision is not None and self.model is None:
            raise SettingsError(
                f"CompareConfig.model_revision={self.model_revision!r} pins a hub revision of model, "
                "which is not set; give model (and data) or drop model_revision"
            )

    def _check_runs(self) -> None:
        """Build every run's TrainConfig / OnlineConfig now: a bad shared setting (`train`, `online`, a sweep
        value) stops the comparison before the task is built, not at the run that first uses it."""
        if not any(loss_spec(name).kind == "rollout" for name in self.losses):
            try:  # no online run uses them, but a mistake in them is still a mistake
                OnlineConfig(**{"max_new_tokens": self.max_new_tokens, **self.online})
            except (TypeError, ValueError) as err:
                raise SettingsError(f"CompareConfig.online: {err}") from None
        for plan in self.runs():
            kind, settings = run_settings(plan, self, Path(self.output_dir) / plan.run_id)
            if kind == "rollout" and not self.synthetic:
                settings["model"] = self.model  # passed beside the settings when the run starts
            try:
                OnlineConfig(**settings) if kind == "rollout" else TrainConfig(**settings)
            except (TypeError, ValueError) as err:
                raise SettingsError(f"run {plan.label} seed {plan.seed}: {err}") from None

    def preflight(self) -> None:
        """What the comparison needs from this machine before anything is built: an output folder it can
        create, a complete model folder (or reachable hub name), engine backends that run here.

        Raises:
            SettingsError: naming the setting and the fix.
        """
        check_output_dir(self.output_dir, "CompareConfig.output_dir (--out)")
        if self.model is not None:
            check_model_source(self.model, "CompareConfig.model", revision=self.model_revision)
        for folder in reward_folders(self.reward or "gold"):
            check_model_source(folder, "CompareConfig.reward", tokenizer=False)
        for owner, settings in (("train", self.train), ("online", self.online)):
            check_engine_backend(
                settings.get("engine_backend", "auto"),
                f"CompareConfig.{owner}.engine_backend",
                cpu=bool(settings.get("cpu", False)),
            )

    @property
    def workers(self) -> int:
        """`jobs` resolved: the runs trained at once (never more than there are runs)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        jobs = self.jobs if self.jobs is not None else (cores if self.synthetic else 1)
        return max(1, min(jobs, len(self.runs())))

    @property
    def synthetic(self) -> bool:
        return self.data is None and self.model is None

    @property
    def reward_label(self) -> str:
        """What scored the samples, as the report names it: the gold reward, a reward model, or the functions."""
        if self.reward is None:
            return "gold reward"
        return "reward (reward model)" if reward_folders(self.reward) == [self.reward] else f"reward ({self.reward})"

    def runs(self) -> list[RunPlan]:
        """Every (loss, sweep point, seed), in the order of `losses`, then sweep, then seed."""
        plans = []
        for name in self.losses:
            grid = self.hparams.get(name, {})
            keys = sorted(grid)
            for values in itertools.product(*(grid[k] for k in keys)):
                for seed in self.seeds:
                    plans.append(RunPlan(name, tuple(zip(keys, values)), seed))
        return plans


def run_settings(plan: RunPlan, config: CompareConfig, run_dir: Path) -> tuple[str, dict[str, Any]]:
    """(the loss's data kind, the settings of its run): `OnlineConfig` fields for an online algorithm
    (the model object, reward and prompts are passed beside them), `TrainConfig` fields otherwise."""
    kind = loss_spec(plan.loss).kind
    if kind == "rollout":
        settings = online_settings(plan, config, run_dir)
        if not config.synthetic and config.model_revision is not None:
            settings["model_revision"] = config.model_revision
        return kind, settings
    shared_cache = str(Path(config.output_dir) / "ref_cache")  # reference log-probs are shared by same-kind runs
    settings = {
        "checkpoint_every": 50,
        "ref_cache_dir": shared_cache,
        **train_defaults(plan.loss, config),
        **config.train,
        "loss": plan.loss,
        "loss_hparams": dict(plan.hparams),
        "seed": plan.seed,
        "output_dir": str(run_dir / "train"),
        "resume": True,
        "progress": config.progress,
    }
    if not config.synthetic:
        settings.update(model=config.model, data=config.data)
        if config.model_revision is not None:
            settings["model_revision"] = config.model_revision
    return kind, settings
