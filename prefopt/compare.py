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
from prefopt.compare_online import online_settings
from prefopt.online.config import OnlineConfig
from prefopt.preflight import check_engine_backend, check_model_source, check_output_dir, expand_user, load_pretrained
from prefopt.data.schema import IDENTICAL_POLICIES
from prefopt.registry import loss_spec
from prefopt.settings import SettingsError, coerce_settings, config_from_dict
from prefopt.train.config import TrainConfig
from prefopt.train.run_folder import claim_run_folder

__all__ = ["DEFAULT_LOSSES", "CompareConfig", "RunPlan", "CompareResult", "compare", "run_settings", "tiny_task"]

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
        model_revision: with a hub name for `model`, the branch, tag or commit to load.
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
    model_revision: str | None = None

    def __post_init__(self) -> None:
        for name in ("data", "model", "reward", "output_dir"):
            object.__setattr__(self, name, expand_user(getattr(self, name)))
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
        object.__setattr__(self, "train", coerce_settings(TrainConfig, self.train, owner="CompareConfig.train"))
        if self.train.get("identical", "warn") not in IDENTICAL_POLICIES:
            raise SettingsError(f"CompareConfig.train.identical={self.train['identical']!r}: use one of "
                                f"{IDENTICAL_POLICIES}")
        from prefopt.compare_online import check_online_settings

        online = check_online_settings(self.online)
        object.__setattr__(self, "online", coerce_settings(OnlineConfig, online, owner="CompareConfig.online"))
        object.__setattr__(self, "bon_n", tuple(int(n) for n in self.bon_n))
        if self.bon_samples < 4:
            raise SettingsError(f"CompareConfig.bon_samples={self.bon_samples} must be ≥ 4 (best-of-N draws N ≤ "
                                "bon_samples/4 of them per prompt)")
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
                object.__setattr__(self, name, cls(**coerce_settings(cls, value, owner=f"CompareConfig.{name}")))
            elif value is not None and not isinstance(value, cls):
                raise ValueError(f"CompareConfig.{name} must be a {cls.__name__} or a mapping of its fields")
        for name in ("eval_prompts", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"CompareConfig.{name} must be ≥ 1")
        if self.model_revision is not None and self.model is None:
            raise SettingsError(f"CompareConfig.model_revision={self.model_revision!r} pins a hub revision of model, "
                                "which is not set; give model (and data) or drop model_revision")
        self._check_runs()

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

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str | None = None) -> "CompareConfig":
        """Build from a mapping (e.g. parsed YAML from `source`): each value read as its field's type
        (`prefopt.settings`); unknown keys and wrong types raise a `SettingsError` naming the field."""
        return config_from_dict(cls, values, source=source)

    def preflight(self) -> None:
        """What the comparison needs from this machine before anything is built: an output folder it can
        create, a complete model folder (or reachable hub name), engine backends that run here.

        Raises:
            SettingsError: naming the setting and the fix.
        """
        check_output_dir(self.output_dir, "CompareConfig.output_dir (--out)")
        if self.model is not None:
            check_model_source(self.model, "CompareConfig.model", revision=self.model_revision)
        for owner, settings in (("train", self.train), ("online", self.online)):
            check_engine_backend(settings.get("engine_backend", "auto"), f"CompareConfig.{owner}.engine_backend",
                                 cpu=bool(settings.get("cpu", False)))

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

            self.model = load_pretrained(AutoModelForCausalLM, config.model, "CompareConfig.model",
                                         revision=config.model_revision)
            self.tokenizer = load_pretrained(AutoTokenizer, config.model, "CompareConfig.model (its tokenizer)",
                                             revision=config.model_revision)
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
            self._prompts[split] = data_prompts(self.config.data, split, self.tokenizer,
                                                revision=self.config.train.get("data_revision"))
        return list(self._prompts[split])

    def train_dataset(self, kind: str) -> Any:
        return self.synthetic.preferences.dataset(kind) if self.synthetic is not None else None

    def eval_rows(self) -> Any:
        """Held-out paired rows (preference metrics are computed on pairs for every loss), or None."""
        from prefopt.data import load_preferences

        if self.synthetic is not None:
            return load_preferences(self.synthetic.preferences.dataset("paired", "eval"), kind="paired")
        return _user_eval_rows(self.config)


def _user_eval_rows(config: CompareConfig) -> Any:
    """The held-out paired rows of `config.data` (its eval, test or validation split), or None."""
    from prefopt.data import load_preferences
    from prefopt.data.validate import MissingSplitError

    train = config.train
    for split in ("eval", "test", "validation"):
        try:  # bad rows in a split that exists raise: say so rather than skip it
            return load_preferences(config.data, kind="paired", split=split,
                                    revision=train.get("data_revision"), identical=train.get("identical", "warn"))
        except MissingSplitError:
            continue
    return None  # no held-out split: the table has no held-out preference metrics


def _check_user_data(config: CompareConfig) -> dict[str, Any]:
    """Read and check `config.data` the way the runs will (the train split for each data kind of the losses,
    the prompts of online ones, the held-out split) before the output folder is created or locked, so that bad
    data stops the comparison with nothing written. Returns {"eval_rows": ...} ({} on the synthetic task); the
    files read from a folder are logged (`prefopt.data.loading.log_folder_reads`)."""
    if config.synthetic:
        return {}
    from prefopt.data import load_preferences
    from prefopt.data.loading import log_folder_reads, record_folder_reads
    from prefopt.train.data import load_train_rows

    train = config.train
    kinds: dict[str, str] = {}  # each data kind of the losses → the first loss of that kind
    for name in config.losses:
        kinds.setdefault(loss_spec(name).kind, name)
    with record_folder_reads() as reads:
        for kind, name in kinds.items():
            if kind == "rollout":
                load_preferences(config.data, kind="prompt", split="train", revision=train.get("data_revision"))
            else:
                load_train_rows(config.data, kind=kind, loss=name, split=train.get("data_split"),
                                revision=train.get("data_revision"), identical=train.get("identical", "warn"))
        checked = {"eval_rows": _user_eval_rows(config)}
    log_folder_reads(reads)
    return checked


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
    settings = {"checkpoint_every": 50, "ref_cache_dir": shared_cache, **config.train, "loss": plan.loss,
                "loss_hparams": dict(plan.hparams), "seed": plan.seed, "output_dir": str(run_dir / "train"),
                "resume": True, "progress": config.progress}
    if not config.synthetic:
        settings.update(model=config.model, data=config.data)
        if config.model_revision is not None:
            settings["model_revision"] = config.model_revision
    return kind, settings


def _run_one(plan: RunPlan, task: _Task, eval_batches: list[Any]) -> dict[str, Any]:
    """Train and evaluate one run, or load it if its result.json exists (resuming an interrupted train)."""
    from prefopt.train import train

    config = task.config
    run_dir = Path(config.output_dir) / plan.run_id
    done = run_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text(encoding="utf-8"))
    run_dir.mkdir(parents=True, exist_ok=True)
    kind, settings = run_settings(plan, config, run_dir)
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
        result = train(**settings)  # model, model_revision and data are in the settings
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
    config.preflight()  # output folder, model folder, backends: before anything is built or written
    with torch_threads(config.num_threads or (1 if config.synthetic else None)), \
            library_progress_bars(config.progress):
        checked = _check_user_data(config)  # bad data stops the comparison before the output folder exists
        # one comparison per folder; each run's own train/ folder is locked again by its training
        with claim_run_folder(config.output_dir):
            return _compare(config, checked)


def _compare(config: CompareConfig, checked: dict[str, Any] | None = None) -> CompareResult:
    from prefopt.compare_report import write_report

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "compare_config.json", config.to_dict())
    task = _Task(config)
    rows = checked["eval_rows"] if checked and "eval_rows" in checked else task.eval_rows()
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
