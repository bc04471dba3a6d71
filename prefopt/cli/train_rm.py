"""`prefopt train-rm`: train a reward model (`prefopt.online.reward_model.train_reward_model`).

Settings, later winning: `RewardModelConfig`'s defaults ← the `--config` YAML file ← `--tiny` ← the flags
given ← `--set`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from prefopt.cli.choices import INITS, MASTER_WEIGHTS, MIXED_PRECISION, REWARD_MODEL, SAVE_DTYPES
from prefopt.cli.command import ConfigCommand, Option, Switch, given_settings
from prefopt.cli.settings import read_settings_file
from prefopt.cli.train import MASTER_WEIGHTS_HELP, MIXED_PRECISION_HELP, SAVE_DTYPE_HELP
from prefopt.online.reward_config import RewardModelConfig, tiny_task
from prefopt.online.reward_model import train_reward_model

__all__ = ["COMMAND", "TrainRewardModelCommand", "config_from_args", "main"]


class TrainRewardModelCommand(ConfigCommand):
    name = "train-rm"
    help = "train a reward model on preference data"
    description = (
        "Train a reward model r(x, y) on preference data: a causal LM body with a scalar score head, saved in "
        "transformers format for `prefopt train-online --reward` and `prefopt compare --reward`. Paired data may "
        "carry a `margin` column (Bradley–Terry with margin). With no data and no model it trains on the built-in "
        "synthetic task. Settings, later winning: the defaults, the --config file, --tiny, the flags."
    )
    examples = """\
examples:
  prefopt train-rm                                              # Bradley–Terry RM on the synthetic task
  prefopt train-rm --loss plackett_luce_rm --epochs 3           # K-wise, on the task's ranked data
  prefopt train-rm --model path/to/sft --data prefs.jsonl --lr 1e-5 --out runs/rm
  prefopt train-rm --init scratch --hidden-size 32 --num-layers 1 --out runs/rm-small   # a proxy RM
  prefopt train-rm --config rm.yaml --set center_coef=0.01"""
    config = RewardModelConfig
    config_name = "RewardModelConfig"
    flags = {
        "--loss": Option(
            "loss",
            str,
            "the reward-model loss (default bradley_terry, paired data)",
            choices=REWARD_MODEL.names,
            explain=REWARD_MODEL.explain,
            metavar="LOSS",
        ),
        "--model": Option("model", str, "HF model path or Hub name for the RM body (default: a synthetic-task RM)"),
        "--tokenizer": Option("tokenizer", str, "tokenizer path (default: the model's)"),
        "--model-revision": Option(
            "model_revision", str, "hub revision (branch, tag or commit) of --model and its tokenizer"
        ),
        "--data": Option("data", str, "preference data: file, folder or Hub name (default: the synthetic task)"),
        "--split": Option("data_split", str, "split of --data to train on (default train)"),
        "--eval-split": Option("eval_split", str, "held-out split (default: eval, test or validation; 'none': skip)"),
        "--max-length": Option("max_length", int, "prompt + completion token cap"),
        "--max-prompt-length": Option("max_prompt_length", int, "prompt token cap"),
        "--init": Option(
            "init", str, "synthetic RM body: policy (copy the reference policy) or scratch", choices=INITS
        ),
        "--hidden-size": Option("hidden_size", int, "synthetic RM width (needs --init scratch)"),
        "--num-layers": Option("num_layers", int, "synthetic RM depth (needs --init scratch)"),
        "--task-seed": Option("task_seed", int, "seed of the synthetic task (policy and data)"),
        "--lr": Option("lr", float, "AdamW peak learning rate (default 1e-5; 3e-4 on the synthetic task)"),
        "--weight-decay": Option("weight_decay", float, "AdamW weight decay"),
        "--warmup-ratio": Option("warmup_ratio", float, "linear warm-up share of the steps (then linear decay)"),
        "--max-grad-norm": Option("max_grad_norm", float, "gradient clipping norm"),
        "--epochs": Option("epochs", float, "passes over the data (default 1; 2 on the synthetic task)"),
        "--batch-size": Option("batch_size", int, "preference rows (pairs or rankings) per optimiser step"),
        "--eval-batch-size": Option("eval_batch_size", int, "rows per evaluation forward"),
        "--seed": Option("seed", int, "seed of the score head and the data order"),
        "--device": Option("device", str, "cpu, cuda, cuda:1, ... (default: CUDA when available)"),
        "--num-threads": Option("num_threads", int, "torch CPU threads (default 1 on the synthetic task)"),
        "--mixed-precision": Option("mixed_precision", str, MIXED_PRECISION_HELP, choices=MIXED_PRECISION),
        "--master-weights": Option("master_weights", str, MASTER_WEIGHTS_HELP, choices=MASTER_WEIGHTS),
        "--save-dtype": Option("save_dtype", str, SAVE_DTYPE_HELP, choices=SAVE_DTYPES),
        "--out": Option("output_dir", str, "run folder (default runs/reward_model)", metavar="DIR"),
        "--log-every": Option("log_every", int, "write metrics every N steps"),
        "--checkpoint-every": Option("checkpoint_every", int, "checkpoint every N steps (default 200; 0: never)"),
        "--resume": Switch("resume", True, "continue from the newest checkpoint in --out"),
        "--quiet": Switch("progress", False, "no progress bar, no note of the data files read"),
    }
    deprecated = {"--no-progress": "--quiet", "--hparam": "--set"}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--tiny",
            action="store_true",
            help="a seconds-scale synthetic task (SFTConfig.tiny(), 96 train prompts): smoke tests",
        )

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if args.config is not None:
            values.update(read_settings_file(args.config, self.config_name))
        if args.tiny:
            values.update(tiny_task())
        values.update(given_settings(args, self.flags))
        return values

    def execute(self, config: Any, args: argparse.Namespace) -> int:
        result = train_reward_model(config)
        if result.eval_accuracy is None:
            held_out = "no eval split"
        else:
            held_out = (
                f"eval accuracy {result.eval_accuracy:.3f}, margin {result.eval_margin:+.3f} "
                f"on {result.eval_examples} held-out rows"
            )
        print(
            f"reward model ({config.loss}, {result.num_parameters:,} parameters, {result.steps} steps, "
            f"{result.wall_time_s:.1f} s): {held_out}; train accuracy {result.train_accuracy:.3f}"
        )
        print(
            f"saved to {result.model_path}  (score with prefopt.online.reward_model.LearnedReward("
            f"{str(result.model_path)!r}))"
        )
        return 0


COMMAND = TrainRewardModelCommand()


def config_from_args(args: argparse.Namespace) -> RewardModelConfig:
    """The `RewardModelConfig` of parsed `prefopt train-rm` arguments (defaults ← YAML ← --tiny ← flags ← --set)."""
    return COMMAND.settings(args)


def main(argv: Sequence[str] | None = None) -> int:
    """`prefopt train-rm` with `argv` (the arguments after `train-rm`)."""
    return COMMAND.main(argv)
