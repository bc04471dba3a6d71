"""Calls into transformers whose names changed inside the supported range (transformers>=4.46).

transformers 5.x renamed a causal LM's `past_key_values` argument and output to `cache`, and
`gradient_checkpointing_enable` to `activation_checkpointing_enable`; the old names warn and are removed
later. These helpers use whichever name the installed model offers, so every version in the declared range
runs without deprecation warnings.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

__all__ = ["cache_kwarg", "output_cache", "enable_checkpointing"]


@lru_cache(maxsize=None)
def _forward_takes_cache(model_type: type) -> bool:
    return "cache" in inspect.signature(model_type.forward).parameters


def cache_kwarg(model: Any, cache: Any) -> dict[str, Any]:
    """`{"cache": cache}` for a model whose forward takes `cache`, else `{"past_key_values": cache}`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {"cache" if _forward_takes_cache(type(base)) else "past_key_values": cache}


def output_cache(output: Any) -> Any:
    """The KV cache a forward with `use_cache=True` returned, under either name."""
    fields = output.keys() if hasattr(output, "keys") else ()
    return output["cache"] if "cache" in fields else output.past_key_values


def enable_checkpointing(model: Any) -> None:
    """Non-reentrant activation (gradient) checkpointing under the installed transformers' name."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
