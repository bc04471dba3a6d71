"""Record TRL's own DPO loss values for tests/test_trl_config.py. Not run by the suite: TRL is not a dependency.

Run it with TRL in a side environment and paste what it prints into the test's constants:

    python3 -m venv /tmp/trlvenv && /tmp/trlvenv/bin/pip install torch==2.13.0 trl==1.16.0
    /tmp/trlvenv/bin/python tests/record_trl_losses.py                 # TRL_1_16, TRL_1_16_MPO
    pip download --no-deps trl==0.28.0, unzip the wheel to DIR, then
    PYTHONPATH=DIR /tmp/trlvenv/bin/python tests/record_trl_losses.py  # TRL_0_28

TRL ≥ 0.29 computes its loss inside `DPOTrainer._compute_loss`: this calls that method on a stub trainer whose model
returns fixed float64 per-token log-probs (multiples of 1/8, so the sums are exact), with the reference log-probs
precomputed, so only TRL's loss code runs. TRL ≤ 0.28 has `DPOTrainer.dpo_loss(chosen, rejected, ref_chosen,
ref_rejected, loss_type)`, called on the sequence sums.
"""

from __future__ import annotations

import json
import sys
import types
from collections import defaultdict

import torch

# 3 pairs: completion tokens of chosen rows 0..2, then rejected rows 3..5 (one prompt token before each).
POLICY = [
    [-1.0, -0.5, -2.25],
    [-0.75, -1.5, -0.125],
    [-3.0, -0.25, -1.0],
    [-1.5, -2.0],
    [-0.5, -0.875, -1.25, -2.0],
    [-2.5, -0.25, -0.375],
]
REF = [
    [-1.25, -0.625, -2.0],
    [-1.0, -1.0, -0.75],
    [-2.5, -0.5, -1.125],
    [-0.25, -2.25],
    [-0.75, -1.0, -1.0, -1.5],
    [-2.0, -0.5, -0.5],
]
# log Σ_v p_v² at each completion token (WPO's alignment, what TRL's fused head returns as `log_sum_sq_probs`).
LOG_SUM_SQ = [
    [-0.5, -0.25, -1.0],
    [-0.375, -0.75, -0.125],
    [-1.5, -0.125, -0.5],
    [-0.75, -1.0],
    [-0.25, -0.5, -0.625, -1.0],
    [-1.25, -0.125, -0.25],
]
BETA, EPS, TAU = 0.3, 0.15, 0.2
# f-DPO and WPO on the sigmoid loss: {name: DPOConfig fields} (TRL ≥ 0.29's f_alpha_divergence_coef c is 1 − α).
RESHAPED = {
    "sigmoid, forward_kl": {"f_divergence_type": "forward_kl"},
    "sigmoid, js_divergence": {"f_divergence_type": "js_divergence"},
    "sigmoid, alpha_divergence 0.3": {
        "f_divergence_type": "alpha_divergence",
        "f_alpha_divergence_coef": 0.3,
        "dtype": torch.float32,
    },
    "sigmoid, use_weighting": {"use_weighting": True},
}
EXTRA = {
    "exo_pair": {"label_smoothing": EPS},
    "robust": {"label_smoothing": EPS},
    "aot": {"label_smoothing": EPS},
    "aot_unpaired": {"label_smoothing": EPS},
    "discopop": {"discopop_tau": TAU},
}
TYPES = [
    "sigmoid",
    "sigmoid_norm",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
]


def sums(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor([sum(r) for r in rows], dtype=torch.float64)


def new_trl_loss(
    trainer_class,
    loss_types,
    weights=None,
    label_smoothing=0.0,
    discopop_tau=0.05,
    f_divergence_type="reverse_kl",
    f_alpha_divergence_coef=0.5,
    use_weighting=False,
    dtype=torch.float64,
) -> float:
    """TRL ≥ 0.29: `DPOTrainer._compute_loss` on a stub trainer and a model that returns fixed log-probs (float64;
    float32 for the α-divergence, whose exponent cap TRL looks up by dtype and has no float64 entry for)."""
    n, width = len(POLICY), 1 + max(len(r) for r in POLICY)
    attention, completion = torch.zeros(n, width, dtype=torch.long), torch.zeros(n, width, dtype=torch.long)
    per_token = torch.zeros(n, width - 1, dtype=torch.float64)
    sum_sq = torch.zeros(n, width - 1, dtype=torch.float64)
    for i, row in enumerate(POLICY):
        attention[i, : 1 + len(row)] = 1
        completion[i, 1 : 1 + len(row)] = 1
        per_token[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
        sum_sq[i, : len(row)] = torch.tensor(LOG_SUM_SQ[i], dtype=torch.float64)
    per_token, sum_sq = per_token.to(dtype), sum_sq.to(dtype)
    ref = sums(REF).to(dtype)
    inputs = {
        "input_ids": torch.ones(n, width, dtype=torch.long),
        "attention_mask": attention,
        "completion_mask": completion,
        "ref_chosen_logps": ref[: n // 2],
        "ref_rejected_logps": ref[n // 2 :],
    }
    zeros = torch.zeros_like(per_token)
    same = lambda t: t  # noqa: E731  one process: gathering returns the tensor
    outputs = types.SimpleNamespace(
        log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(), log_sum_sq_probs=sum_sq
    )
    stub = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        accelerator=types.SimpleNamespace(device=torch.device("cpu"), gather=same, gather_for_metrics=same),
        beta=BETA,
        loss_types=loss_types,
        loss_weights=weights or [1.0] * len(loss_types),
        ld_alpha=None,
        f_divergence_type=f_divergence_type,
        f_alpha_divergence_coef=f_alpha_divergence_coef,
        label_smoothing=label_smoothing,
        use_weighting=use_weighting,
        args=types.SimpleNamespace(discopop_tau=discopop_tau),
        precompute_ref_logps=True,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    return float(trainer_class._compute_loss(stub, lambda **kwargs: outputs, inputs, return_outputs=False))


def old_trl_loss(
    trainer_class, divergence, loss_type, label_smoothing=0.0, reference_free=False, divergence_params=None
) -> float:
    """TRL ≤ 0.28: `DPOTrainer.dpo_loss` on the sequence sums."""
    stub = types.SimpleNamespace(
        accelerator=types.SimpleNamespace(device=torch.device("cpu")),
        beta=BETA,
        label_smoothing=label_smoothing,
        reference_free=reference_free,
        f_divergence_type=divergence,
        f_divergence_params=divergence_params or {},
        loss_type=[loss_type],
        args=types.SimpleNamespace(discopop_tau=0.05),
    )
    chosen, rejected, ref = sums(POLICY[:3]), sums(POLICY[3:]), sums(REF)
    losses, _, _ = trainer_class.dpo_loss(stub, chosen, rejected, ref[:3], ref[3:], loss_type, {})
    return float(losses.mean())


def main() -> None:
    import trl.import_utils as trl_imports  # heavy: TRL, only in the side environment

    trl_imports.is_weave_available = lambda: False  # TRL 0.28 imports weave when it thinks it is there
    import trl
    from trl.trainer.dpo_trainer import DPOTrainer

    if hasattr(DPOTrainer, "dpo_loss"):  # TRL ≤ 0.28
        from trl.trainer.dpo_config import FDivergenceType

        kl, alpha = FDivergenceType.REVERSE_KL, FDivergenceType.ALPHA_DIVERGENCE
        out = {
            "sigmoid, label_smoothing 0.15": old_trl_loss(DPOTrainer, kl, "sigmoid", EPS),
            "exo_pair, label_smoothing 0": old_trl_loss(DPOTrainer, kl, "exo_pair", 0.0),
            "sigmoid, reference_free": old_trl_loss(DPOTrainer, kl, "sigmoid", 0.0, True),
            "sigmoid, js_divergence": old_trl_loss(DPOTrainer, FDivergenceType.JS_DIVERGENCE, "sigmoid"),
            "sigmoid, alpha_divergence 0.3": old_trl_loss(
                DPOTrainer, alpha, "sigmoid", divergence_params={"alpha_divergence_coef": 0.3}
            ),
            "sigmoid, alpha_divergence (default 1.0)": old_trl_loss(DPOTrainer, alpha, "sigmoid"),
        }
    else:
        out = {t: new_trl_loss(DPOTrainer, [t], **EXTRA.get(t, {})) for t in TYPES}
        out["mpo"] = new_trl_loss(DPOTrainer, ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0])
        out.update({name: new_trl_loss(DPOTrainer, ["sigmoid"], **fields) for name, fields in RESHAPED.items()})
    json.dump({"trl": trl.__version__, "torch": torch.__version__, **out}, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
