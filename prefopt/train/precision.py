"""Training precision: fp32 master weights with bf16 compute (the default), or pure bf16 by explicit choice.

Why. bf16 keeps 8 significant bits, so a weight w can only move in steps of ulp(w) = 2^(⌊log₂|w|⌋ − 7),
and an update |Δw| < ulp(w)/2 rounds away. Adam's first steps move every weight by about the learning
rate, so at a typical |w| ≈ 0.02 (ulp = 2⁻¹³ ≈ 1.2e-4) any lr below ≈ 6e-5 is lost on almost every
weight: at the papers' 3e-7 … 1e-6 a bf16 checkpoint trained in bf16 barely moves (docs/training.md,
"Training precision", measured). The official DPO, alignment-handbook and SimPO runs therefore keep the
trained weights in fp32 and run the forward in bf16, as here:

    setting          values                  meaning
    master_weights   "fp32" (default)        trainable weights, their gradients and the optimiser state in fp32
                     "bf16"                  pure bf16 (weights, gradients, optimiser state): half the memory,
                                             plain round-to-nearest updates, so updates < ulp(w)/2 are lost
    mixed_precision  "no" (default)          autocast to bf16 only when the checkpoint is bf16
                     "bf16"                  autocast to bf16 always
                     "auto"                  bf16 on a CUDA device that supports it, or a bf16 checkpoint
    save_dtype       "original" (default)    final/ holds every weight in the dtype it was loaded in
                     "fp32"                  final/ holds fp32 weights

Frozen weights stay in the checkpoint's dtype: the reference model, a LoRA base, a 4/8-bit base. LoRA
adapters are trainable, so they live in the master dtype. Training checkpoints (`checkpoints/`) hold the
master weights as they are, so resuming is exact. The forward of the trained model runs under
`torch.autocast(dtype=bfloat16)` when bf16 compute applies (`Precision.autocast_context`); weights cast there
are transient, and gradients reach the fp32 weights in fp32. An fp16 checkpoint gets fp32 master weights too
and computes in fp32 unless bf16 is asked for (fp16 autocast would need a loss scaler); a frozen fp16 LoRA
base still computes in fp16.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "MASTER_WEIGHTS",
    "MIXED_PRECISION",
    "SAVE_DTYPES",
    "Precision",
    "checkpoint_dtype",
    "resolve_precision",
    "dtype_name",
]

MASTER_WEIGHTS = ("fp32", "bf16")
MIXED_PRECISION = ("no", "bf16", "auto")  # fp16 would need a loss scaler; bf16 does not
SAVE_DTYPES = ("original", "fp32")
_MASTER = {"fp32": torch.float32, "bf16": torch.bfloat16}


def dtype_name(dtype: torch.dtype | None) -> str:
    """ "bfloat16" for torch.bfloat16 (the spelling of transformers' config.json); "none" for None."""
    return "none" if dtype is None else str(dtype).removeprefix("torch.")


def checkpoint_dtype(model: nn.Module) -> torch.dtype:
    """The dtype most of `model`'s floating-point parameters are stored in (float32 when it has none).

    Quantised (integer) weights are skipped: a 4/8-bit model reports the dtype of its other weights.
    """
    return _majority_dtype(model.parameters())


@dataclass
class Precision:
    """The resolved precision of one trained model (see the module docstring).

    Attributes:
        checkpoint: dtype the model was loaded in (`checkpoint_dtype` before training).
        master: dtype of the trainable weights, their gradients and the optimiser state.
        autocast: dtype of `torch.autocast` around the trained model's forward; None: no autocast (the
            forward runs in the weights' own dtype).
        save_dtype: "original" or "fp32" (final/).
        originals: parameter name → dtype before `cast` changed it (what "original" restores on save).
    """

    checkpoint: torch.dtype
    master: torch.dtype
    autocast: torch.dtype | None
    save_dtype: str = "original"
    originals: dict[str, torch.dtype] = field(default_factory=dict)

    def cast(self, model: nn.Module) -> nn.Module:
        """Put `model`'s trainable floating parameters in the master dtype, in place (frozen ones keep theirs).

        Parameters stay the same objects (tied weights stay tied); call it before building the optimiser.
        """
        for name, p in model.named_parameters(remove_duplicate=False):
            if p.requires_grad and p.is_floating_point() and p.dtype != self.master:
                self.originals.setdefault(name, p.dtype)
        for p in model.parameters():
            if p.requires_grad and p.is_floating_point() and p.dtype != self.master:
                p.data = p.data.to(self.master)
        return model

    def autocast_context(self, device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
        """`torch.autocast(device type, bf16)` when bf16 compute applies, else a no-op context."""
        if self.autocast is None:
            return contextlib.nullcontext()
        kind = device.type if isinstance(device, torch.device) else torch.device(device).type
        return torch.autocast(device_type=kind, dtype=self.autocast)

    def saved_dtype(self, name: str, current: torch.dtype) -> torch.dtype:
        """The dtype final/ stores parameter `name` in (now in `current`)."""
        if self.save_dtype == "fp32":
            return torch.float32
        return self.originals.get(name, current)

    def describe(self, model: nn.Module | None = None) -> dict[str, str]:
        """JSON-able record of the dtypes (for result.json and the log): checkpoint, master weights,
        compute and final/'s (the dtype most trainable weights of `model` are saved in)."""
        saved = torch.float32 if self.save_dtype == "fp32" else self.checkpoint
        if model is not None and self.save_dtype == "original":
            counts: Counter[torch.dtype] = Counter()
            for name, p in model.named_parameters():
                if p.requires_grad and p.is_floating_point():
                    counts[self.saved_dtype(name, p.dtype)] += p.numel()
            saved = counts.most_common(1)[0][0] if counts else saved
        return {
            "checkpoint_dtype": dtype_name(self.checkpoint),
            "master_weights_dtype": dtype_name(self.master),
            "compute_dtype": dtype_name(self.autocast or self.master),
            "saved_dtype": dtype_name(saved),
        }

    def summary(self, model: nn.Module | None = None) -> str:
        """One line for the log: e.g. "weights float32 (master; checkpoint bfloat16), compute bfloat16,
        final/ bfloat16"."""
        d = self.describe(model)
        return (
            f"weights {d['master_weights_dtype']} (master; checkpoint {d['checkpoint_dtype']}), compute "
            f"{d['compute_dtype']}{' autocast' if self.autocast is not None else ''}, final/ {d['saved_dtype']}"
        )

    def save_pretrained(self, model: Any, folder: str | Path) -> None:
        """`model.save_pretrained(folder)` with each weight in `saved_dtype` (config.json's dtype to match).

        A trained weight goes back to the dtype it was loaded in ("original") or to fp32; a PEFT model
        saves its adapter only (only its trainable weights are converted). Converted copies exist only
        while saving, tied weights converted once.
        """
        state = model.state_dict()
        trainable = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
        peft = hasattr(model, "peft_config")
        converted: dict[tuple[int, torch.dtype], torch.Tensor] = {}
        for name, tensor in state.items():
            if not tensor.is_floating_point() or (peft and name not in trainable):
                continue
            target = self.saved_dtype(name, tensor.dtype)
            if target != tensor.dtype:
                state[name] = converted.setdefault((tensor.data_ptr(), target), tensor.detach().to(target))
        if not converted:
            model.save_pretrained(folder)
            return
        config = getattr(model, "config", None)
        kept = getattr(config, "dtype", None)
        written = _majority_dtype(state.values())  # before saving: save_pretrained empties `state`
        model.save_pretrained(folder, state_dict=state)
        if config is not None and kept is not None:
            config.dtype = kept  # save_pretrained wrote the in-memory (master) dtype into the live config
        if not peft:
            _fix_config_dtype(Path(folder), written)


def _majority_dtype(tensors: Any) -> torch.dtype:
    counts: Counter[torch.dtype] = Counter()
    for tensor in tensors:
        if tensor.is_floating_point():
            counts[tensor.dtype] += tensor.numel()
    return counts.most_common(1)[0][0] if counts else torch.float32


def _fix_config_dtype(folder: Path, dtype: torch.dtype) -> None:
    """Write the saved weights' dtype into `folder/config.json` (transformers wrote the in-memory one)."""
    path = folder / "config.json"
    if not path.is_file():
        return  # a PEFT adapter: adapter_config.json has no dtype
    values = json.loads(path.read_text(encoding="utf-8"))
    for key in ("dtype", "torch_dtype"):
        if key in values:
            values[key] = dtype_name(dtype)
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def resolve_precision(
    model: nn.Module,
    *,
    master_weights: str = "fp32",
    mixed_precision: str = "no",
    save_dtype: str = "original",
    device: torch.device | str | None = None,
) -> Precision:
    """The `Precision` of training `model` (as loaded, before `cast`) with these settings (module docstring).

    bf16 autocast applies when `mixed_precision` is "bf16", or "auto" on a CUDA `device` with bf16 support,
    or the checkpoint is bf16, or the master weights are bf16.
    """
    if master_weights not in MASTER_WEIGHTS:
        raise ValueError(f"master_weights={master_weights!r}: use one of {MASTER_WEIGHTS}")
    if save_dtype not in SAVE_DTYPES:
        raise ValueError(f"save_dtype={save_dtype!r}: use one of {SAVE_DTYPES}")
    loaded = checkpoint_dtype(model)
    master = _MASTER[master_weights]
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    cuda_bf16 = kind == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    bf16 = (
        mixed_precision == "bf16"
        or (mixed_precision == "auto" and cuda_bf16)
        or loaded == torch.bfloat16
        or master == torch.bfloat16
    )
    return Precision(loaded, master, torch.bfloat16 if bf16 else None, save_dtype)
