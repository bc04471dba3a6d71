"""Preference data: load → validate → tokenise with the exact boundary → collate into a `TokenBatch`.

    from prefopt.data import load_preferences, tokenize_preferences, TokenizeConfig, PreferenceCollator

    rows = load_preferences("prefs.jsonl", kind=loss_spec("dpo").kind)          # validated, canonical columns
    tokens = tokenize_preferences(rows, tokenizer, TokenizeConfig(max_length=512, max_prompt_length=256))
    loader = DataLoader(tokens, batch_size=8, collate_fn=PreferenceCollator(tokenizer.pad_token_id))

See docs/data.md for the formats, the boundary rule and the truncation policy. Only `TokenBatch` is
imported eagerly (the engine imports it); the rest, which pulls in `datasets`, loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from prefopt.batch import TokenBatch

_LAZY = {
    "PreferenceCollator": "prefopt.data.collate",
    "collate_preferences": "prefopt.data.collate",
    "collate_prompts": "prefopt.data.collate",
    "uncollate": "prefopt.data.collate",
    "unshare_prompts": "prefopt.data.collate",
    "to_unpaired": "prefopt.data.formats",
    "from_trl_batch": "prefopt.data.trl_batches",
    "load_preferences": "prefopt.data.loading",
    "LengthGroupedSampler": "prefopt.data.sampler",
    "KINDS": "prefopt.data.schema",
    "schema_for": "prefopt.data.schema",
    "PromptCompletionEncoder": "prefopt.data.tokenize",
    "TokenizeConfig": "prefopt.data.tokenize",
    "tokenize_preferences": "prefopt.data.tokenize",
    "tokenizer_fingerprint": "prefopt.data.tokenize",
    "PreferenceDataError": "prefopt.data.validate",
    "MissingSplitError": "prefopt.data.validate",
    "DataNotFoundError": "prefopt.data.validate",
    "open_preferences": "prefopt.data.loading",
    "OpenedData": "prefopt.data.loading",
    "PreferenceDataWarning": "prefopt.data.validate",
    "Problem": "prefopt.data.validate",
    "ValidationReport": "prefopt.data.validate",
    "validate_preferences": "prefopt.data.validate",
}

__all__ = ["TokenBatch", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prefopt.data' has no attribute {name!r}")
