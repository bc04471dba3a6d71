"""Paper recipes: the published training settings of well-known preference-optimisation runs, by name.

    prefopt train --list-recipes
    prefopt train --recipe zephyr-7b-beta --smoke --out runs/smoke      # seconds, on a tiny model, offline
    accelerate launch --multi_gpu --num_processes 8 -m prefopt.train --recipe zephyr-7b-beta --out runs/zephyr

    recipe = load_recipe("simpo-llama3-base")
    recipe.results            # the paper's headline numbers for that setting, with their tables
    config = recipe.config(output_dir="runs/simpo")                     # a TrainConfig
    smoke = smoke_config(recipe, "runs/smoke")                          # the same loss settings, tiny task

Each recipe is a YAML file in `prefopt/train/recipes/` (shipped as package data): its `train` mapping
holds TrainConfig fields (Hub names of the model and data for real runs), every number annotated with
the paper section, table or official config file it comes from, and the paper's headline results as
data. See docs/recipes.md for the table of recipes and how to run them on several GPUs.

A smoke run keeps what defines the recipe's optimisation — loss and hyper-parameters, optimiser, lr,
schedule type, warm-up ratio, weight decay, clipping, prompt/total length ratio, accumulation ratio,
gradient checkpointing — and swaps the 7B model and Hub data for a random-init 2-layer Llama and
grammar-sampled preference data of the loss's kind labelled by the synthetic task's gold reward
(`prefopt.data.synthetic`), written under `<output_dir>/smoke-task/`, for a few optimiser steps.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from prefopt.data.synthetic import build_tokenizer, gold_reward, sample_review
from prefopt.registry import loss_spec
from prefopt.train.config import TrainConfig

__all__ = [
    "PaperResult",
    "Recipe",
    "RecipeStage",
    "list_recipes",
    "load_recipe",
    "parse_recipe",
    "smoke_settings",
    "smoke_config",
    "write_smoke_task",
    "SMOKE_BATCH_SIZE",
    "SMOKE_MAX_LENGTH",
    "SMOKE_STEPS",
]

SMOKE_BATCH_SIZE = 8  # global examples per step of a smoke run
SMOKE_MAX_LENGTH = 64  # token cap of a smoke run (synthetic reviews are ≈ 15-45 tokens)
SMOKE_STEPS = 3  # optimiser steps of a smoke run
_SMOKE_PAIRS = 16  # paired rows written for the smoke task (two epochs of 8 per step; unpaired: 32 rows)
_RECIPE_KEYS = {
    "name",
    "title",
    "paper",
    "source",
    "num_processes",
    "notes",
    "deviations",
    "results",
    "results_note",
    "stages",
    "train",
}
_RESULT_KEYS = {"benchmark", "metric", "value", "source"}


@dataclass(frozen=True)
class PaperResult:
    """One headline number a paper reports for the recipe's setting.

    Attributes:
        benchmark: e.g. "AlpacaEval 2"; metric: e.g. "length-controlled win rate (%)"; value: the number;
        source: where it is reported (table of the paper, model card, official README).
    """

    benchmark: str
    metric: str
    value: float
    source: str


@dataclass(frozen=True)
class RecipeStage:
    """A stage that runs before the recipe's own `train` settings (e.g. SFT before DPO).

    Attributes:
        name: the stage's folder under `<output_dir>/stages/`; train: its TrainConfig fields. The stages run
            in order, each starting from the previous stage's final model (`prefopt.train.stages`).
    """

    name: str
    train: Mapping[str, Any]


@dataclass(frozen=True)
class Recipe:
    """A paper's training setting as TrainConfig fields, with its citation and reported results.

    Attributes:
        name: file stem in `prefopt/train/recipes/` (what `--recipe` takes).
        title, paper, source: what the run is, the paper, and the files/sections the numbers come from.
        train: TrainConfig fields of the real run (model/data are Hub names).
        num_processes: GPUs of the published run (the `accelerate launch` command uses it).
        results: the paper's headline numbers; results_note: why there are none, when there are none.
        notes: facts a user needs to run it; deviations: where prefopt cannot match the published setting.
        stages: stages that run first, in order (SFT before DPO); `train` is then the last stage, and it starts
            from the model the stages before it end with (`prefopt.train.stages.stage_configs`).
    """

    name: str
    title: str
    paper: str
    source: str
    train: Mapping[str, Any]
    num_processes: int
    results: tuple[PaperResult, ...] = ()
    results_note: str = ""
    notes: tuple[str, ...] = ()
    deviations: tuple[str, ...] = ()
    stages: tuple[RecipeStage, ...] = ()

    @property
    def loss(self) -> str:
        """The registered loss the recipe trains with."""
        return str(self.train["loss"])

    def config(self, **overrides: Any) -> Any:
        """The recipe's `TrainConfig`, with `overrides` (TrainConfig fields) applied on top."""
        return TrainConfig.from_dict({**self.train, **overrides})

    def launch_command(self, num_processes: int | None = None) -> str:
        """The `accelerate launch` command of a real run on `num_processes` GPUs (default: the paper's).

        `batch_size` stays the GLOBAL batch: each process accumulates A = batch_size / (micro_batch_size · P)
        micro-batches per step, so changing P changes only A, not the update (`prefopt.train.data`).
        """
        processes = num_processes or self.num_processes
        return f"accelerate launch --multi_gpu --num_processes {processes} -m prefopt.train --recipe {self.name}"

    def accumulation_steps(self, num_processes: int | None = None) -> int:
        """A = batch_size / (micro_batch_size · P) on `num_processes` (default: the paper's) processes."""
        processes = num_processes or self.num_processes
        config = self.config()
        micro = config.micro_batch_size or config.batch_size // processes
        per_step = micro * processes
        if config.batch_size % per_step:
            raise ValueError(
                f"recipe {self.name!r}: batch_size={config.batch_size} is not a multiple of "
                f"micro_batch_size × processes = {micro} × {processes}; pass --micro-batch-size"
            )
        return config.batch_size // per_step


def _recipe_files() -> dict[str, Any]:
    folder = resources.files("prefopt.train").joinpath("recipes")
    return {entry.name[: -len(".yaml")]: entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def list_recipes() -> list[str]:
    """Names of the shipped recipes (sorted)."""
    return sorted(_recipe_files())


def _parse_results(name: str, rows: Any) -> tuple[PaperResult, ...]:
    if not isinstance(rows, list):
        raise ValueError(f"recipe {name!r}: `results` must be a list of {sorted(_RESULT_KEYS)} mappings")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) != _RESULT_KEYS:
            raise ValueError(f"recipe {name!r}: results[{i}] must have exactly the keys {sorted(_RESULT_KEYS)}")
        out.append(PaperResult(str(row["benchmark"]), str(row["metric"]), float(row["value"]), str(row["source"])))
    return tuple(out)


def _parse_stages(name: str, rows: Any) -> tuple[RecipeStage, ...]:
    if not isinstance(rows, list):
        raise ValueError(f"recipe {name!r}: `stages` must be a list of {{name, train}} mappings")
    stages = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) != {"name", "train"} or not isinstance(row["train"], dict):
            raise ValueError(f"recipe {name!r}: stages[{i}] must have exactly the keys name and train (a mapping)")
        if "loss" not in row["train"]:
            raise ValueError(f"recipe {name!r}: stages[{i}].train must name its loss")
        stages.append(RecipeStage(str(row["name"]), dict(row["train"])))
    if len({stage.name for stage in stages}) != len(stages):
        raise ValueError(f"recipe {name!r}: stage names must differ, got {[stage.name for stage in stages]}")
    return tuple(stages)


def parse_recipe(name: str, text: str) -> Recipe:
    """A `Recipe` from YAML text; unknown or missing keys raise an error naming them.

    Every recipe must record either the paper's `results` or a `results_note` saying why there are none.
    """
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ValueError(f"recipe {name!r}: expected a YAML mapping, got {type(raw).__name__}")
    unknown, missing = sorted(set(raw) - _RECIPE_KEYS), sorted({"title", "paper", "source", "train"} - set(raw))
    if unknown or missing:
        raise ValueError(
            f"recipe {name!r}: unknown keys {unknown}, missing keys {missing}; valid: {sorted(_RECIPE_KEYS)}"
        )
    if raw.get("name", name) != name:
        raise ValueError(f"recipe file {name}.yaml declares name {raw['name']!r}; they must match")
    train = raw["train"]
    if not isinstance(train, dict) or "loss" not in train:
        raise ValueError(f"recipe {name!r}: `train` must be a mapping of TrainConfig fields including `loss`")
    results = _parse_results(name, raw.get("results") or [])
    if not results and not raw.get("results_note"):
        raise ValueError(f"recipe {name!r}: record the paper's headline `results` or a `results_note` saying why not")
    return Recipe(
        name=name,
        title=str(raw["title"]),
        paper=str(raw["paper"]),
        source=str(raw["source"]),
        train=dict(train),
        num_processes=int(raw.get("num_processes", 1)),
        results=results,
        results_note=str(raw.get("results_note") or ""),
        notes=tuple(raw.get("notes") or ()),
        deviations=tuple(raw.get("deviations") or ()),
        stages=_parse_stages(name, raw.get("stages") or []),
    )


def load_recipe(name: str) -> Recipe:
    """The shipped recipe `name`; an unknown name raises ValueError listing the valid ones."""
    files = _recipe_files()
    if name not in files:
        raise ValueError(
            f"unknown recipe {name!r}; valid recipes: {', '.join(sorted(files))} (prefopt train --list-recipes)"
        )
    return parse_recipe(name, files[name].read_text(encoding="utf-8"))


def _smoke_micro_batch(train: Mapping[str, Any], num_processes: int) -> int:
    """Micro-batch of a smoke run with the recipe's micro/global ratio (≥ 1, dividing the smoke batch)."""
    if train.get("micro_batch_size") is None:
        return SMOKE_BATCH_SIZE
    share = train["micro_batch_size"] * num_processes / train["batch_size"]  # fraction of a step per micro-batch
    micro = max(1, round(SMOKE_BATCH_SIZE * share))
    while SMOKE_BATCH_SIZE % micro:
        micro -= 1
    return micro


def smoke_settings(recipe: Recipe, task_dir: str | Path) -> dict[str, Any]:
    """TrainConfig fields of the recipe's smoke run on the tiny task written to `task_dir` (module docstring).

    Kept: loss, loss_hparams, optimizer, lr, schedule, warmup_ratio, weight_decay, max_grad_norm,
    gradient_checkpointing, packed, LoRA, seed. Scaled: max_prompt_length / max_length ratio (to
    SMOKE_MAX_LENGTH), micro-batch / batch ratio (to SMOKE_BATCH_SIZE on one process), warm-up steps
    (1 if the recipe warms up by steps). Swapped: model, tokenizer, reference, data → the tiny task;
    mixed_precision bf16 → "auto" (bf16 only where the device supports it); quantization → none.
    """
    train = dict(recipe.train)
    paths = write_smoke_task(task_dir, kind=loss_spec(recipe.loss).kind)
    settings = {
        k: v
        for k, v in train.items()
        if k not in ("model", "tokenizer", "reference", "data", "data_split", "quantization", "epochs", "output_dir")
    }
    max_length, prompt = train.get("max_length"), train.get("max_prompt_length")
    settings["max_length"] = SMOKE_MAX_LENGTH
    settings["max_prompt_length"] = (
        max(4, round(SMOKE_MAX_LENGTH * prompt / max_length)) if max_length and prompt else None
    )
    settings.update(
        model=str(paths["model"]),
        data=str(paths["data"]),
        batch_size=SMOKE_BATCH_SIZE,
        micro_batch_size=_smoke_micro_batch(train, recipe.num_processes),
        max_steps=SMOKE_STEPS,
        progress=False,
    )
    if train.get("warmup_steps"):
        settings["warmup_steps"] = 1
    if train.get("mixed_precision") == "bf16":
        settings["mixed_precision"] = "auto"
    return settings


def smoke_config(recipe: Recipe | str, output_dir: str | Path = "runs/smoke", **overrides: Any) -> Any:
    """The smoke `TrainConfig` of `recipe` (a Recipe or name), writing its tiny task to `<output_dir>/smoke-task`."""
    recipe = load_recipe(recipe) if isinstance(recipe, str) else recipe
    settings = smoke_settings(recipe, Path(output_dir) / "smoke-task")
    return TrainConfig.from_dict({**settings, "output_dir": str(output_dir), **overrides})


def write_smoke_task(task_dir: str | Path, *, kind: str, seed: int = 0) -> dict[str, Path]:
    """Write (once) a random-init 2-layer Llama with the synthetic tokenizer and `kind` data to `task_dir`.

    Rows: prompts and completions sampled from the synthetic review grammar; of three completions per
    prompt the gold reward (`prefopt.data.synthetic.gold_reward`) ranks best → chosen / desirable,
    worst → rejected / undesirable (ranked rows keep all three in order). Returns {"model", "data"}.
    """
    if kind not in ("paired", "unpaired", "ranked"):
        raise ValueError(f"write_smoke_task: kind={kind!r} has no smoke data; use paired, unpaired or ranked")
    root = Path(task_dir)
    model_dir, data = root / "model", root / f"{kind}.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    # Each process of a multi-process launch writes its own copy and renames it into place, so no
    # process ever reads a half-written task (the copies are identical: same seed, same rows).
    if not model_dir.exists():
        staging = root / f".model-{os.getpid()}"
        _write_tiny_model(staging, seed)
        try:
            staging.rename(model_dir)
        except OSError:  # another process was first
            shutil.rmtree(staging, ignore_errors=True)
    if not data.exists():
        staging_file = root / f".{kind}-{os.getpid()}.jsonl"
        staging_file.write_text("".join(json.dumps(row) + "\n" for row in _smoke_rows(kind, seed)), encoding="utf-8")
        staging_file.replace(data)
    return {"model": model_dir, "data": data}


def _write_tiny_model(model_dir: Path, seed: int) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig  # heavy: loaded on first use

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2 * SMOKE_MAX_LENGTH,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)


def _smoke_rows(kind: str, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for i in range(_SMOKE_PAIRS):
        first = sample_review(rng)
        completions = [first.completion, *(sample_review(rng, item=first.item).completion for _ in range(2))]
        scores = gold_reward([first.prompt] * 3, completions).tolist()
        ordered = [completions[k] for k in sorted(range(3), key=lambda k: -scores[k])]
        if kind == "paired":
            rows.append({"id": f"p{i}", "prompt": first.prompt, "chosen": ordered[0], "rejected": ordered[-1]})
        elif kind == "unpaired":
            rows += [
                {"id": f"u{i}-1", "prompt": first.prompt, "completion": ordered[0], "label": True},
                {"id": f"u{i}-0", "prompt": first.prompt, "completion": ordered[-1], "label": False},
            ]
        else:
            rows.append({"id": f"r{i}", "prompt": first.prompt, "completions": ordered, "ranks": [1, 2, 3]})
    return rows
