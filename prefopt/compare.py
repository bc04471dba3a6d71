"""`prefopt compare`: train several losses on the same data, model and seeds, evaluate each, report side by side.

    from prefopt.compare import CompareConfig, compare
    result = compare(CompareConfig(losses=("dpo", "ipo"), hparams={"dpo": {"beta": [0.05, 0.1, 0.5]}},
                                   seeds=(0, 1), output_dir="runs/compare"))
    print(result.table_text)

Every run is one `prefopt.train.train` call (one loop for every offline loss) followed by the same
evaluation: held-out preference metrics on the eval split, and, on the built-in synthetic task,
generation metrics against the gold reward (reward, exact KL, win rate and length-controlled win rate
versus the reference policy, length). Each finished run writes `<out>/<run_id>/result.json` atomically
beside its exact config; re-running with the same output folder loads finished runs instead of redoing
them and resumes interrupted ones from their last checkpoint. The report (table.md/csv/json, plots) is
written by `prefopt.compare_report`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefopt.atomic import write_json_atomic
from prefopt.cli_settings import parse_sweeps
from prefopt.compare_online import online_settings
from prefopt.registry import loss_spec

__all__ = ["DEFAULT_LOSSES", "CompareConfig", "RunPlan", "CompareResult", "compare", "parse_sweeps", "tiny_task"]

# The README's main job: the five losses named in the mission, at their paper defaults.
DEFAULT_LOSSES = ("dpo", "ipo", "kto", "orpo", "simpo")
# TrainConfig fields a run sets itself; the shared `train` overrides may not.
_PER_RUN = ("loss", "loss_hparams", "seed", "output_dir", "data", "model", "resume", "progress")


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
        return f"{self.loss}({', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}' for k, v in self.hparams)})"

    @property
    def run_id(self) -> str:
        """A folder name: the label made filesystem-safe, plus the seed."""
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.label).strip("_") + f"-seed{self.seed}"


@dataclass(frozen=True)
class CompareConfig:
    """Settings of a comparison (keyword arguments; YAML is read only by the CLI).

    Attributes:
        losses: registered policy losses to compare (`prefopt losses`): offline ones, and online ones on
            the synthetic task.
        hparams: per-loss hyper-parameters; a list value is a sweep, e.g. {"dpo": {"beta": [0.05, 0.5]}}.
        seeds: training seeds; several seeds give mean ± CI (Student's t over seeds) in the table.
        data, model: a preference dataset and a causal LM (path or hub name); None and None = the
            built-in synthetic task (same data and reference policy for every run).
        output_dir: results folder; re-running with it resumes.
        train: TrainConfig settings shared by every run (lr, epochs, batch_size, lora_r, ...).
        task_seed: seed of the synthetic task (its data and reference policy), fixed across runs.
        eval_prompts, max_new_tokens, eval_seed: generation evaluation on held-out prompts (synthetic task).
        progress: progress bars.
        num_threads: torch CPU threads while comparing (restored afterwards); None = 1 on the synthetic task
            (its ≈1M-parameter model gains little from more, and on a busy CPU OpenMP spin-waiting made two
            threads 15× slower than one here), torch's default otherwise.
        sft_config, preference_config: sizes of the synthetic task (`SFTConfig`, `PreferenceConfig`;
            None = the defaults; `tiny_task()` gives a seconds-scale task for smoke tests).
        reward: with data and model, the folder of a reward model saved by `prefopt train-rm`: it scores
            samples, which enables the online algorithms and the generation columns on your data (the
            synthetic task uses its gold reward).
        online: OnlineConfig settings shared by the online runs (steps, prompts_per_step, lr, ...) of the
            online algorithms (ppo, rloo, grpo, dr_grpo, remax, best_of_n, online_dpo).
        bon_n, bon_samples: with `best_of_n` among the losses, the inference-time best-of-N policy at each
            N is added to the table and the frontier, evaluated from `bon_samples` reference samples per
            held-out prompt (`prefopt.eval.best_of_n`).
    """

    losses: tuple[str, ...] = DEFAULT_LOSSES
    hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    data: str | None = None
    model: str | None = None
    output_dir: str = "runs/compare"
    train: Mapping[str, Any] = field(default_factory=dict)
    task_seed: int = 0
    eval_prompts: int = 128
    max_new_tokens: int = 64
    eval_seed: int = 1234
    progress: bool = True
    sft_config: Any = None
    preference_config: Any = None
    num_threads: int | None = None
    reward: str | None = None
    online: Mapping[str, Any] = field(default_factory=dict)
    bon_n: tuple[int, ...] = (1, 2, 4, 8, 16)
    bon_samples: int = 64

    def __post_init__(self) -> None:
        from prefopt.train.config import TrainConfig

        object.__setattr__(self, "losses", tuple(self.losses))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.losses:
            raise ValueError("CompareConfig.losses is empty; name at least one loss (see `prefopt losses`)")
        if len(set(self.losses)) != len(self.losses):
            raise ValueError(f"CompareConfig.losses repeats a name: {list(self.losses)}; use hparams sweeps instead")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"CompareConfig.seeds={list(self.seeds)} must be distinct and non-empty")
        for name in self.losses:
            spec = loss_spec(name)  # unknown names raise, listing the valid ones
            if spec.scores != "logps":
                raise ValueError(f"compare: {name!r} is a reward-model loss (it scores completions, it does not train "
                                 "a policy); train reward models with `prefopt train-rm`")
            if spec.kind == "rollout" and self.reward is None and not (self.data is None and self.model is None):
                raise ValueError(f"compare: {name!r} is an online algorithm and needs a reward for its samples: "
                                 "give reward=RM_FOLDER (a reward model saved by `prefopt train-rm`) with your "
                                 "data and model (the synthetic task uses its gold reward)")
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
        bad = sorted(set(self.train) & set(_PER_RUN))
        unknown = sorted(set(self.train) - {f.name for f in dataclasses.fields(TrainConfig)})
        if bad or unknown:
            raise ValueError(f"CompareConfig.train: {bad + unknown} cannot be set there (set per run: {list(_PER_RUN)}; "
                             f"valid: TrainConfig fields)")
        object.__setattr__(self, "train", dict(self.train))
        from prefopt.compare_online import check_online_settings

        object.__setattr__(self, "online", check_online_settings(self.online))
        object.__setattr__(self, "bon_n", tuple(int(n) for n in self.bon_n))
        if not self.bon_n or min(self.bon_n) < 1 or max(self.bon_n) > self.bon_samples // 4:
            raise ValueError(f"CompareConfig.bon_n={list(self.bon_n)} must be integers in [1, bon_samples/4 = "
                             f"{self.bon_samples // 4}] (the measured best-of-N KL needs M ≫ N samples per prompt)")
        if (self.data is None) != (self.model is None):
            raise ValueError("CompareConfig: give both data and model, or neither (the built-in synthetic task)")
        if self.reward is not None:
            if self.data is None:
                raise ValueError("CompareConfig.reward scores samples on your data; the synthetic task uses its gold "
                                 "reward (drop reward, or give data and model)")
            if not Path(self.reward).is_dir():
                raise ValueError(f"CompareConfig.reward={self.reward!r}: no such folder; give the final/ folder of "
                                 "a reward model saved by `prefopt train-rm`")
        from prefopt.data.synthetic import PreferenceConfig, SFTConfig

        for name, cls in (("sft_config", SFTConfig), ("preference_config", PreferenceConfig)):
            value = getattr(self, name)
            if isinstance(value, Mapping):  # from YAML
                object.__setattr__(self, name, cls(**value))
            elif value is not None and not isinstance(value, cls):
                raise ValueError(f"CompareConfig.{name} must be a {cls.__name__} or a mapping of its fields")
        for name in ("eval_prompts", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"CompareConfig.{name} must be ≥ 1")

    @property
    def synthetic(self) -> bool:
        return self.data is None and self.model is None

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

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hparams"] = {k: dict(v) for k, v in self.hparams.items()}
        return out


@dataclass
class CompareResult:
    """Per-run records, the aggregated rows and the written files of one comparison."""

    records: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    ratings: dict[str, Any] | None
    files: dict[str, str]
    table_text: str


class _Task:
    """What every run shares: the model to start from, its tokenizer, the data and the evaluation set."""

    def __init__(self, config: CompareConfig) -> None:
        self.config = config
        self.synthetic = None
        if config.synthetic:
            from prefopt.data.synthetic import synthetic_task

            self.synthetic = synthetic_task(seed=config.task_seed, sft_config=config.sft_config,
                                            preference_config=config.preference_config, progress=config.progress)
            self.model, self.tokenizer = self.synthetic.policy.model, self.synthetic.policy.tokenizer
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.model = AutoModelForCausalLM.from_pretrained(config.model)
            self.tokenizer = AutoTokenizer.from_pretrained(config.model)
        self.model.eval()
        self._prompts: dict[str, list[str]] = {}
        self.reward: Any = self.synthetic.reward if self.synthetic is not None else None
        if config.reward is not None:
            from prefopt.online.rewards import as_reward_function

            self.reward = as_reward_function(config.reward)

    def prompts(self, split: str) -> list[str]:
        """Distinct prompts of the train split (online runs sample them) or the held-out ones (evaluation:
        the synthetic task's held-out prompts, or your data's eval split), as text."""
        from prefopt.compare_online import data_prompts

        if self.synthetic is not None:
            if split == "train":
                return [group.prompt for group in self.synthetic.preferences.groups if group.split == "train"]
            return list(self.synthetic.preferences.heldout_prompts)
        if split not in self._prompts:  # read and rendered once, not once per run
            self._prompts[split] = data_prompts(self.config.data, split, self.tokenizer)
        return list(self._prompts[split])

    def train_dataset(self, kind: str) -> Any:
        return self.synthetic.preferences.dataset(kind) if self.synthetic is not None else None

    def eval_rows(self) -> Any:
        """Held-out paired rows (preference metrics are computed on pairs for every loss), or None."""
        from prefopt.data import PreferenceDataError, load_preferences

        if self.synthetic is not None:
            return load_preferences(self.synthetic.preferences.dataset("paired", "eval"), kind="paired")
        for split in ("eval", "test", "validation"):
            try:
                return load_preferences(self.config.data, kind="paired", split=split)
            except PreferenceDataError:
                raise  # the split exists but has bad rows: say so rather than skip it
            except (ValueError, KeyError) as err:
                if "split" not in str(err):
                    raise
        return None  # no held-out split: the table has no held-out preference metrics


def _eval_batches(task: _Task, rows: Any, batch_size: int = 32) -> list[Any]:
    from prefopt.data import PreferenceCollator, TokenizeConfig, tokenize_preferences

    tokens = tokenize_preferences(rows, task.tokenizer, TokenizeConfig())
    pad = task.tokenizer.pad_token_id if task.tokenizer.pad_token_id is not None else task.tokenizer.eos_token_id
    collate = PreferenceCollator(int(pad))
    items = [tokens[i] for i in range(len(tokens))]
    return [collate(items[i: i + batch_size]) for i in range(0, len(items), batch_size)]


def _evaluate(plan: RunPlan, policy: Any, task: _Task, eval_batches: list[Any]) -> dict[str, Any]:
    from prefopt.engine import ReferenceLogProbs
    from prefopt.eval import evaluate_generations, evaluate_preferences

    out: dict[str, Any] = {}
    if eval_batches:
        # β = 1: margins in nats of log-ratio, comparable across losses whatever their own β.
        pref = evaluate_preferences(policy, eval_batches, reference=ReferenceLogProbs.from_model(task.model), beta=1.0)
        out["preference"] = pref.to_dict()
    if task.reward is not None:
        from prefopt.eval.sampling import sample_texts

        cfg = task.config
        prompts = task.prompts("heldout")[: cfg.eval_prompts]
        gen = evaluate_generations(policy, task.model, task.tokenizer, prompts, reward=task.reward,
                                   seed=cfg.eval_seed, max_new_tokens=cfg.max_new_tokens,
                                   sampler=None if task.synthetic is not None else sample_texts)
        out["generation"] = gen.to_dict(per_prompt=True)
    return out


def _load_trained(path: Path) -> Any:
    """The trained policy from its saved folder: a full model, or a LoRA adapter merged into its base."""
    if (path / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(str(path)).merge_and_unload().eval()
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def _run_one(plan: RunPlan, task: _Task, eval_batches: list[Any]) -> dict[str, Any]:
    """Train and evaluate one run, or load it if its result.json exists (resuming an interrupted train)."""
    from prefopt.train import train

    config = task.config
    run_dir = Path(config.output_dir) / plan.run_id
    done = run_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text(encoding="utf-8"))
    run_dir.mkdir(parents=True, exist_ok=True)
    kind = loss_spec(plan.loss).kind
    if kind == "rollout":
        settings = online_settings(plan, config, run_dir)
    else:
        shared_cache = str(Path(config.output_dir) / "ref_cache")  # reference log-probs are shared by same-kind runs
        settings = {"checkpoint_every": 50, "ref_cache_dir": shared_cache, **config.train, "loss": plan.loss,
                    "loss_hparams": dict(plan.hparams), "seed": plan.seed, "output_dir": str(run_dir / "train"),
                    "resume": True, "progress": config.progress}
    write_json_atomic(run_dir / "config.json", {"plan": dataclasses.asdict(plan), "label": plan.label,
                                                ("online" if kind == "rollout" else "train"): settings,
                                                "compare": config.to_dict()})
    started = time.perf_counter()
    if kind == "rollout":
        from prefopt.compare_online import train_online_run

        result = train_online_run(task, settings)
    elif task.synthetic is not None:
        result = train(model=copy.deepcopy(task.model).train().requires_grad_(True), tokenizer=task.tokenizer,
                       dataset=task.train_dataset(kind), **settings)
    else:
        result = train(model=config.model, dataset=config.data, **settings)
    policy = _load_trained(Path(str(result.model_path)))
    record = {"label": plan.label, "loss": plan.loss, "hparams": dict(plan.hparams), "seed": plan.seed,
              "run_id": plan.run_id, "train": result.to_dict(), **_evaluate(plan, policy, task, eval_batches)}
    record["wall_time_s"] = time.perf_counter() - started
    write_json_atomic(done, record)
    return record


def tiny_task() -> dict[str, Any]:
    """CompareConfig settings of a seconds-scale synthetic task (a ≈110k-parameter policy, 64 train prompts):
    for smoke tests and CI, not for conclusions."""
    from prefopt.data.synthetic import PreferenceConfig, SFTConfig

    return {"sft_config": SFTConfig.tiny(),
            "preference_config": PreferenceConfig(train_prompts=64, eval_prompts=16, heldout_prompts=16),
            "eval_prompts": 16, "max_new_tokens": 32}


def compare(config: CompareConfig | None = None, **settings: Any) -> CompareResult:
    """Run (or resume) every run of `config` and write the report; see the module docstring.

    Pass a `CompareConfig`, or its fields as keyword arguments.
    """
    from prefopt.data.synthetic.sampling import torch_threads
    from prefopt.progress import library_progress_bars

    config = config if config is not None else CompareConfig(**settings)
    with torch_threads(config.num_threads or (1 if config.synthetic else None)), \
            library_progress_bars(config.progress):
        return _compare(config)


def _compare(config: CompareConfig) -> CompareResult:
    from prefopt.compare_report import write_report

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "compare_config.json", config.to_dict())
    task = _Task(config)
    rows = task.eval_rows()
    eval_batches = _eval_batches(task, rows) if rows is not None and len(rows) else []
    plans = config.runs()
    records = []
    for i, plan in enumerate(plans, start=1):
        if config.progress:
            print(f"[{i}/{len(plans)}] {plan.label} seed {plan.seed}", flush=True)
        records.append(_run_one(plan, task, eval_batches))
    best_of_n = None
    if "best_of_n" in config.losses and task.reward is not None:
        from prefopt.compare_online import best_of_n_reference

        best_of_n = best_of_n_reference(task, out / "best_of_n.json")
    return write_report(records, config, best_of_n=best_of_n)
