"""GRPO online steps: prefopt's online loop against TRL's GRPOTrainer, same policy, prompts, K, lengths and steps.

    python benchmarks/online_step.py --trl-python /tmp/trlvenv10/bin/python   # table + results/online_step.json
    python benchmarks/online_step.py --quick --cases prefopt --out /tmp/x.json  # seconds: the test's smoke run

Each (case, round) runs in a fresh subprocess (memory high-water marks do not mix), rounds interleaved:

    prefopt   `prefopt.online.train_online(algorithm="grpo")`, β = 0, ε = 0.2, its defaults: generate (the lean
              decoder, `generation_decoder="auto"`: `generate`'s draws with fewer operations per token, the KV cache,
              finished rows dropped; `generation_batching="auto"`: the B prompts left-padded in one call), score (gold
              reward; no π_ref pass at β = 0; π_old is the learner's forward, detached: one step per rollout,
              `prefopt.online.old_policy`), learn (one minibatch: the policy's
              forward with gradient, loss, backward, clip, AdamW step)
    prefopt-kl  prefopt scoring π_ref anyway (`reference_kl="always"`), for objective/kl: at β = 0 nothing else reads
              it, so by default the run scores none (`prefopt.online.annotation.scores_reference`), as TRL
    prefopt-generate  prefopt with transformers' `generate` instead of the lean decoder (`generation_decoder="hf"`),
              everything else the same: the decoder's share of the step
    prefopt-before  prefopt before the decoder, the batching and the π_old shortcut (the π_ref pass skipped as in
              the others): `generation_decoder="hf"`,
              `generation_batching="length"` (one `generate` call per prompt token length) and the no-gradient π_old
              pass (the benchmark forces `prefopt.online.annotation.reuses_learner_forward` off in its subprocess)
    trl       `trl.GRPOTrainer`, its defaults (loss_type "dapo": token losses averaged over the batch's tokens;
              β = 0, so no reference model is loaded; scale_rewards "group"; ε = 0.2), no vLLM: HF `generate` on
              the B·K left-padded rows at once, rewards, then the forward with gradient, backward, clip, AdamW step
              (no π_old pass: one generation per optimiser step, so TRL takes π_old = the detached forward)

Fair by construction: the same policy (the synthetic task's reference policy, `prefopt.data.synthetic`, 1.2M
parameters; `--model random`: the same shape, random init, no cache needed), float32 on the CPU, the same torch
threads (`--threads`, default 1: on the shared 2-core machine two OpenMP threads per process made a 16-row `generate`
6-10x slower than one, 9.6-15.9 s against 1.5 s at load average 10-12, which measures the contention), the same
B·steps prompts (the synthetic task's first train prompts; each side shuffles them with its own seed), K samples
per prompt, max_new_tokens, temperature 1, top-p 1, top-k 0, one optimiser step per rollout (one minibatch, one
pass), AdamW lr `--lr`, no weight decay, constant schedule, max_grad_norm 1, gold reward.

Per step, step 1 left out (warm-up): generate = the sampler's call (prefopt's `time/generate_s`; TRL's `_generate`,
timed by a subclass); score = the rest of the rollout's preparation (`time/score_s`; TRL's
`_generate_and_score_completions` minus `_generate`); learn = step-end to step-end wall time − generate − score.
Tokens = each side's own B·K rows, prompts and completions. rollout tokens/s = completion tokens / generate;
learner = tokens / (score + learn); end-to-end = tokens / wall time. Peak extra memory: `_common.peak_extra_bytes`
around building the trainer and its steps. The JSON holds every round with its 1-min load average, versions, commit.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = ("prefopt", "prefopt-kl", "prefopt-generate", "prefopt-before", "trl")
ROOT = Path(__file__).resolve().parents[1]
record: dict[str, Any] = {}  # what a run learns about its framework on the way (TRL's default loss_type)


def build_policy(kind: str) -> tuple[Any, Any]:
    """(model, tokenizer): the synthetic task's reference policy (cached after its first build), or its shape
    with random weights."""
    import torch

    from prefopt.data import synthetic
    from prefopt.data.synthetic.policy import SFTConfig, build_model

    if kind == "synthetic":
        policy = synthetic.reference_policy(seed=0, progress=False)
        return policy.model.float().train(), policy.tokenizer
    tokenizer = synthetic.build_tokenizer()
    torch.manual_seed(0)
    return build_model(SFTConfig(), len(tokenizer), tokenizer).float().train(), tokenizer


def benchmark_prompts(args: argparse.Namespace) -> list[str]:
    """The B·steps prompts both sides train on: the synthetic task's first train prompts."""
    from prefopt.online.setup import synthetic_prompts

    return synthetic_prompts(0)[0][: args.prompts * args.steps]


def run_prefopt(
    model: Any, tokenizer: Any, prompts: list[str], args: argparse.Namespace, **settings: Any
) -> list[dict[str, float]]:
    """prefopt's GRPO (`settings`: more `OnlineConfig` fields); per step: end timestamp, tokens, completion tokens,
    generate and score seconds."""
    from prefopt.online import train_online

    steps: list[dict[str, float]] = []

    def on_step(_step: int, record: dict[str, float]) -> None:
        completion = record["gen/length"] * args.prompts * args.samples
        split = {"generate": record["time/generate_s"], "score": record["time/score_s"]}
        steps.append({"end": time.perf_counter(), "tokens": record["tokens"], "completion": completion, **split})

    with tempfile.TemporaryDirectory() as out:
        train_online(
            algorithm="grpo",
            loss_hparams={"beta": 0.0, "clip_range": 0.2},
            model=model,
            tokenizer=tokenizer,
            reward="gold",
            prompts=prompts,
            steps=args.steps,
            prompts_per_step=args.prompts,
            num_samples=args.samples,
            max_new_tokens=args.max_new_tokens,
            temperature=1.0,
            top_p=1.0,
            lr=args.lr,
            weight_decay=0.0,
            max_grad_norm=1.0,
            epochs=1,
            num_minibatches=1,
            output_dir=out,
            checkpoint_every=0,
            progress=False,
            num_threads=args.threads,
            seed=0,
            on_step=on_step,
            **settings,
        )
    return steps


def run_trl(model: Any, tokenizer: Any, prompts: list[str], args: argparse.Namespace) -> list[dict[str, float]]:
    """TRL's GRPOTrainer (module docstring); the same per-step record as `run_prefopt`."""
    import datasets
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from prefopt.data.synthetic import gold_reward

    steps: list[dict[str, float]] = []
    current: dict[str, float] = {}

    class TimedGRPO(GRPOTrainer):  # times TRL's own phases; computes nothing differently
        def _generate(self, prompts: list) -> Any:
            started = time.perf_counter()
            out = super()._generate(prompts)
            current["generate"] = current.get("generate", 0.0) + time.perf_counter() - started
            return out

        def _generate_and_score_completions(self, inputs: Any) -> Any:
            started = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            current["prepare"] = time.perf_counter() - started
            current["completion"] = float(out["completion_mask"].sum())
            current["tokens"] = float(out["prompt_mask"].sum()) + current["completion"]
            return out

    class StepEnd(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            generate = current.pop("generate")
            score = current.pop("prepare") - generate
            steps.append({"end": time.perf_counter(), "generate": generate, "score": score, **current})
            current.clear()

    def gold(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return gold_reward(prompts, completions).tolist()

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=args.prompts * args.samples,  # completions: B prompts × K
            num_generations=args.samples,
            gradient_accumulation_steps=1,
            num_iterations=1,
            max_completion_length=args.max_new_tokens,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            beta=0.0,
            epsilon=0.2,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            max_steps=args.steps,
            use_cpu=True,
            use_vllm=False,
            bf16=False,
            fp16=False,
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            dataloader_num_workers=0,
            gradient_checkpointing=False,
            seed=0,
        )
        trainer = TimedGRPO(
            model=model,
            reward_funcs=gold,
            args=config,
            train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in prompts]),
            processing_class=tokenizer,
            callbacks=[StepEnd()],
        )
        trainer.train()
        record["loss_type"] = config.loss_type
    return steps


def summarise(steps: list[dict[str, float]]) -> dict[str, Any]:
    """Totals over steps 2..S (step 1 is warm-up): tokens/s of the rollout, the learner and end to end, the split."""
    timed = steps[1:]
    wall = [b["end"] - a["end"] for a, b in zip(steps, steps[1:])]
    tokens = sum(s["tokens"] for s in timed)
    completion = sum(s["completion"] for s in timed)
    generate, score = sum(s["generate"] for s in timed), sum(s["score"] for s in timed)
    learn = sum(wall) - generate - score
    return {
        "steps_timed": len(timed),
        "seconds_per_step": sum(wall) / len(timed),
        "tokens_per_step": tokens / len(timed),
        "completion_tokens_per_step": completion / len(timed),
        "end_to_end_tokens_per_s": tokens / sum(wall),
        "rollout_tokens_per_s": completion / generate,
        "learner_tokens_per_s": tokens / (score + learn),
        "split_s": {"generate": generate / len(timed), "score": score / len(timed), "learn": learn / len(timed)},
        "split_share": {"generate": generate / sum(wall), "score": score / sum(wall), "learn": learn / sum(wall)},
    }


def run_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    """One case in this process (the subprocess's body)."""
    import torch
    from _common import peak_extra_bytes

    torch.set_num_threads(args.threads)
    model, tokenizer = build_policy(args.model)
    prompts = benchmark_prompts(args)
    runner = run_trl if case == "trl" else run_prefopt
    if case in ("prefopt-kl", "prefopt-generate"):  # π_ref scored; transformers' generate (module docstring)
        from functools import partial

        setting = {"reference_kl": "always"} if case == "prefopt-kl" else {"generation_decoder": "hf"}
        runner = partial(run_prefopt, **setting)
    if case == "prefopt-before":  # the π_old pass and a generate call per prompt length (module docstring)
        from functools import partial

        from prefopt.online import annotation

        annotation.reuses_learner_forward = lambda run: False
        runner = partial(run_prefopt, generation_batching="length", generation_decoder="hf")
    steps: list[dict[str, float]] = []
    peak = peak_extra_bytes(lambda: steps.extend(runner(model, tokenizer, prompts, args)), torch.device("cpu"))
    return {
        "case": case,
        **summarise(steps),
        "peak_extra_mb": peak / 2**20,
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        **record,
    }


def interpreter(case: str, args: argparse.Namespace) -> str | None:
    """The Python that runs `case`: --trl-python for TRL, else this one (None: TRL is not installed)."""
    if case != "trl":
        return sys.executable
    if args.trl_python is not None:
        return str(args.trl_python)
    return sys.executable if importlib.util.find_spec("trl") is not None else None


def run_subprocess(python: str, case: str, args: argparse.Namespace) -> dict[str, Any]:
    """One case in a fresh process: its record with the load average before and after, or {"error": stderr}."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    flags = {"--prompts": args.prompts, "--samples": args.samples, "--max-new-tokens": args.max_new_tokens}
    flags |= {"--steps": args.steps, "--threads": args.threads, "--lr": args.lr, "--model": args.model}
    command = [python, __file__, "--case", case, *(str(x) for kv in flags.items() for x in kv)]
    load_before = os.getloadavg()[0]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": done.stderr[-3000:]}
    return {**json.loads(lines[-1]), "load_average_1min": [load_before, os.getloadavg()[0]]}


def print_table(best: dict[str, dict[str, Any]]) -> None:
    trl = best.get("trl")
    print(
        f"{'case':<15}{'e2e tok/s':>10}{'× trl':>7}{'rollout tok/s':>14}{'learner tok/s':>14}{'s/step':>8}"
        f"{'generate':>9}{'score':>7}{'learn':>7}{'peak MB':>9}{'tok/step':>9}"
    )
    for case, r in best.items():
        ratio = r["end_to_end_tokens_per_s"] / trl["end_to_end_tokens_per_s"] if trl else float("nan")
        share = r["split_share"]
        print(
            f"{case:<15}{r['end_to_end_tokens_per_s']:>10.0f}{ratio:>7.2f}{r['rollout_tokens_per_s']:>14.0f}"
            f"{r['learner_tokens_per_s']:>14.0f}{r['seconds_per_step']:>8.3f}{share['generate']:>9.0%}"
            f"{share['score']:>7.0%}{share['learn']:>7.0%}{r['peak_extra_mb']:>9.0f}{r['tokens_per_step']:>9.0f}"
        )


def drive(args: argparse.Namespace) -> int:
    """Every case `--rounds` times, interleaved, each in its own subprocess; the table and the JSON."""
    import torch
    from _common import device_name, git_commit, versions, versions_in

    torch.set_num_threads(args.threads)  # recorded by device_name: what the cases use
    cases = [c for c in args.cases if interpreter(c, args) is not None]
    skipped = {c: "TRL is not installed here; give --trl-python" for c in args.cases if c not in cases}
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in cases}
    failures: list[dict[str, str]] = []
    for round_ in range(args.rounds):
        for case in cases:
            result = run_subprocess(str(interpreter(case, args)), case, args)
            if "error" in result:
                failures.append({"case": case, "round": str(round_), "error": result["error"]})
                print(f"{case} round {round_}: failed\n{result['error']}", file=sys.stderr)
            else:
                runs[case].append({"round": round_, **result})
    best = {c: max(rs, key=lambda r: r["end_to_end_tokens_per_s"]) for c, rs in runs.items() if rs}
    print_table(best)
    payload = {
        "benchmark": "online_step",
        "device": device_name(torch.device("cpu")),
        "dtype": "float32",
        "threads": args.threads,
        "load_average_end": os.getloadavg(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "versions": versions(("torch", "transformers", "accelerate", "prefopt")),
        "trl_versions": versions_in(interpreter("trl", args), ("trl", "torch", "transformers", "accelerate")),
        "commit": git_commit(ROOT),
        "best": best,  # each case's fastest round end to end (the least disturbed by other load)
        "runs": runs,  # every timed round, in order
        "failures": failures,
        "skipped": skipped,
    }
    if "trl" in best:  # the target: end_to_end ≥ 1.5 at peak_memory ≤ 1
        t = best["trl"]
        payload["over_trl"] = {
            case: {
                "end_to_end": r["end_to_end_tokens_per_s"] / t["end_to_end_tokens_per_s"],
                "peak_memory": r["peak_extra_mb"] / t["peak_extra_mb"],
            }
            for case, r in best.items()
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4, help="B prompts per step")
    parser.add_argument("--samples", type=int, default=4, help="K samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps (the first is warm-up)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", choices=("synthetic", "random"), default="synthetic")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--trl-python", type=Path, help="the Python of a venv with TRL, for the TRL case")
    parser.add_argument("--quick", action="store_true", help="random policy, B=2, K=2, 4 new tokens, 2 steps, 1 round")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "online_step.json")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # internal: run one case here
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return 0
    if args.quick:
        args.model, args.prompts, args.samples, args.max_new_tokens, args.steps, args.rounds = "random", 2, 2, 4, 2, 1
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
