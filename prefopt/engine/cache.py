"""On-disk cache of reference log-probs: computed once per (dataset, tokenisation, model), then looked up.

File format: one safetensors file (no pickle) holding

    sum    [E, K] float32   Σ completion log-probs of completion k of example e under π_ref
    count  [E, K] long      its number of completion tokens (checked against every batch)

and string metadata {format, version, dataset, tokenization, model, group_size}. E examples (pairs,
prompts, rows), K = group_size. A batch finds its rows through `batch.extras["example_index"]`, a
[B] long tensor giving the dataset index of each group b. Files are written to a temporary name in
the same directory and moved into place with `os.replace`, so a reader never sees half a file.
Loading with a different key or format version raises `StaleCacheError` naming what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from prefopt.atomic import atomic_path
from prefopt.batch import TokenBatch
from prefopt.engine.outputs import SequenceLogProbs
from prefopt.errors import StaleCacheError

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "EXAMPLE_INDEX",
    "CacheKey",
    "ReferenceCache",
    "StaleCacheError",
    "fingerprint",
    "model_identity",
]

CACHE_FORMAT = "prefopt.reference_logps"
CACHE_VERSION = 1  # bump when the meaning or layout of the stored tensors changes
EXAMPLE_INDEX = "example_index"


def fingerprint(obj: Any) -> str:
    """A stable sha256 hex digest of JSON-able settings (dict keys sorted), or a `datasets.Dataset`'s own
    `_fingerprint` (which `datasets` updates on every transform)."""
    own = getattr(obj, "_fingerprint", None)
    if isinstance(own, str):
        return own
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def model_identity(model: nn.Module, *, hash_weights: bool = True) -> str:
    """Identity of a model for cache keys.

    With `hash_weights`, sha256 over its config (minus volatile fields) and every tensor of its state
    dict (names, dtypes, shapes, bytes): any change of a weight changes the identity. Without, the
    config's `_name_or_path` and `_commit_hash` (hub name@revision), which must be present.
    """
    config = getattr(model, "config", None)
    settings = config.to_dict() if hasattr(config, "to_dict") else {}
    if not hash_weights:
        name, revision = settings.get("_name_or_path"), getattr(config, "_commit_hash", None)
        if not name or not revision:
            raise ValueError(
                "model_identity(hash_weights=False) needs config._name_or_path and config._commit_hash "
                "(a model loaded from the hub); pass hash_weights=True for local or in-memory models"
            )
        return f"{name}@{revision}"
    for volatile in ("transformers_version", "_name_or_path", "_commit_hash"):
        settings.pop(volatile, None)
    digest = hashlib.sha256(fingerprint(settings).encode())
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """What the cached values depend on. Any field that differs makes the cache stale.

    Attributes:
        dataset: dataset fingerprint (`fingerprint(dataset)`).
        tokenization: fingerprint of tokeniser name/revision, chat template, max lengths, truncation.
        model: reference model identity (`model_identity(model)`), plus anything that changes its
            log-probs (temperature, dtype) folded in by the caller.
    """

    dataset: str
    tokenization: str
    model: str


def _batch_counts(batch: TokenBatch) -> Tensor:
    seq = batch.sequence_ids[batch.completion_mask.bool()]
    return torch.bincount(seq, minlength=batch.num_sequences)


def _example_index(batch: TokenBatch) -> Tensor:
    index = batch.extras.get(EXAMPLE_INDEX)
    if index is None or index.shape != (batch.num_groups,):
        raise ValueError(
            f"reference cache: batch.extras[{EXAMPLE_INDEX!r}] must be a [B={batch.num_groups}] long tensor of "
            "dataset indices (one per group); the collator sets it from the example ids"
        )
    return index.long().cpu()


class ReferenceCache:
    """Reference log-probs of a whole dataset, keyed by `CacheKey`; see the module docstring."""

    def __init__(self, key: CacheKey, sums: Tensor, counts: Tensor) -> None:
        if sums.shape != counts.shape or sums.ndim != 2:
            raise ValueError(
                f"ReferenceCache: sums {tuple(sums.shape)} and counts {tuple(counts.shape)} must be [E, K]"
            )
        self.key, self.sums, self.counts = key, sums.float().cpu(), counts.long().cpu()

    @property
    def group_size(self) -> int:
        """K, completions per example."""
        return int(self.sums.shape[1])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: a temporary file in the same directory, then `os.replace`."""
        metadata = {"format": CACHE_FORMAT, "version": str(CACHE_VERSION), **asdict(self.key)}
        with atomic_path(path) as tmp:
            save_file({"sum": self.sums.contiguous(), "count": self.counts.contiguous()}, str(tmp), metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike[str], key: CacheKey) -> "ReferenceCache":
        """Read a cache and check it was built for `key` with this format version.

        Raises:
            FileNotFoundError: no file at `path`.
            StaleCacheError: format, version or any key field differs (the message lists them).
        """
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        fix = f"delete {path} (or build to a new path) to recompute the reference log-probs"
        if meta.get("format") != CACHE_FORMAT or meta.get("version") != str(CACHE_VERSION):
            raise StaleCacheError(
                f"reference cache {path}: format {meta.get('format')!r} version {meta.get('version')!r}, this "
                f"prefopt reads {CACHE_FORMAT!r} version {CACHE_VERSION}; {fix}"
            )
        changed = [f"{k} (cache {meta.get(k)!r}, now {v!r})" for k, v in asdict(key).items() if meta.get(k) != v]
        if changed:
            raise StaleCacheError(f"reference cache {path} is stale, changed: {'; '.join(changed)}; {fix}")
        return cls(key, tensors["sum"], tensors["count"])

    @classmethod
    def build(
        cls,
        key: CacheKey,
        compute: Callable[[TokenBatch], SequenceLogProbs],
        batches: Iterable[TokenBatch],
        num_examples: int,
    ) -> "ReferenceCache":
        """Run `compute` (e.g. a `ReferenceLogProbs`) over `batches` covering examples 0..E−1 once each."""
        sums: Tensor | None = None
        counts: Tensor | None = None
        for batch in batches:
            index = _example_index(batch)
            with torch.no_grad():
                out = compute(batch)
            if sums is None or counts is None:
                sums = torch.full((num_examples, batch.group_size), float("nan"))
                counts = torch.full((num_examples, batch.group_size), -1, dtype=torch.long)
            if int(index.max()) >= num_examples or int(index.min()) < 0:
                raise ValueError(f"reference cache: example_index {index.tolist()} outside [0, {num_examples})")
            sums[index] = out.grouped(out.sum.detach().float()).cpu()
            counts[index] = out.grouped(out.count).cpu()
        if sums is None or counts is None or bool((counts < 0).any()):
            missing = [] if counts is None else (counts[:, 0] < 0).nonzero().flatten()[:10].tolist()
            raise ValueError(
                f"reference cache: batches did not cover all {num_examples} examples (missing e.g. {missing})"
            )
        return cls(key, sums, counts)

    @classmethod
    def load_or_build(
        cls,
        path: str | os.PathLike[str],
        key: CacheKey,
        compute: Callable[[TokenBatch], SequenceLogProbs],
        batches: Callable[[], Iterable[TokenBatch]],
        num_examples: int,
    ) -> "ReferenceCache":
        """Load `path` if it exists (stale caches still raise), else build from `batches()` and save."""
        if Path(path).exists():
            return cls.load(path, key)
        cache = cls.build(key, compute, batches(), num_examples)
        cache.save(path)
        return cache

    def lookup(self, batch: TokenBatch) -> SequenceLogProbs:
        """Cached reference log-probs of `batch`'s sequences, in its group-major order.

        Raises StaleCacheError when the batch's completion-token counts differ from the cached ones
        (the tokenisation changed without the key saying so).
        """
        if batch.group_size != self.group_size:
            raise ValueError(f"reference cache has group_size={self.group_size}, batch has {batch.group_size}")
        index = _example_index(batch)
        if int(index.max()) >= self.sums.shape[0] or int(index.min()) < 0:
            raise ValueError(f"reference cache holds {self.sums.shape[0]} examples; batch asks for {index.tolist()}")
        device = batch.input_ids.device
        sums = self.sums[index].transpose(0, 1).reshape(-1).to(device)  # (B, K) → group-major (S,)
        counts = self.counts[index].transpose(0, 1).reshape(-1).to(device)
        if not torch.equal(counts, _batch_counts(batch)):
            raise StaleCacheError(
                "reference cache: completion token counts differ from the batch's, so the tokenisation changed "
                "without the cache key changing; put every tokenisation setting into CacheKey.tokenization"
            )
        return SequenceLogProbs(sums, counts, self.group_size)
