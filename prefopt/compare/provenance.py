"""Where a comparison's numbers come from: the software and machine of each run, and its setting in one line.

    environment()                 # {"python", "torch", "transformers", ..., "prefopt", "commit", "machine", ...}
    setting_line(config, records) # "synthetic task (seed 0): 1,007 … · dpo, ipo × seeds 0, 1 · 62 steps · …"

Every run records its `environment()` in result.json; the report prints the setting line under every plot
and at the top of report.html.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from prefopt import __version__
from prefopt.data.synthetic import PreferenceConfig, SFTConfig

__all__ = ["PACKAGES", "environment", "git_commit", "setting_line"]

# Distributions whose versions a run records (prefopt's own is its __version__ and the commit).
PACKAGES = ("torch", "transformers", "datasets", "accelerate", "peft", "numpy")
_ROOT = Path(__file__).resolve().parents[2]


def git_commit(root: Path = _ROOT) -> str | None:
    """The commit checked out at `root` (an editable install's source tree), read from its .git files (no git
    command runs); None when prefopt is not installed from a git checkout."""
    git = root / ".git"
    try:
        if git.is_file():  # a worktree or submodule: "gitdir: PATH"
            git = (root / git.read_text(encoding="utf-8").split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
        if not head.startswith("ref: "):
            return head or None
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text(encoding="utf-8").strip() or None
        for line in (git / "packed-refs").read_text(encoding="utf-8").splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except (OSError, IndexError):
        return None
    return None


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def environment() -> dict[str, Any]:
    """The software and machine this process runs on (JSON-able)."""
    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {
        "python": platform.python_version(),
        **{name: _version(name) for name in PACKAGES},
        "prefopt": __version__,
        "commit": git_commit(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "gpus": gpus,
        "executable": sys.executable,
    }


def _task(config: Any) -> str:
    if not config.synthetic:
        text = f"data {config.data}, model {config.model}"
        return text + (f", reward {config.reward}" if config.reward else "")
    prefs, sft = config.preference_config or PreferenceConfig(), config.sft_config or SFTConfig()
    return (
        f"synthetic task (seed {config.task_seed}, {prefs.train_prompts}/{prefs.eval_prompts}/{prefs.heldout_prompts} "
        f"train/eval/held-out prompts, policy {sft.num_layers} layers × {sft.hidden_size})"
    )


def _steps(records: list[dict[str, Any]], config: Any) -> str:
    steps = sorted({int(r["train"]["steps"]) for r in records if isinstance((r.get("train") or {}).get("steps"), int)})
    if steps:
        return f"{steps[0]} steps" if len(steps) == 1 else f"{steps[0]}–{steps[-1]} steps"
    train = config.train
    return f"{train['max_steps']} steps" if train.get("max_steps") else f"{train.get('epochs', 1)} epoch(s)"


def setting_line(config: Any, records: list[dict[str, Any]]) -> str:
    """The comparison's setting in one line: task and sizes, losses × seeds, steps, evaluation."""
    seeds = ", ".join(str(s) for s in config.seeds)
    losses = ", ".join(config.losses) if len(config.losses) <= 8 else f"{len(config.losses)} algorithms"
    return (
        f"{_task(config)} · {losses} × seed{'s' if len(config.seeds) > 1 else ''} {seeds} · "
        f"{_steps(records, config)} · eval {config.eval_prompts} prompts ≤ {config.max_new_tokens} tokens "
        f"(seed {config.eval_seed}) · prefopt {__version__}"
    )
