"""`prefopt losses [NAME]`: the registry as a table, as JSON or as docs/losses.md, or one loss in detail."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prefopt.cli.choices import loss_kinds
from prefopt.cli.command import Command, Option, given_settings
from prefopt.loss_call.fused import fused_head_reason
from prefopt.losses import catalog
from prefopt.losses.combined import CombinedSpec, weight_text
from prefopt.registry import LossSpec, loss_spec

__all__ = ["COMMAND", "LossesCommand", "main"]

FORMATS = ("text", "markdown", "json")


@dataclass(frozen=True)
class LossQuery:
    """What to show: one loss (`spec`), or the losses of one data kind (`kind`, None: all), in `format`."""

    spec: LossSpec | None
    kind: str | None
    format: str


class LossesCommand(Command):
    name = "losses"
    help = "list the registered losses (or show one)"
    description = (
        "List every registered loss with its data kind, whether it needs a reference model, its hyper-parameters "
        "with their paper defaults and its paper; or, given a NAME, one loss in detail: formula, inputs and the "
        "domain of each hyper-parameter (the names `--set` takes)."
    )
    examples = """\
examples:
  prefopt losses                       # every loss
  prefopt losses kto                   # one loss in detail
  prefopt losses dpo:0.8+sft:1         # a weighted sum of losses (MPO): its parts and hyper-parameters
  prefopt losses --kind paired --format json"""
    flags = {
        "--kind": Option("kind", str, "only losses of this data kind", choices=loss_kinds),
        "--format": Option("format", str, "text (default), markdown (docs/losses.md) or json", choices=FORMATS),
    }

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", nargs="?", metavar="NAME", help="show this loss in detail")

    def settings(self, args: argparse.Namespace) -> LossQuery:
        given = given_settings(args, self.flags)
        spec = loss_spec(args.name) if args.name else None  # an unknown name: UnknownLossError with a did-you-mean
        return LossQuery(spec, given.get("kind"), given.get("format", "text"))

    def execute(self, query: LossQuery, args: argparse.Namespace) -> int:
        if query.spec is not None:
            print(_detail(query.spec, query.format))
        elif query.format == "json":
            rows = [{**row, "head": head_path(loss_spec(row["name"]))} for row in catalog.loss_rows(query.kind)]
            print(json.dumps(rows, indent=2))
        elif query.format == "markdown":
            print(catalog.render_markdown(), end="")
        else:
            print(catalog.render_text(query.kind, columns={"head": head_path}))
            print(
                f"\n{len(catalog.loss_rows(query.kind))} losses. `prefopt losses NAME` shows one in detail. A weighted "
                "sum of losses of one kind, e.g. dpo:0.8+bco_pair:0.2+sft:1 (MPO), goes wherever a loss name does "
                "(docs/losses.md, 'Combining losses')."
            )
        return 0


def head_path(spec: LossSpec) -> str:
    """How training runs the loss's output head: "fused" (the loss-fused head: the head forms the hidden and
    weight gradients in its forward, a separable loss), "unfused" (forward, then backward), "—" (per-token and
    reward-model losses, which the head does not reduce to sequence sums)."""
    if spec.kind == "rollout" or spec.scores != "logps":
        return "—"
    return "fused" if fused_head_reason(spec) is None else "unfused"


def _detail(spec: LossSpec, format: str) -> str:
    """One loss: its catalog row as JSON, else formula, paper, data kind, inputs and hyper-parameter domains."""
    row: dict[str, Any] = {**catalog.loss_row(spec), "head": head_path(spec)}
    if format == "json":
        return json.dumps(row, indent=2)
    lines = [
        f"{spec.name}: {spec.summary}\n",
        f"  formula     {spec.formula}",
        f"  paper       {spec.paper}",
        *[f"  part        {weight_text(weight)} × {part.name}: {part.formula}" for part, weight in _parts(spec)],
        f"  data kind   {spec.kind}" + (" (reward scores)" if spec.scores == "rewards" else ""),
        f"  reference   {'required' if spec.needs_reference else 'not used'}",
        f"  lengths     {'required' if spec.needs_lengths else 'optional'}",
    ]
    if spec.batch_dependent:
        lines.append("  batch       loss depends on the whole batch (no gradient accumulation / data parallelism)")
    if row["head"] != "—":
        reason = fused_head_reason(spec)
        lines.append(
            "  head        fused: the head forms the gradients in its forward (--no-fused-loss turns it off)"
            if reason is None
            else f"  head        unfused: {reason}"
        )
    lines.append(
        f"  inputs      {', '.join(spec.inputs)}"
        + (f"; extra: {', '.join(spec.extra_inputs)}" if spec.extra_inputs else "")
    )
    for h in spec.hparams:
        domain = f" in {h.domain}" if h.domain else (f" in {list(h.choices)}" if h.choices else "")
        lines.append(f"  {h.name:<11} default {h.default!r}{domain} — {h.help}")
    return "\n".join(lines)


def _parts(spec: LossSpec) -> tuple[tuple[LossSpec, float], ...]:
    """A combination's (part, weight) pairs; none for a registered loss."""
    return spec.parts if isinstance(spec, CombinedSpec) else ()


COMMAND = LossesCommand()


def main(argv: Sequence[str] | None = None) -> int:
    """`prefopt losses` with `argv` (the arguments after `losses`)."""
    return COMMAND.main(argv)
