"""Cost of the per-token statistics behind WPO and TDPO, against their baselines in the same invocation.

    python benchmarks/sequence_statistics.py                 # N=512, D=256, V=32000, float32, one torch thread
    python benchmarks/sequence_statistics.py --quick          # N=128, V=8000

1. `return_stats` on the chunked `linear_logprobs` (mean logit, argmax flag and, new, log Σ_v p_v² for WPO's
   alignment): forward and forward+backward with the statistics against without them.
2. TDPO's per-position KL(π_ref ‖ π_θ) over the vocabulary: `linear_sequential_kl` (row blocks, both heads'
   logits recomputed in the backward) against the plain computation on both models' materialised N×V logits
   (`sequential_kl_from_logits` under autograd), forward+backward into the policy's hidden and weight.

Each case: one warm-up call, `--repeats` timed calls (the minimum wall and process CPU time: the least disturbed by
other load),
then one call under `_common.peak_extra_bytes`. Writes benchmarks/results/sequence_statistics.json (device,
threads, versions, commit, load average, one record per case) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_name, git_commit, peak_extra_bytes, versions  # noqa: E402

from prefopt.kernels import linear_logprobs, linear_sequential_kl, sequential_kl_from_logits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(best wall seconds, best process CPU seconds) over `repeats` calls after one warm-up; with one torch thread
    the CPU time is the least disturbed by other jobs on a shared machine."""
    fn()
    wall = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
    return wall, cpu


def cases(n: int, d: int, v: int) -> dict[str, Callable[[], object]]:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, d, generator=g).requires_grad_()
    weight = (torch.randn(v, d, generator=g) / d**0.5).requires_grad_()
    ref_hidden, ref_weight = torch.randn(n, d, generator=g), torch.randn(v, d, generator=g) / d**0.5
    labels = torch.randint(0, v, (n,), generator=g)
    upstream = torch.randn(n, generator=g)

    def logprobs(stats: bool, backward: bool) -> Callable[[], object]:
        def run() -> object:
            out = linear_logprobs(hidden, weight, labels, backend="chunked", return_stats=stats)
            logp = out[0] if stats else out
            if backward:
                (logp * upstream).sum().backward()
                hidden.grad = weight.grad = None
            return logp

        return run

    def kl(kernel: bool) -> Callable[[], object]:
        def run() -> object:
            if kernel:
                value = linear_sequential_kl(hidden, weight, ref_hidden, ref_weight)
            else:
                value = sequential_kl_from_logits(hidden @ weight.T, ref_hidden @ ref_weight.T)
            (value * upstream).sum().backward()
            hidden.grad = weight.grad = None
            return value

        return run

    return {
        "logprobs forward": logprobs(False, False),
        "logprobs forward, return_stats": logprobs(True, False),
        "logprobs fwd+bwd": logprobs(False, True),
        "logprobs fwd+bwd, return_stats": logprobs(True, True),
        "seq KL fwd+bwd, plain N×V logits": kl(False),
        "seq KL fwd+bwd, linear_sequential_kl": kl(True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=128, V=8000")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sequence_statistics.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, d, v = (128, 256, 8000) if args.quick else (512, 256, 32000)
    device = torch.device("cpu")
    records = []
    for name, fn in cases(n, d, v).items():
        wall, cpu = _timed(fn, args.repeats)
        peak = peak_extra_bytes(fn, device)
        records.append({"case": name, "n": n, "d": d, "v": v, "wall_s": wall, "cpu_s": cpu, "peak_extra_bytes": peak})
        print(f"{name:40s} cpu {cpu * 1e3:8.1f} ms  wall {wall * 1e3:8.1f} ms  peak extra {peak / 2**20:7.1f} MiB")
    report = {
        "device": device_name(device),
        "dtype": "float32",
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "versions": versions(),
        "commit": git_commit(ROOT),
        "records": records,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out} (load average {report['load_average'][0]:.1f})")


if __name__ == "__main__":
    main()
