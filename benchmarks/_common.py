"""Shared benchmark plumbing: environment record (device, versions, commit) and peak-memory probes.

Peak extra memory:
  * CUDA: `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`, minus the memory
    allocated before the measured call.
  * CPU: the process's resident set. Before the measured call glibc is told (mallopt) to serve
    every allocation ≥ 64 KiB with its own mmap and to unmap it on free, the heap is trimmed, and
    the kernel's high-water mark VmHWM is reset (`echo 5 > /proc/self/clear_refs`); the peak extra
    memory is VmHWM − VmRSS(before). It counts everything the call allocates, gradients included.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Callable

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def device_name(device: torch.device) -> str:
    """A human name of the device: the GPU's name, or the CPU model with the thread count torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, torch threads={torch.get_num_threads()}"


def versions(packages: tuple[str, ...] = ("torch", "triton", "liger-kernel", "cut-cross-entropy", "prefopt")) -> dict:
    """Installed versions of the packages that matter to a benchmark (None when not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def versions_in(python: str | None, packages: tuple[str, ...]) -> dict[str, str] | None:
    """Installed versions of `packages` in another interpreter (e.g. a side venv's); None when it cannot say."""
    if python is None:
        return None
    code = f"import json, importlib.metadata as m; print(json.dumps({{p: m.version(p) for p in {packages!r}}}))"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else None


def git_commit(root: Path) -> str:
    """HEAD commit of the checkout, with '+dirty' when the working tree has changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_extra_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak memory allocated by `fn()` beyond what was allocated before it (see the module docstring)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
    libc.malloc_trim(0)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    return (_status_kib("VmHWM") - before) * 1024
