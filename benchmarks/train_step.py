"""DPO training steps: prefopt's trainer against TRL's DPOTrainer, same model, data and hyper-parameters.

    python benchmarks/train_step.py                    # table + benchmarks/results/train_step.json
    python benchmarks/train_step.py --steps 12 --batch-size 8 --threads 1
    python benchmarks/train_step.py --ratios 1:1,4:1,16:1 --completion-words 16 \
        --trl-python /tmp/trlvenv10/bin/python           # prompt sharing at three prompt:completion ratios

Each case runs in a fresh subprocess (so memory high-water marks do not mix):

    prefopt           `prefopt.train.train`, defaults: reference log-probs cached once (then the copy is freed),
                      prompts shared where that saves a fifth of the positions (`share_prompt="auto"`)
    prefopt-unshared  defaults with `share_prompt="off"`: each sequence with its own copy of the prompt, padded
    prefopt-packed    `packed=True, share_prompt="off"`: the padding-free packed path without sharing
    prefopt-shared    `share_prompt="on"`: each prompt once per pair, behind a block mask, one pair per row
    prefopt-shared-packed  `packed=True, share_prompt="on"`: every pair in one row
    prefopt-live      defaults with `ref_cache=False`: a frozen reference model runs every step, as TRL does
    prefopt-torch-head  default, but the output head on the plain-torch kernel (`engine_backend="reference"`)
                      instead of the chunked one that recomputes logits in backward to save memory
    trl               `trl.DPOTrainer`, defaults (a frozen reference copy, passed as `ref_model`, runs every step)
    trl-precompute    `trl.DPOTrainer` with `precompute_ref_log_probs=True`

TRL is not a prefopt dependency: the TRL cases run under `--trl-python` (an interpreter of a venv with TRL,
torch and transformers; this checkout is put on its path), else under this one if it has TRL, else they
are skipped and recorded as such. `--ratios P:C,...` runs every case at each prompt:completion length ratio,
with completions of `--completion-words` and prompts of P/C times as many (Wang et al. 2024,
arXiv:2410.20305, measure prompt sharing for DPO the same way). `--rounds K` repeats every case K times,
interleaved, and keeps each case's fastest round (the least disturbed by other load on a shared machine).

Model: a random-init Llama (vocabulary 32,000, hidden 256, 4 layers, MLP 688, tied embeddings, float32,
sdpa attention; 11.4M parameters). Data: pairs built from the synthetic task's words with a prompt of P
and completions of C words exactly (one token per word), so every batch of every framework has the same
shapes and the same token count: tokens/step = batch · 2 · (P + C + 2) (BOS and EOS; TRL's `num_tokens`
log counts the same). Hyper-parameters, identical: DPO β = 0.1, AdamW lr 1e-4, constant schedule, no
warm-up, no weight decay, max_grad_norm 1, no gradient accumulation, no gradient checkpointing.

Measured: tokens/s over steps 2..S (step 1 is warm-up; timestamps from each framework's step-end callback)
and the peak extra memory of building the trainer and running all steps (`benchmarks/_common.py`: on CPU
the resident-set high-water mark above the RSS before, with the policy model already built). Step 1's
loss must be log 2 in every case (policy = reference), which checks that all compute the same objective.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
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

CASES = (
    "prefopt",
    "prefopt-unshared",
    "prefopt-packed",
    "prefopt-shared",
    "prefopt-shared-packed",
    "prefopt-live",
    "prefopt-torch-head",
    "trl",
    "trl-precompute",
)
# The prefopt cases' settings beyond the defaults.
PREFOPT_SETTINGS: dict[str, dict[str, Any]] = {
    "prefopt": {},
    "prefopt-unshared": {"share_prompt": "off"},
    "prefopt-packed": {"packed": True, "share_prompt": "off"},
    "prefopt-shared": {"share_prompt": "on"},
    "prefopt-shared-packed": {"packed": True, "share_prompt": "on"},
    "prefopt-live": {"ref_cache": False},
    "prefopt-torch-head": {"engine_backend": "reference"},
}
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


def max_lengths(args: argparse.Namespace) -> tuple[int, int]:
    """(max_length, max_prompt_length) that keep every pair whole: BOS + prompt + completion + EOS, with room."""
    return args.prompt_words + args.completion_words + 8, args.prompt_words + 4


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
        max_position_embeddings=1024,
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

    max_length, max_prompt_length = max_lengths(args)
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
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            progress=False,
            seed=0,
            cpu=True,
            on_step=on_step,
            **PREFOPT_SETTINGS[case],
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
            max_length=max_lengths(args)[0],
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
    parser.add_argument("--ratios", help="prompt:completion length ratios, e.g. 1:1,4:1,16:1 (prompts scaled)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--trl-python", type=Path, help="the Python of a venv with TRL, for the TRL cases")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_step.json")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # internal: run one case here
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return 0
    return drive(args)


def ratio_sizes(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(prompt words, completion words) per ratio: completions of --completion-words, prompts P/C of that."""
    if not args.ratios:
        return [(args.prompt_words, args.completion_words)]
    sizes = []
    for ratio in args.ratios.split(","):
        p, c = (float(x) for x in ratio.split(":"))
        sizes.append((round(args.completion_words * p / c), args.completion_words))
    return sizes


def interpreter(case: str, args: argparse.Namespace) -> str | None:
    """The Python that runs `case`: --trl-python for TRL, else this one (None: TRL is not installed)."""
    if not case.startswith("trl"):
        return sys.executable
    if args.trl_python is not None:
        return str(args.trl_python)
    return sys.executable if importlib.util.find_spec("trl") is not None else None


def run_subprocess(python: str, case: str, args: argparse.Namespace, sizes: tuple[int, int]) -> dict[str, Any]:
    """One case in a fresh process; its result record, or {"error": stderr's tail}."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    flags = {"--steps": args.steps, "--batch-size": args.batch_size, "--threads": args.threads}
    flags |= {"--prompt-words": sizes[0], "--completion-words": sizes[1]}
    command = [python, __file__, "--case", case, *(str(x) for kv in flags.items() for x in kv)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": done.stderr[-2000:]}
    return json.loads(lines[-1])


def print_table(sizes: tuple[int, int], rows: list[dict[str, Any]]) -> None:
    by_case = {r["case"]: r for r in rows}
    trl, unshared = by_case.get("trl"), by_case.get("prefopt-unshared")
    print(f"\nprompt {sizes[0]} : completion {sizes[1]} words")
    print(f"{'case':<24}{'tokens/s':>10}{'s/step':>9}{'× unshared':>12}{'× trl':>8}{'peak MB':>10}{'loss@1':>9}")
    for r in rows:
        vs_unshared = r["tokens_per_s"] / unshared["tokens_per_s"] if unshared else math.nan
        vs_trl = r["tokens_per_s"] / trl["tokens_per_s"] if trl else math.nan
        print(
            f"{r['case']:<24}{r['tokens_per_s']:>10.0f}{r['seconds_per_step']:>9.3f}{vs_unshared:>12.2f}"
            f"{vs_trl:>8.2f}{r['peak_extra_mb']:>10.0f}{r['first_loss']:>9.4f}"
        )


def drive(args: argparse.Namespace) -> int:
    """Run every (ratio, case) in its own subprocess, `--rounds` times interleaved; print tables, write the JSON."""
    import torch
    from _common import device_name, git_commit, versions, versions_in

    torch.set_num_threads(args.threads)  # what the cases use; recorded by device_name
    cases = [c for c in args.cases if interpreter(c, args) is not None]
    skipped = {c: "TRL is not installed here; give --trl-python" for c in args.cases if c not in cases}
    best: dict[tuple[int, int], dict[str, dict[str, Any]]] = {sizes: {} for sizes in ratio_sizes(args)}
    failures: dict[str, str] = {}
    loads = []
    for _ in range(args.rounds):
        for sizes, results in best.items():
            for case in cases:
                loads.append(os.getloadavg()[0])
                record = run_subprocess(str(interpreter(case, args)), case, args, sizes)
                if "error" in record:
                    failures[f"{case} {sizes[0]}:{sizes[1]}"] = record["error"]
                    print(f"{case} at {sizes}: failed\n{record['error']}", file=sys.stderr)
                elif case not in results or record["tokens_per_s"] > results[case]["tokens_per_s"]:
                    results[case] = record
    ratios = []
    for sizes, results in best.items():
        rows = [results[c] for c in cases if c in results]
        print_table(sizes, rows)
        ratios.append({"prompt_words": sizes[0], "completion_words": sizes[1], "results": rows})
    payload = {
        "benchmark": "train_step",
        "device": device_name(torch.device("cpu")),
        "dtype": "float32",
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "load_average_1min_per_case": [min(loads, default=0.0), max(loads, default=0.0)],
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "versions": versions(("torch", "transformers", "accelerate", "prefopt")),
        "trl_versions": versions_in(interpreter("trl", args), ("trl", "torch", "transformers", "accelerate")),
        "commit": git_commit(ROOT),
        "ratios": ratios,
        "failures": failures,
        "skipped": skipped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
