"""The loss catalogue rendered from the registry: the `prefopt losses` table and docs/losses.md.

Nothing here is written by hand: names, kinds, hyper-parameters, formulas and papers all come from the
loss declarations (`prefopt.losses.kinds`), so the docs cannot drift from the code (a test regenerates and
compares).

    python -m prefopt.losses.catalog --write docs/losses.md
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prefopt.atomic import write_atomic
from prefopt.registry import LossSpec, list_losses, loss_spec

__all__ = ["COMBINING", "loss_row", "loss_rows", "render_text", "render_markdown", "write_markdown"]

KIND_ORDER = ("paired", "unpaired", "ranked", "rollout")

# The section of docs/losses.md on weighted sums of losses (`prefopt.losses.combine`); its example runs in the
# docs tests (tests/docs/test_python_blocks.py), the values it shows hand-checked in tests/losses/test_combine.py.
COMBINING = """\
## Combining losses (MPO)

`prefopt.combine_losses` makes one loss of a weighted sum of registered losses of one data kind. Mixed Preference
Optimization (MPO; Wang et al. 2024, "Enhancing the Reasoning Ability of Multimodal Large Language Models via Mixed
Preference Optimization", arXiv:2411.10442) is `dpo` 0.8, `bco_pair` 0.2 and `sft` 1 (TRL's
`loss_type=["sigmoid", "bco_pair", "sft"]`, `loss_weights=[0.8, 0.2, 1.0]`). The combination has the call of
its parts (tensors or engine outputs), its loss and per-example losses are the weighted sums of theirs, and its
metrics are each part's loss and metrics under the part's name:

```python
import torch

import prefopt

combo = prefopt.combine_losses({"dpo": 0.8, "bco_pair": 0.2, "sft": 1.0}, beta=0.1)
combo.spec.name  # 'dpo:0.8+bco_pair:0.2+sft:1'
policy_chosen = torch.tensor([-12.0, -30.5], requires_grad=True)
policy_rejected = torch.tensor([-14.0, -29.0], requires_grad=True)
ref_chosen, ref_rejected = torch.tensor([-12.5, -31.0]), torch.tensor([-13.0, -29.5])
lengths = dict(chosen_lengths=torch.tensor([4.0, 10.0]), rejected_lengths=torch.tensor([5.0, 9.0]))
out = combo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, **lengths)
float(out.loss)  # 3.8206 = 0.8·0.6571 + 0.2·1.3499 + 1·3.0250
float(out.metrics["sft/loss"])  # 3.025, the token-mean NLL of the chosen: (12/4 + 30.5/10) / 2
out.loss.backward()
```

- **The spelling** `dpo:0.8+bco_pair:0.2+sft:1` (`combo.spec.name`) names the combination wherever a loss name
  goes: `prefopt.get_loss("dpo:0.8+sft:1", beta=0.1)`, `prefopt.loss_spec(...)`, `prefopt train --loss
  dpo:0.8+sft:1`, `prefopt compare --losses dpo,dpo:0.8+sft:1`. A part without `:WEIGHT` weighs 1. Combinations
  are not registered: `prefopt.list_losses()` lists single losses.
- **Weights** are finite and ≥ 0, at least one of them > 0; a part of weight 0 is computed and logged but not
  trained on. A part appears once. Parts of different data kinds (`dpo` with `kto`) are an error, as are
  online and reward-model losses.
- **Hyper-parameters**: a shared one (`beta=0.1`, `--set beta=0.1`) goes to every part that declares it, as TRL's
  MPO shares β; a part's own (`**{"dpo.beta": 0.2}`, `--set dpo.beta=0.2`) wins over it; a part given as a bound
  loss, `combine_losses([(prefopt.get_loss("dpo", beta=0.2), 0.8), ("sft", 1.0)])`, keeps its values. The
  combination's hyper-parameters are the parts', named `dpo.beta`; a name no part takes is an error.
- **Its declaration** merges the parts': it needs a reference, or lengths, if a part does; its extra inputs are
  theirs; a part's running state (`bco`'s δ) is kept under the part's name, in checkpoints too. So
  `prefopt train` runs a combination like any loss.
"""


def _specs(kind: str | None = None) -> list[LossSpec]:
    specs = [loss_spec(n) for n in list_losses(kind)]
    return sorted(specs, key=lambda s: (KIND_ORDER.index(s.kind) if s.kind in KIND_ORDER else 99, s.scores, s.name))


def _cell(text: str) -> str:
    """Escape a Markdown table cell (|y| in formulas would split the cell)."""
    return text.replace("|", "\\|")


def _hparams(spec: LossSpec) -> str:
    return ", ".join(f"{h.name}={h.default!r}" for h in spec.hparams) or "—"


def loss_row(s: LossSpec) -> dict[str, Any]:
    """The data the table and `--format json` show of one loss (or of a combination, `prefopt.combine_losses`)."""
    return {
        "name": s.name,
        "kind": s.kind,
        "scores": s.scores,
        "needs_reference": s.needs_reference,
        "needs_lengths": s.needs_lengths,
        "needs_nonpositive_logps": s.needs_nonpositive_logps,
        "hparams": {h.name: h.default for h in s.hparams},
        "extra_inputs": list(s.extra_inputs),
        "batch_dependent": s.batch_dependent,
        "formula": s.formula,
        "paper": s.paper,
        "summary": s.summary,
    }


def loss_rows(kind: str | None = None) -> list[dict[str, Any]]:
    """One dict per registered loss: the data the table and `--format json` show."""
    return [loss_row(s) for s in _specs(kind)]


def render_text(
    kind: str | None = None, width: int = 60, columns: Mapping[str, Callable[[LossSpec], str]] | None = None
) -> str:
    """A fixed-width table for the terminal; `columns` adds {header: cell of a spec} before the paper (the
    command line adds the head path there, which a layer above the losses decides)."""
    extra = dict(columns or {})
    header = ("loss", "kind", "reference", "hyper-parameters (paper defaults)", *extra, "paper")
    rows = []
    for s in _specs(kind):
        kind_text = s.kind if s.scores == "logps" else f"{s.kind}/rewards"
        ref = "yes" if s.needs_reference else "no"
        paper = s.paper if len(s.paper) <= width else s.paper[: width - 1] + "…"
        rows.append((s.name, kind_text, ref, _hparams(s), *(cell(s) for cell in extra.values()), paper))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("─" * w for w in widths)), *map(line, rows)])


def render_markdown() -> str:
    """The whole of docs/losses.md: a summary table, then one section per loss with its formula."""
    out = [
        "# Losses",
        "",
        "<!-- Generated from the registry by `python -m prefopt.losses.catalog --write docs/losses.md`;",
        "     do not edit by hand (tests/test_package.py fails when this file is stale). -->",
        "",
        "Every loss is a pure function of per-sequence log-prob tensors (or reward scores), registered with its",
        "data kind, whether it needs a reference model, and its hyper-parameters with the paper's defaults.",
        "Call any of them as `prefopt.losses.<name>(...)` or `prefopt.get_loss(name, **hparams)(...)`;",
        "`prefopt losses` prints this table. Notation: ρ(y) = log π_θ(y|x) − log π_ref(y|x) (sums over",
        "completion tokens), Δ = ρ(y_w) − ρ(y_l), |y| = completion length in tokens, avg logp = logp/|y|.",
        "Paired, unpaired and ranked losses also take the engine's `SequenceLogProbs` in place of their log-prob",
        "tensors, `loss(policy_out, ref_out)` (unpaired: `loss(policy_out, ref_out, labels)`): the counts become",
        "the lengths, and a completion with no tokens is an error.",
        "",
        "| loss | kind | reference | lengths | hyper-parameters (paper defaults) | paper |",
        "|---|---|---|---|---|---|",
    ]
    specs = _specs()
    for s in specs:
        kind_text = s.kind if s.scores == "logps" else f"{s.kind} (reward scores)"
        out.append(
            f"| [`{s.name}`](#{s.name}) | {kind_text} | {'yes' if s.needs_reference else 'no'} | "
            f"{'yes' if s.needs_lengths else 'no'} | {_cell(_hparams(s))} | {_cell(s.paper)} |"
        )
    out += ["", "## Call signatures", ""]
    seen = set()
    for s in specs:
        if (s.kind, s.scores) in seen:
            continue
        seen.add((s.kind, s.scores))
        params = ", ".join(s.inputs)
        out.append(f"- **{s.kind}{' / reward scores' if s.scores == 'rewards' else ''}**: `f({params}, *, ...)`")
    out += ["", COMBINING.rstrip("\n")]
    for s in specs:
        out += ["", f"## {s.name}", "", s.summary, "", f"- formula: `{s.formula}`", f"- paper: {s.paper}"]
        out.append(
            f"- data kind: {s.kind}; reference model: {'required' if s.needs_reference else 'not used'}; "
            f"completion lengths: {'required' if s.needs_lengths else 'optional'}"
        )
        if s.needs_nonpositive_logps:
            out.append(
                "- policy log-probs must be ≤ 0: the loss reads them as probabilities (an NLL, odds or "
                "weights), so a positive one is refused"
            )
        if s.batch_dependent:
            out.append(
                "- batch-dependent: one example's loss depends on the rest of the batch, so trainers "
                "refuse gradient accumulation and data parallelism for it"
            )
        if s.extra_inputs:
            out.append(f"- extra inputs: {', '.join(f'`{n}`' for n in s.extra_inputs)}")
        if s.hparams:
            out += ["", "| hyper-parameter | default | domain | meaning |", "|---|---|---|---|"]
            for h in s.hparams:
                domain = str(h.domain) if h.domain else (str(list(h.choices)) if h.choices else "—")
                out.append(f"| `{h.name}` | {h.default!r} | {domain} | {_cell(h.help)} |")
        out += ["", "```text", f"prefopt.losses.{s.name}{_signature(s)}", "```"]
    return "\n".join(out) + "\n"


def _signature(spec: LossSpec) -> str:
    sig = inspect.signature(spec.fn)
    return str(sig.replace(return_annotation=inspect.Signature.empty))


def write_markdown(path: str | os.PathLike[str]) -> None:
    """Write docs/losses.md atomically (a temporary file renamed over the old one)."""
    write_atomic(path, render_markdown())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render the loss catalogue from the registry.")
    parser.add_argument("--write", metavar="PATH", help="write the Markdown catalogue to PATH")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if args.write:
        write_markdown(args.write)
    elif args.json:
        print(json.dumps(loss_rows(), indent=2, default=str))
    else:
        print(render_markdown(), end="")


if __name__ == "__main__":
    main()
