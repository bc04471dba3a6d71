"""`prefopt train`: the command-line edge of `prefopt.train.train` (YAML and argparse live only here).

    prefopt train                                   # DPO on the built-in synthetic task
    prefopt train --loss kto --data prefs.jsonl --model path/to/sft --lr 5e-7 --out runs/kto
    prefopt train --config run.yaml --hparam beta=0.05 --lora-r 16 --no-ref-cache
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m prefopt.train --loss dpo --batch-size 16
    prefopt train --list-recipes                    # the papers' published settings (docs/recipes.md)
    prefopt train --recipe simpo-llama3-base --smoke --out runs/smoke    # that recipe on a tiny model, offline
    accelerate launch --multi_gpu --num_processes 8 -m prefopt.train --recipe zephyr-7b-beta --out runs/zephyr

Settings: the `TrainConfig` defaults, overridden by the recipe's (`--recipe`; with `--smoke` its smoke
version, `prefopt.train.recipes.smoke_settings`), then by the YAML file's keys (TrainConfig field names),
then by the flags given on the command line.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefopt.cli_settings import (
    CommandParser,
    add_setting_flags,
    check_resume_folder,
    data_files_notice,
    fail,
    given_settings,
    merge_pairs,
    parse_assignments,
    read_settings_file,
    user_errors,
)

__all__ = ["add_train_command", "run_train", "config_from_args", "print_recipes", "main"]

# flag → (TrainConfig field, type, help); flags not given stay out of the merged settings.
_OPTIONS: dict[str, tuple[str, Any, str]] = {
    "--loss": ("loss", str, "registered loss name (`prefopt losses`); default dpo"),
    "--data": ("data", str, "preference data: file, folder or Hub name (default: the synthetic task)"),
    "--split": ("data_split", str, "split of --data to train on (slices like train[:1000] work)"),
    "--data-revision": ("data_revision", str, "git revision (commit, tag, branch) of a Hub dataset --data, to pin it"),
    "--identical": ("identical", str, "pairs with chosen == rejected: warn (keep, count), drop or error"),
    "--model": ("model", str, "causal LM path or Hub name (default: the synthetic task's policy)"),
    "--tokenizer": ("tokenizer", str, "tokenizer path (default: the model's)"),
    "--reference": ("reference", str, "separate reference model (default: the initial policy)"),
    "--model-revision": ("model_revision", str, "hub revision (branch, tag or commit) of --model and its tokenizer"),
    "--reference-revision": ("reference_revision", str, "hub revision (branch, tag or commit) of --reference"),
    "--out": ("output_dir", str, "run folder (default runs/train)"),
    "--batch-size": ("batch_size", int, "GLOBAL examples per optimiser step"),
    "--micro-batch-size": ("micro_batch_size", int, "examples per forward and process (accumulates the rest)"),
    "--epochs": ("epochs", float, "passes over the data"),
    "--max-steps": ("max_steps", int, "optimiser steps (overrides --epochs)"),
    "--preset": ("preset", str, "optimiser preset: a loss name or 'synthetic' (prefopt.train.PRESETS)"),
    "--optimizer": ("optimizer", str, "adamw, rmsprop or sgd (overrides the preset)"),
    "--lr": ("lr", float, "peak learning rate (overrides the preset)"),
    "--weight-decay": ("weight_decay", float, "weight decay (overrides the preset)"),
    "--schedule": ("schedule", str, "constant, linear, cosine or inverse_sqrt (overrides the preset)"),
    "--warmup-steps": ("warmup_steps", int, "warm-up steps (overrides the preset)"),
    "--warmup-ratio": ("warmup_ratio", float, "warm-up fraction (overrides the preset)"),
    "--max-grad-norm": ("max_grad_norm", float, "gradient clipping norm (overrides the preset)"),
    "--max-length": ("max_length", int, "prompt + completion token cap"),
    "--max-prompt-length": ("max_prompt_length", int, "prompt token cap"),
    "--ref-cache-dir": ("ref_cache_dir", str, "folder of reference caches (shareable between runs on the same data)"),
    "--engine-backend": ("engine_backend", str, "output-head kernel: auto, chunked, reference or triton"),
    "--lora-r": ("lora_r", int, "LoRA rank (0: full fine-tuning)"),
    "--lora-alpha": ("lora_alpha", float, "LoRA α (default 2r)"),
    "--lora-dropout": ("lora_dropout", float, "LoRA dropout"),
    "--quantization": ("quantization", str, "4bit or 8bit bitsandbytes loading (needs --lora-r)"),
    "--mixed-precision": ("mixed_precision", str, "no (bf16 autocast only for a bf16 checkpoint), bf16 or auto"),
    "--master-weights": ("master_weights", str, "fp32 (default: fp32 weights and optimiser state, bf16 compute "
                         "where bf16 applies) or bf16 (pure bf16: small updates round away)"),
    "--save-dtype": ("save_dtype", str, "dtype of final/: original (the checkpoint's, default) or fp32"),
    "--seed": ("seed", int, "seed of data order, LoRA init and dropout"),
    "--checkpoint-every": ("checkpoint_every", int, "checkpoint every N steps (0: final only)"),
    "--log-every": ("log_every", int, "write metrics every N steps"),
}
_SWITCHES: dict[str, tuple[str, bool, str]] = {
    "--no-ref-cache": ("ref_cache", False, "compute reference log-probs on the fly instead of caching them once"),
    "--packed": ("packed", True, "pack each micro-batch into one row (no padding)"),
    "--gradient-checkpointing": ("gradient_checkpointing", True, "recompute activations in backward"),
    "--resume": ("resume", True, "continue from the newest checkpoint in --out"),
    "--no-progress": ("progress", False, "no progress bar"),
    "--cpu": ("cpu", True, "force the CPU (needed for multi-process CPU runs)"),
}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", metavar="NAME",
                        help="start from a paper's published settings (--list-recipes); --config and flags override it")
    parser.add_argument("--smoke", action="store_true",
                        help="run --recipe end to end on a tiny model and synthetic data for a few steps (offline)")
    parser.add_argument("--list-recipes", action="store_true", help="list the recipes and exit")
    parser.add_argument("--config", type=Path, help="YAML file of TrainConfig settings (flags override it)")
    add_setting_flags(parser, _OPTIONS, _SWITCHES)
    parser.add_argument("--hparam", action="append", default=[], metavar="NAME=VALUE",
                        help="loss hyper-parameter, repeatable (e.g. --hparam beta=0.05)")
    parser.add_argument("--report-to", dest="report_to", action="append", default=argparse.SUPPRESS,
                        choices=["tensorboard", "wandb"], help="also log to this tracker (repeatable)")


def add_train_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add `train` to an argparse sub-command group; the parser's `func` runs it and returns the exit code."""
    parser = subparsers.add_parser("train", help="train a policy with an offline preference loss",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    parser.set_defaults(func=run_train)
    return parser


def _recipe_values(args: argparse.Namespace, given: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig fields of `--recipe` (its smoke version with `--smoke`); {} without a recipe.

    `given` (YAML ← flags) goes on top later; a `loss` there other than the recipe's drops the recipe's
    loss_hparams (they belong to its loss), and with `--smoke` the tiny task goes under the final output_dir.
    """
    import dataclasses

    from prefopt.train.recipes import load_recipe, smoke_settings

    name, smoke = getattr(args, "recipe", None), getattr(args, "smoke", False)
    if name is None:
        if smoke:
            raise ValueError("--smoke runs a recipe: add --recipe NAME (see --list-recipes)")
        return {}
    recipe = load_recipe(name)
    if given.get("loss", recipe.loss) != recipe.loss:
        recipe = dataclasses.replace(recipe, train={**recipe.train, "loss": given["loss"], "loss_hparams": {}})
    if not smoke:
        return {"output_dir": f"runs/{recipe.name}", **recipe.train}
    output_dir = given.get("output_dir", f"runs/smoke/{recipe.name}")
    return {**smoke_settings(recipe, Path(output_dir) / "smoke-task"), "output_dir": output_dir}


def config_from_args(args: argparse.Namespace) -> Any:
    """Merge TrainConfig defaults ← recipe (`--recipe`, `--smoke`) ← YAML (`--config`) ← flags into a `TrainConfig`."""
    from prefopt.train.config import TrainConfig

    given: dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        given.update(read_settings_file(args.config, "TrainConfig"))
    given.update(given_settings(args, _OPTIONS, _SWITCHES, extra=("report_to",)))
    values = {**_recipe_values(args, given), **given}
    merge_pairs(values, "loss_hparams", parse_assignments(args.hparam, "--hparam"))
    config = getattr(args, "config", None)
    return TrainConfig.from_dict(values, source=None if config is None else str(config))


def print_recipes() -> None:
    """Print each recipe on three lines: name, loss, model and data; its paper; the accelerate command of a real run."""
    from prefopt.train.recipes import list_recipes, load_recipe

    for name in list_recipes():
        recipe = load_recipe(name)
        train = recipe.train
        print(f"{name:<20} {recipe.loss:<6} {train.get('model')}  on  {train.get('data')}\n"
              f"{'':<20} {recipe.paper}\n{'':<20} {recipe.launch_command()}")


def run_train(args: argparse.Namespace) -> int:
    """Run `prefopt train` from parsed arguments; prints the result as JSON. Exit code 2 on bad settings."""
    from prefopt.train.loop import train

    if getattr(args, "list_recipes", False):
        print_recipes()
        return 0
    try:
        config = config_from_args(args)
        check_resume_folder(config.resume, config.output_dir)
    except (ValueError, TypeError) as err:
        return fail("train", err)
    try:
        with data_files_notice("train", config.progress):
            result = train(config)
    except user_errors() as err:
        return fail("train", err)
    if int(os.environ.get("RANK", "0")) == 0:  # one copy of the result under torchrun / accelerate launch
        print(json.dumps(result.to_dict(), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m prefopt.train`."""
    parser = CommandParser(prog="prefopt train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    return run_train(parser.parse_args(argv))
