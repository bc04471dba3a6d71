"""`prefopt compare`: train several losses on the same data, model and seeds (`prefopt.compare.compare`).

Settings, later winning: `CompareConfig`'s defaults ← `--tiny` ← the `--config` YAML file ← the flags given.
`--lr`, `--epochs`, `--batch-size`, `--max-steps` and `--train KEY=VALUE` go into its `train` mapping
(TrainConfig settings of every offline run), `--online KEY=VALUE` into `online`, `--set LOSS.HPARAM=V[,V...]`
into `hparams` (a list of values is a sweep).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from prefopt.cli.command import ConfigCommand, FlagAction, Option, Switch
from prefopt.cli.settings import join_rewards, parse_assignments, parse_sweeps
from prefopt.compare import DEFAULT_LOSSES, CompareConfig, compare, tiny_task

__all__ = ["COMMAND", "CompareCommand", "config_from_args", "main"]

# Flags of TrainConfig settings shared by every offline run: they go into CompareConfig.train.
TRAIN_FIELDS = ("lr", "epochs", "batch_size", "max_steps")


class CompareCommand(ConfigCommand):
    name = "compare"
    help = "train several losses on the same data, model and seeds; table + plots"
    description = (
        "Train each loss (and each sweep point) for each seed on the same data and model, evaluate them the same "
        "way, and write a table (mean ± CI over seeds), plots and results.json to --out. With no arguments: "
        f"{', '.join(DEFAULT_LOSSES)} at their paper defaults on the built-in synthetic task. Online algorithms "
        "(`prefopt losses --kind rollout`) join the same table and the reward-versus-KL frontier. Re-running with the "
        "same --out resumes: finished runs made with the same settings are loaded, not trained again; runs made with "
        "other settings are refused (--overwrite retrains them). `prefopt report DIR` renders the report again."
    )
    examples = """\
examples:
  prefopt compare                                   # dpo, ipo, kto, orpo, simpo on the built-in synthetic task
  prefopt compare --losses dpo,ipo,simpo --set dpo.beta=0.05,0.1,0.5 --seeds 0,1,2 --out runs/beta-sweep
  prefopt compare --tiny --max-steps 5              # a seconds-scale smoke test of the whole pipeline
  prefopt compare --data prefs.jsonl --model path/to/sft --losses dpo,kto --lr 5e-7
  prefopt compare --losses dpo,ppo,rloo,best_of_n --online steps=60   # offline and online on one frontier
  prefopt compare --losses all --seeds 0,1,2 --jobs 2 --out runs/atlas  # every algorithm: docs/atlas.md"""
    config = CompareConfig
    config_name = "CompareConfig"
    loss_field = None  # --set takes LOSS.HPARAM=V[,V...]: several losses, sweeps
    flags = {
        "--losses": Option(
            "losses",
            str,
            "comma-separated loss names, offline or online (default: "
            f"{','.join(DEFAULT_LOSSES)}; `prefopt losses` lists them), e.g. dpo,ppo,rloo,best_of_n "
            "for the reward-versus-KL frontier; all: every registered one (the atlas, docs/atlas.md)",
            metavar="LOSS,LOSS,...",
        ),
        "--seeds": Option(
            "seeds",
            str,
            "comma-separated training seeds, e.g. 0,1,2 (mean ± CI over seeds; default 0)",
            metavar="SEED,SEED,...",
        ),
        "--out": Option("output_dir", str, "output folder (default runs/compare)", metavar="DIR"),
        "--data": Option("data", str, "preference data (file, folder or hub name); needs --model"),
        "--model": Option("model", str, "causal LM path or hub name to start from; needs --data"),
        "--model-revision": Option("model_revision", str, "with a hub name for --model: the branch, tag or commit"),
        "--reward": Option(
            "reward",
            str,
            "what scores samples, for online algorithms and the generation columns: a reward model folder "
            "(`prefopt train-rm`) or a Python function module:function (several: comma-separated or the flag "
            "repeated); default: the gold reward on the synthetic task",
            repeat=True,
        ),
        "--reward-weights": Option(
            "reward_weights", str, "one weight per --reward function, e.g. 1.0,0.5 (default 1 each)", metavar="W,W,..."
        ),
        "--lr": Option("lr", float, "peak learning rate of every offline run (default: each loss's preset)"),
        "--epochs": Option("epochs", float, "passes over the training data of every offline run"),
        "--batch-size": Option("batch_size", int, "examples per optimiser step of every offline run"),
        "--max-steps": Option("max_steps", int, "optimiser steps of every offline run (overrides --epochs)"),
        "--bon-n": Option(
            "bon_n", str, "with best_of_n: the N values of the best-of-N policy (default 1,2,4,8,16)", metavar="N,N,..."
        ),
        "--bon-samples": Option(
            "bon_samples", int, "reference samples per held-out prompt for best-of-N (default 64, ≥ 4·max N)"
        ),
        "--eval-prompts": Option("eval_prompts", int, "held-out prompts to sample (default 512)"),
        "--holdout": Option(
            "holdout",
            float,
            "with --data that has no eval split: the share of its prompts held out for evaluation, not trained on "
            "(default 0.1; 0: none)",
        ),
        "--max-new-tokens": Option(
            "max_new_tokens", int, "completion length cap when sampling held-out prompts (default 64)"
        ),
        "--jobs": Option(
            "jobs",
            int,
            "runs trained at once, each in its own process, with the same results as one at a time (default: one "
            "per core on the synthetic task, 1 with --data)",
            metavar="N",
        ),
        "--quiet": Switch("progress", False, "no progress bars, no note of the data files read"),
        "--overwrite": Switch(
            "overwrite",
            True,
            "retrain the runs of --out made with other settings (default: refuse, naming them and what differs)",
        ),
    }

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--set",
            dest="sweeps",
            action=FlagAction,
            repeat=True,
            default=[],
            metavar="LOSS.HPARAM=V[,V...]",
            help="a hyper-parameter of one loss, or a sweep over several values, e.g. --set "
            "dpo.beta=0.05,0.1,0.5 (repeatable)",
        )
        parser.add_argument(
            "--train",
            action=FlagAction,
            repeat=True,
            default=[],
            metavar="KEY=VALUE",
            help="a TrainConfig setting of every offline run, e.g. --train lr=1e-4 (repeatable)",
        )
        parser.add_argument(
            "--online",
            action=FlagAction,
            repeat=True,
            default=[],
            metavar="KEY=VALUE",
            help="an OnlineConfig setting of the online algorithms, e.g. --online steps=60 (repeatable)",
        )
        parser.add_argument(
            "--tiny", action="store_true", help="a seconds-scale synthetic task (smoke test, not for conclusions)"
        )

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        values = super().values(args)
        train_pairs = parse_assignments(args.train, "--train", "lr=1e-4")
        online_pairs = parse_assignments(args.online, "--online", "steps=60")
        flags = {field: values.pop(field) for field in TRAIN_FIELDS if field in values}
        values.setdefault("losses", list(DEFAULT_LOSSES))
        if args.sweeps:
            values["hparams"] = _with_sweeps(values.get("hparams"), parse_sweeps(args.sweeps))
        values["train"] = _merged(values.get("train"), {**flags, **train_pairs})
        values["online"] = _merged(values.get("online"), online_pairs)
        join_rewards(values)
        return {**tiny_task(), **values} if args.tiny else values

    def execute(self, config: Any, args: argparse.Namespace) -> int:
        compare(config)
        return 0


def _with_sweeps(hparams: Any, sweeps: Mapping[str, Mapping[str, Any]]) -> Any:
    """The file's `hparams` with the `--set` values on top (a value that is not a mapping is left for
    CompareConfig to report by name)."""
    hparams = hparams or {}
    if not isinstance(hparams, Mapping):
        return hparams
    merged = {loss: dict(values) if isinstance(values, Mapping) else values for loss, values in hparams.items()}
    for loss, values in sweeps.items():
        if isinstance(merged.setdefault(loss, {}), dict):
            merged[loss].update(values)
    return merged


def _merged(base: Any, extra: dict[str, Any]) -> Any:
    """A mapping setting of the file with the flags' pairs on top (a value that is not a mapping is left for the
    config to report)."""
    if base is None:
        return dict(extra)
    return {**base, **extra} if isinstance(base, Mapping) and extra else base


COMMAND = CompareCommand()


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """The `CompareConfig` of parsed `prefopt compare` arguments."""
    return COMMAND.settings(args)


def main(argv: Sequence[str] | None = None) -> int:
    """`prefopt compare` with `argv` (the arguments after `compare`)."""
    return COMMAND.main(argv)
