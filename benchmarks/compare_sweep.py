"""The sweep behind `prefopt compare`'s per-loss optimiser settings on the synthetic task (docs/compare.md).

    python benchmarks/compare_sweep.py                                  # the grid below: table + results JSON
    python benchmarks/compare_sweep.py --losses kto,simpo --lr 3e-6,1e-5    # more points, added to the same JSON

Every grid point is one `prefopt compare --lr LR --epochs E` run of the losses (the default comparison's task,
`prefopt.compare.defaults.COMPARE_PREFERENCES`, evaluation and seed; an explicit lr and epochs override the
per-loss defaults). Re-running with the same --out reuses the finished points. For each loss × point it reports
held-out implicit-reward accuracy, gold reward, exact KL(π‖π_ref) (mean and median over the held-out prompts:
a few runaway samples dominate the mean), sample length, the share of samples the grammar accepts (a policy
that drifts off the language loses it first) and the run's CPU-bound wall time.

The choice rule, applied to the table (`choose`): among a loss's points whose mean KL is at most `--kl-budget`
nats (3 by default), the one with the highest gold reward, except that a point with fewer epochs within 0.05 of
it wins (it costs less time; 0.05 is under one standard error of the reward on 512 prompts, ≈0.065). The gold
reward already charges for leaving the language (2 per ungrammatical sample), so the grammar column is shown,
not used. No point within the budget: the one with the smallest mean KL, flagged. The results JSON accumulates:
the rows of an earlier run (other points) are kept, a point run again replaces its rows, and the choice is made
over all.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import git_commit, versions  # noqa: E402

from prefopt.compare import DEFAULT_LOSSES, CompareConfig, compare  # noqa: E402
from prefopt.data.synthetic import accepts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LRS = (3e-5, 1e-4, 3e-4)
EPOCHS = (1.0, 2.0)
TIE = 0.05  # gold reward within which the point with fewer epochs is preferred


def _mean(value: dict[str, Any] | None) -> float | None:
    return None if value is None else value.get("mean")


def _half(value: dict[str, Any] | None) -> float | None:
    if value is None or value.get("low") is None or value.get("high") is None:
        return None
    return (value["high"] - value["low"]) / 2


def _grammatical(prompts: list[str], completions: list[str]) -> float:
    return sum(accepts(p, c) for p, c in zip(prompts, completions)) / max(len(prompts), 1)


def point(losses: tuple[str, ...], lr: float, epochs: float, out: Path) -> list[dict[str, Any]]:
    """One grid point: a comparison of `losses` at (lr, epochs); one row per loss."""
    started = time.perf_counter()
    folder = str(out / f"lr{lr:g}-ep{epochs:g}")
    settings = {"train": {"lr": lr, "epochs": epochs}, "output_dir": folder, "progress": False}
    result = compare(CompareConfig(losses=losses, **settings))
    print(f"lr {lr:g}, {epochs:g} epoch(s): {time.perf_counter() - started:.0f} s", flush=True)
    return [row(record, lr, epochs) for record in result.records]


def row(record: dict[str, Any], lr: float, epochs: float) -> dict[str, Any]:
    """The table's row of one run's result.json record."""
    gen, pref = record["generation"], record["preference"]
    return {
        "loss": record["loss"],
        "lr": lr,
        "epochs": epochs,
        "eval_accuracy": _mean(pref["reward_accuracy"]),
        "eval_accuracy_ci": _half(pref["reward_accuracy"]),
        "reward": _mean(gen["reward"]),
        "reward_ci": _half(gen["reward"]),
        "reference_reward": _mean(gen["reference_reward"]),
        "kl": _mean(gen["kl"]),
        "kl_median": statistics.median(gen["kls"]),
        "length": _mean(gen["mean_length"]),
        "grammatical": _grammatical(gen["prompts"], gen["completions"]),
        "reference_grammatical": _grammatical(gen["prompts"], gen["reference_completions"]),
        "train_loss": record["train"]["final_metrics"].get("loss"),
        "time_s": record["wall_time_s"],
    }


def choose(rows: list[dict[str, Any]], kl_budget: float) -> dict[str, dict[str, Any]]:
    """Per loss, the chosen row (module docstring), with "within_budget" True or False."""
    chosen = {}
    for loss in dict.fromkeys(r["loss"] for r in rows):
        mine = [r for r in rows if r["loss"] == loss]
        ok = [r for r in mine if r["kl"] <= kl_budget]
        if ok:
            best = max(r["reward"] for r in ok)
            pick = min((r for r in ok if r["reward"] >= best - TIE), key=lambda r: (r["epochs"], -r["reward"]))
            chosen[loss] = {**pick, "within_budget": True}
        else:
            chosen[loss] = {**min(mine, key=lambda r: r["kl"]), "within_budget": False}
    return chosen


def table(rows: list[dict[str, Any]], chosen: dict[str, dict[str, Any]]) -> str:
    head = "| loss | lr | epochs | eval acc | gold reward | KL mean | KL median | length | grammatical | time s |"
    lines = [head, "|" + "---|" * 10]
    for r in sorted(rows, key=lambda r: (r["loss"], r["lr"], r["epochs"])):
        mark = " **←**" if chosen[r["loss"]]["lr"] == r["lr"] and chosen[r["loss"]]["epochs"] == r["epochs"] else ""
        lines.append(
            f"| {r['loss']}{mark} | {r['lr']:g} | {r['epochs']:g} "
            f"| {r['eval_accuracy']:.3f} ± {r['eval_accuracy_ci']:.3f} "
            f"| {r['reward']:.3f} ± {r['reward_ci']:.3f} | {r['kl']:.2f} | {r['kl_median']:.2f} | {r['length']:.1f} "
            f"| {r['grammatical']:.2f} | {r['time_s']:.0f} |"
        )
    first = rows[0]
    lines.append(
        f"\nreference: gold reward {first['reference_reward']:.3f}, grammatical {first['reference_grammatical']:.2f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", default=",".join(DEFAULT_LOSSES))
    parser.add_argument("--lr", default=",".join(f"{x:g}" for x in LRS))
    parser.add_argument("--epochs", default=",".join(f"{x:g}" for x in EPOCHS))
    parser.add_argument("--out", default="runs/compare-sweep")
    parser.add_argument("--kl-budget", type=float, default=3.0)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "compare_sweep.json"))
    args = parser.parse_args(argv)
    losses = tuple(args.losses.split(","))
    saved = json.loads(Path(args.json).read_text())["rows"] if Path(args.json).is_file() else []
    rows = []
    for lr in (float(x) for x in args.lr.split(",")):
        for epochs in (float(x) for x in args.epochs.split(",")):
            rows += point(losses, lr, epochs, Path(args.out))
    done = {(r["loss"], r["lr"], r["epochs"]) for r in rows}
    rows = [r for r in saved if (r["loss"], r["lr"], r["epochs"]) not in done] + rows
    chosen = choose(rows, args.kl_budget)
    print(table(rows, chosen))
    for loss, r in chosen.items():
        flag = "" if r["within_budget"] else "  (no point within the budget: the smallest mean KL)"
        print(f"{loss}: lr {r['lr']:g}, {r['epochs']:g} epoch(s){flag}")
    record = {
        "rows": rows,
        "chosen": chosen,
        "kl_budget": args.kl_budget,
        "commit": git_commit(ROOT),
        "versions": versions(),
        "load_average": os.getloadavg(),
    }
    Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
