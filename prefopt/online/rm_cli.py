"""`prefopt train-rm`: the command-line edge of `prefopt.online.reward_model.train_reward_model`.

    prefopt train-rm                                              # Bradley–Terry RM on the synthetic task
    prefopt train-rm --loss plackett_luce_rm --epochs 3           # K-wise, on the task's ranked data
    prefopt train-rm --model path/to/sft --data prefs.jsonl --lr 1e-5 --out runs/rm
    prefopt train-rm --init scratch --hidden-size 32 --num-layers 1 --out runs/rm-small   # a proxy RM
    prefopt train-rm --config rm.yaml --hparam center_coef=0.01

Settings: the `RewardModelConfig` defaults, overridden by the YAML file's keys (its field names), then by
the flags given on the command line. Paired data may carry a `margin` column (Bradley–Terry margin).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefopt.cli_settings import (
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

__all__ = ["add_train_rm_parser", "run_train_rm", "config_from_args"]

# flag → (RewardModelConfig field, type, help); flags not given stay out of the merged settings.
_OPTIONS: dict[str, tuple[str, Any, str]] = {
    "--loss": ("loss", str, "reward loss: bradley_terry (paired data, default) or plackett_luce_rm (ranked data)"),
    "--model": ("model", str, "HF model path or Hub name for the RM body (default: a synthetic-task RM)"),
    "--tokenizer": ("tokenizer", str, "tokenizer path (default: the model's)"),
    "--model-revision": ("model_revision", str, "hub revision (branch, tag or commit) of --model and its tokenizer"),
    "--data": ("data", str, "preference data: file, folder or Hub name (default: the synthetic task)"),
    "--split": ("data_split", str, "split of --data to train on (default train)"),
    "--eval-split": ("eval_split", str, "held-out split (default: eval, test or validation; 'none': skip)"),
    "--max-length": ("max_length", int, "prompt + completion token cap"),
    "--max-prompt-length": ("max_prompt_length", int, "prompt token cap"),
    "--init": ("init", str, "synthetic RM body: policy (copy the reference policy) or scratch"),
    "--hidden-size": ("hidden_size", int, "synthetic RM width (needs --init scratch)"),
    "--num-layers": ("num_layers", int, "synthetic RM depth (needs --init scratch)"),
    "--task-seed": ("task_seed", int, "seed of the synthetic task (policy and data)"),
    "--lr": ("lr", float, "AdamW peak learning rate (default 1e-5; 3e-4 on the synthetic task)"),
    "--weight-decay": ("weight_decay", float, "AdamW weight decay"),
    "--warmup-ratio": ("warmup_ratio", float, "linear warm-up share of the steps (then linear decay)"),
    "--max-grad-norm": ("max_grad_norm", float, "gradient clipping norm"),
    "--epochs": ("epochs", float, "passes over the data (default 1; 2 on the synthetic task)"),
    "--batch-size": ("batch_size", int, "preference rows (pairs or rankings) per optimiser step"),
    "--eval-batch-size": ("eval_batch_size", int, "rows per evaluation forward"),
    "--seed": ("seed", int, "seed of the score head and the data order"),
    "--device": ("device", str, "cpu, cuda, cuda:1, ... (default: CUDA when available)"),
    "--num-threads": ("num_threads", int, "torch CPU threads (default 1 on the synthetic task)"),
    "--mixed-precision": ("mixed_precision", str, "no (bf16 autocast only for a bf16 checkpoint), bf16 or auto"),
    "--master-weights": ("master_weights", str, "fp32 (default: fp32 weights and optimiser state, bf16 compute "
                         "where bf16 applies) or bf16 (pure bf16: small updates round away)"),
    "--save-dtype": ("save_dtype", str, "dtype of final/: original (the checkpoint's, default) or fp32"),
    "--out": ("output_dir", str, "run folder (default runs/reward_model)"),
    "--log-every": ("log_every", int, "write metrics every N steps"),
    "--checkpoint-every": ("checkpoint_every", int, "checkpoint every N steps (default 200; 0: never)"),
}
_SWITCHES: dict[str, tuple[str, bool, str]] = {
    "--resume": ("resume", True, "continue from the newest checkpoint in --out"),
    "--no-progress": ("progress", False, "no progress bar"),
}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file of RewardModelConfig settings (flags override it)")
    add_setting_flags(parser, _OPTIONS, _SWITCHES)
    parser.add_argument("--hparam", action="append", default=[], metavar="NAME=VALUE",
                        help="loss hyper-parameter, repeatable (e.g. --hparam center_coef=0.01)")
    parser.add_argument("--tiny", action="store_true",
                        help="a seconds-scale synthetic task (SFTConfig.tiny(), 96 train prompts): smoke tests")


def add_train_rm_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `train-rm` to an argparse sub-command group; the parser's `func` runs it and returns the exit code."""
    parser = subparsers.add_parser("train-rm", help="train a reward model (Bradley–Terry or Plackett–Luce)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    parser.set_defaults(func=run_train_rm)
    return parser


def config_from_args(args: argparse.Namespace) -> Any:
    """Merge RewardModelConfig defaults ← YAML (`--config`) ← `--tiny` ← flags into a `RewardModelConfig`."""
    from prefopt.online.reward_config import RewardModelConfig

    values: dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        values.update(read_settings_file(args.config, "RewardModelConfig"))
    if getattr(args, "tiny", False):
        from prefopt.online.reward_config import tiny_task

        values.update(tiny_task())
    values.update(given_settings(args, _OPTIONS, _SWITCHES))
    merge_pairs(values, "loss_hparams", parse_assignments(args.hparam, "--hparam", "center_coef=0.01"))
    config = getattr(args, "config", None)
    return RewardModelConfig.from_dict(values, source=None if config is None else str(config))


def run_train_rm(args: argparse.Namespace) -> int:
    """Run `prefopt train-rm` from parsed arguments; prints a summary. Exit code 2 on bad settings."""
    from prefopt.online.reward_model import train_reward_model

    try:
        config = config_from_args(args)
        check_resume_folder(config.resume, config.output_dir)
    except (ValueError, TypeError) as err:
        return fail("train-rm", err)
    try:
        with data_files_notice("train-rm", config.progress):
            result = train_reward_model(config)
    except user_errors() as err:
        return fail("train-rm", err)
    if result.eval_accuracy is None:
        held_out = "no eval split"
    else:
        held_out = (f"eval accuracy {result.eval_accuracy:.3f}, margin {result.eval_margin:+.3f} "
                    f"on {result.eval_examples} held-out rows")
    print(f"reward model ({config.loss}, {result.num_parameters:,} parameters, {result.steps} steps, "
          f"{result.wall_time_s:.1f} s): {held_out}; train accuracy {result.train_accuracy:.3f}")
    print(f"saved to {result.model_path}  (score with prefopt.online.reward_model.LearnedReward({str(result.model_path)!r}))")
    return 0
