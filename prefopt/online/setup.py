"""Everything an online run needs before its first rollout: policy, reference, critic, reward, prompts,
optimisers. The loop (`prefopt.online.trainer`) reads only `OnlineRun`; nothing here tests a loss name.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prefopt.data import synthetic
from prefopt.data.synthetic import PreferenceConfig
from prefopt.data.synthetic.preferences import draw_prompts
from prefopt.engine import LogProbEngine
from prefopt.online.action_mask import TopPActionMask
from prefopt.online.config import OnlineConfig
from prefopt.online.distributed import Processes
from prefopt.online.lora_policy import lora_policy, reference_engine
from prefopt.online.masked_policy import save_action_mask
from prefopt.online.rewards import as_reward_function
from prefopt.online.rollout_step import Recipe, hparams_with_defaults, recipe_for
from prefopt.online.samplers import HFSampler, Sampler, check_decoder
from prefopt.online.shared_groups import Share, share_prompt_setting
from prefopt.online.value import ValueModel, critic_from_policy, critic_from_reward_model, critic_on_trunk
from prefopt.online.vllm_samplers import build_sampler
from prefopt.preflight import load_pretrained
from prefopt.registry import BoundLoss, LossSpec, get_loss, loss_spec
from prefopt.rl import AdaptiveKLController, FixedKLController
from prefopt.settings import SettingsError
from prefopt.train.model import frozen_copy, load_causal_lm
from prefopt.train.precision import Precision, resolve_precision

__all__ = [
    "OnlineRun",
    "setup_online_run",
    "load_prompts",
    "load_prompt_rows",
    "prompt_rows",
    "synthetic_prompts",
    "PromptOrder",
]


def synthetic_prompts(seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held-out) prompts of the synthetic task for `seed`: the same draw and split as
    `build_preferences` with the default `PreferenceConfig` (held-out prompts never reach training)."""
    config = PreferenceConfig()
    total = config.heldout_prompts + config.train_prompts + config.eval_prompts
    prompts = draw_prompts(total, random.Random(f"synthetic-prompts-{seed}"))
    heldout = prompts[: config.heldout_prompts]
    return prompts[config.heldout_prompts : config.heldout_prompts + config.train_prompts], heldout


def _columns(rows: Sequence[Mapping[str, Any]], where: Callable[[int], str]) -> tuple[list[Any], dict[str, list[Any]]]:
    """Prompt rows (mappings with a `prompt`) → (prompts, {column: values}): every other field is a column
    the reward functions may take, and every row has the same fields."""
    prompts, columns = [], {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or not isinstance(row.get("prompt"), (str, list)):
            raise SettingsError(
                f"{where(i)}: each row needs a `prompt` (text or a conversation), got {str(row)[:80]!r}"
            )
        extra = {k: v for k, v in row.items() if k != "prompt"}
        if i == 0:
            clash = sorted(set(extra) & {"prompts", "completions"})
            if clash:
                raise SettingsError(
                    f"{where(i)}: column {clash[0]!r} has the name of a reward function's own argument; rename it"
                )
            columns = {k: [] for k in extra}
        elif set(extra) != set(columns):
            differ = sorted(set(extra) ^ set(columns))
            raise SettingsError(
                f"{where(i)}: its fields differ from the first row's in {differ}; give every row the same fields "
                "(they become the reward functions' columns)"
            )
        prompts.append(row["prompt"])
        for k, v in extra.items():
            columns[k].append(v)
    return prompts, columns


def prompt_rows(prompts: Sequence[Any]) -> tuple[list[Any], dict[str, list[Any]]]:
    """(prompts, columns) of in-memory prompts: strings or conversations (no columns), or mappings with a
    `prompt` and the same other keys in each, e.g. [{"prompt": "2+2=", "answer": "4"}] (column `answer`)."""
    prompts = list(prompts)
    if prompts and isinstance(prompts[0], Mapping):
        return _columns(prompts, lambda i: f"prompts[{i}]")
    return prompts, {}


def load_prompt_rows(path: str | Path) -> tuple[list[str], dict[str, list[Any]]]:
    """(prompts, columns) from a .jsonl file (a `prompt` string per row; its other fields, the same in every
    row, are columns the reward functions may take) or a text file (one prompt per line, no columns).

    Raises:
        ValueError: naming the line of a row without a string `prompt` or with other fields, or an empty file.
    """
    path = Path(path)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    prompts, columns = lines, {}
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in lines]
        for number, (row, line) in enumerate(zip(rows, lines), start=1):
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"{path}:{number}: each row needs a string `prompt` column, got {line[:80]!r}")
        prompts, columns = _columns(rows, lambda i: f"{path}:{i + 1}")
    if not prompts:
        raise ValueError(f"{path}: no prompts found (one prompt per line, or .jsonl rows with a `prompt` column)")
    return prompts, columns


def load_prompts(path: str | Path) -> list[str]:
    """Prompts from a .jsonl file (a `prompt` string per row) or a text file (one prompt per line).

    Raises:
        ValueError: naming the line of a row without a string `prompt`, or an empty file.
    """
    return load_prompt_rows(path)[0]


class PromptOrder:
    """Which B prompts rollout `step` uses: a seeded shuffle of all N prompts, reshuffled each time it runs
    out (cycling). Position p = step·B + i is entry p mod N of permutation ⌊p / N⌋, a function of the step.
    `columns` (one list of N values per name) are the prompts' extra columns, drawn alongside them."""

    def __init__(
        self, prompts: list[str], per_step: int, seed: int, columns: Mapping[str, Sequence[Any]] | None = None
    ) -> None:
        if not prompts:
            raise ValueError("train_online: no prompts given")
        self.prompts, self.per_step, self.seed = list(prompts), per_step, seed
        self.all_columns = {name: list(values) for name, values in (columns or {}).items()}
        self._cache: dict[int, list[int]] = {}

    def _permutation(self, epoch: int) -> list[int]:
        if epoch not in self._cache:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = {epoch: torch.randperm(len(self.prompts), generator=generator).tolist()}
        return self._cache[epoch]

    def _indices(self, step: int) -> list[int]:
        n = len(self.prompts)
        positions = range(step * self.per_step, (step + 1) * self.per_step)
        return [self._permutation(p // n)[p % n] for p in positions]

    def indices(self, step: int) -> list[int]:
        """The positions in `prompts` of rollout `step`'s B prompts."""
        return self._indices(step)

    def batch(self, step: int) -> list[str]:
        """The B prompt strings of rollout `step` (0-based)."""
        return [self.prompts[i] for i in self._indices(step)]

    def columns(self, step: int) -> dict[str, list[Any]]:
        """The extra columns of rollout `step`'s B prompts, in `batch(step)`'s order."""
        indices = self._indices(step)
        return {name: [values[i] for i in indices] for name, values in self.all_columns.items()}


@dataclass(kw_only=True)
class OnlineRun:
    """The pieces of an online run the loop uses (built by `setup_online_run`). `engine` and `ref_engine`
    are the log-prob engines of `policy` and of the frozen reference."""

    config: OnlineConfig
    spec: LossSpec
    loss: BoundLoss
    pair_loss: BoundLoss | None
    recipe: Recipe
    policy: nn.Module
    tokenizer: Any
    engine: LogProbEngine
    ref_engine: LogProbEngine
    critic: ValueModel | None
    optimizers: dict[str, torch.optim.Optimizer]
    reward: Any
    prompts: PromptOrder
    kl_controller: AdaptiveKLController | FixedKLController
    precision: Precision
    action_mask: TopPActionMask | None = None  # NLPO's masking policy (`prefopt.online.action_mask`)
    q_learning: Any = None  # ILQL's heads and data (`prefopt.online.ilql.QLearning`), attached by train_online
    share_prompt: Share = False  # the K samples of a prompt read it once (`prefopt.online.shared_groups`)
    sampler: Sampler | None = None  # what samples the rollouts (`prefopt.online.samplers`); None: the policy's generate
    processes: Processes = Processes()  # this process among the run's (`prefopt.online.distributed`)

    def rollout_sampler(self) -> Sampler:
        """`sampler`, or the policy's own `generate` (`HFSampler`) for a run built without one."""
        if self.sampler is None:
            self.sampler = HFSampler(self.policy, self.tokenizer)
        return self.sampler

    def frozen_models(self) -> dict[str, nn.Module]:
        """Models a checkpoint keeps whole (NLPO's masking policy; ILQL's heads, their target copies included)."""
        frozen = {} if self.action_mask is None else {"mask_policy": self.action_mask.mask_model}
        return frozen if self.q_learning is None else {**frozen, "q_heads": self.q_learning.heads}

    def save_beside(self, folder: Path) -> None:
        """Write beside the policy saved in `folder` what samples with it: NLPO's masking policy, ILQL's heads."""
        if self.action_mask is not None:
            save_action_mask(folder, self.action_mask)
        if self.q_learning is not None:
            self.q_learning.save(folder)

    def parameters(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters of each optimiser ("policy", and "critic" for PPO)."""
        out = {"policy": [p for p in self.policy.parameters() if p.requires_grad]}
        if self.q_learning is not None:  # ILQL's heads are part of the policy (one clip, one optimiser)
            out["policy"] += self.q_learning.trainable()
        if self.critic is not None:
            out["critic"] = self.critic.own_parameters(self.policy)  # a head on the policy's trunk: the head only
        return out


def _policy(config: OnlineConfig, model: Any, tokenizer: Any) -> tuple[nn.Module, Any]:
    if model is not None:
        if tokenizer is None:
            raise ValueError("train_online: pass the tokenizer together with an in-memory model")
        return model, tokenizer
    if config.model is None:
        policy = synthetic.reference_policy(config.seed, progress=config.progress)
        return policy.model, policy.tokenizer
    from transformers import AutoTokenizer  # heavy: loaded on first use

    model = load_causal_lm(
        config.model, "OnlineConfig.model", revision=config.model_revision, quantization=config.quantization
    )
    if config.tokenizer is not None:
        return model, load_pretrained(AutoTokenizer, config.tokenizer, "OnlineConfig.tokenizer")
    return model, load_pretrained(
        AutoTokenizer, config.model, "OnlineConfig.model (its tokenizer)", revision=config.model_revision
    )


def _critic(config: OnlineConfig, policy: nn.Module, precision: Precision) -> ValueModel:
    """PPO's critic, trainable, its weights in the master dtype (a copy of the cast policy's backbone, or
    the reward model `value_model` cast like the policy)."""
    if config.value_model is None:  # LoRA: a head on the policy's adapter-enabled trunk, no copy of the base
        return precision.cast(critic_on_trunk(policy) if config.lora_r else critic_from_policy(policy))
    from transformers import AutoModelForSequenceClassification  # heavy: loaded on first use

    reward_model = load_pretrained(AutoModelForSequenceClassification, config.value_model, "OnlineConfig.value_model")
    param = next(policy.parameters())
    return precision.cast(critic_from_reward_model(reward_model)).to(param.device)


def _optimizer(params: list[nn.Parameter], lr: float, config: OnlineConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        params, lr=lr, betas=config.adam_betas, eps=config.adam_eps, weight_decay=config.weight_decay
    )


def _action_mask(config: OnlineConfig, recipe: Recipe, policy: nn.Module, tokenizer: Any) -> TopPActionMask | None:
    """NLPO's masking policy, a frozen copy of the (cast) policy, for a loss that takes `mask_log_mass`."""
    if not recipe.action_mask:
        return None
    settings = config.action_mask
    return TopPActionMask(
        policy,
        top_p=settings.top_p,
        min_tokens=settings.min_tokens,
        update_every=settings.update_every,
        special_ids=getattr(tokenizer, "all_special_ids", ()),
        temperature=config.temperature,
    )


def _sampler(config: OnlineConfig, policy: nn.Module, tokenizer: Any, optimizer: torch.optim.Optimizer) -> Sampler:
    """The run's sampler (`OnlineConfig.generation_backend`), counting the policy's optimiser steps: a vLLM engine
    gets the policy's weights before the first generation after an update (`prefopt.online.samplers`)."""
    check_decoder(config, policy, sharded=config.fsdp)
    sampler = build_sampler(
        config.generation_backend,
        policy,
        tokenizer,
        model_source=config.model,
        revision=config.model_revision,
        seed=config.seed,
        gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        server_url=config.vllm_server_url,
        server_timeout=config.vllm_server_timeout,
        group_port=config.vllm_group_port,
    )
    sampler.watch(optimizer)
    return sampler


def setup_online_run(
    config: OnlineConfig,
    *,
    model: Any = None,
    tokenizer: Any = None,
    reward: Any = None,
    prompts: Any = None,
    reference_model: nn.Module | None = None,
    processes: Processes = Processes(),
) -> OnlineRun:
    """Build the run: policy (eval mode: no dropout, so π_old = π_θ before the first update, as TRL
    disables dropout) with its master weights (`prefopt.train.precision`), frozen reference (in the
    checkpoint's dtype), critic, reward function, prompt order, optimisers, KL controller."""
    if reward is not None and config.reward_weights is not None:
        raise SettingsError(
            "OnlineConfig.reward_weights weigh the functions of OnlineConfig.reward; weigh a reward given to "
            "train_online as (reward, weight) pairs instead: reward=[(f, 1.0), (g, 0.5)]"
        )
    spec = loss_spec(config.algorithm)
    recipe = recipe_for(spec)
    lr = config.learning_rate
    policy, tokenizer = _policy(config, model, tokenizer)
    if processes.device is not None:  # under a launcher on GPUs: this process's device
        policy = policy.to(processes.device)
    reference = reference_model
    if config.lora_r:  # only the adapter trains; π_ref = the adapter disabled (`prefopt.online.lora_policy`)
        policy = lora_policy(policy, config, config.seed)
    else:
        reference = reference if reference is not None else frozen_copy(policy)
        policy.requires_grad_(True)
    if reference is not None:
        reference.requires_grad_(False).eval()
    policy.eval()
    precision = resolve_precision(
        policy,
        master_weights=config.master_weights,
        mixed_precision=config.mixed_precision,
        save_dtype=config.save_dtype,
        device=next(policy.parameters()).device,
    )
    precision.cast(policy)  # after the reference copy: π_ref keeps the loaded dtype
    critic = (
        _critic(config, policy, precision).eval() if recipe.critic else None
    )  # no dropout: V_old = V before updates
    columns: dict[str, list[Any]] = {}
    if prompts is not None:
        prompts, columns = prompt_rows(prompts)
    elif config.prompts is not None:
        prompts, columns = load_prompt_rows(config.prompts)
    else:
        prompts = synthetic_prompts(config.seed)[0]
    optimizers = {"policy": _optimizer([p for p in policy.parameters() if p.requires_grad], lr, config)}
    if critic is not None:
        optimizers["critic"] = _optimizer(critic.own_parameters(policy), config.value_lr or lr, config)
    controller: AdaptiveKLController | FixedKLController = FixedKLController(config.kl_coef)
    if config.kl_target is not None:
        controller = AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
    hparams = hparams_with_defaults(spec, config.loss_hparams, config.max_new_tokens)
    pair = get_loss(config.pair_loss, **config.pair_loss_hparams) if config.pair_loss is not None else None
    scorer = as_reward_function(config.reward, config.reward_weights) if reward is None else as_reward_function(reward)
    return OnlineRun(
        config=config,
        spec=spec,
        loss=get_loss(spec.name, **hparams),
        pair_loss=pair,
        recipe=recipe,
        policy=policy,
        tokenizer=tokenizer,
        engine=LogProbEngine(policy, backend=config.engine_backend, temperature=config.temperature),
        ref_engine=reference_engine(
            policy, reference, bool(config.lora_r), backend=config.engine_backend, temperature=config.temperature
        ),
        critic=critic,
        optimizers=optimizers,
        reward=scorer,
        prompts=PromptOrder(list(prompts), config.prompts_per_step, config.seed, columns),
        kl_controller=controller,
        precision=precision,
        action_mask=_action_mask(config, recipe, policy, tokenizer),
        share_prompt=share_prompt_setting(config.share_prompt, policy),
        sampler=_sampler(config, policy, tokenizer, optimizers["policy"]),
        processes=processes,
    )
