"""`prefopt train-online`: the command-line edge of `prefopt.online.train_online` (YAML and argparse only here).

    prefopt train-online                                  # RLOO on the built-in synthetic task, gold reward
    prefopt train-online --algorithm ppo --steps 60 --kl-coef 0.05 --out runs/ppo
    prefopt train-online --algorithm online_dpo --pair-loss ipo --pair-hparam beta=0.5
    prefopt train-online --model path/to/sft --reward runs/rm/final --prompts prompts.jsonl --lr 1e-6
    prefopt train-online --config online.yaml --hparam beta=0.0 --resume

Settings: the `OnlineConfig` defaults, overridden by the YAML file's keys (OnlineConfig field names), then by
the flags given on the command line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefopt.cli_settings import (
    CommandParser,
    add_setting_flags,
    check_resume_folder,
    fail,
    given_settings,
    merge_pairs,
    parse_assignments,
    read_settings_file,
    user_errors,
)

__all__ = ["add_train_online_parser", "run_train_online", "online_config_from_args", "main"]

# flag → (OnlineConfig field, type, help); flags not given stay out of the merged settings.
_OPTIONS: dict[str, tuple[str, Any, str]] = {
    "--algorithm": ("algorithm", str, "registered rollout loss (`prefopt losses`); default rloo"),
    "--pair-loss": ("pair_loss", str, "online_dpo: any paired loss for the best/worst pairs (default: DPO)"),
    "--model": ("model", str, "policy: causal LM path or Hub name (default: the synthetic task's policy)"),
    "--tokenizer": ("tokenizer", str, "tokenizer path (default: the model's)"),
    "--model-revision": ("model_revision", str, "hub revision (branch, tag or commit) of --model and its tokenizer"),
    "--reward": ("reward", str, "'gold' (synthetic task) or a saved reward model's folder"),
    "--value-model": ("value_model", str, "PPO: reward model folder to initialise the critic from"),
    "--prompts": ("prompts", str, "prompt file: .txt one per line, or .jsonl with a `prompt` column"),
    "--out": ("output_dir", str, "run folder (default runs/online)"),
    "--steps": ("steps", int, "rollout steps"),
    "--prompts-per-step": ("prompts_per_step", int, "B prompts per rollout"),
    "--num-samples": ("num_samples", int, "K completions per prompt (default: the algorithm's)"),
    "--max-new-tokens": ("max_new_tokens", int, "completion length cap"),
    "--temperature": ("temperature", float, "sampling temperature"),
    "--top-p": ("top_p", float, "nucleus sampling mass"),
    "--generation-batch-size": ("generation_batch_size", int, "prompts per generate call"),
    "--lr": ("lr", float, "policy learning rate (default: 2e-4 synthetic, 1e-6 otherwise)"),
    "--value-lr": ("value_lr", float, "critic learning rate (default: --lr)"),
    "--weight-decay": ("weight_decay", float, "Adam weight decay"),
    "--max-grad-norm": ("max_grad_norm", float, "gradient clipping norm"),
    "--epochs": ("epochs", int, "optimisation passes per rollout (default: ppo 4, else 1)"),
    "--num-minibatches": ("num_minibatches", int, "minibatches per pass (split by prompt)"),
    "--kl-coef": ("kl_coef", float, "PPO: β of the KL-shaped reward"),
    "--kl-estimator": ("kl_estimator", str, "PPO: k1 or k3"),
    "--kl-target": ("kl_target", float, "PPO: adaptive KL controller target (nats)"),
    "--kl-horizon": ("kl_horizon", float, "PPO: adaptive KL controller horizon"),
    "--gamma": ("gamma", float, "PPO: GAE discount γ"),
    "--lam": ("lam", float, "PPO: GAE λ"),
    "--missing-eos-penalty": ("missing_eos_penalty", float, "subtract from the score of unfinished completions"),
    "--seed": ("seed", int, "seed of prompt order, sampling and the critic head"),
    "--checkpoint-every": ("checkpoint_every", int, "checkpoint every N steps (default 20; 0: final only)"),
    "--num-threads": ("num_threads", int, "torch threads (default: 1 on the synthetic task)"),
    "--engine-backend": ("engine_backend", str, "output-head kernel: auto, chunked, reference or triton"),
    "--mixed-precision": ("mixed_precision", str, "no (bf16 autocast only for a bf16 checkpoint), bf16 or auto"),
    "--master-weights": ("master_weights", str, "fp32 (default: fp32 weights and optimiser state, bf16 compute "
                         "where bf16 applies) or bf16 (pure bf16: small updates round away)"),
    "--save-dtype": ("save_dtype", str, "dtype of final/: original (the checkpoint's, default) or fp32"),
}
_SWITCHES: dict[str, tuple[str, bool, str]] = {
    "--no-whiten-advantages": ("whiten_advantages", False, "PPO: keep the raw GAE advantages"),
    "--resume": ("resume", True, "continue from the newest checkpoint in --out"),
    "--no-progress": ("progress", False, "no progress bar"),
}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file of OnlineConfig settings (flags override it)")
    add_setting_flags(parser, _OPTIONS, _SWITCHES)
    parser.add_argument("--hparam", action="append", default=[], metavar="NAME=VALUE",
                        help="hyper-parameter of the algorithm's loss, repeatable (e.g. --hparam beta=0.04)")
    parser.add_argument("--pair-hparam", action="append", default=[], metavar="NAME=VALUE",
                        help="hyper-parameter of --pair-loss, repeatable")


def add_train_online_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `train-online` to an argparse sub-command group; the parser's `func` runs it (returns the exit code)."""
    parser = subparsers.add_parser("train-online", help="train a policy online: generate → score → rollout loss",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    parser.set_defaults(func=run_train_online)
    return parser


def online_config_from_args(args: argparse.Namespace) -> Any:
    """Merge OnlineConfig defaults ← YAML (`--config`) ← flags into an `OnlineConfig`."""
    from prefopt.online.config import OnlineConfig

    values: dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        values.update(read_settings_file(args.config, "OnlineConfig"))
    values.update(given_settings(args, _OPTIONS, _SWITCHES))
    merge_pairs(values, "loss_hparams", parse_assignments(args.hparam, "--hparam"))
    merge_pairs(values, "pair_loss_hparams", parse_assignments(args.pair_hparam, "--pair-hparam"))
    config = getattr(args, "config", None)
    return OnlineConfig.from_dict(values, source=None if config is None else str(config))


def run_train_online(args: argparse.Namespace) -> int:
    """Run `prefopt train-online` from parsed arguments; prints the result as JSON. Exit code 2 on bad settings."""
    from prefopt.online.trainer import train_online

    try:
        config = online_config_from_args(args)
        check_resume_folder(config.resume, config.output_dir)
    except (ValueError, TypeError) as err:
        return fail("train-online", err)
    try:
        result = train_online(config)
    except user_errors() as err:
        return fail("train-online", err)
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `prefopt train-online` with `argv` (for `python -m` style use and tests)."""
    parser = CommandParser(prog="prefopt train-online", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    return run_train_online(parser.parse_args(argv))
