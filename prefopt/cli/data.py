"""`prefopt data synth --out DIR`: write the built-in synthetic task (`write_synthetic_task`) to a folder."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prefopt.cli.command import Command, Option, Switch, given_settings
from prefopt.data.synthetic.policy import SFTConfig
from prefopt.data.synthetic.preferences import PreferenceConfig
from prefopt.data.synthetic.task import write_synthetic_task

__all__ = ["COMMAND", "SynthCommand", "add_data_commands", "main"]

# Flags that set PreferenceConfig fields (the rest are write_synthetic_task's arguments).
PREFERENCE_FIELDS = (
    "train_prompts",
    "eval_prompts",
    "heldout_prompts",
    "completions_per_prompt",
    "label_temperature",
    "length_bias",
)


@dataclass(frozen=True)
class SynthSettings:
    """The arguments of one `write_synthetic_task` call."""

    out: str
    seed: int
    sft_config: SFTConfig
    preference_config: PreferenceConfig
    cache_dir: str | None
    rebuild: bool
    progress: bool
    with_gold: bool


class SynthCommand(Command):
    name = "data synth"
    help = "write the built-in synthetic preference task (model, tokenizer, datasets) to a folder"
    description = (
        "Train (or load from cache) the synthetic task's reference policy, sample preference data from it, label "
        "it with the gold reward and write everything to --out: model/ (weights and tokenizer), "
        "paired|unpaired|ranked/{train,eval}.jsonl, heldout_prompts.jsonl, samples.jsonl and summary.json."
    )
    examples = """\
examples:
  prefopt data synth --out synth/
  prefopt data synth --out s2/ --label-temperature 0 --length-bias 0.1 --with-gold"""
    flags = {
        "--out": Option(
            "out", str, "output folder (must not already hold a model/ folder)", metavar="DIR", required=True
        ),
        "--seed": Option("seed", int, "selects weights, prompts, samples and labels (default 0)"),
        "--train-prompts": Option(
            "train_prompts", int, f"prompts of the train split (default {PreferenceConfig().train_prompts})"
        ),
        "--eval-prompts": Option(
            "eval_prompts", int, f"prompts of the eval split (default {PreferenceConfig().eval_prompts})"
        ),
        "--heldout-prompts": Option(
            "heldout_prompts", int, f"prompts held out for generation (default {PreferenceConfig().heldout_prompts})"
        ),
        "--completions-per-prompt": Option(
            "completions_per_prompt",
            int,
            f"completions sampled per prompt (default {PreferenceConfig().completions_per_prompt})",
            aliases=("-k",),
        ),
        "--label-temperature": Option(
            "label_temperature",
            float,
            "Bradley–Terry noise temperature T (0 = labels "
            "always follow the gold reward; default "
            f"{PreferenceConfig().label_temperature})",
        ),
        "--length-bias": Option(
            "length_bias",
            float,
            f"labeller's extra utility per completion word (default {PreferenceConfig().length_bias})",
        ),
        "--cache-dir": Option("cache_dir", str, "cache root (default $PREFOPT_CACHE or ~/.cache/prefopt)"),
        "--tiny": Switch("tiny", True, "test-size reference policy (seconds, low quality)"),
        "--rebuild": Switch("rebuild", True, "retrain the reference policy even if cached"),
        "--with-gold": Switch("with_gold", True, "add gold-reward columns to the exported rows"),
        "--quiet": Switch("progress", False, "no progress bar, no summary on stdout"),
    }
    errors = (ValueError, FileExistsError)  # SettingsError is a ValueError

    def settings(self, args: argparse.Namespace) -> SynthSettings:
        given: dict[str, Any] = given_settings(args, self.flags)
        preferences = PreferenceConfig(**{k: v for k, v in given.items() if k in PREFERENCE_FIELDS})
        return SynthSettings(
            out=given["out"],
            seed=given.get("seed", 0),
            sft_config=SFTConfig.tiny() if given.get("tiny") else SFTConfig(),
            preference_config=preferences,
            cache_dir=given.get("cache_dir"),
            rebuild=given.get("rebuild", False),
            progress=given.get("progress", True),
            with_gold=given.get("with_gold", False),
        )

    def execute(self, settings: SynthSettings, args: argparse.Namespace) -> int:
        summary = write_synthetic_task(
            settings.out,
            seed=settings.seed,
            sft_config=settings.sft_config,
            preference_config=settings.preference_config,
            cache_dir=settings.cache_dir,
            rebuild=settings.rebuild,
            progress=settings.progress,
            with_gold=settings.with_gold,
        )
        if settings.progress:
            print(json.dumps(summary, indent=2))
        return 0


COMMAND = SynthCommand()


def add_data_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `data` group, with `data synth`, to an argparse sub-command group."""
    data = subparsers.add_parser(
        "data",
        help="data utilities (the built-in synthetic task)",
        description="Data utilities. `prefopt data synth --help` shows the one there is.",
    )
    COMMAND.add_to(data.add_subparsers(dest="data_command", metavar="DATA_COMMAND"))
    return data


def main(argv: Sequence[str] | None = None) -> int:
    """`prefopt data synth` with `argv` (the arguments after `data synth`)."""
    return COMMAND.main(argv)
