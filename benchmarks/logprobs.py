"""Benchmark of the fused linear → log-prob op against the naive path, peers and the bare-matmul floor.

    python benchmarks/logprobs.py                       # the issue's grid (long on a CPU)
    python benchmarks/logprobs.py --quick               # small sizes, a minute or two
    python benchmarks/logprobs.py --sizes 4096x1024x128256 --impls naive,cce_compile,prefopt_chunked,floor
    python benchmarks/logprobs.py --sizes 4096x1024x128256 --impls cce_compile,prefopt_fused --completion-tokens 128

Each (implementation, size) runs in a fresh subprocess (`--rounds` times, interleaved with the other
implementations, so that a drift in machine load hits all of them): build inputs, one warm-up forward+backward
(this is where torch.compile'd peers compile), `--repeats` timed forward+backward calls (the minimum
is reported: the least disturbed by other load), then one call under the peak-memory probe of
`_common.peak_extra_bytes` (it counts everything the call allocates, the gradients of hidden and weight
included). Forward+backward = logp = op(hidden, weight, labels); (logp · g).sum().backward() with a
fixed random g, gradients for hidden and weight. Each record also keeps the process CPU time of the timed
calls (`cpu_s`, all threads): on a machine shared with other jobs it moves less than the wall time.

Implementations:
    naive            fp32 logits = h Wᵀ, log_softmax, gather
    trl_selective    TRL-style selective_log_softmax on full logits: gather the label logit, then a
                     per-row logsumexp loop (written here from TRL's description, not copied)
    liger_selective  Liger-Kernel's chunked selective log-prob autograd.Function (sequence × vocab
                     chunks with recompute; liger_kernel.chunked_loss.fused_linear_ppo, a private API)
    liger_flce       Liger-Kernel's fused linear cross-entropy (Triton, CUDA only), reduction="none",
                     backward of the plain sum (it folds a scalar upstream gradient into the forward)
    cce_compile      Cut Cross-Entropy, impl="torch_compile", reduction="none"
    cce              Cut Cross-Entropy's Triton kernels (CUDA only)
    prefopt_chunked  prefopt.kernels.linear_logprobs(backend="chunked")
    prefopt_triton   prefopt.kernels.linear_logprobs(backend="triton") (CUDA only)
    prefopt_fused    the loss-fused head, prefopt.kernels.linear_logprobs_with_grad: the N rows are S = N / L
                     completions of L = --completion-tokens tokens, S/2 pairs (chosen s, rejected s + S/2), and
                     the upstream is DPO's loss on the per-sequence sums (fixed random reference sums, β = 0.1);
                     its gradients of hidden and weight are formed in the one call (three matmuls) and stored
                     as h.grad, w.grad. The others see per-row weights g: the same matmul work, another loss
    floor            the three lm_head matmuls of forward+backward alone (h Wᵀ, G W, Gᵀ h), no grad tracking

Writes JSON (device, dtype, threads, versions, commit, one record per case) and prints a table with
time and memory ratios to prefopt_chunked / prefopt_triton and to the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_name, git_commit, peak_extra_bytes, versions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMPLS = (
    "naive",
    "trl_selective",
    "liger_selective",
    "liger_flce",
    "cce_compile",
    "cce",
    "prefopt_chunked",
    "prefopt_triton",
    "prefopt_fused",
    "floor",
)
CUDA_ONLY = {"liger_flce", "cce", "prefopt_triton"}
FULL_SIZES = [(n, d, v) for n in (4096, 16384) for d in (1024, 4096) for v in (32000, 128256, 151936)]
QUICK_SIZES = [(1024, 256, 32000), (2048, 512, 32000)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _naive(h: Tensor, w: Tensor, y: Tensor) -> Tensor:
    logits = (h @ w.T).float()  # (N, V)
    return torch.log_softmax(logits, dim=-1).gather(1, y[:, None]).squeeze(1)


def _trl_selective(h: Tensor, w: Tensor, y: Tensor) -> Tensor:
    logits = h @ w.T  # (N, V)
    if logits.dtype in (torch.float32, torch.float64):
        picked = logits.gather(1, y[:, None]).squeeze(1)
        lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])  # one row at a time
        return picked - lse
    return torch.stack([torch.log_softmax(row.float(), -1)[t] for row, t in zip(logits, y)])


def _liger_selective(h: Tensor, w: Tensor, y: Tensor) -> Tensor:
    from liger_kernel.chunked_loss.fused_linear_ppo import _ChunkedSelectiveLogProbFunction

    return _ChunkedSelectiveLogProbFunction.apply(h, w, y, None, 1.0, 4096)


def _liger_flce(h: Tensor, w: Tensor, y: Tensor) -> Tensor:
    from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

    return -LigerFusedLinearCrossEntropyFunction.apply(h, w, y, None, None, -100, 0.0, 0.0, "none")[0]


def _cce(impl: str) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    def run(h: Tensor, w: Tensor, y: Tensor) -> Tensor:
        from cut_cross_entropy import linear_cross_entropy

        return -linear_cross_entropy(h, w, y, reduction="none", impl=impl).float()

    return run


def _prefopt(backend: str) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    def run(h: Tensor, w: Tensor, y: Tensor) -> Tensor:
        from prefopt.kernels import linear_logprobs

        return linear_logprobs(h, w, y, backend=backend)

    return run


OPS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "naive": _naive,
    "trl_selective": _trl_selective,
    "liger_selective": _liger_selective,
    "liger_flce": _liger_flce,
    "cce_compile": _cce("torch_compile"),
    "cce": _cce("cce"),
    "prefopt_chunked": _prefopt("chunked"),
    "prefopt_triton": _prefopt("triton"),
}


def _fused(h: Tensor, w: Tensor, y: Tensor, completion_tokens: int) -> None:
    """The loss-fused head on S = N / L completions in S/2 pairs under DPO: log-probs, loss and gradients."""
    from prefopt.kernels import linear_logprobs_with_grad

    n = h.shape[0]
    seq = torch.arange(n, device=h.device) // completion_tokens  # [N] sequence of each row
    num_seq = int(seq[-1]) + 1
    pairs = max(num_seq // 2, 1)
    ref = torch.linspace(-2.0, 2.0, num_seq, device=h.device) - 1.5 * completion_tokens  # fixed reference sums

    def grad_fn(sums: Tensor, done: Tensor, _stats: object) -> Tensor:
        sums = sums.detach().requires_grad_()
        with torch.enable_grad():
            rho = sums - ref  # [S]
            margin = rho[:pairs] - rho[pairs : 2 * pairs]  # chosen − rejected
            loss = torch.nn.functional.softplus(-0.1 * margin).mean()  # DPO
            return torch.autograd.grad(loss, sums)[0]

    result = linear_logprobs_with_grad(h, w, y, seq, num_seq, seq % pairs, grad_fn)
    h.grad, w.grad = result.grad_hidden, result.grad_weight


def _step(impl: str, h: Tensor, w: Tensor, y: Tensor, g: Tensor, completion_tokens: int = 128) -> None:
    """One forward+backward (or, for the floor, the three matmuls) with results discarded."""
    if impl == "prefopt_fused":
        h.grad = w.grad = None
        _fused(h, w, y, completion_tokens)
        return
    if impl == "floor":
        with torch.no_grad():
            z = h @ w.T  # (N, V)
            _ = z @ w, z.T @ h
        return
    h.grad = w.grad = None
    # Liger's fused linear cross-entropy computes its gradients in the forward for a scalar upstream
    # gradient, so it gets the unweighted sum (same work); all others get per-row weights g.
    row_weights = 1.0 if impl == "liger_flce" else g
    (OPS[impl](h, w, y) * row_weights).sum().backward()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(
    impl: str, n: int, d: int, v: int, dtype: torch.dtype, repeats: int, device: torch.device, completion_tokens: int
) -> dict:
    """Measure one case in this process; returns the record."""
    gen = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(n, d, generator=gen, device=device, dtype=dtype).requires_grad_()
    w = torch.randn(v, d, generator=gen, device=device, dtype=dtype).mul_(d**-0.5).requires_grad_()
    y = torch.randint(0, v, (n,), generator=gen, device=device)
    g = torch.randn(n, generator=gen, device=device)
    start = time.perf_counter()
    _step(impl, h, w, y, g, completion_tokens)  # warm-up (and compile)
    _sync(device)
    warmup_s = time.perf_counter() - start
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        _step(impl, h, w, y, g, completion_tokens)
        _sync(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak = peak_extra_bytes(lambda: _step(impl, h, w, y, g, completion_tokens), device)
    return {
        "impl": impl,
        "n": n,
        "d": d,
        "v": v,
        "time_s": min(times),
        "times_s": times,
        "cpu_s": min(cpu_times),
        "cpu_times_s": cpu_times,
        "warmup_s": warmup_s,
        "peak_extra_bytes": peak,
        "status": "ok",
    }


def run_case(impl: str, size: tuple[int, int, int], args: argparse.Namespace) -> dict:
    """Run one case in a fresh subprocess and return its record (status says why when it could not run)."""
    n, d, v = size
    base = {"impl": impl, "n": n, "d": d, "v": v}
    if impl in CUDA_ONLY and args.device != "cuda":
        return {**base, "status": "skipped: needs CUDA"}
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        "--sizes",
        f"{n}x{d}x{v}",
        "--dtype",
        args.dtype,
        "--repeats",
        str(args.repeats),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--completion-tokens",
        str(args.completion_tokens),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {**base, "status": f"timeout after {args.timeout} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**base, "status": f"failed: {last[:200]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _merge(rounds: list[dict]) -> dict:
    """One record from several rounds of a case: the minimum time, the largest peak memory."""
    ok = [r for r in rounds if r["status"] == "ok"]
    if not ok:
        return rounds[-1]
    times = [t for r in ok for t in r["times_s"]]
    cpu_times = [t for r in ok for t in r.get("cpu_times_s", [])]
    return {
        **ok[0],
        "time_s": min(times),
        "times_s": times,
        "cpu_s": min(cpu_times, default=None),
        "cpu_times_s": cpu_times,
        "peak_extra_bytes": max(r["peak_extra_bytes"] for r in ok),
        "rounds": len(rounds),
    }


def _table(records: list[dict]) -> str:
    """Rows per size: time, peak extra memory, and ratios to prefopt, to the matmul floor and to Cut
    Cross-Entropy's compiled path (the fastest peer on CPU)."""
    lines = [
        f"{'N×D×V':>18} {'impl':>16} {'time s':>8} {'peak GB':>8} {'t/prefopt':>9} {'mem/prefopt':>11} "
        f"{'t/floor':>8} {'t/cce':>6} {'mem/cce':>7}  status"
    ]
    for size in sorted({(r["n"], r["d"], r["v"]) for r in records}):
        rows = [r for r in records if (r["n"], r["d"], r["v"]) == size]
        ok = {r["impl"]: r for r in rows if r["status"] == "ok"}
        ours = ok.get("prefopt_triton") or ok.get("prefopt_chunked")
        floor = ok.get("floor")
        cce = ok.get("cce_compile")
        for r in rows:
            name = "x".join(map(str, size))
            if r["status"] != "ok":
                lines.append(f"{name:>18} {r['impl']:>16} {'':>59}  {r['status']}")
                continue
            t_ours = f"{r['time_s'] / ours['time_s']:.2f}" if ours else "-"
            m_ours = f"{r['peak_extra_bytes'] / max(ours['peak_extra_bytes'], 1):.2f}" if ours else "-"
            t_floor = f"{r['time_s'] / floor['time_s']:.2f}" if floor else "-"
            t_cce = f"{r['time_s'] / cce['time_s']:.2f}" if cce else "-"
            m_cce = f"{r['peak_extra_bytes'] / max(cce['peak_extra_bytes'], 1):.3f}" if cce else "-"
            lines.append(
                f"{name:>18} {r['impl']:>16} {r['time_s']:8.2f} {r['peak_extra_bytes'] / 1e9:8.2f} "
                f"{t_ours:>9} {m_ours:>11} {t_floor:>8} {t_cce:>6} {m_cce:>7}  ok"
            )
    return "\n".join(lines)


def _sizes(text: str) -> list[tuple[int, int, int]]:
    return [tuple(int(x) for x in s.split("x")) for s in text.split(",") if s]  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"small sizes {QUICK_SIZES}")
    parser.add_argument("--sizes", type=str, default=None, help="comma-separated NxDxV (default: the issue's grid)")
    parser.add_argument("--impls", type=str, default=",".join(IMPLS), help=f"comma-separated subset of {IMPLS}")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--repeats", type=int, default=2, help="timed forward+backward calls per case (min reported)")
    parser.add_argument("--rounds", type=int, default=1, help="passes over all cases, interleaved (min time reported)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per case")
    parser.add_argument(
        "--completion-tokens", type=int, default=128, help="prefopt_fused: tokens per completion (two per pair)"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "logprobs.json")
    parser.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = QUICK_SIZES if args.quick else (_sizes(args.sizes) if args.sizes else FULL_SIZES)
    if args.worker:
        record = worker(
            args.worker, *sizes[0], DTYPES[args.dtype], args.repeats, torch.device(args.device), args.completion_tokens
        )
        print(json.dumps(record))
        return
    impls = [i for i in args.impls.split(",") if i]
    unknown = sorted(set(impls) - set(IMPLS))
    if unknown:
        parser.error(f"unknown --impls {unknown}; valid: {', '.join(IMPLS)}")
    runs: dict[tuple, list[dict]] = {}
    load_start = os.getloadavg()  # other jobs on a shared machine move the times; record them
    for round_ in range(args.rounds):  # rounds interleave the implementations, so that load drifts hit all
        for size in sizes:
            for impl in impls:
                r = run_case(impl, size, args)
                runs.setdefault((impl, size), []).append(r)
                print(
                    f"round {round_} {impl:>16} {size}: {r['status']}"
                    + (f" {r['time_s']:.2f} s {r['peak_extra_bytes'] / 1e9:.2f} GB" if r["status"] == "ok" else ""),
                    flush=True,
                )
    records = [_merge(rs) for rs in runs.values()]
    device = torch.device(args.device)
    result = {
        "device": device_name(device),
        "dtype": args.dtype,
        "threads": args.threads,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "completion_tokens": args.completion_tokens,
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "versions": versions(),
        "commit": git_commit(ROOT),
        "records": records,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"\n{result['device']}, {args.dtype}, commit {result['commit']}")
    print(_table(records))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
