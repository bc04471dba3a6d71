"""What a run trains from beyond its settings: fingerprints of the data rows and of a model given in memory.

    {**config.to_dict(), **input_fingerprints(model=model, rows=rows)}   # saved in config.json, compared on resume

A run's settings name its data and model by path, or not at all when they are given as objects
(`train(model=..., dataset=...)`, as `prefopt compare` does with the synthetic task). A resumed run must
start from the same model and read the same rows, so the run folder also records
    data_fingerprint   sha256 of the rows the run reads (any source: a file whose content changed shows)
    model_fingerprint  for a model given in memory: its config, and each parameter's name, shape, dtype, sum
                       and norm (6 significant digits, so that the check costs one pass of reductions and no
                       copy, and a resume on another device still matches)
None where there is nothing to fingerprint (the synthetic task's rows and policy follow from the settings;
a model given by path is named by its path and revision).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

__all__ = ["input_fingerprints", "model_fingerprint", "rows_fingerprint"]


def rows_fingerprint(rows: Any) -> str | None:
    """sha256 (16 hex digits) of the rows' content: a `datasets.Dataset` read in batches, or a list of dicts."""
    if rows is None:
        return None
    digest = hashlib.sha256()
    batches = rows.iter(batch_size=1024) if hasattr(rows, "iter") else (rows,)
    for batch in batches:
        digest.update(json.dumps(batch, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()[:16]


@torch.no_grad()
def model_fingerprint(model: Any) -> str | None:
    """sha256 (16 hex digits) of a model's config and of each parameter's name, shape, dtype, sum and norm."""
    if model is None:
        return None
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        digest.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode("utf-8"))
    for name, param in model.named_parameters():
        summary = f"{name}:{tuple(param.shape)}:{param.dtype}"
        if param.is_floating_point() and param.device.type != "meta":
            total = float(param.sum(dtype=torch.float64))
            norm = float(torch.linalg.vector_norm(param, dtype=torch.float64))
            summary += f":{total:.6g}:{norm:.6g}"
        digest.update(summary.encode("utf-8"))
    return digest.hexdigest()[:16]


def input_fingerprints(*, model: Any = None, rows: Any = None) -> dict[str, str | None]:
    """{"data_fingerprint", "model_fingerprint"} of a run's in-memory inputs (see the module docstring)."""
    return {"data_fingerprint": rows_fingerprint(rows), "model_fingerprint": model_fingerprint(model)}
