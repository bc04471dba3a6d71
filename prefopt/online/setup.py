"""Everything an online run needs before its first rollout: policy, reference, critic, reward, prompts,
optimisers. The loop (`prefopt.online.trainer`) reads only `OnlineRun`; nothing here tests a loss name.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prefopt.data import synthetic
from prefopt.data.synthetic import PreferenceConfig
from prefopt.data.synthetic.preferences import draw_prompts
from prefopt.engine import LogProbEngine
from prefopt.online.config import OnlineConfig
from prefopt.online.rewards import as_reward_function
from prefopt.online.rollout_step import Recipe, hparams_with_defaults, recipe_for
from prefopt.online.value import ValueModel, critic_from_policy, critic_from_reward_model
from prefopt.preflight import load_pretrained
from prefopt.registry import BoundLoss, LossSpec, get_loss, loss_spec
from prefopt.rl import AdaptiveKLController, FixedKLController
from prefopt.train.model import frozen_copy
from prefopt.train.precision import Precision, resolve_precision

__all__ = ["OnlineRun", "setup_online_run", "load_prompts", "synthetic_prompts", "PromptOrder"]


def synthetic_prompts(seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held-out) prompts of the synthetic task for `seed`: the same draw and split as
    `build_preferences` with the default `PreferenceConfig` (held-out prompts never reach training)."""
    config = PreferenceConfig()
    total = config.heldout_prompts + config.train_prompts + config.eval_prompts
    prompts = draw_prompts(total, random.Random(f"synthetic-prompts-{seed}"))
    heldout = prompts[: config.heldout_prompts]
    return prompts[config.heldout_prompts : config.heldout_prompts + config.train_prompts], heldout


def load_prompts(path: str | Path) -> list[str]:
    """Prompts from a .jsonl file (a `prompt` string per row) or a text file (one prompt per line).

    Raises:
        ValueError: naming the line of a row without a string `prompt`, or an empty file.
    """
    path = Path(path)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(lines, start=1):
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"{path}:{number}: each row needs a string `prompt` column, got {line[:80]!r}")
            prompts.append(row["prompt"])
    else:
        prompts = lines
    if not prompts:
        raise ValueError(f"{path}: no prompts found (one prompt per line, or .jsonl rows with a `prompt` column)")
    return prompts


class PromptOrder:
    """Which B prompts rollout `step` uses: a seeded shuffle of all N prompts, reshuffled each time it runs
    out (cycling). Position p = step·B + i is entry p mod N of permutation ⌊p / N⌋, a function of the step."""

    def __init__(self, prompts: list[str], per_step: int, seed: int) -> None:
        if not prompts:
            raise ValueError("train_online: no prompts given")
        self.prompts, self.per_step, self.seed = list(prompts), per_step, seed
        self._cache: dict[int, list[int]] = {}

    def _permutation(self, epoch: int) -> list[int]:
        if epoch not in self._cache:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = {epoch: torch.randperm(len(self.prompts), generator=generator).tolist()}
        return self._cache[epoch]

    def batch(self, step: int) -> list[str]:
        """The B prompt strings of rollout `step` (0-based)."""
        n = len(self.prompts)
        positions = range(step * self.per_step, (step + 1) * self.per_step)
        return [self.prompts[self._permutation(p // n)[p % n]] for p in positions]


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

    def parameters(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters of each optimiser ("policy", and "critic" for PPO)."""
        out = {"policy": [p for p in self.policy.parameters() if p.requires_grad]}
        if self.critic is not None:
            out["critic"] = [p for p in self.critic.parameters() if p.requires_grad]
        return out


def _policy(config: OnlineConfig, model: Any, tokenizer: Any) -> tuple[nn.Module, Any]:
    if model is not None:
        if tokenizer is None:
            raise ValueError("train_online: pass the tokenizer together with an in-memory model")
        return model, tokenizer
    if config.model is None:
        policy = synthetic.reference_policy(config.seed, progress=config.progress)
        return policy.model, policy.tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: loaded on first use

    model = load_pretrained(AutoModelForCausalLM, config.model, "OnlineConfig.model", revision=config.model_revision)
    if config.tokenizer is not None:
        return model, load_pretrained(AutoTokenizer, config.tokenizer, "OnlineConfig.tokenizer")
    return model, load_pretrained(
        AutoTokenizer, config.model, "OnlineConfig.model (its tokenizer)", revision=config.model_revision
    )


def _critic(config: OnlineConfig, policy: nn.Module, precision: Precision) -> ValueModel:
    """PPO's critic, trainable, its weights in the master dtype (a copy of the cast policy's backbone, or
    the reward model `value_model` cast like the policy)."""
    if config.value_model is None:
        return precision.cast(critic_from_policy(policy))
    from transformers import AutoModelForSequenceClassification  # heavy: loaded on first use

    reward_model = load_pretrained(AutoModelForSequenceClassification, config.value_model, "OnlineConfig.value_model")
    param = next(policy.parameters())
    return precision.cast(critic_from_reward_model(reward_model)).to(param.device)


def _optimizer(params: list[nn.Parameter], lr: float, config: OnlineConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        params, lr=lr, betas=config.adam_betas, eps=config.adam_eps, weight_decay=config.weight_decay
    )


def setup_online_run(
    config: OnlineConfig,
    *,
    model: Any = None,
    tokenizer: Any = None,
    reward: Any = None,
    prompts: Any = None,
    reference_model: nn.Module | None = None,
) -> OnlineRun:
    """Build the run: policy (eval mode: no dropout, so π_old = π_θ before the first update, as TRL
    disables dropout) with its master weights (`prefopt.train.precision`), frozen reference (in the
    checkpoint's dtype), critic, reward function, prompt order, optimisers, KL controller."""
    spec = loss_spec(config.algorithm)
    recipe = recipe_for(spec)
    lr = config.learning_rate
    policy, tokenizer = _policy(config, model, tokenizer)
    reference = reference_model if reference_model is not None else frozen_copy(policy)
    reference.requires_grad_(False).eval()
    policy.requires_grad_(True)
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
    if prompts is None:
        prompts = load_prompts(config.prompts) if config.prompts is not None else synthetic_prompts(config.seed)[0]
    optimizers = {"policy": _optimizer([p for p in policy.parameters() if p.requires_grad], lr, config)}
    if critic is not None:
        optimizers["critic"] = _optimizer(list(critic.parameters()), config.value_lr or lr, config)
    controller: AdaptiveKLController | FixedKLController = FixedKLController(config.kl_coef)
    if config.kl_target is not None:
        controller = AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
    hparams = hparams_with_defaults(spec, config.loss_hparams, config.max_new_tokens)
    pair = get_loss(config.pair_loss, **config.pair_loss_hparams) if config.pair_loss is not None else None
    return OnlineRun(
        config=config,
        spec=spec,
        loss=get_loss(spec.name, **hparams),
        pair_loss=pair,
        recipe=recipe,
        policy=policy,
        tokenizer=tokenizer,
        engine=LogProbEngine(policy, backend=config.engine_backend, temperature=config.temperature),
        ref_engine=LogProbEngine(reference, backend=config.engine_backend, temperature=config.temperature),
        critic=critic,
        optimizers=optimizers,
        reward=as_reward_function(reward if reward is not None else config.reward),
        prompts=PromptOrder(list(prompts), config.prompts_per_step, config.seed),
        kl_controller=controller,
        precision=precision,
    )
