"""A module saved beside a language model's folder (ILQL's Q heads, NLPO's masking policy): its weights in a
safetensors file and its settings in a JSON file, under two fixed names in the model's folder.

    save_extra(folder, ("q_heads.safetensors", "q_heads.json"), heads, {"beta": 1.0, ...})
    has_extra(folder, files)                        # both files are there
    model, settings = load_base(folder, files)      # the language model and the saved settings
    load_extra(module, folder, files)               # the module's weights
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model
from torch import nn

__all__ = ["has_extra", "load_base", "load_extra", "save_extra"]


def save_extra(folder: str | Path, files: tuple[str, str], module: nn.Module, settings: dict[str, Any]) -> None:
    """Write `module`'s weights and `settings` into the saved model's `folder`."""
    folder = Path(folder)
    save_model(module, str(folder / files[0]))
    (folder / files[1]).write_text(json.dumps(settings, indent=2))


def has_extra(folder: str | Path, files: tuple[str, str]) -> bool:
    """True when `folder` holds both files of a saved extra module."""
    return all((Path(folder) / name).is_file() for name in files)


def load_base(folder: str | Path, files: tuple[str, str]) -> tuple[Any, dict[str, Any]]:
    """(the language model saved in `folder`, the extra module's settings)."""
    from transformers import AutoModelForCausalLM  # heavy: loaded on first use

    settings = json.loads((Path(folder) / files[1]).read_text())
    return AutoModelForCausalLM.from_pretrained(str(folder)), settings


def load_extra(module: nn.Module, folder: str | Path, files: tuple[str, str]) -> None:
    """Load the saved weights of the extra module into `module`."""
    load_model(module, str(Path(folder) / files[0]))
