"""`prefopt train`: one offline training run (`prefopt.train.train`) of any offline loss of the registry.

Settings, later winning: `TrainConfig`'s defaults ← the recipe (`--recipe`; with `--smoke` its smoke
version, `prefopt.train.recipes.smoke_settings`) ← the `--config` YAML file ← the flags given ← `--set`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefopt.cli.choices import (
    BACKENDS,
    IDENTICAL_POLICIES,
    MASTER_WEIGHTS,
    MIXED_PRECISION,
    OFFLINE,
    OPTIMIZERS,
    QUANTIZATION,
    REPORT_TO,
    SAVE_DTYPES,
    SCHEDULES,
    SHARE_PROMPT,
    Choice,
    presets,
)
from prefopt.cli.command import ConfigCommand, Option, Switch, print_result
from prefopt.errors import SettingsError
from prefopt.train.config import TrainConfig
from prefopt.train.loop import train
from prefopt.train.recipes import list_recipes, load_recipe, smoke_settings
from prefopt.train.stages import stage_configs

__all__ = ["COMMAND", "TrainCommand", "config_from_args", "main", "print_recipes"]

MIXED_PRECISION_HELP = "compute: no (bf16 autocast only for a bf16 checkpoint), bf16 or auto"
MASTER_WEIGHTS_HELP = (
    "dtype of the trained weights and optimiser state: fp32 (default; bf16 compute where bf16 "
    "applies) or bf16 (pure bf16: small updates round away)"
)
SAVE_DTYPE_HELP = "dtype of final/: original (each weight as loaded, default) or fp32"


class TrainCommand(ConfigCommand):
    name = "train"
    help = "train a policy with an offline preference loss"
    description = (
        "Train a policy on preference data with any offline loss of the registry, on one CPU, one GPU or several "
        "processes (torchrun / accelerate launch: `-m prefopt.train`). With no data and no model it trains on the "
        "built-in synthetic task. Settings, later winning: the defaults, the recipe (--recipe), the --config file, "
        "the flags. Prints the result as JSON; the run folder holds config.json, metrics.jsonl, checkpoints/ and "
        "final/."
    )
    examples = """\
examples:
  prefopt train                                   # DPO on the built-in synthetic task
  prefopt train --loss kto --data prefs.jsonl --model path/to/sft --lr 5e-7 --out runs/kto
  prefopt train --config run.yaml --set beta=0.05 --lora-r 16 --no-ref-cache
  prefopt train --loss dpo:0.8+bco_pair:0.2+sft:1 --set beta=0.1   # MPO: a weighted sum of losses
  ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m prefopt.train --loss dpo --batch-size 16
  prefopt train --list-recipes                    # the papers' published settings (docs/recipes.md)
  prefopt train --recipe simpo-llama3-base --smoke --out runs/smoke    # that recipe on a tiny model, offline
  accelerate launch --multi_gpu --num_processes 8 -m prefopt.train --recipe zephyr-7b-beta --out runs/zephyr"""
    config = TrainConfig
    config_name = "TrainConfig"
    flags = {
        "--loss": Option(
            "loss",
            str,
            "the offline loss to train (default dpo; `prefopt losses NAME` describes one), or a weighted sum of "
            "losses of one data kind such as dpo:0.8+bco_pair:0.2+sft:1 (MPO; --set beta=0.1 sets every part's "
            "beta, --set dpo.beta=0.2 one part's)",
            choices=OFFLINE.names,
            explain=OFFLINE.explain,
            accept=OFFLINE.combination,
            metavar="LOSS",
        ),
        "--data": Option("data", str, "preference data: file, folder or Hub name (default: the synthetic task)"),
        "--split": Option("data_split", str, "split of --data to train on (slices like train[:1000] work)"),
        "--data-revision": Option("data_revision", str, "git revision (commit, tag, branch) of a Hub dataset --data"),
        "--identical": Option(
            "identical",
            str,
            "pairs with chosen == rejected: warn (keep, count), drop or error",
            choices=IDENTICAL_POLICIES,
        ),
        "--model": Option("model", str, "causal LM path or Hub name (default: the synthetic task's policy)"),
        "--tokenizer": Option("tokenizer", str, "tokenizer path (default: the model's)"),
        "--reference": Option("reference", str, "separate reference model (default: the initial policy)"),
        "--model-revision": Option(
            "model_revision", str, "hub revision (branch, tag or commit) of --model and its tokenizer"
        ),
        "--reference-revision": Option(
            "reference_revision", str, "hub revision (branch, tag or commit) of --reference"
        ),
        "--out": Option("output_dir", str, "run folder (default runs/train)", metavar="DIR"),
        "--batch-size": Option("batch_size", int, "GLOBAL examples per optimiser step"),
        "--micro-batch-size": Option(
            "micro_batch_size", int, "examples per forward and process (accumulates the rest)"
        ),
        "--epochs": Option("epochs", float, "passes over the data"),
        "--max-steps": Option("max_steps", int, "optimiser steps (overrides --epochs)"),
        "--preset": Option(
            "preset",
            str,
            "optimiser preset: 'synthetic', or a loss name for its paper's settings (DPO's where it published none)",
            choices=presets,
            metavar="PRESET",
        ),
        "--optimizer": Option("optimizer", str, "optimiser (overrides the preset)", choices=OPTIMIZERS),
        "--lr": Option("lr", float, "peak learning rate (overrides the preset)"),
        "--weight-decay": Option("weight_decay", float, "weight decay (overrides the preset)"),
        "--schedule": Option(
            "schedule", str, "learning-rate schedule after the warm-up (overrides the preset)", choices=SCHEDULES
        ),
        "--warmup-steps": Option("warmup_steps", int, "warm-up steps (overrides the preset)"),
        "--warmup-ratio": Option("warmup_ratio", float, "warm-up fraction of the steps (overrides the preset)"),
        "--max-grad-norm": Option("max_grad_norm", float, "gradient clipping norm (overrides the preset)"),
        "--max-length": Option("max_length", int, "prompt + completion token cap"),
        "--max-prompt-length": Option("max_prompt_length", int, "prompt token cap"),
        "--ref-cache-dir": Option(
            "ref_cache_dir", str, "folder of reference caches (shareable between runs on the same data)"
        ),
        "--engine-backend": Option(
            "engine_backend", str, "output-head kernel (auto: Triton on CUDA, else chunked)", choices=BACKENDS
        ),
        "--lora-r": Option("lora_r", int, "LoRA rank (0: full fine-tuning)"),
        "--lora-alpha": Option("lora_alpha", float, "LoRA α (default 2r)"),
        "--lora-dropout": Option("lora_dropout", float, "LoRA dropout"),
        "--quantization": Option(
            "quantization", str, "bitsandbytes loading of the base model (needs --lora-r)", choices=QUANTIZATION
        ),
        "--mixed-precision": Option("mixed_precision", str, MIXED_PRECISION_HELP, choices=MIXED_PRECISION),
        "--master-weights": Option("master_weights", str, MASTER_WEIGHTS_HELP, choices=MASTER_WEIGHTS),
        "--save-dtype": Option("save_dtype", str, SAVE_DTYPE_HELP, choices=SAVE_DTYPES),
        "--seed": Option("seed", int, "seed of data order, LoRA init and dropout"),
        "--checkpoint-every": Option("checkpoint_every", int, "checkpoint every N steps (0: final only)"),
        "--log-every": Option("log_every", int, "write metrics every N steps"),
        "--report-to": Option(
            "report_to", str, "also log to this tracker (repeatable)", choices=REPORT_TO, repeat=True
        ),
        "--no-ref-cache": Switch(
            "ref_cache", False, "compute reference log-probs on the fly instead of caching them once"
        ),
        "--packed": Switch("packed", True, "pack each micro-batch into one row (no padding)"),
        "--no-fused-loss": Switch(
            "fused_loss", False, "head's usual forward and backward, not the loss-fused head (separable losses)"
        ),
        "--share-prompt": Option(
            "share_prompt",
            str,
            "read each prompt once for its chosen and rejected (or ranked) completions, behind a block mask "
            "(auto: where it saves a fifth of the positions, on models that take the mask)",
            choices=SHARE_PROMPT,
        ),
        "--gradient-checkpointing": Switch("gradient_checkpointing", True, "recompute activations in backward"),
        "--resume": Switch("resume", True, "continue from the newest checkpoint in --out"),
        "--quiet": Switch("progress", False, "no progress bar, no note of the data files read"),
        "--cpu": Switch("cpu", True, "force the CPU (needed for multi-process CPU runs)"),
        "--fsdp": Switch("fsdp", True, "shard the policy over the processes with FSDP2 (fully_shard) instead of DDP"),
    }
    deprecated = {"--no-progress": "--quiet", "--hparam": "--set"}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--recipe",
            type=Choice(list_recipes(), "recipe"),
            metavar="NAME",
            help="start from a paper's published settings (--list-recipes shows them); --config and flags override it",
        )
        parser.add_argument(
            "--smoke",
            action="store_true",
            help="run --recipe end to end on a tiny model and synthetic data for a few steps (offline)",
        )
        parser.add_argument("--list-recipes", action="store_true", help="list the recipes and exit")
        super().add_arguments(parser)

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        given = super().values(args)
        return {**recipe_values(args, given), **given}

    def settings(self, args: argparse.Namespace) -> Any:
        return None if args.list_recipes else super().settings(args)

    def validate(self, config: Any) -> None:
        if config is not None:
            super().validate(config)

    def execute(self, config: Any, args: argparse.Namespace) -> int:
        if config is None:
            print_recipes()
            return 0
        configs = [config]
        if args.recipe is not None and "model" not in super().values(args):  # --model: the user's own first stage
            configs = stage_configs(load_recipe(args.recipe), config, smoke=args.smoke)
        for stage in configs[:-1]:
            print_result(f"stage {stage.output_dir}: {json.dumps(train(stage).to_dict())}")
        result = train(configs[-1])
        print_result(json.dumps(result.to_dict(), indent=2))
        return 0


def recipe_values(args: argparse.Namespace, given: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig fields of `--recipe` (its smoke version with `--smoke`); {} without a recipe.

    `given` (YAML ← flags) goes on top later; a `loss` there other than the recipe's drops the recipe's
    loss_hparams (they belong to its loss), and with `--smoke` the tiny task goes under the final output_dir.
    """
    name, smoke = args.recipe, args.smoke
    if name is None:
        if smoke:
            raise SettingsError("--smoke runs a recipe: add --recipe NAME (see --list-recipes)")
        return {}
    recipe = load_recipe(name)
    if given.get("loss", recipe.loss) != recipe.loss:
        recipe = dataclasses.replace(recipe, train={**recipe.train, "loss": given["loss"], "loss_hparams": {}})
    if not smoke:
        return {"output_dir": f"runs/{recipe.name}", **recipe.train}
    output_dir = given.get("output_dir", f"runs/smoke/{recipe.name}")
    return {**smoke_settings(recipe, Path(output_dir) / "smoke-task"), "output_dir": output_dir}


def print_recipes() -> None:
    """Print each recipe on three lines: name, loss (its stages' first), model and data; its paper; the accelerate
    command of a real run."""
    for name in list_recipes():
        recipe = load_recipe(name)
        settings = recipe.train
        losses = " → ".join([str(stage.train["loss"]) for stage in recipe.stages] + [recipe.loss])  # stages first
        print(
            f"{name:<20} {losses:<6} {settings.get('model')}  on  {settings.get('data')}\n"
            f"{'':<20} {recipe.paper}\n{'':<20} {recipe.launch_command()}"
        )


COMMAND = TrainCommand()


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` of parsed `prefopt train` arguments (defaults ← recipe ← YAML ← flags ← --set)."""
    return COMMAND.settings(args)


def main(argv: Sequence[str] | None = None) -> int:
    """`prefopt train` with `argv` (the arguments after `train`): the entry point of `python -m prefopt.train`."""
    return COMMAND.main(argv)
