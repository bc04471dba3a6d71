"""Engine benchmark: fused engine vs the naive logits path, and what padding-free packing saves.

    python benchmarks/engine.py                      # all cases, table + benchmarks/results/engine.json
    python benchmarks/engine.py --reps 3 --pairs 8   # knobs; --json PATH to write elsewhere

Every case runs forward + backward of Σ completion log-probs on a small random-init Llama (built from
config, no download) in a fresh subprocess, so that the process's peak RSS (`ru_maxrss`) measures
that case alone. Peak extra memory = peak RSS − RSS after the model and batch were built.

Cases (same sequences each time; ragged prompt and completion lengths):
    naive/padded   model(...).logits → fp32 log_softmax → gather         (R×T×V logits)
    engine/padded  LogProbEngine: body once, completion positions only, fused kernel
    engine/packed  the same with padding-free packing (first-fit-decreasing into rows of `--row-tokens`)
    engine/packed-long  rows of 2·`--row-tokens`: fewer rows, but on CPU (no varlen attention kernel)
                   attention is quadratic in the row length, so longer rows cost attention work
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

CASES = ("naive/padded", "engine/padded", "engine/packed", "engine/packed-long")


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    """A random-init Llama of the requested size, float32, eval mode (no dropout), sdpa attention."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float().eval()


def ragged_pairs(args: argparse.Namespace) -> list[tuple[list[int], list[int]]]:
    """2·pairs sequences (chosen block, rejected block); prompt lengths uniform in [16, max_prompt],
    completion lengths uniform in [8, max_completion]; a pair shares its prompt."""
    g = torch.Generator().manual_seed(0)
    rand = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    prompts = [
        torch.randint(1, args.vocab, (rand(16, args.max_prompt),), generator=g).tolist() for _ in range(args.pairs)
    ]
    chosen, rejected = [], []
    for prompt in prompts:
        for block in (chosen, rejected):
            block.append((prompt, torch.randint(1, args.vocab, (rand(8, args.max_completion),), generator=g).tolist()))
    return chosen + rejected


def make_batch(examples: list[tuple[list[int], list[int]]], packed: bool, row_tokens: int) -> Any:
    """Padded (one sequence per row) or packed first-fit-decreasing into rows of ≤ row_tokens tokens."""
    from prefopt.batch import TokenBatch

    seqs = [p + c for p, c in examples]
    rows: list[list[int]] = [[s] for s in range(len(seqs))]
    if packed:
        rows, free = [], []
        for s in sorted(range(len(seqs)), key=lambda i: -len(seqs[i])):
            fit = next((r for r, room in enumerate(free) if room >= len(seqs[s])), None)
            if fit is None:
                rows.append([]), free.append(max(row_tokens, len(seqs[s])))
                fit = len(rows) - 1
            rows[fit].append(s)
            free[fit] -= len(seqs[s])
    width = max(sum(len(seqs[i]) for i in row) for row in rows)
    shape = (len(rows), width)
    ids, attn = torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long)
    comp, seq_ids = torch.zeros(shape, dtype=torch.bool), torch.full(shape, -1, dtype=torch.long)
    pos = torch.zeros(shape, dtype=torch.long)
    for r, row in enumerate(rows):
        t = 0
        for s in row:
            prompt, completion = examples[s]
            n = len(prompt) + len(completion)
            ids[r, t : t + n] = torch.tensor(prompt + completion)
            attn[r, t : t + n], seq_ids[r, t : t + n], pos[r, t : t + n] = 1, s, torch.arange(n)
            comp[r, t + len(prompt) : t + n] = True
            t += n
    return TokenBatch(ids, attn, comp, seq_ids, len(seqs), 2, packed, pos if packed else None)


def naive_sums(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """The logits path on a padded batch: full logits, fp32 log_softmax, gather, masked sum per sequence."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # (R, T, V)
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    mask = batch.completion_mask[:, 1:]
    return torch.zeros(batch.num_sequences).index_add(0, batch.sequence_ids[:, 1:][mask], logp[mask])


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    """Time forward+backward of one case (median of `reps` after one warm-up) and its peak extra memory."""
    from prefopt.engine import LogProbEngine

    torch.set_num_threads(args.threads)
    model = build_model(args)
    row_tokens = args.row_tokens * (2 if case.endswith("long") else 1)
    batch = make_batch(ragged_pairs(args), packed="packed" in case, row_tokens=row_tokens)
    engine = LogProbEngine(model) if case.startswith("engine") else None
    step = (lambda: engine(batch).sum) if engine is not None else (lambda: naive_sums(model, batch))  # noqa: E731
    baseline = rss_bytes()
    times = []
    for rep in range(args.reps + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        step().sum().backward()
        if rep:  # the first run is a warm-up
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tokens = int(batch.attention_mask.sum())
    return {
        "case": case,
        "rows": batch.input_ids.shape[0],
        "row_length": batch.input_ids.shape[1],
        "tokens_processed": int(batch.input_ids.numel()),
        "real_tokens": tokens,
        "head_rows": int(batch.completion_mask.sum()) if engine is not None else int(batch.input_ids.numel()),
        "time_s": statistics.median(times),
        "peak_extra_mb": (peak - baseline) / 2**20,
    }


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    return {
        "device": "cuda:" + torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu ({os.cpu_count()} cores)",
        "cpu": platform.processor() or platform.machine(),
        "dtype": "float32",
        "threads": args.threads,
        "load_average_1m_at_end": os.getloadavg()[0],  # other processes on the machine skew the timings
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "commit": commit + ("+dirty" if dirty else ""),
        "model": {"vocab": args.vocab, "hidden": args.hidden, "layers": args.layers},
        "data": {
            "pairs": args.pairs,
            "max_prompt": args.max_prompt,
            "max_completion": args.max_completion,
            "row_tokens": args.row_tokens,
            "reps": args.reps,
        },
    }


def print_table(results: list[dict[str, Any]]) -> None:
    base = next(r for r in results if r["case"] == "naive/padded")
    header = (
        f"{'case':<20}{'rows×len':>10}{'tokens':>8}{'head rows':>10}"
        f"{'time s':>9}{'×naive':>8}{'peak MB':>9}{'×naive':>8}"
    )
    print(header + "\n" + "-" * len(header))
    for r in results:
        print(
            f"{r['case']:<20}{str(r['rows']) + '×' + str(r['row_length']):>10}{r['tokens_processed']:>8}"
            f"{r['head_rows']:>10}{r['time_s']:>9.3f}{r['time_s'] / base['time_s']:>8.2f}"
            f"{r['peak_extra_mb']:>9.0f}{r['peak_extra_mb'] / max(base['peak_extra_mb'], 1e-9):>8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=CASES, help="run one case in this process and print its JSON")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--max-prompt", type=int, default=384)
    parser.add_argument("--max-completion", type=int, default=128)
    parser.add_argument("--row-tokens", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "engine.json")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    knobs = ("vocab", "hidden", "layers", "pairs", "max_prompt", "max_completion", "row_tokens", "reps", "threads")
    forwarded = [item for k in knobs for item in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
    results = []
    for case in CASES:
        out = subprocess.run([sys.executable, __file__, "--case", case, *forwarded], capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"case {case} failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print_table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"environment": environment(args), "results": results}, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
