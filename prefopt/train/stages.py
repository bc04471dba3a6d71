"""Multi-stage recipes: stages run in order, each starting from the model the stage before it ended with.

    recipe = load_recipe("dpo-hh-pythia28")                  # stages: [sft]; train: DPO
    configs = stage_configs(recipe, recipe.config(output_dir="runs/dpo-hh"))   # [SFT config, DPO config]
    results = run_stages(configs)                             # SFT, then DPO from the SFT model

A recipe's `stages` (`Recipe.stages`, e.g. SFT on HH's chosen completions) run before its own `train`
settings. Stage k writes to `<output_dir>/stages/<name>/` and stage k + 1 starts from its `final/` model;
the last stage is the recipe's own settings with the user's overrides, written to `<output_dir>`. A
stage with no `reference` takes its starting model as the reference, so DPO after SFT uses the SFT model as
π_ref, as the DPO paper does (§6). With `smoke=True` every stage is the smoke version of its settings
(`prefopt.train.recipes.smoke_settings`) on the one tiny task written to `<output_dir>/smoke-task/`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefopt.train.config import TrainConfig
from prefopt.train.loop import train
from prefopt.train.recipes import Recipe, smoke_settings

__all__ = ["stage_configs", "run_stages"]

# Settings of the machine and the console, not of a stage: the last stage's apply to every stage.
_SHARED = ("progress", "cpu", "engine_backend")


def stage_configs(recipe: Recipe, final: TrainConfig, *, smoke: bool = False) -> list[TrainConfig]:
    """The configs of `recipe`'s stages, in order, then `final` (its last stage) starting from their model.

    Returns `[final]` for a recipe without stages.
    """
    out, model = Path(final.output_dir), None
    configs = []
    for stage in recipe.stages:
        if smoke:
            settings = smoke_settings(dataclasses.replace(recipe, train=stage.train, stages=()), out / "smoke-task")
        else:
            settings = dict(stage.train)
        settings.update({name: getattr(final, name) for name in _SHARED}, output_dir=str(out / "stages" / stage.name))
        if model is not None:
            settings["model"] = model
        configs.append(TrainConfig.from_dict(settings))
        model = str(Path(configs[-1].output_dir) / "final")
    if model is None:
        return [final]
    return [*configs, dataclasses.replace(final, model=model, tokenizer=None, model_revision=None)]


def run_stages(configs: list[TrainConfig], run: Callable[[TrainConfig], Any] = train) -> list[Any]:
    """Train each config in order (`prefopt.train.train` by default); their results, last stage last."""
    return [run(config) for config in configs]
