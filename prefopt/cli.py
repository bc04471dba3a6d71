"""The `prefopt` command line. Each sub-command parses its arguments here and calls library code;
library functions take keyword arguments and never read argparse namespaces.

    prefopt losses                 # every registered loss: kind, reference, hyper-parameters, paper
    prefopt losses kto             # one loss in detail: formula, inputs, hyper-parameter domains
    prefopt losses --kind paired --format json
    prefopt data synth --out DIR   # write the synthetic task's datasets, model and tokenizer
    prefopt reproduce [NAME]       # list, or re-run, a published result beside the paper's figure
    prefopt compare                # the main job: dpo, ipo, kto, orpo, simpo on the synthetic task
    prefopt train --loss dpo ...   # one offline training run (any loss of the registry)
    prefopt train-online ...       # online RL: ppo, rloo, grpo, dr_grpo, remax, best_of_n, online_dpo
    prefopt train-rm ...           # train a reward model (bradley_terry / plackett_luce_rm); docs/reward_models.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from prefopt.cli_settings import (
    CommandParser,
    data_files_notice,
    fail,
    finite_float,
    parse_assignments,
    parse_sweeps,
    read_settings_file,
    user_errors,
)


def _cmd_losses(args: argparse.Namespace) -> int:
    from prefopt.losses import catalog
    from prefopt.registry import UnknownLossError, loss_spec

    if args.name:
        try:
            spec = loss_spec(args.name)
        except UnknownLossError as err:
            print(f"prefopt losses: {err}", file=sys.stderr)
            return 2
        row = next(r for r in catalog.loss_rows() if r["name"] == spec.name)
        if args.format == "json":
            print(json.dumps(row, indent=2))
            return 0
        print(f"{spec.name}: {spec.summary}\n")
        print(f"  formula     {spec.formula}")
        print(f"  paper       {spec.paper}")
        print(f"  data kind   {spec.kind}" + (" (reward scores)" if spec.scores == "rewards" else ""))
        print(f"  reference   {'required' if spec.needs_reference else 'not used'}")
        print(f"  lengths     {'required' if spec.needs_lengths else 'optional'}")
        if spec.batch_dependent:
            print("  batch       loss depends on the whole batch (no gradient accumulation / data parallelism)")
        print(f"  inputs      {', '.join(spec.inputs)}" + (f"; extra: {', '.join(spec.extra_inputs)}" if spec.extra_inputs else ""))
        for h in spec.hparams:
            domain = f" in {h.domain}" if h.domain else (f" in {list(h.choices)}" if h.choices else "")
            print(f"  {h.name:<11} default {h.default!r}{domain} — {h.help}")
        return 0
    if args.format == "json":
        print(json.dumps(catalog.loss_rows(args.kind), indent=2))
    elif args.format == "markdown":
        print(catalog.render_markdown(), end="")
    else:
        print(catalog.render_text(args.kind))
        print(f"\n{len(catalog.loss_rows(args.kind))} losses. `prefopt losses NAME` shows one in detail.")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from prefopt.compare import compare

    try:
        config = _compare_config(args)
    except (ValueError, TypeError) as err:
        return fail("compare", err)
    try:
        with data_files_notice("compare", config.progress):
            compare(config)
    except user_errors() as err:
        return fail("compare", err)
    return 0


def _compare_config(args: argparse.Namespace) -> Any:
    """CompareConfig defaults ← `--config` ← `--tiny` (under the file) ← flags; values read by field type."""
    from prefopt.compare import DEFAULT_LOSSES, CompareConfig, tiny_task

    settings = read_settings_file(args.config, "CompareConfig") if args.config else {}
    train_pairs = parse_assignments(args.train, "--train", "lr=1e-4")
    online_pairs = parse_assignments(args.online, "--online", "steps=60")
    if args.losses is not None:
        settings["losses"] = args.losses  # "dpo,ipo": split and checked by CompareConfig
    settings.setdefault("losses", list(DEFAULT_LOSSES))
    if args.set:
        hparams = settings.get("hparams") or {}
        if isinstance(hparams, Mapping):  # anything else: CompareConfig names the field
            merged = {loss: dict(values) if isinstance(values, Mapping) else values for loss, values in hparams.items()}
            for loss, values in parse_sweeps(args.set).items():
                if isinstance(merged.setdefault(loss, {}), dict):
                    merged[loss].update(values)
            settings["hparams"] = merged
    flags = {k: getattr(args, k) for k in ("lr", "epochs", "batch_size", "max_steps") if getattr(args, k) is not None}
    settings["train"] = _merged(settings.get("train"), {**flags, **train_pairs})
    settings["online"] = _merged(settings.get("online"), online_pairs)
    for flag in ("seeds", "bon_n", "data", "model", "model_revision", "reward", "eval_prompts", "max_new_tokens",
                 "bon_samples"):
        if getattr(args, flag) is not None:
            settings[flag] = getattr(args, flag)
    if args.tiny:
        settings = {**tiny_task(), **settings}
    settings["output_dir"] = args.out or settings.get("output_dir", "runs/compare")
    if args.quiet:
        settings["progress"] = False
    return CompareConfig.from_dict(settings, source=args.config)


def _merged(base: Any, extra: dict[str, Any]) -> Any:
    """A mapping setting of the file with the flags' pairs on top (a value that is not a mapping is left for the
    config to report)."""
    if base is None:
        return dict(extra)
    return {**base, **extra} if isinstance(base, Mapping) and extra else base


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="prefopt", description="Preference-optimization losses for language models on one fused log-prob engine."
    )
    from prefopt import __version__

    parser.add_argument("--version", action="version", version=f"prefopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    losses = sub.add_parser("losses", help="list the registered losses (or show one)")
    losses.add_argument("name", nargs="?", help="show this loss in detail")
    losses.add_argument("--kind", choices=["paired", "unpaired", "ranked", "rollout"], help="only losses of this data kind")
    losses.add_argument("--format", choices=["text", "markdown", "json"], default="text")
    losses.set_defaults(func=_cmd_losses)

    from prefopt.data.synthetic.cli import add_synth_command
    from prefopt.reproduce.cli import add_reproduce_command
    from prefopt.train.cli import add_train_command

    data = sub.add_parser("data", help="data utilities (the built-in synthetic task)")
    add_synth_command(data.add_subparsers(dest="data_command", metavar="DATA_COMMAND"))
    add_reproduce_command(sub)
    add_train_command(sub)
    from prefopt.online.rm_cli import add_train_rm_parser

    add_train_rm_parser(sub)
    from prefopt.online.cli import add_train_online_parser

    add_train_online_parser(sub)

    cmp = sub.add_parser("compare", help="train several losses on the same data, model and seeds; table + plots",
                         description="With no arguments: dpo, ipo, kto, orpo and simpo at their paper defaults on "
                                     "the built-in synthetic task. Re-running with the same --out resumes.")
    cmp.add_argument("--losses", help="comma-separated loss names, offline or online (default: dpo,ipo,kto,orpo,simpo); "
                                      "e.g. dpo,ppo,rloo,best_of_n for the reward-versus-KL frontier")
    cmp.add_argument("--set", action="append", metavar="LOSS.HPARAM=V[,V...]",
                     help="hyper-parameter or sweep, e.g. --set dpo.beta=0.05,0.1,0.5 (repeatable)")
    cmp.add_argument("--seeds", help="comma-separated training seeds, e.g. 0,1,2 (mean ± CI over seeds)")
    cmp.add_argument("--config", help="YAML file with CompareConfig fields (flags override it)")
    cmp.add_argument("--out", help="output folder (default runs/compare)")
    cmp.add_argument("--data", help="preference data (file, folder or hub name); needs --model")
    cmp.add_argument("--model", help="causal LM path or hub name to start from; needs --data")
    cmp.add_argument("--model-revision", dest="model_revision",
                     help="with a hub name for --model: the branch, tag or commit to load")
    cmp.add_argument("--reward", help="with --data/--model: a reward model folder (`prefopt train-rm`) that scores "
                                      "samples, for online algorithms and the generation columns")
    cmp.add_argument("--lr", type=finite_float)
    cmp.add_argument("--epochs", type=finite_float)
    cmp.add_argument("--batch-size", dest="batch_size", type=int)
    cmp.add_argument("--max-steps", dest="max_steps", type=int)
    cmp.add_argument("--train", action="append", metavar="KEY=VALUE", help="any TrainConfig setting (repeatable)")
    cmp.add_argument("--online", action="append", metavar="KEY=VALUE",
                     help="an OnlineConfig setting for the online algorithms, e.g. --online steps=60 (repeatable)")
    cmp.add_argument("--bon-n", dest="bon_n", help="with best_of_n: the N values of the best-of-N policy (default 1,2,4,8,16)")
    cmp.add_argument("--bon-samples", dest="bon_samples", type=int,
                     help="reference samples per held-out prompt for best-of-N (default 64, ≥ 4·max N)")
    cmp.add_argument("--eval-prompts", dest="eval_prompts", type=int, help="held-out prompts to sample (default 128)")
    cmp.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    cmp.add_argument("--tiny", action="store_true", help="a seconds-scale synthetic task (smoke test, not for conclusions)")
    cmp.add_argument("--quiet", action="store_true", help="no progress bars")
    cmp.set_defaults(func=_cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage mistake (one line printed by CommandParser)
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
