"""Settings of the seed systems' machinery in the online loop: NLPO's action mask and ILQL's heads and decoding.

Two small configs nested in `OnlineConfig` (`action_mask`, `q_learning`; a mapping in YAML, in `CompareConfig.online`
or as a keyword argument). They are read by what a loss declares, never by its name: `action_mask` by a loss
that takes `mask_log_mass` (`nlpo`, `prefopt.online.action_mask`), `q_learning` by a loss that takes `q_values`
(`ilql`, `prefopt.online.ilql`). Defaults are the sources': RL4LMs' NLPO task configs and TRLX's
`default_ilql_config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prefopt.settings import Settings, SettingsError, check_int, coerce_settings, is_finite_number

__all__ = ["ActionMaskSettings", "ILQLSettings", "nested_settings"]


@dataclass(frozen=True)
class ActionMaskSettings(Settings):
    """NLPO's mask (RL4LMs `MaskableCausalLMActorCriticPolicy`, `mask_type: learned_top_p`).

    Attributes:
        top_p: probability mass of the masking policy's most likely tokens that the mask keeps (RL4LMs
            `top_mask` 0.9 in most task configs; 0.5 for IWSLT).
        update_every: μ, rollout steps between copies of the policy into the masking policy (RL4LMs
            `target_update_iterations`: 20 in most task configs, 5 for IMDB).
        min_tokens: the least number of tokens kept (RL4LMs `min_tokens_to_keep` 100, chosen for GPT-2's 50k
            vocabulary: with a small vocabulary it keeps most of it, so lower it, e.g. to 1).
    """

    top_p: float = 0.9
    update_every: int = 20
    min_tokens: int = 100

    def __post_init__(self) -> None:
        if not (is_finite_number(self.top_p) and 0 < self.top_p <= 1):
            raise SettingsError(f"OnlineConfig.action_mask.top_p={self.top_p!r} must be in (0, 1]")
        check_int("OnlineConfig.action_mask.update_every", self.update_every, minimum=1)
        check_int("OnlineConfig.action_mask.min_tokens", self.min_tokens, minimum=1)


@dataclass(frozen=True)
class ILQLSettings(Settings):
    """ILQL's heads, targets and decoding (TRLX `ILQLConfig`, `default_ilql_config`).

    Attributes:
        two_qs: two Q heads, the target the minimum of their target copies (TRLX `two_qs` True).
        alpha: Polyak rate of the target Q heads, θ̂ ← α·θ + (1 − α)·θ̂ (TRLX `alpha` 0.001).
        sync_every: optimiser steps between Polyak updates (TRLX `steps_for_target_q_sync` 5).
        beta: decoding weight β: sample from log π + β·(Q̂ − V) (TRLX `gen_kwargs.beta` 1).
        top_k: decoding keeps the k best tokens of that sum (TRLX `gen_kwargs.top_k` 20).
        normalize_returns: standardise the data set's returns to mean 0, std 1 first (TRLX `make_experience`).
    """

    two_qs: bool = True
    alpha: float = 0.001
    sync_every: int = 5
    beta: float = 1.0
    top_k: int = 20
    normalize_returns: bool = True

    def __post_init__(self) -> None:
        if not (is_finite_number(self.alpha) and 0 < self.alpha <= 1):
            raise SettingsError(f"OnlineConfig.q_learning.alpha={self.alpha!r} must be in (0, 1]")
        if not (is_finite_number(self.beta) and self.beta >= 0):
            raise SettingsError(f"OnlineConfig.q_learning.beta={self.beta!r} must be a finite number ≥ 0")
        check_int("OnlineConfig.q_learning.sync_every", self.sync_every, minimum=1)
        check_int("OnlineConfig.q_learning.top_k", self.top_k, minimum=1)


def nested_settings(kind: type[Settings], value: Any, where: str) -> Any:
    """`value` as a `kind`: itself, or built from a mapping of its fields (YAML, `CompareConfig.online`)."""
    if isinstance(value, kind):
        return value
    if not isinstance(value, Mapping):
        raise SettingsError(
            f"{where} must be a mapping of its settings (on the command line as JSON, e.g. "
            f"--online '{where.rsplit('.', 1)[-1]}={{\"{dataclasses.fields(kind)[0].name}\": …}}') or a "
            f"{kind.__name__}; got {value!r}"
        )
    return kind(**coerce_settings(kind, value, owner=where))
