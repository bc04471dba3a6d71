"""Peak memory of one run: CUDA's peak allocated memory, or on CPU the process's peak resident set size.

    reset_peak_memory()                  # when a run starts (CPU, and the current CUDA device if any)
    peak, kind = peak_memory(device)     # when it ends: bytes, and what they measure

Kinds: "cuda_max_allocated" (the run's peak of torch's CUDA allocator); "cpu_peak_rss" (the run's peak
resident set size: Linux's VmHWM, reset when the run starts by writing 5 to /proc/self/clear_refs, Linux ≥ 4.0);
"cpu_max_rss" (where that reset is not allowed: the process's peak since it started, an upper bound for runs
after the first of a process).

A leaf: it imports nothing of prefopt.
"""

from __future__ import annotations

import re
import resource
from pathlib import Path

import torch

__all__ = ["peak_memory", "reset_peak_memory"]

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_reset_done = False  # whether this process's VmHWM has been reset: then it is one run's peak


def reset_peak_memory() -> None:
    """Start measuring a run's peak memory: the process's VmHWM, and torch's CUDA peak statistics when CUDA is
    available."""
    global _reset_done
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        _CLEAR_REFS.write_text("5")
        _reset_done = True
    except OSError:  # not Linux, or not allowed: the process's peak is reported instead
        _reset_done = False


def _vm_hwm() -> int | None:
    try:
        found = re.search(r"^VmHWM:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


def peak_memory(device: torch.device | str = "cpu") -> tuple[int, str]:
    """(peak bytes since `reset_peak_memory`, its kind: see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    hwm = _vm_hwm() if _reset_done else None
    if hwm is not None:
        return hwm, "cpu_peak_rss"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_max_rss"
