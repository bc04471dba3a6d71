"""`OnlineConfig`: every setting of an online run (generate → score → loss), one frozen dataclass.

The library takes keyword arguments (`train_online(algorithm="grpo", steps=50)` builds one); YAML and
argparse live only in `prefopt.cli.train_online`. A config is JSON-able (`to_dict`) and saved beside each run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from prefopt.kernels import BACKENDS
from prefopt.loss_call import engine_inputs
from prefopt.online.fsdp_settings import ShardingSettings
from prefopt.online.importance import check_importance_sampling
from prefopt.online.lora_policy import LoraSettings
from prefopt.online.precision_settings import PrecisionSettings
from prefopt.online.reward_spec import reward_folders, reward_parts
from prefopt.online.rollout_step import Recipe, recipe_for
from prefopt.online.samplers import SamplerSettings, check_generation_machine
from prefopt.online.seed_settings import ActionMaskSettings, ILQLSettings, nested_settings
from prefopt.preflight import (
    check_engine_backend,
    check_model_source,
    check_output_dir,
    check_tokenizer_source,
    expand_user,
)
from prefopt.registry import LossSpec, list_losses, loss_spec
from prefopt.rl.kl import KL_ESTIMATORS  # the estimators token_kl implements
from prefopt.settings import Settings, SettingsError, check_int, is_finite_number
from prefopt.train.config import SHARE_PROMPT

__all__ = ["OnlineConfig", "SYNTHETIC_LR", "DEFAULT_LR", "KL_ESTIMATORS"]

# Learning rates: the tiny synthetic policy (docs/online_training.md, measured) and a 1B–7B model (TRL's
# online trainers use 1e-6 … 3e-6 with Adam).
SYNTHETIC_LR = 2e-4
DEFAULT_LR = 1e-6
# Settings that may change between a run and its resumption (they do not change what a step computes).
RESUMABLE = tuple(
    "steps resume progress checkpoint_every keep_checkpoints num_threads output_dir save_dtype vllm_server_url "
    "vllm_server_timeout vllm_group_port vllm_gpu_memory_utilization fsdp generation_decoder reference_kl".split()
)


@dataclass(frozen=True)
class OnlineConfig(SamplerSettings, LoraSettings, PrecisionSettings, ShardingSettings, Settings):
    """Settings of one online run; the generation engine's (generation_backend, vllm_*) are `SamplerSettings`', the
    LoRA policy's (lora_r, lora_alpha, lora_dropout, lora_targets, quantization; TrainConfig's) `LoraSettings`', the
    precision (master_weights, mixed_precision, save_dtype; TrainConfig's) `PrecisionSettings`', fsdp
    `ShardingSettings`'.

    Algorithm:
        algorithm: a registered rollout loss (`prefopt losses --kind rollout`).
        loss_hparams: its hyper-parameters (paper defaults for the rest; validated by its spec).
        pair_loss, pair_loss_hparams: for an algorithm that trains on each prompt's best/worst pair (it
            declares `accepts_pair_loss`, e.g. online DPO): any registered paired log-prob loss applied to
            those pairs in its place; None = the algorithm's own loss (with `loss_hparams`).
    Model, reward, prompts:
        model, tokenizer: HF causal LM path (tokenizer default: the model's); None = the synthetic task's
            reference policy. π_ref is a frozen copy of the initial policy; with LoRA its adapter disabled (the base).
        model_revision: with a hub name for `model`, the branch, tag or commit to load it (and its tokenizer) at.
        reward: "gold" (the synthetic task's gold reward), the path of a saved reward model, or a Python
            function `module:function` (TRL's convention, `prefopt.online.reward_functions`; imported from
            sys.path or the current folder); several comma-separated, summed with `reward_weights`
            (`prefopt.online.reward_spec`).
        reward_weights: one weight per function of `reward` (None: 1 each), TRL's `reward_weights`. A
            reward passed to `train_online` in memory takes its weights as (reward, weight) pairs instead.
        value_model: reward model PPO's critic starts from (None: the policy's backbone copied; LoRA: its own trunk).
        prompts: a text file (one prompt per line) or .jsonl with a `prompt` column (its other fields are
            columns the reward functions may take); None = the synthetic task's train prompts.
    Sampling:
        steps: rollouts (each followed by `epochs` passes of optimiser steps).
        prompts_per_step: B prompts per rollout (a seeded shuffle of the prompts, cycling).
        num_samples: K completions per prompt (None: the algorithm's default, its `LossSpec.online_defaults`).
        max_new_tokens, temperature, top_p, generation_batch_size: sampling (`GenerationConfig`).
    Optimisation:
        lr: Adam learning rate (None: SYNTHETIC_LR when `model` is None, else DEFAULT_LR; give it when
            training your own model in memory); value_lr:
            the critic's (None: lr); adam_betas, adam_eps, weight_decay; max_grad_norm (None: no clip).
        epochs: passes over each rollout (None: the algorithm's default, its `LossSpec.online_defaults`:
            4 for PPO, else 1).
        num_minibatches: minibatches per pass (split by prompt, groups kept whole).
    Losses with a critic (they take `values`, e.g. PPO):
        kl_coef: β of the KL-shaped reward (TRL 0.05); kl_estimator: "k1" or "k3"; kl_target,
            kl_horizon: adaptive β controller (Ziegler et al. 2019) when kl_target is set; gamma, lam:
            GAE γ, λ; whiten_advantages.
    All algorithms:
        missing_eos_penalty: subtracted from the score of a completion without EOS (None: off).
        dynamic_sampling: drop each prompt whose K rewards are all equal and sample more prompts, up to
            `max_sampling_rounds` generations per step, to refill the B (DAPO §3.2; `prefopt.online.group_sampling`).
            None: the algorithm's default (on for dapo, its `LossSpec.online_defaults`); needs K ≥ 2.
        overlong_shaping: add DAPO's soft overlong penalty (Eq. 13, `prefopt.rl.overlong_penalty`) to every score:
            0 up to max_new_tokens − overlong_buffer tokens, then linear down to −overlong_factor at the limit.
            None: the algorithm's default (on for dapo), or on when overlong_buffer is given.
        overlong_buffer: L_cache in tokens (None: max_new_tokens // 5, the paper's 4,096 of 20,480).
        action_mask: NLPO's top-p mask (top_p, update_every, min_tokens), for losses that take `mask_log_mass`;
            q_learning: ILQL's heads and decoding (two_qs, alpha, sync_every, beta, top_k), for losses that take
            `q_values` (`prefopt.online.seed_settings`; a mapping of their fields works too).
        importance_sampling: "off", "token" or "sequence": truncated importance sampling of each token's gradient by
            min(π_old/π_sampler, importance_sampling_cap) (TRL 2.0), the sampler's log-probs recorded per token
            (`prefopt.online.importance`).
        seed: prompt order, sampling, critic head init.
        output_dir; checkpoint_every: save every N steps (default 20; 0: only the final one); keep_checkpoints,
            resume, progress.
        num_threads: torch threads (None: 1 when `model` is None, else unchanged).
        engine_backend: output-head kernel of the log-prob engine. share_prompt: "auto", "on", "off" (as TrainConfig's):
            the learner reads each prompt once for its K samples, behind a block mask (`prefopt.online.shared_groups`).
        reference_kl: "auto": π_ref is scored only where the run reads it (the loss's KL at β > 0, PPO's critic, online
            DPO, rollout-wide inputs), so a β = 0 run logs no objective/kl, as TRL; "always": every step, for it.
    """

    algorithm: str = "rloo"
    loss_hparams: Mapping[str, Any] = field(default_factory=dict)
    pair_loss: str | None = None
    pair_loss_hparams: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None
    tokenizer: str | None = None
    model_revision: str | None = None
    reward: str = "gold"
    reward_weights: tuple[float, ...] | None = None
    value_model: str | None = None
    prompts: str | None = None
    steps: int = 40
    prompts_per_step: int = 16
    num_samples: int | None = None
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    generation_batch_size: int = 64
    lr: float | None = None
    value_lr: float | None = None
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    epochs: int | None = None
    num_minibatches: int = 1
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    kl_target: float | None = None
    kl_horizon: float = 10000.0
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    missing_eos_penalty: float | None = None
    dynamic_sampling: bool | None = None
    max_sampling_rounds: int = 10
    overlong_shaping: bool | None = None
    overlong_buffer: int | None = None
    overlong_factor: float = 1.0
    action_mask: ActionMaskSettings = field(default_factory=ActionMaskSettings)
    q_learning: ILQLSettings = field(default_factory=ILQLSettings)
    importance_sampling: str = "off"
    importance_sampling_cap: float = 2.0
    seed: int = 0
    output_dir: str = "runs/online"
    checkpoint_every: int = 20
    keep_checkpoints: int = 2
    resume: bool = False
    progress: bool = True
    num_threads: int | None = None
    engine_backend: str = "auto"
    share_prompt: str = "auto"
    reference_kl: str = "auto"
    NESTED: ClassVar[Mapping[str, type]] = {"action_mask": ActionMaskSettings, "q_learning": ILQLSettings}

    def __post_init__(self) -> None:
        for name in ("model", "tokenizer", "reward", "value_model", "prompts", "output_dir"):
            object.__setattr__(self, name, expand_user(getattr(self, name)))
        for name, kind in self.NESTED.items():
            object.__setattr__(self, name, nested_settings(kind, getattr(self, name), f"OnlineConfig.{name}"))
        self._check_model()
        spec = self._check_algorithm()
        recipe = recipe_for(spec)
        object.__setattr__(self, "loss_hparams", dict(spec.validate_hparams(dict(self.loss_hparams))))
        self._check_pair_loss()
        self._check_counts()
        self._check_sampling(recipe)
        self.check_sampler_settings(masks_logits=recipe.action_mask)
        self.check_lora_settings(model=self.model, heads_on_trunk=recipe.action_mask or recipe.q_learning)
        self.check_precision_settings(quantization=self.quantization)
        self.check_sharding_settings(recipe)
        self._check_shaping()
        self._check_numbers()
        check_importance_sampling(self.importance_sampling, self.importance_sampling_cap, self.pair_loss, recipe)
        self._check_optimizer()
        self._check_backend()
        self._check_paths()

    def _check_model(self) -> None:
        if self.tokenizer is not None and self.model is None:
            raise SettingsError(
                "OnlineConfig.tokenizer is set but model is None: the synthetic task brings its own "
                "tokenizer; give model too, or drop tokenizer"
            )
        if self.model_revision is not None and self.model is None:
            raise SettingsError(
                f"OnlineConfig.model_revision={self.model_revision!r} pins a hub revision of model, "
                "which is not set; give model (a hub name) or drop model_revision"
            )

    def _check_algorithm(self) -> LossSpec:
        """The algorithm's spec: a rollout loss."""
        spec = loss_spec(self.algorithm)  # unknown names raise, listing the valid ones
        if spec.kind != "rollout":
            raise ValueError(
                f"OnlineConfig.algorithm={self.algorithm!r} is a {spec.kind} loss; the online loop runs "
                f"rollout losses: {', '.join(list_losses('rollout'))} (offline losses: `prefopt train`)"
            )
        return spec

    def _check_counts(self) -> None:
        counts = ("steps", "prompts_per_step", "max_new_tokens", "generation_batch_size", "num_minibatches")
        for name in (*counts, "keep_checkpoints", "max_sampling_rounds"):
            check_int(f"OnlineConfig.{name}", getattr(self, name), minimum=1)
        for name in ("checkpoint_every", "seed"):
            check_int(f"OnlineConfig.{name}", getattr(self, name), minimum=0)
        for name in ("num_samples", "epochs", "num_threads"):
            if getattr(self, name) is not None:
                check_int(f"OnlineConfig.{name}", getattr(self, name), minimum=1)

    def _check_sampling(self, recipe: Recipe) -> None:
        """Enough samples per prompt for the algorithm (and its top_k), and minibatches that split the prompts."""
        if self.samples < recipe.min_samples:
            raise ValueError(
                f"OnlineConfig.num_samples={self.samples}: {self.algorithm} compares samples of the same "
                f"prompt and needs at least {recipe.min_samples} per prompt"
            )
        top_k = self.loss_hparams.get("top_k")
        if top_k is not None and top_k > self.samples:
            raise ValueError(
                f"OnlineConfig: loss_hparams top_k={top_k} exceeds num_samples={self.samples}; keep at "
                "most K samples per prompt"
            )
        if self.num_minibatches > self.prompts_per_step:
            raise ValueError(
                f"OnlineConfig.num_minibatches={self.num_minibatches} exceeds prompts_per_step="
                f"{self.prompts_per_step}: minibatches split the rollout by prompt"
            )

    def _check_shaping(self) -> None:
        """Dynamic sampling compares K ≥ 2 samples; the overlong buffer fits in the generation limit."""
        if self.filters_groups and self.samples < 2:
            raise ValueError(
                f"OnlineConfig.dynamic_sampling drops prompts whose K samples all score the same, which needs "
                f"num_samples ≥ 2 (got {self.samples}); raise num_samples or set dynamic_sampling=False"
            )
        if self.overlong_buffer is not None:
            check_int("OnlineConfig.overlong_buffer", self.overlong_buffer, minimum=1)
            if self.overlong_buffer > self.max_new_tokens:
                raise ValueError(
                    f"OnlineConfig.overlong_buffer={self.overlong_buffer} exceeds max_new_tokens="
                    f"{self.max_new_tokens}: the penalised tokens are the last ones before the limit"
                )

    def _check_optimizer(self) -> None:
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"OnlineConfig.kl_estimator={self.kl_estimator!r}: use one of {KL_ESTIMATORS}")
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"OnlineConfig.adam_betas={self.adam_betas!r} must be two numbers in [0, 1)")

    def _check_backend(self) -> None:
        if self.engine_backend not in BACKENDS:
            raise ValueError(f"OnlineConfig.engine_backend={self.engine_backend!r}: use one of {BACKENDS}")
        if self.share_prompt not in SHARE_PROMPT:
            raise ValueError(f"OnlineConfig.share_prompt={self.share_prompt!r}: use one of {SHARE_PROMPT}")
        if self.reference_kl not in ("auto", "always"):
            raise ValueError(f"OnlineConfig.reference_kl={self.reference_kl!r}: use 'auto' or 'always'")

    def _check_paths(self) -> None:
        """The reward ('gold', saved reward models, importable functions), prompts and value model exist."""
        if self.reward_weights is not None:
            object.__setattr__(self, "reward_weights", tuple(self.reward_weights))
        reward_parts(self.reward, "OnlineConfig.reward", self.reward_weights)
        for name in ("prompts", "value_model"):
            value = getattr(self, name)
            if value is not None and not Path(value).exists():
                raise ValueError(f"OnlineConfig.{name}={value!r}: no such file or folder")

    def _check_pair_loss(self) -> None:
        if self.pair_loss is None:
            if self.pair_loss_hparams:
                raise ValueError("OnlineConfig.pair_loss_hparams are set but pair_loss is None; name the paired loss")
            return
        if not loss_spec(self.algorithm).accepts_pair_loss:  # declared by losses that train on best/worst pairs
            accepting = [n for n in list_losses("rollout") if loss_spec(n).accepts_pair_loss]
            raise ValueError(
                f"OnlineConfig.pair_loss={self.pair_loss!r} applies to algorithm "
                f"{' or '.join(repr(n) for n in accepting)} only (got {self.algorithm!r})"
            )
        spec = loss_spec(self.pair_loss)
        if spec.kind != "paired" or spec.scores != "logps":
            paired = [n for n in list_losses("paired") if loss_spec(n).scores == "logps"]
            raise ValueError(
                f"OnlineConfig.pair_loss={self.pair_loss!r} is not a paired log-prob loss; use one of "
                f"{', '.join(paired)}"
            )
        unserved = [n for n in spec.extra_inputs if engine_inputs(spec).get(n, ("",))[0] != "log_sum_sq_probs"]
        if unserved:  # the pairs carry log-probs and log Σ_v p² (wpo), not scores (odpo) or a reference model (tdpo)
            raise ValueError(f"OnlineConfig.pair_loss={self.pair_loss!r} takes {unserved}, which online pairs lack")
        object.__setattr__(self, "pair_loss_hparams", dict(spec.validate_hparams(dict(self.pair_loss_hparams))))

    def _check_numbers(self) -> None:
        positive = {"temperature": self.temperature, "kl_horizon": self.kl_horizon, "adam_eps": self.adam_eps}
        for name, value in {
            **positive,
            "lr": self.lr,
            "value_lr": self.value_lr,
            "kl_target": self.kl_target,
            "max_grad_norm": self.max_grad_norm,
        }.items():
            if (value is not None or name in positive) and not (is_finite_number(value) and value > 0):
                raise ValueError(f"OnlineConfig.{name}={value!r} must be a positive finite number")
        for name in ("kl_coef", "weight_decay", "overlong_factor"):
            if not (is_finite_number(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"OnlineConfig.{name}={getattr(self, name)!r} must be a finite number ≥ 0")
        for name in ("gamma", "lam"):
            if not (is_finite_number(getattr(self, name)) and 0 <= getattr(self, name) <= 1):
                raise ValueError(f"OnlineConfig.{name}={getattr(self, name)!r} must lie in [0, 1]")
        if not (is_finite_number(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"OnlineConfig.top_p={self.top_p!r} must be in (0, 1]")
        if self.missing_eos_penalty is not None and not is_finite_number(self.missing_eos_penalty):
            raise ValueError(f"OnlineConfig.missing_eos_penalty={self.missing_eos_penalty!r} must be finite or None")

    @property
    def synthetic(self) -> bool:
        """True when the config names no model: the synthetic task's policy, or one given in memory."""
        return self.model is None

    @property
    def samples(self) -> int:
        """K: `num_samples`, or the algorithm's default."""
        return self.num_samples or recipe_for(loss_spec(self.algorithm)).num_samples

    @property
    def filters_groups(self) -> bool:
        """Whether dynamic sampling is on: `dynamic_sampling`, or the algorithm's default."""
        on = self.dynamic_sampling
        return recipe_for(loss_spec(self.algorithm)).dynamic_sampling if on is None else on

    @property
    def overlong_cache(self) -> int | None:
        """L_cache of the soft overlong penalty in tokens, or None when overlong shaping is off."""
        on = self.overlong_shaping
        if on is None:
            on = self.overlong_buffer is not None or recipe_for(loss_spec(self.algorithm)).overlong_shaping
        if not on:
            return None
        return self.overlong_buffer or max(self.max_new_tokens // 5, 1)

    @property
    def passes(self) -> int:
        """Optimisation passes over each rollout: `epochs`, or the algorithm's default."""
        return self.epochs or recipe_for(loss_spec(self.algorithm)).epochs

    @property
    def learning_rate(self) -> float:
        """`lr`, or the default: SYNTHETIC_LR when the config names no model (the synthetic task's policy, or
        an in-memory model given to `train_online`, as `TrainConfig`'s "synthetic" preset), else DEFAULT_LR."""
        if self.lr is not None:
            return self.lr
        return SYNTHETIC_LR if self.synthetic else DEFAULT_LR

    @property
    def threads(self) -> int | None:
        """Torch threads: `num_threads`, else 1 without a model (the tiny synthetic policy), else None (unchanged)."""
        if self.num_threads is not None:
            return self.num_threads
        return 1 if self.synthetic else None

    def preflight(self) -> None:
        """What this run needs from this machine before anything is built: an output folder it can create,
        complete model folders (or reachable hub names), an engine backend that runs here.

        Raises:
            SettingsError: naming the setting and the fix.
        """
        check_output_dir(self.output_dir, "OnlineConfig.output_dir (--out)")
        if self.model is not None:
            check_model_source(
                self.model, "OnlineConfig.model", revision=self.model_revision, tokenizer=self.tokenizer is None
            )
        if self.tokenizer is not None:
            check_tokenizer_source(self.tokenizer, "OnlineConfig.tokenizer")
        for folder in reward_folders(self.reward):
            check_model_source(folder, "OnlineConfig.reward", tokenizer=False)
        if self.value_model is not None:
            check_model_source(self.value_model, "OnlineConfig.value_model", tokenizer=False)
        check_engine_backend(self.engine_backend, "OnlineConfig.engine_backend")
        check_generation_machine(self.generation_backend)
