"""Record TRL's DPO tokenisation, collation, log-probs and loss into fixtures/trl_dpo_parity.json.

Not part of the suite, and TRL is no dependency of prefopt: run it in a side environment that has TRL,
with the same torch and transformers as the suite (the fixture records the versions it ran with):

    python3 -m venv /tmp/trlvenv && /tmp/trlvenv/bin/pip install torch==2.13.0 trl transformers
    /tmp/trlvenv/bin/python tests/data/record_trl_parity.py          # from the repository root

It runs TRL's own machinery on the rows, tokenizer and models of `trl_parity.py`: `DPOTrainer`'s dataset
preparation (EOS text appended, prompt and prompt + completion tokenised, cut at their common prefix), its
`DataCollatorForPreference`, `compute_ref_log_probs` (the fused-head forward it uses for the policy and the
reference: per-sequence sums over the completion mask) and `_compute_loss` (sigmoid DPO, β = 0.1), in
fp32 (`bf16=False`: DPOConfig turns bf16 on by default, even on CPU). For comparison it also records the
float64 sums (logits path in float64) and what TRL's defaults give (bf16 autocast: the policy under
`accelerator.autocast()` as in training, the reference prepared with autocast by `DPOTrainer` itself).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from datasets import Dataset  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from tests.data.trl_parity import (  # noqa: E402
    AGREE,
    BETA,
    BOUNDARY,
    ROWS,
    parity_model,
    parity_tokenizer,
    tokenizer_checksum,
    weights_checksum,
)

OUT = Path(__file__).parent / "fixtures" / "trl_dpo_parity.json"


def float64_sums(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[float]:
    """Σ log π(y_t | y_<t) over completion tokens, with the model and log_softmax in float64."""
    model64 = parity_copy(model).double()
    with torch.no_grad():
        logits = model64(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logp = torch.log_softmax(logits.double(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (logp * batch["completion_mask"][:, 1:]).sum(1).tolist()


def parity_copy(model: torch.nn.Module) -> torch.nn.Module:
    copy = type(model)(model.config)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


def trainer(policy, ref, tokenizer, out_dir: str, **config) -> DPOTrainer:
    args = DPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        report_to=[],
        beta=BETA,
        per_device_train_batch_size=len(ROWS),
        gradient_checkpointing=False,
        disable_tqdm=True,
        **config,
    )
    return DPOTrainer(
        model=policy,
        ref_model=ref,
        args=args,
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )


def measure(run: DPOTrainer, rows: list[int], autocast: bool = False) -> dict:
    """TRL's collator batch for `rows`, its per-sequence log-probs (policy, reference) and its DPO loss."""
    batch = run.data_collator([run.train_dataset[i] for i in rows])
    # Training runs the policy under Accelerate's autocast (the prepared model's forward); the reference is
    # prepared at DPOTrainer's init, so it runs under autocast whenever bf16 is on.
    context = run.accelerator.autocast() if autocast else contextlib.nullcontext()
    with torch.no_grad(), context:
        policy_chosen, policy_rejected = run.compute_ref_log_probs(run.model, batch)
        ref_chosen, ref_rejected = run.compute_ref_log_probs(run.ref_model, batch)
        loss = run._compute_loss(run.model, batch, return_outputs=False)
    return {
        "batch": {key: batch[key].tolist() for key in ("input_ids", "attention_mask", "completion_mask")},
        "policy_chosen_logps": policy_chosen.float().tolist(),
        "policy_rejected_logps": policy_rejected.float().tolist(),
        "ref_chosen_logps": ref_chosen.float().tolist(),
        "ref_rejected_logps": ref_rejected.float().tolist(),
        "loss": float(loss),
    }


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    tokenizer = parity_tokenizer()
    policy, ref = parity_model(tokenizer, seed=0), parity_model(tokenizer, seed=1)
    checksums = {"policy": weights_checksum(policy), "ref": weights_checksum(ref)}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = trainer(policy, ref, tokenizer, tmp, bf16=False)
        assert {"policy": weights_checksum(fp32.model), "ref": weights_checksum(fp32.ref_model)} == checksums
        tokenized = [fp32.train_dataset[i] for i in range(len(ROWS))]
        everything = measure(fp32, list(range(len(ROWS))))
        agree = measure(fp32, AGREE)
        default_config = DPOConfig(output_dir=tmp, use_cpu=True, report_to=[])
        defaults = trainer(parity_copy(policy), parity_copy(ref), tokenizer, tmp, bf16=default_config.bf16)
        under_defaults = measure(defaults, list(range(len(ROWS))), autocast=True)
    batch = {key: torch.tensor(value) for key, value in everything["batch"].items()}
    record = {
        "about": "TRL's DPOTrainer in fp32, recorded by tests/data/record_trl_parity.py; setup in trl_parity.py",
        "versions": {name: version(name) for name in ("trl", "transformers", "torch", "tokenizers", "datasets")},
        "attn_implementation": policy.config._attn_implementation,
        "tokenizer_checksum": tokenizer_checksum(tokenizer),
        "weights_checksum": checksums,
        "beta": BETA,
        "rows": ROWS,
        "agree_rows": AGREE,
        "boundary_row": BOUNDARY,
        "trl_tokens": [{key: row[key] for key in ("prompt_ids", "chosen_ids", "rejected_ids")} for row in tokenized],
        "all_rows": everything,
        "agree_rows_only": agree,
        "float64": {
            "policy": float64_sums(policy, batch),
            "ref": float64_sums(ref, batch),
        },
        "trl_defaults": {
            "bf16": default_config.bf16,
            "gradient_checkpointing": default_config.gradient_checkpointing,
            "max_length": default_config.max_length,
            "truncation_mode": default_config.truncation_mode,
            "policy_chosen_logps": under_defaults["policy_chosen_logps"],
            "policy_rejected_logps": under_defaults["policy_rejected_logps"],
            "ref_chosen_logps": under_defaults["ref_chosen_logps"],
            "ref_rejected_logps": under_defaults["ref_rejected_logps"],
            "loss": under_defaults["loss"],
        },
    }
    # One line per top-level key: diffs stay readable without a line per token id.
    OUT.write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items()) + "\n}\n")
    print(f"wrote {OUT.relative_to(ROOT)}: TRL {record['versions']['trl']}, loss {everything['loss']:.8f}")


if __name__ == "__main__":
    main()
