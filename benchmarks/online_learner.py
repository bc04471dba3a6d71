"""The online learner's passes over a rollout, each prompt read once for its K samples against once per sample.

    python benchmarks/online_learner.py                   # K = 4, 8 at prompt:completion 4:1, one torch thread
    python benchmarks/online_learner.py --samples 4 --rounds 3 --quick

One learner step of the online loop (`prefopt.online.trainer`) on a fixed rollout of B prompts × K samples, no
generation (the sampler's cost does not change with sharing), with the loop's own functions
(`prefopt.online.shared_groups`):

    old  = π_θ's per-token log-probs and entropies on the rollout, no gradient     (`score_rows`)
    ref  = π_ref's per-token log-probs, no gradient
    loss = GRPO(π_θ's per-token log-probs with gradient, old, ref, rewards)        one minibatch = the rollout
    backward, Adam step

Cases, in the same process, interleaved over `--rounds` (each case's fastest round is kept: the least disturbed by
other load on a shared machine): `unshared` (OnlineConfig.share_prompt="off": one [prompt | sample] per row, padded)
and `shared` ("on": one [prompt | y_1 | … | y_K] row per prompt behind the block mask). Both see the same rollout:
prompts of P tokens ± 1/8, samples of C tokens ± 1/4 (ragged, so rows are padded as real rollouts are).
tokens/s = the rollout's tokens Σ_s (P_s + C_s), the same numerator in both cases, over the step's wall time.
The first step's GRPO loss of the two cases must agree to 1e-5 (checked, recorded). Peak extra memory of one step:
`_common.peak_extra_bytes`.

Model: the Llama of `benchmarks/train_step.py` (vocabulary 32,000, hidden 256, 4 layers, tied embeddings, float32,
sdpa attention; 11.4M parameters), random init; the reference a second copy. Writes
benchmarks/results/online_learner.json (device, threads, versions, commit, load averages) and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import device_name, git_commit, peak_extra_bytes, versions  # noqa: E402
from train_step import build_model  # noqa: E402

from prefopt import get_loss  # noqa: E402
from prefopt.batch import TokenBatch  # noqa: E402
from prefopt.engine import LogProbEngine  # noqa: E402
from prefopt.online.shared_groups import rollout_rows, score_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CASES = {"unshared": False, "shared": True}


def rollout(b: int, k: int, p: int, c: int, vocab: int, seed: int = 0) -> TokenBatch:
    """Group-major rows [x_b | y_b,k | padding] (row k·B + b): prompts of p ± p/8 tokens, samples of c ± c/4."""
    g = torch.Generator().manual_seed(seed)

    def length(mean: int, spread: int) -> int:
        return int(torch.randint(max(mean - spread, 1), mean + spread + 1, (1,), generator=g))

    prompts = [torch.randint(4, vocab, (length(p, p // 8),), generator=g) for _ in range(b)]
    rows = [
        (prompts[j], torch.randint(4, vocab, (length(c, c // 4),), generator=g)) for _ in range(k) for j in range(b)
    ]
    width = max(len(x) + len(y) for x, y in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    real = torch.zeros(len(rows), width, dtype=torch.long)
    scored = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, (x, y) in enumerate(rows):
        ids[r, : len(x) + len(y)] = torch.cat([x, y])
        real[r, : len(x) + len(y)] = 1
        scored[r, len(x) : len(x) + len(y)] = True
    return TokenBatch.from_rows(ids, real, scored)


class Learner:
    """A policy, its reference and Adam: `step(batch, share)` is one learner step (module docstring)."""

    def __init__(self, model: Any, rewards: torch.Tensor) -> None:
        self.policy = model.train()
        self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.engine, self.ref_engine = LogProbEngine(self.policy), LogProbEngine(self.reference)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=1e-6)
        self.rewards = rewards
        self.loss = get_loss("grpo", beta=0.04, clip_range=0.2)

    def step(self, batch: TokenBatch, k: int, share: bool) -> float:
        rows = rollout_rows(batch, k, share)
        assert (rows.shared is not None) == share
        with torch.no_grad():
            old, _ = score_rows(self.engine, None, rows, return_entropy=True)
            ref, _ = score_rows(self.ref_engine, None, rows)
        policy, _ = score_rows(self.engine, None, rows)
        out = self.loss(policy.tokens, old.tokens, batch.completion_mask, rewards=self.rewards, ref_logps=ref.tokens)
        out.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(out.loss.detach())


def measure(args: argparse.Namespace, k: int) -> dict[str, Any]:
    """Both cases at K samples per prompt: best step time over the rounds, tokens/s, peak memory, first losses."""
    model, _ = build_model()
    batch = rollout(args.prompts, k, args.prompt_tokens, args.completion_tokens, model.config.vocab_size)
    rewards = torch.randn(args.prompts, k, generator=torch.Generator().manual_seed(1))
    learners = {case: Learner(copy.deepcopy(model), rewards) for case in CASES}
    first = {case: learners[case].step(batch, k, share) for case, share in CASES.items()}  # warm-up, same weights
    best = {case: float("inf") for case in CASES}
    for _ in range(args.rounds):
        for case, share in CASES.items():
            start = time.perf_counter()
            learners[case].step(batch, k, share)
            best[case] = min(best[case], time.perf_counter() - start)
    tokens = int(batch.attention_mask.sum())
    shared = rollout_rows(batch, k, True).shared
    assert shared is not None
    record: dict[str, Any] = {
        "samples": k,
        "prompts": args.prompts,
        "rollout_tokens": tokens,
        "completion_tokens": int(batch.completion_mask.sum()),
        "positions": {"unshared": batch.input_ids.numel(), "shared": shared.input_ids.numel()},
        "first_loss": first,
        "first_loss_abs_diff": abs(first["shared"] - first["unshared"]),
        "cases": {},
    }
    for case, share in CASES.items():
        peak = peak_extra_bytes(lambda: learners[case].step(batch, k, share), torch.device("cpu"))
        record["cases"][case] = {
            "step_s": best[case],
            "tokens_per_s": tokens / best[case],
            "peak_extra_mb": peak / 2**20,
        }
    record["speedup"] = best["unshared"] / best["shared"]
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[4, 8], help="K values")
    parser.add_argument("--prompts", type=int, default=4, help="B prompts per rollout")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--completion-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="prompts of 16 tokens, samples of 4, 2 rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "online_learner.json")
    args = parser.parse_args()
    if args.quick:
        args.prompt_tokens, args.completion_tokens, args.rounds = 16, 4, 2
    torch.set_num_threads(args.threads)
    loads = [os.getloadavg()[0]]
    records = []
    for k in args.samples:
        records.append(measure(args, k))
        loads.append(os.getloadavg()[0])
    print(f"{'K':>3} {'case':>9} {'tokens/s':>9} {'step s':>7} {'peak MB':>8} {'× unshared':>10}")
    for record in records:
        for case, row in record["cases"].items():
            ratio = row["tokens_per_s"] / record["cases"]["unshared"]["tokens_per_s"]
            print(
                f"{record['samples']:>3} {case:>9} {row['tokens_per_s']:>9.0f} {row['step_s']:>7.3f} "
                f"{row['peak_extra_mb']:>8.0f} {ratio:>10.2f}"
            )
    payload = {
        "benchmark": "online_learner",
        "device": device_name(torch.device("cpu")),
        "dtype": "float32",
        "threads": args.threads,
        "load_average_1min": [min(loads), max(loads)],
        "load_average": os.getloadavg(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "versions": versions(("torch", "transformers", "prefopt")),
        "commit": git_commit(ROOT),
        "results": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    return 0 if all(r["first_loss_abs_diff"] < 1e-5 for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
