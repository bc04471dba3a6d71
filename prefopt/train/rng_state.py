"""A process's random-number state as plain JSON: a checkpoint resumes exactly, and loading it runs no code.

    rng-<rank>.json = {"format": 1,
        "python": [version, [625 ints], gauss_next],                         random.getstate()
        "numpy":  ["MT19937", [624 uint32], pos, has_gauss, cached_gaussian],  np.random.get_state()
        "torch":  "<base64 of the CPU generator's uint8 state tensor>",       torch.get_rng_state()
        "cuda":   ["<base64>", ...]}                     one per GPU, only when CUDA is available

Earlier versions pickled these tuples with `torch.save`, which needs `torch.load(weights_only=False)`:
a crafted file in a run folder then ran arbitrary code on resume. JSON cannot; integers and floats
round-trip exactly (Python writes floats with `repr`), so the restored streams are bit-identical.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefopt.atomic import write_atomic

__all__ = ["rng_state", "set_rng_state", "save_rng_state", "load_rng_state"]

FORMAT = 1


def _encode(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)


def rng_state() -> dict[str, Any]:
    """This process's python / numpy / torch (CPU and CUDA) RNG states, JSON-able."""
    version, key, gauss = random.getstate()
    name, mt, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "format": FORMAT,
        "python": [version, list(key), gauss],
        "numpy": [name, [int(x) for x in mt], int(pos), int(has_gauss), float(cached)],
        "torch": _encode(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_encode(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned. Everything is parsed before anything is set.

    Raises:
        ValueError, TypeError, KeyError, OverflowError, RuntimeError: `state` is not such a state.
    """
    if state.get("format") != FORMAT:
        raise ValueError(f"unknown format {state.get('format')!r}")
    version, key, gauss = state["python"]
    python = (int(version), tuple(int(x) for x in key), None if gauss is None else float(gauss))
    name, mt, pos, has_gauss, cached = state["numpy"]
    if len(mt) != 624:
        raise ValueError(f"numpy state of {len(mt)} words, expected 624")
    numpy = (str(name), np.array(mt, dtype=np.uint32), int(pos), int(has_gauss), float(cached))
    cpu = _decode(state["torch"])
    cuda = [_decode(s) for s in state.get("cuda", [])]
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(cpu)
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_rng_state(path: str | Path) -> None:
    """Write this process's RNG state to `path` as JSON (atomically)."""
    write_atomic(path, json.dumps(rng_state()))


def load_rng_state(path: str | Path) -> None:
    """Restore this process's RNG state from a file `save_rng_state` wrote.

    Raises:
        ValueError (json.JSONDecodeError included), TypeError, KeyError, OverflowError, RuntimeError:
            the file is not such a state.
    """
    state = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(state, dict):
        raise ValueError("not a JSON object")
    set_rng_state(state)
