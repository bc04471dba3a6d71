"""Does a bf16 checkpoint learn? Share of weights that DPO changes, pure bf16 against fp32 master weights.

    python benchmarks/precision.py                  # table + benchmarks/results/precision.json
    python benchmarks/precision.py --skip-memory    # only the learning table

Learning table. A random-init Llama (synthetic vocabulary, hidden 64, MLP 128, 2 layers, 4 heads, tied
embeddings, HF init σ = 0.02) is saved in bfloat16 (or, for one row, float32) and trained with
`prefopt.train.train(loss="dpo", ...)` on 64 grammar-sampled pairs labelled by the gold reward, with
the DPO preset (RMSprop, warm-up 150 steps, clip 10), batch 16, and the given lr and steps. "changed" is
the share of weight elements of final/ that differ from the initial checkpoint, both compared in bf16
(so an fp32 run counts only the changes a bf16 export keeps); "master" is the same share in the weights
as trained (the last checkpoint: fp32 master weights, or the bf16 weights of pure bf16); "max |Δw|" is
measured in fp32 on final/.
The rows with `master_weights="bf16"` are the behaviour before fp32 master weights (pure bf16 training).

Memory table. Exact byte counts (tensor sizes, not a profiler) of weights, gradients and optimiser state
after one AdamW step of a larger random Llama (vocabulary 32,000, hidden 512, MLP 1,376, 8 layers),
pure bf16 against fp32 master weights, and LoRA r = 16 on the bf16 base. The bf16 copies that autocast
makes of fp32 weights live only inside the forward/backward and are not counted (at most 2 bytes/param);
the peak resident-set growth of that first step (`_common.peak_extra_bytes`: gradients, AdamW state,
activations and those copies; batch 2 × 64 tokens) is reported beside.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from _common import device_name, git_commit, peak_extra_bytes, versions  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (label, checkpoint dtype, settings)
ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("pure bf16, 10 steps, lr 5e-7", "bfloat16", {"max_steps": 10, "lr": 5e-7, "master_weights": "bf16"}),
    (
        "pure bf16, 10 steps, lr 5e-7, --mixed-precision bf16",
        "bfloat16",
        {"max_steps": 10, "lr": 5e-7, "master_weights": "bf16", "mixed_precision": "bf16"},
    ),
    ("pure bf16, 200 steps, lr 5e-7", "bfloat16", {"max_steps": 200, "lr": 5e-7, "master_weights": "bf16"}),
    ("pure bf16, 200 steps, lr 2e-6", "bfloat16", {"max_steps": 200, "lr": 2e-6, "master_weights": "bf16"}),
    ("fp32 checkpoint, 200 steps, lr 2e-6", "float32", {"max_steps": 200, "lr": 2e-6}),
    ("default (fp32 master), 10 steps, lr 5e-7", "bfloat16", {"max_steps": 10, "lr": 5e-7}),
    ("default (fp32 master), 200 steps, lr 5e-7", "bfloat16", {"max_steps": 200, "lr": 5e-7}),
    ("default (fp32 master), 200 steps, lr 2e-6", "bfloat16", {"max_steps": 200, "lr": 2e-6}),
]


def write_task(root: Path, dtype: torch.dtype, pairs: int = 64, seed: int = 0) -> dict[str, Path]:
    """The tiny Llama saved in `dtype` (same initial weights for every dtype) and `pairs` DPO pairs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefopt.data.synthetic import build_tokenizer, gold_reward, sample_review

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16).to(dtype)  # bf16-representable in every dtype
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rng = random.Random(seed)
    rows = []
    for i in range(pairs):
        first = sample_review(rng)
        completions = [first.completion, sample_review(rng, item=first.item).completion]
        scores = gold_reward([first.prompt] * 2, completions).tolist()
        best = 0 if scores[0] >= scores[1] else 1
        rows.append(
            {"id": f"p{i}", "prompt": first.prompt, "chosen": completions[best], "rejected": completions[1 - best]}
        )
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model": root / "model", "data": root / "pairs.jsonl"}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def run_row(label: str, dtype_name: str, settings: dict[str, Any], work: Path) -> dict[str, Any]:
    """Train one row and compare final/ with the initial checkpoint."""
    from prefopt.train import train

    task = write_task(work / "task", getattr(torch, dtype_name))
    started = time.perf_counter()
    result = train(
        loss="dpo",
        model=str(task["model"]),
        data=str(task["data"]),
        output_dir=str(work / "run"),
        batch_size=16,
        engine_backend="reference",
        progress=False,
        **settings,
    )
    seconds = time.perf_counter() - started
    before, after = _weights(task["model"]), _weights(Path(str(result.model_path)))
    changed = total = 0
    max_delta = 0.0
    for name, w0 in before.items():
        w1 = after[name]
        changed += int((w1.to(torch.bfloat16) != w0.to(torch.bfloat16)).sum())
        total += w0.numel()
        max_delta = max(max_delta, float((w1.float() - w0.float()).abs().max()))
    saved = sorted({str(t.dtype).removeprefix("torch.") for t in after.values()})
    master = load_file(str(Path(str(result.checkpoint_path)) / "trainable.safetensors"))  # as trained
    moved = sum(int((w.float() != before[n].float()).sum()) for n, w in master.items())
    return {
        "row": label,
        "checkpoint_dtype": dtype_name,
        **settings,
        "changed_fraction": changed / total,
        "master_changed_fraction": moved / sum(w.numel() for w in master.values()),
        "max_abs_delta": max_delta,
        "final_loss": result.final_metrics["loss"],
        "saved_dtypes": saved,
        "precision": result.precision,
        "seconds": seconds,
    }


def _state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    params = {id(p): p for p in model.parameters()}.values()
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    state = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    return {"weights": weights, "grads": grads, "optimizer": state, "total": weights + grads + state}


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, precision: Any, ids: torch.Tensor) -> None:
    with precision.autocast_context("cpu"):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()


def memory_rows() -> list[dict[str, Any]]:
    """Exact bytes of weights, gradients and AdamW state after one step (module docstring)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefopt.train.precision import resolve_precision

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    )
    ids = torch.randint(0, 32000, (2, 64))
    rows = []
    for label, master, lora in (
        ("pure bf16 (before)", "bf16", False),
        ("fp32 master (default)", "fp32", False),
        ("LoRA r=16, bf16 base (default)", "fp32", True),
    ):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
        precision = resolve_precision(model, master_weights=master)
        n = sum(p.numel() for p in model.parameters())
        if lora:
            model.requires_grad_(False)
            model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        precision.cast(model)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        # grads, AdamW state, activations, autocast copies
        peak = peak_extra_bytes(functools.partial(_train_step, model, optimizer, precision, ids), torch.device("cpu"))
        counts = _state_bytes(model, optimizer)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append(
            {
                "row": label,
                "parameters": n,
                "trainable": trainable,
                **counts,
                "peak_step_extra": peak,
                "bytes_per_parameter": counts["total"] / n,
                "precision": precision.describe(model),
            }
        )
        del model, optimizer
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "precision.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    rows = []
    for label, dtype_name, settings in ROWS:
        with tempfile.TemporaryDirectory() as work:
            rows.append(run_row(label, dtype_name, settings, Path(work)))
        r = rows[-1]
        print(
            f"{label:<52} changed {100 * r['changed_fraction']:6.2f} % (master weights "
            f"{100 * r['master_changed_fraction']:6.2f} %)   max|Δw| {r['max_abs_delta']:.2e}   "
            f"final/ {','.join(r['saved_dtypes'])}   {r['seconds']:.1f} s",
            flush=True,
        )
    memory = [] if args.skip_memory else memory_rows()
    for r in memory:
        print(
            f"{r['row']:<34} {r['parameters'] / 1e6:.1f}M params ({r['trainable'] / 1e6:.2f}M trainable): weights "
            f"{r['weights'] / 2**20:.0f} MiB, grads {r['grads'] / 2**20:.0f} MiB, AdamW {r['optimizer'] / 2**20:.0f} "
            f"MiB, total {r['total'] / 2**20:.0f} MiB = {r['bytes_per_parameter']:.2f} B/param; first step's peak "
            f"RSS above the loaded model {r['peak_step_extra'] / 2**20:.0f} MiB"
        )
    payload = {
        "benchmark": "precision",
        "device": device_name(torch.device("cpu")),
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "versions": versions(("torch", "transformers", "accelerate", "peft", "prefopt")),
        "commit": git_commit(ROOT),
        "learning": rows,
        "memory": memory,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
