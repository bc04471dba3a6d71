"""`prefopt data synth --out DIR`: the argparse glue for writing the synthetic task to a folder.

The lead's `prefopt/cli.py` owns the `prefopt data` group and calls `add_synth_command(data_subparsers)`;
this module only parses arguments and calls `write_synthetic_task`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from prefopt.data.synthetic.policy import SFTConfig
from prefopt.data.synthetic.preferences import PreferenceConfig
from prefopt.data.synthetic.task import write_synthetic_task

__all__ = ["add_synth_command", "run_synth"]


def add_synth_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `synth` sub-command to an argparse sub-parsers object and return its parser."""
    defaults = PreferenceConfig()
    parser = subparsers.add_parser(
        "synth", help="write the built-in synthetic preference task (model, tokenizer, datasets) to a folder",
        description="Train (or load from cache) the synthetic reference policy, sample preference data from it, "
                    "label it with the gold reward and write everything to --out.")
    parser.add_argument("--out", required=True, help="output folder (must not already hold a model/ folder)")
    parser.add_argument("--seed", type=int, default=0, help="selects weights, prompts, samples and labels")
    parser.add_argument("--train-prompts", type=int, default=defaults.train_prompts)
    parser.add_argument("--eval-prompts", type=int, default=defaults.eval_prompts)
    parser.add_argument("--heldout-prompts", type=int, default=defaults.heldout_prompts)
    parser.add_argument("-k", "--completions-per-prompt", type=int, default=defaults.completions_per_prompt)
    parser.add_argument("--label-temperature", type=float, default=defaults.label_temperature,
                        help="Bradley–Terry noise temperature T (0 = labels always follow the gold reward)")
    parser.add_argument("--length-bias", type=float, default=defaults.length_bias,
                        help="labeller's extra utility per completion word")
    parser.add_argument("--tiny", action="store_true", help="test-size reference policy (seconds, low quality)")
    parser.add_argument("--cache-dir", help="cache root (default $PREFOPT_CACHE or ~/.cache/prefopt)")
    parser.add_argument("--rebuild", action="store_true", help="retrain the reference policy even if cached")
    parser.add_argument("--with-gold", action="store_true", help="add gold-reward columns to the exported rows")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no summary on stdout")
    parser.set_defaults(func=run_synth)
    return parser


def run_synth(args: argparse.Namespace) -> int:
    """Handler of `synth`: validates the arguments into configs and writes the task; 0 on success, 2 on bad input."""
    try:
        preference_config = PreferenceConfig(
            train_prompts=args.train_prompts, eval_prompts=args.eval_prompts, heldout_prompts=args.heldout_prompts,
            completions_per_prompt=args.completions_per_prompt, label_temperature=args.label_temperature,
            length_bias=args.length_bias)
        summary = write_synthetic_task(
            args.out, seed=args.seed, sft_config=SFTConfig.tiny() if args.tiny else SFTConfig(),
            preference_config=preference_config, cache_dir=args.cache_dir, rebuild=args.rebuild,
            progress=not args.quiet, with_gold=args.with_gold)
    except (ValueError, FileExistsError) as err:  # SettingsError is a ValueError
        print(f"prefopt data synth: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(json.dumps(summary, indent=2))
    return 0
