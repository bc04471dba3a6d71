"""DPO training steps: prefopt's trainer against TRL's DPOTrainer, same model, data and hyper-parameters.

    python benchmarks/train_step.py                    # table + benchmarks/results/train_step.json
    python benchmarks/train_step.py --steps 12 --batch-size 8 --threads 1

Each case runs in a fresh subprocess (so memory high-water marks do not mix):

    prefopt           `prefopt.train.train`, defaults: reference log-probs cached once (then the copy is freed)
    prefopt-live      the same with `ref_cache=False`: a frozen reference model runs every step, as TRL does
    prefopt-torch-head  default, but the output head on the plain-torch kernel (`engine_backend="reference"`)
                      instead of the chunked one that recomputes logits in backward to save memory
    trl               `trl.DPOTrainer`, defaults (a frozen reference copy, passed as `ref_model`, runs every step)
    trl-precompute    `trl.DPOTrainer` with `precompute_ref_log_probs=True`

Model: a random-init Llama (vocabulary 32,000, hidden 256, 4 layers, MLP 688, tied embeddings, float32,
sdpa attention; 11.4M parameters). Data: pairs built from the synthetic task's words with a prompt of P
and completions of C words exactly (one token per word), so every batch of every framework has the same
shapes and the same token count: tokens/step = batch · 2 · (P + C + 2) (BOS and EOS; TRL's `num_tokens`
log counts the same). Hyper-parameters, identical: DPO
β = 0.1, AdamW lr 1e-4, constant schedule, no warm-up, no weight decay, max_grad_norm 1, no gradient
accumulation, no gradient checkpointing.

Measured: tokens/s over steps 2..S (step 1 is warm-up; timestamps from each framework's step-end callback)
and the peak extra memory of building the trainer and running all steps (`benchmarks/_common.py`: on CPU
the resident-set high-water mark above the RSS before, with the policy model already built). Step 1's
loss must be log 2 in every case (policy = reference), which checks that all compute the same objective.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = ("prefopt", "prefopt-live", "prefopt-torch-head", "trl", "trl-precompute")
ROOT = Path(__file__).resolve().parents[1]


def build_pairs(n: int, prompt_words: int, completion_words: int, seed: int = 0) -> list[dict[str, Any]]:
    """n pairs of fixed-length texts in the synthetic task's vocabulary (one token per word)."""
    from prefopt.data.synthetic import sample_review

    rng = random.Random(seed)

    def words(k: int) -> list[str]:
        out: list[str] = []
        while len(out) < k:
            review = sample_review(rng)
            out += (review.prompt + review.completion).split()
        return out[:k]

    return [
        {
            "prompt": " ".join(words(prompt_words)),
            "chosen": " " + " ".join(words(completion_words)),
            "rejected": " " + " ".join(words(completion_words)),
        }
        for _ in range(n)
    ]


def build_model() -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefopt.data.synthetic import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config), tokenizer


def run_prefopt(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    args: argparse.Namespace,
    case: str,
    step_ends: list[float],
    losses: list[float],
    tokens: list[float],
) -> None:
    from prefopt.train import train

    def on_step(step: int, record: dict[str, float]) -> None:
        step_ends.append(time.perf_counter())
        losses.append(record["loss"])
        tokens.append(record["tokens"])

    with tempfile.TemporaryDirectory() as out:
        train(
            model=model,
            tokenizer=tokenizer,
            dataset=dataset,
            loss="dpo",
            loss_hparams={"beta": 0.1},
            output_dir=out,
            batch_size=args.batch_size,
            max_steps=args.steps,
            preset="synthetic",
            lr=1e-4,
            weight_decay=0.0,
            warmup_steps=0,
            schedule="constant",
            max_grad_norm=1.0,
            max_length=128,
            max_prompt_length=64,
            ref_cache=case != "prefopt-live",
            progress=False,
            seed=0,
            cpu=True,
            on_step=on_step,
            engine_backend="reference" if case == "prefopt-torch-head" else "auto",
        )


def run_trl(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    args: argparse.Namespace,
    precompute: bool,
    step_ends: list[float],
    losses: list[float],
) -> None:
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class Timer(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            step_ends.append(time.perf_counter())

        def on_log(self, _args: Any, _state: Any, _control: Any, logs: dict | None = None, **__: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(
            output_dir=out,
            per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=1,
            max_steps=args.steps,
            learning_rate=1e-4,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            beta=0.1,
            max_length=128,
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            dataloader_num_workers=0,
            seed=0,
            bf16=False,
            fp16=False,
            disable_tqdm=True,
            gradient_checkpointing=False,
            precompute_ref_log_probs=precompute,
        )
        # TRL 1.16 builds its default reference from the model's hub path; an in-memory model gets the same
        # frozen copy TRL would load, made here (inside the measured call, as TRL's own would be).
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        trainer = DPOTrainer(
            model=model,
            ref_model=reference,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[Timer()],
        )
        trainer.train()


def run_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    """One case in this process: returns tokens/s, seconds per step, peak extra memory, losses."""
    import datasets
    import torch
    from _common import peak_extra_bytes

    torch.set_num_threads(args.threads)
    dataset = datasets.Dataset.from_list(
        build_pairs(args.steps * args.batch_size, args.prompt_words, args.completion_words)
    )
    model, tokenizer = build_model()
    step_ends: list[float] = []
    losses: list[float] = []
    tokens: list[float] = []
    if case.startswith("prefopt"):
        peak = peak_extra_bytes(
            lambda: run_prefopt(model, tokenizer, dataset, args, case, step_ends, losses, tokens), torch.device("cpu")
        )
    else:
        peak = peak_extra_bytes(
            lambda: run_trl(model, tokenizer, dataset, args, case.endswith("precompute"), step_ends, losses),
            torch.device("cpu"),
        )
    tokens_per_step = args.batch_size * 2 * (args.prompt_words + args.completion_words + 2)  # + BOS, EOS
    if tokens and any(t != tokens_per_step for t in tokens):  # prefopt counts what it ran; TRL logs the same
        raise RuntimeError(f"prefopt processed {tokens} tokens per step, expected {tokens_per_step}")
    measured = step_ends[-1] - step_ends[0]
    return {
        "case": case,
        "steps": len(step_ends),
        "tokens_per_step": tokens_per_step,
        "seconds_per_step": measured / (len(step_ends) - 1),
        "tokens_per_s": tokens_per_step * (len(step_ends) - 1) / measured,
        "peak_extra_mb": peak / 2**20,
        "first_loss": losses[0] if losses else math.nan,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-words", type=int, default=16)
    parser.add_argument("--completion-words", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_step.json")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # internal: run one case here
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return 0
    return drive(args)


def drive(args: argparse.Namespace) -> int:
    """Run every case in its own subprocess, print the table, write the JSON."""
    import torch
    from _common import device_name, git_commit, versions

    torch.set_num_threads(args.threads)  # what the cases use; recorded by device_name
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    rows, failures = [], {}
    common = [
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        "--prompt-words",
        str(args.prompt_words),
        "--completion-words",
        str(args.completion_words),
    ]
    for case in args.cases:
        done = subprocess.run(
            [sys.executable, __file__, "--case", case, *common], capture_output=True, text=True, env=env
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode or not lines:
            failures[case] = done.stderr[-2000:]
            print(f"{case}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(lines[-1]))
    base = next((r for r in rows if r["case"] == "trl"), None)
    print(f"{'case':<20}{'tokens/s':>10}{'s/step':>9}{'× trl':>8}{'peak MB':>10}{'× trl':>8}{'loss@1':>9}")
    for r in rows:
        speed = r["tokens_per_s"] / base["tokens_per_s"] if base else math.nan
        memory = r["peak_extra_mb"] / base["peak_extra_mb"] if base else math.nan
        print(
            f"{r['case']:<20}{r['tokens_per_s']:>10.0f}{r['seconds_per_step']:>9.3f}{speed:>8.2f}"
            f"{r['peak_extra_mb']:>10.0f}{memory:>8.2f}{r['first_loss']:>9.4f}"
        )
    payload = {
        "benchmark": "train_step",
        "device": device_name(torch.device("cpu")),
        "dtype": "float32",
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "settings": vars(args) | {"out": str(args.out)},
        "versions": versions(("torch", "transformers", "accelerate", "trl", "prefopt")),
        "commit": git_commit(ROOT),
        "results": rows,
        "failures": failures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
