"""Where metrics go: a JSONL file always (main process), TensorBoard / W&B when installed and asked for.

metrics.jsonl holds one JSON object per logged optimiser step (`step`, `loss`, the loss's metrics, the
token metrics TRL users look for (`TokenMetrics`), `lr`, `grad_norm`, `examples`, `tokens`, `elapsed_s`).
Each line is written with one `write` call and flushed, so a killed run leaves whole lines; on resume the
lines after the checkpoint's step are dropped (rewritten atomically) before training continues, and a run
that starts from step 0 (fresh, or resumed with no checkpoint yet) empties it, so the file reads as one
uninterrupted run. The file is opened with O_NOFOLLOW: a symbolic link in its place is refused, never
written through.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from prefopt.atomic import write_atomic
from prefopt.engine import SequenceLogProbs
from prefopt.train.run_folder import check_no_links, open_no_follow

__all__ = ["MetricsLog", "TokenMetrics", "open_metrics", "truncate_metrics"]


def open_metrics(path: str | Path) -> IO[str]:
    """Open a metrics.jsonl for appending, created if missing; a symbolic link there raises RunFolderError."""
    return os.fdopen(open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a", encoding="utf-8")


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Keep only the lines of `path` with step ≤ `last_step` (atomic rewrite); 0 empties it.

    Raises:
        RunFolderError: `path` is a symbolic link.
    """
    path = Path(path)
    check_no_links(path.parent, (path.name,))
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: drop it
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, (int, float)) and step <= last_step:
            kept.append(line)
    write_atomic(path, "".join(f"{line}\n" for line in kept))


class TokenMetrics:
    """Token-weighted means over one optimiser step's global batch, from the engine's `return_stats` outputs:

        logits/chosen, logits/rejected   Σ_tokens mean_v(logits) / tokens, per side (paired data), as TRL's
                                         DPOTrainer logs them
        mean_token_accuracy              tokens whose label is the argmax of the logits / tokens: of the
                                         chosen completions for paired data (as TRL's DPOTrainer), of every
                                         completion for other kinds

    `add` each micro-batch's policy output (one without stats adds nothing), then `result(reduce_sum)` sums
    over processes once and divides; 0.0 where a side had no tokens.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sums: dict[str, Tensor] = {}  # name → [numerator, tokens]

    def add(self, policy: SequenceLogProbs) -> None:
        if policy.logit_sum is None or policy.correct is None:
            return
        count, correct = policy.count.float(), policy.correct.float()
        parts = {"mean_token_accuracy": (correct, count)}
        if self.kind == "paired":
            parts = {
                "logits/chosen": (policy.chosen(policy.logit_sum), policy.chosen(count)),
                "logits/rejected": (policy.rejected(policy.logit_sum), policy.rejected(count)),
                "mean_token_accuracy": (policy.chosen(correct), policy.chosen(count)),
            }
        for name, (numerator, tokens) in parts.items():
            value = torch.stack([numerator.detach().sum(), tokens.sum()])
            self.sums[name] = self.sums[name] + value if name in self.sums else value

    def result(self, reduce_sum: Callable[[Tensor], Tensor]) -> dict[str, float]:
        if not self.sums:
            return {}
        names = sorted(self.sums)
        totals = reduce_sum(torch.stack([self.sums[name] for name in names])).tolist()  # [metrics, 2]
        return {name: numerator / tokens if tokens > 0 else 0.0 for name, (numerator, tokens) in zip(names, totals)}


class MetricsLog:
    """Append metrics to `<output_dir>/metrics.jsonl` and to the requested trackers (main process only).

    Args:
        output_dir: run folder; enabled: False on non-main processes (then every call is a no-op).
        report_to: "tensorboard" and/or "wandb"; a tracker that is not installed gives a warning.
        run_config: the run's settings (sent to W&B).
    """

    def __init__(
        self,
        output_dir: str | Path,
        *,
        enabled: bool,
        report_to: tuple[str, ...] = (),
        run_config: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tensorboard: Any = None
        self._wandb: Any = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open_metrics(self.path)
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter  # heavy: loaded on first use

                self._tensorboard = SummaryWriter(str(Path(output_dir) / "tensorboard"))
            except ImportError:
                warnings.warn(
                    "report_to tensorboard: the tensorboard package is not installed "
                    "(pip install tensorboard); logging to metrics.jsonl only",
                    stacklevel=2,
                )
        if "wandb" in report_to:
            try:
                import wandb  # heavy: loaded on first use

                self._wandb = wandb.init(project="prefopt", dir=str(output_dir), config=run_config or {})
            except ImportError:
                warnings.warn(
                    "report_to wandb: wandb is not installed (pip install wandb); logging to metrics.jsonl only",
                    stacklevel=2,
                )

    def log(self, record: dict[str, Any]) -> None:
        """Write one step's record (a flat dict of numbers with a `step` key)."""
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = int(record["step"])
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tensorboard is not None:
            for key, value in numbers.items():
                self._tensorboard.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)

    def close(self) -> None:
        """Flush and close every sink."""
        if not self.enabled:
            return
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()
