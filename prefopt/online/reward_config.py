"""`RewardModelConfig`: every setting of a reward-model run, validated on construction; and its data sources.

The library takes keyword arguments (`train_reward_model(loss="bradley_terry", lr=1e-5, ...)` builds
one); YAML and argparse live only in `prefopt.cli.train_rm`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from prefopt.data import load_preferences, synthetic, tokenize_preferences
from prefopt.data.loading import log_folder_reads, record_folder_reads
from prefopt.data.synthetic import PreferenceConfig, SFTConfig
from prefopt.data.synthetic.policy import cache_root
from prefopt.data.tokenize import TokenizeConfig
from prefopt.preflight import check_device, check_model_source, check_output_dir, check_tokenizer_source, expand_user
from prefopt.registry import list_losses, loss_spec
from prefopt.settings import Settings, SettingsError, check_int, is_finite_number
from prefopt.train.precision import MASTER_WEIGHTS, MIXED_PRECISION, SAVE_DTYPES

__all__ = [
    "RewardModelConfig",
    "resolve_config",
    "read_data",
    "load_rows",
    "synthetic_task_for",
    "tiny_task",
    "METADATA_FILE",
    "INITS",
    "HF_LR",
    "SYNTHETIC_LR",
    "SYNTHETIC_EPOCHS",
    "EVAL_SPLITS",
]

METADATA_FILE = "prefopt_reward_model.json"
INITS = ("policy", "scratch")
HF_LR = 1e-5  # InstructGPT's RM learning rate is 9e-6 (Ouyang et al. 2022, App. C.2): this order for real models
SYNTHETIC_LR = 3e-4  # best of those tried on the default synthetic task (docs/reward_models.md, "Measured")
SYNTHETIC_EPOCHS = 2.0
EVAL_SPLITS = ("eval", "test", "validation")  # tried in order when eval_split is None


@dataclass(frozen=True)
class RewardModelConfig(Settings):
    """Settings of one reward-model run.

    Loss and data:
        loss: a registered reward loss (scores="rewards"): "bradley_terry" (paired data, optional
            `margin` column) or "plackett_luce_rm" (ranked data). loss_hparams: its hyper-parameters.
        data: preference file / folder / Hub name; None = the synthetic task's data of the loss's kind.
        data_split: split of `data` to train on (None: "train" when there is one).
        eval_split: held-out split (None: the first of eval/test/validation that exists, the synthetic
            task's eval split; "none": no evaluation).
        max_length, max_prompt_length: token caps (`prefopt.data.TokenizeConfig`); max_length is also
            capped at the model's max_position_embeddings.
    Model:
        model: HF model path or Hub name (a causal LM or sequence-classification checkpoint: the score
            head is added with num_labels=1); None = a synthetic-task RM. tokenizer: default `model`'s.
        model_revision: with a hub name for `model`, the branch, tag or commit to load it (and its tokenizer) at.
        init: synthetic RM body from the reference "policy" or "scratch" (random).
        hidden_size, num_layers: resize a synthetic RM (needs init="scratch").
        task_seed, sft_config, preference_config: the synthetic task (`SFTConfig`, `PreferenceConfig`).
    Optimisation:
        lr: AdamW peak lr (None: 1e-5 for HF models, 3e-4 on the synthetic task); weight_decay;
        warmup_ratio: linear warm-up share, then linear decay to 0; max_grad_norm: clipping (None: off).
        epochs: passes over the data (None: 1, or 2 on the synthetic task); batch_size: preference
        rows (pairs / rankings) per step; eval_batch_size: rows per evaluation forward.
        seed: score-head init and data order. device: None = CUDA when available.
        num_threads: torch CPU threads (None: 1 on the synthetic task, else unchanged).
    Precision (`prefopt.train.precision`; the same settings as `TrainConfig`):
        master_weights: "fp32" (default: weights, gradients and AdamW state in fp32) or "bf16" (pure bf16:
            updates below half a bf16 step of a weight round away). mixed_precision: "no" (bf16 autocast
            only for a bf16 checkpoint), "bf16" or "auto" (also on CUDA devices that support bf16).
        save_dtype: final/'s dtype: "original" (as loaded) or "fp32".
    Output:
        output_dir: run folder; log_every: metrics.jsonl line every N steps; progress: tqdm bar.
        checkpoint_every: save weights, optimiser, schedule and data position every N steps (0: never);
        keep_checkpoints: how many to keep; resume: continue from the newest one in output_dir (a fresh
        run refuses a folder that holds checkpoints, so nothing is overwritten).
    """

    NESTED: ClassVar[Mapping[str, type]] = {"sft_config": SFTConfig, "preference_config": PreferenceConfig}

    loss: str = "bradley_terry"
    loss_hparams: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None
    tokenizer: str | None = None
    model_revision: str | None = None
    data: str | None = None
    data_split: str | None = None
    eval_split: str | None = None
    max_length: int | None = 512
    max_prompt_length: int | None = None
    init: str = "scratch"
    hidden_size: int | None = None
    num_layers: int | None = None
    task_seed: int = 0
    sft_config: Any = None
    preference_config: Any = None
    lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    epochs: float | None = None
    batch_size: int = 16
    eval_batch_size: int = 64
    seed: int = 0
    device: str | None = None
    num_threads: int | None = None
    master_weights: str = "fp32"
    mixed_precision: str = "no"
    save_dtype: str = "original"
    output_dir: str = "runs/reward_model"
    log_every: int = 1
    progress: bool = True
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    resume: bool = False

    def __post_init__(self) -> None:
        for name in ("model", "tokenizer", "data", "output_dir"):
            object.__setattr__(self, name, expand_user(getattr(self, name)))
        self._check_revision_and_finite()
        self._check_loss()
        self._check_counts()
        self._check_optimizer_numbers()
        self._check_model_choice()

    def _check_revision_and_finite(self) -> None:
        """A model revision only with a model; finite weight decay and warm-up ratio."""
        if self.model_revision is not None and self.model is None:
            raise SettingsError(
                f"RewardModelConfig.model_revision={self.model_revision!r} pins a hub revision of "
                "model, which is not set; give model (a hub name) or drop model_revision"
            )
        if not (is_finite_number(self.weight_decay) and is_finite_number(self.warmup_ratio)):
            raise SettingsError(
                f"RewardModelConfig: weight_decay={self.weight_decay!r} and warmup_ratio="
                f"{self.warmup_ratio!r} must be finite numbers"
            )

    def _check_loss(self) -> None:
        """A reward-model loss (reward scores), with valid hyper-parameters."""
        spec = loss_spec(self.loss)  # UnknownLossError names the valid losses
        if spec.scores != "rewards":
            rm_losses = [n for n in list_losses() if loss_spec(n).scores == "rewards"]
            raise ValueError(
                f"RewardModelConfig.loss={self.loss!r} trains a policy, not a reward model; use one of {rm_losses}"
            )
        if not isinstance(self.loss_hparams, Mapping):
            raise ValueError(
                f"RewardModelConfig.loss_hparams must be a mapping, got {type(self.loss_hparams).__name__}"
            )
        spec.validate_hparams(self.loss_hparams)

    def _check_counts(self) -> None:
        for name in ("batch_size", "eval_batch_size", "log_every", "keep_checkpoints"):
            check_int(f"RewardModelConfig.{name}", getattr(self, name), minimum=1)
        check_int("RewardModelConfig.checkpoint_every", self.checkpoint_every, minimum=0)
        for name in ("max_length", "max_prompt_length", "hidden_size", "num_layers", "num_threads"):
            if getattr(self, name) is not None:
                check_int(f"RewardModelConfig.{name}", getattr(self, name), minimum=1)
        for name in ("seed", "task_seed"):
            check_int(f"RewardModelConfig.{name}", getattr(self, name), minimum=0)
        if (
            self.max_length is not None
            and self.max_prompt_length is not None
            and self.max_prompt_length >= self.max_length
        ):
            raise ValueError(
                f"RewardModelConfig: max_prompt_length={self.max_prompt_length} must be < max_length={self.max_length}"
            )

    def _check_optimizer_numbers(self) -> None:
        for name in ("lr", "epochs", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0
            ):
                raise ValueError(f"RewardModelConfig.{name}={value!r} must be a positive number or None")
        if not isinstance(self.weight_decay, (int, float)) or not self.weight_decay >= 0:
            raise ValueError(f"RewardModelConfig.weight_decay={self.weight_decay!r} must be ≥ 0")
        if not isinstance(self.warmup_ratio, (int, float)) or not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"RewardModelConfig.warmup_ratio={self.warmup_ratio!r} must be in [0, 1)")

    def _check_model_choice(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"RewardModelConfig.init={self.init!r}: use one of {INITS}")
        for name, valid in (
            ("master_weights", MASTER_WEIGHTS),
            ("mixed_precision", MIXED_PRECISION),
            ("save_dtype", SAVE_DTYPES),
        ):
            if getattr(self, name) not in valid:
                raise ValueError(f"RewardModelConfig.{name}={getattr(self, name)!r}: use one of {valid}")
        resized = [n for n in ("hidden_size", "num_layers") if getattr(self, n) is not None]
        if resized and self.model is not None:
            raise ValueError(
                f"RewardModelConfig: {', '.join(resized)} resize a synthetic-task RM; with "
                f"model={self.model!r} the model's own shape is used (drop them)"
            )
        if resized and self.init == "policy":
            raise ValueError(
                f"RewardModelConfig: {', '.join(resized)} change the RM's shape, so the policy's weights "
                "cannot be copied; set init='scratch'"
            )
        if self.tokenizer is not None and self.model is None:
            raise ValueError("RewardModelConfig.tokenizer is set but model is None; the synthetic task has its own")
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError(f"RewardModelConfig.output_dir={self.output_dir!r} must be a folder path")

    @property
    def synthetic(self) -> bool:
        """True when the synthetic task supplies the model or the data."""
        return self.model is None or self.data is None

    @property
    def resolved_lr(self) -> float:
        """`lr`, else 3e-4 for a synthetic-task RM and 1e-5 for a HF model."""
        return float(self.lr) if self.lr is not None else (SYNTHETIC_LR if self.model is None else HF_LR)

    @property
    def resolved_epochs(self) -> float:
        """`epochs`, else 2 for a synthetic-task RM and 1 for a HF model (one epoch: InstructGPT, §C.2)."""
        return float(self.epochs) if self.epochs is not None else (SYNTHETIC_EPOCHS if self.model is None else 1.0)

    def tokenize_config(self, model: Any = None) -> Any:
        """The `TokenizeConfig` of training and scoring; max_length capped at the model's position limit."""
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        max_length = self.max_length
        if isinstance(limit, int) and (max_length is None or max_length > limit):
            max_length = limit
        return TokenizeConfig(max_length=max_length, max_prompt_length=self.max_prompt_length)

    def preflight(self) -> None:
        """What this run needs from this machine before anything is built: an output folder it can create,
        a complete model folder (or reachable hub name), the device.

        Raises:
            SettingsError: naming the setting and the fix.
        """
        check_output_dir(self.output_dir, "RewardModelConfig.output_dir (--out)")
        if self.model is not None:
            check_model_source(
                self.model, "RewardModelConfig.model", revision=self.model_revision, tokenizer=self.tokenizer is None
            )
        if self.tokenizer is not None:
            check_tokenizer_source(self.tokenizer, "RewardModelConfig.tokenizer")
        check_device(self.device, "RewardModelConfig.device (--device)")


def resolve_config(config: RewardModelConfig | None, settings: Mapping[str, Any]) -> RewardModelConfig:
    """`config` with `settings` (field names) applied, or a config built from `settings`."""
    if config is None:
        return RewardModelConfig.from_dict(settings)
    if not isinstance(config, RewardModelConfig):
        raise TypeError(f"config must be a RewardModelConfig, got {type(config).__name__}")
    return RewardModelConfig.from_dict({**config.to_dict(), **settings}) if settings else config


def tiny_task() -> dict[str, Any]:
    """Settings of a seconds-scale synthetic task for smoke tests (`prefopt train-rm --tiny`): the
    ≈110k-parameter `SFTConfig.tiny()` policy, 96 train and 32 eval prompts of 4 completions, noiseless
    labels (label_temperature 0: the chosen completion has the higher gold reward)."""
    return {
        "sft_config": SFTConfig.tiny(),
        "preference_config": PreferenceConfig(
            train_prompts=96, eval_prompts=32, heldout_prompts=0, label_temperature=0.0
        ),
    }


def synthetic_task_for(config: RewardModelConfig) -> Any:
    """The synthetic task (cached reference policy + sampled preferences) of `config.task_seed`.

    Kept in memory for the process (the last two tasks): sampling the preference data costs seconds to
    minutes, and RMs of several sizes or seeds (Gao et al.'s proxies) are trained on the same task.
    """
    return _synthetic_task(
        config.task_seed, config.sft_config, config.preference_config, str(cache_root()), config.progress
    )


@functools.lru_cache(maxsize=2)
def _synthetic_task(seed: int, sft_config: Any, preference_config: Any, root: str, progress: bool) -> Any:
    return synthetic.synthetic_task(
        seed=seed, sft_config=sft_config, preference_config=preference_config, cache_dir=root, progress=progress
    )


def _eval_source(config: RewardModelConfig, kind: str, source: Any, eval_dataset: Any, task: Any) -> Any:
    """The held-out rows (loaded and validated), or None when there is no eval split."""
    if eval_dataset is not None:
        return load_preferences(eval_dataset, kind=kind)
    if config.eval_split == "none":
        return None
    if task is not None and source is None:
        return load_preferences(task.preferences.dataset(kind, "eval"), kind=kind)
    if config.eval_split is not None:
        return load_preferences(source, kind=kind, split=config.eval_split)
    import datasets  # heavy: loaded on first use

    if isinstance(source, datasets.Dataset):  # one in-memory split: there is no other to hold out
        return None
    for split in EVAL_SPLITS:
        try:
            return load_preferences(source, kind=kind, split=split)
        except (ValueError, KeyError) as err:
            if "split" not in str(err).lower() or type(err).__name__ == "PreferenceDataError":
                raise
    return None


def read_data(
    config: RewardModelConfig, kind: str, dataset: Any, eval_dataset: Any, task: Any = None
) -> tuple[Any, Any]:
    """(train rows, held-out rows or None): loaded and validated, not tokenised. `train_reward_model` reads your
    data (`dataset`, else `config.data`) with it before it creates or locks the run folder or loads a model, so
    bad data stops the run with nothing written; the synthetic task's data (no source) needs `task`. The files
    read from a folder are logged (`prefopt.data.loading.log_folder_reads`)."""
    source = dataset if dataset is not None else config.data
    with record_folder_reads() as reads:
        if source is None:
            train = load_preferences(task.preferences.dataset(kind, "train"), kind=kind)
        else:
            train = load_preferences(source, kind=kind, split=config.data_split)
        held_out = _eval_source(config, kind, source, eval_dataset, task)
    log_folder_reads(reads)
    return train, held_out


def load_rows(
    config: RewardModelConfig,
    kind: str,
    tokenizer: Any,
    tokenize_config: Any,
    dataset: Any,
    eval_dataset: Any,
    task: Any,
    data: tuple[Any, Any] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Tokenised train rows and eval rows (None without an eval split) from the configured source, or from
    `data` when `read_data` already read it.

    Rows are `prefopt.data.tokenize_preferences` output (prompt_ids, completion_ids [K][C], margin, …);
    bad data raises the data layer's `PreferenceDataError` listing the rows.
    """
    train, held_out = data if data is not None else read_data(config, kind, dataset, eval_dataset, task)
    train_rows = tokenize_preferences(train, tokenizer, tokenize_config, kind=kind).to_list()
    if held_out is None or len(held_out) == 0:
        return train_rows, None
    return train_rows, tokenize_preferences(held_out, tokenizer, tokenize_config, kind=kind).to_list()
