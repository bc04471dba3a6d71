"""What every run of a comparison shares: the starting model, its tokenizer, the data, the reward and the
held-out evaluation set (your data's eval split, or prompts held out of a single file:
`prefopt.compare.heldout`); and the check of the user's data before anything is written.
"""

from __future__ import annotations

from typing import Any

import torch

from prefopt.compare.config import CompareConfig
from prefopt.compare.heldout import describe_heldout, gold_label_accuracy, holdout_prompts, split_by_prompt
from prefopt.compare.online import NOT_REWARD_COLUMNS, PromptColumnsReward, data_prompt_rows
from prefopt.data import PreferenceCollator, TokenizeConfig, load_preferences, synthetic, tokenize_preferences
from prefopt.data.loading import log_folder_reads, open_preferences, record_folder_reads
from prefopt.engine import ReferenceLogProbs
from prefopt.errors import MissingSplitError
from prefopt.online.reward_spec import check_reward_columns
from prefopt.online.rewards import as_reward_function
from prefopt.preflight import load_pretrained
from prefopt.registry import loss_spec
from prefopt.train.data import kind_of_columns, load_train_rows

__all__ = ["SCORE_MARGIN_FLOOR", "SharedTask", "check_user_data", "eval_batches", "synthetic_margins"]

# The smallest `margin` of the synthetic task's pairs (`synthetic_margins`).
SCORE_MARGIN_FLOOR = 0.01


class SharedTask:
    """What every run shares: the model to start from, its tokenizer, the data and the evaluation set."""

    def __init__(self, config: CompareConfig, checked: dict[str, Any] | None = None) -> None:
        """`checked`: what `check_user_data` returned for `config` (read again when not given)."""
        self.config = config
        self.synthetic = None
        if config.synthetic:
            self.synthetic = synthetic.synthetic_task(
                seed=config.task_seed,
                sft_config=config.sft_config,
                preference_config=config.preference_config,
                progress=config.progress,
            )
            self.model, self.tokenizer = self.synthetic.policy.model, self.synthetic.policy.tokenizer
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: loaded on first use

            self.model = load_pretrained(
                AutoModelForCausalLM, config.model, "CompareConfig.model", revision=config.model_revision
            )
            self.tokenizer = load_pretrained(
                AutoTokenizer, config.model, "CompareConfig.model (its tokenizer)", revision=config.model_revision
            )
        self.model.eval()
        self._prompts: dict[str, list[dict[str, Any]]] = {}
        self._prompt_columns: dict[str, dict[str, Any]] = {}  # rendered prompt → its columns (your data)
        self.reward: Any = self.synthetic.reward if self.synthetic is not None else None
        if config.reward is not None:
            self.reward = as_reward_function(config.reward, config.reward_weights)
            if self.synthetic is None:  # the columns beside each prompt reach the reward (e.g. `references`)
                self.reward = PromptColumnsReward(self.reward, self._prompt_columns)
        held = (checked or {}).get("heldout")
        if held is None and self.synthetic is None:
            held = user_heldout(config)
        # your data: (held-out paired rows or None, prompts held out of the train split, description)
        self._user_heldout: tuple[Any, set[str], dict[str, Any]] | None = held
        self._reference_samples: dict[tuple[str, ...], Any] = {}
        self._reference_logps: dict[tuple[Any, ...], Any] = {}
        self._reference = ReferenceLogProbs.from_model(self.model)

    def prompts(self, split: str) -> list[str]:
        """Distinct prompts of the train split (online runs sample them) or the held-out ones (evaluation:
        the synthetic task's held-out prompts, or your data's eval split), as text."""
        if self.synthetic is not None:
            if split == "train":
                return [group.prompt for group in self.synthetic.preferences.groups if group.split == "train"]
            return list(self.synthetic.preferences.heldout_prompts)
        return [row["prompt"] for row in self.prompt_rows(split)]

    def prompt_rows(self, split: str) -> list[dict[str, Any]]:
        """`prompts(split)` as rows {"prompt": text, **the other columns of your data's row}; the reward
        functions take those columns as keyword arguments (`prefopt.compare.online.PromptColumnsReward`)."""
        if self.synthetic is not None:
            return [{"prompt": prompt} for prompt in self.prompts(split)]
        if split not in self._prompts:  # read and rendered once, not once per run
            self._prompts[split] = data_prompt_rows(
                self.config.data,
                split,
                self.tokenizer,
                revision=self.config.train.get("data_revision"),
                held_out=self._held_out_prompts() or None,
            )
            for row in self._prompts[split]:
                self._prompt_columns.setdefault(row["prompt"], {k: v for k, v in row.items() if k != "prompt"})
        return [dict(row) for row in self._prompts[split]]

    def eval_reference(self, batch: Any) -> Any:
        """The reference's log-probs of an eval batch, computed once for every run (keyed by the batch's tokens)."""
        tokens = batch.input_ids.cpu()
        key = (tuple(tokens.shape), hash(tokens.numpy().tobytes()), int(batch.completion_mask.sum()))
        if key not in self._reference_logps:
            self._reference_logps[key] = self._reference(batch)
        return self._reference_logps[key]

    @torch.no_grad()
    def reference_samples(self, prompts: list[str], sampler: Any) -> Any:
        """The reference's samples of `prompts`, drawn once for every run exactly as `evaluate_generations`
        draws them (`sampler`, seed `eval_seed` + 1, `max_new_tokens`, temperature 1)."""
        key = tuple(prompts)
        if key not in self._reference_samples:
            self._reference_samples[key] = sampler(
                self.model,
                self.tokenizer,
                list(prompts),
                generator=torch.Generator().manual_seed(self.config.eval_seed + 1),
                max_new_tokens=self.config.max_new_tokens,
                temperature=1.0,
            )
        return self._reference_samples[key]

    def _held_out_prompts(self) -> set[str]:
        return self._user_heldout[1] if self._user_heldout is not None else set()

    def train_dataset(self, kind: str, loss: str) -> Any:
        """The training rows of `loss` (of data kind `kind`) as a `datasets.Dataset`: the synthetic task's, or
        your data's train split less the prompts held out of it; None: the trainer reads `config.data`."""
        if self.synthetic is not None:
            if kind == "paired" and "margin" in loss_spec(loss).extra_inputs:
                return synthetic_margins(self.synthetic.preferences)
            return self.synthetic.preferences.dataset(kind)
        held = self._held_out_prompts()
        if not held:
            return None
        train = self.config.train
        rows = load_train_rows(
            self.config.data,
            kind=kind,
            loss=loss,
            split=train.get("data_split"),
            revision=train.get("data_revision"),
            identical=train.get("identical", "warn"),
        )
        return split_by_prompt(rows, held)[0]

    def eval_rows(self) -> Any:
        """Held-out paired rows (preference metrics are computed on pairs for every loss), or None."""
        if self.synthetic is not None:
            return load_preferences(self.synthetic.preferences.dataset("paired", "eval"), kind="paired")
        return self._user_heldout[0] if self._user_heldout is not None else None

    def heldout(self, pairs: int) -> dict[str, Any]:
        """What the comparison evaluates (`prefopt.compare.heldout.describe_heldout`), `pairs` held-out pairs."""
        config = self.config
        generation = min(config.eval_prompts, len(self.prompts("heldout"))) if self.reward is not None else 0
        missing = None if self.reward is not None else _NO_REWARD
        if self.synthetic is not None:
            ceiling = gold_label_accuracy(self.synthetic.preferences.rows("paired", "eval", with_gold=True))
            return describe_heldout(
                pairs=pairs,
                source="the synthetic task's eval prompts, not trained on",
                generation_prompts=generation,
                reward=config.reward_label,
                ceiling=ceiling,
            )
        described = self._user_heldout[2] if self._user_heldout is not None else {}
        gaps = " ".join(m for m in (described.get("missing"), missing) if m) or None
        return describe_heldout(
            pairs=pairs,
            source=described.get("source", ""),
            generation_prompts=generation,
            reward=config.reward_label,
            missing=gaps,
        )


_NO_REWARD = (
    "No reward, KL, win-rate or length columns: nothing scores samples of your data; give --reward (a reward model "
    "folder from `prefopt train-rm`, or module:function)."
)


def _eval_split(config: CompareConfig) -> tuple[Any, str] | None:
    """The held-out paired rows of `config.data` (its eval, test or validation split) and the split's name."""
    train = config.train
    for split in ("eval", "test", "validation"):
        try:  # bad rows in a split that exists raise: say so rather than skip it
            rows = load_preferences(
                config.data,
                kind="paired",
                split=split,
                revision=train.get("data_revision"),
                identical=train.get("identical", "warn"),
            )
        except MissingSplitError:
            continue
        return rows, split
    return None


def user_heldout(config: CompareConfig) -> tuple[Any, set[str], dict[str, Any]]:
    """(held-out paired rows or None, the prompts held out of the train split, {"source" or "missing": ...}) of
    your data: its eval split, else a fraction `config.holdout` of its prompts (`prefopt.compare.heldout`)."""
    found = _eval_split(config)
    if found is not None:
        return found[0], set(), {"source": f"the {found[1]!r} split of {config.data}"}
    if not config.holdout:
        missing = (
            f"No held-out pairs: {config.data} has no eval, test or validation split and holdout is 0; set "
            "holdout (--holdout 0.1) or add an eval split."
        )
        return None, set(), {"missing": missing}
    train = config.train
    opened = open_preferences(config.data, split=train.get("data_split"), revision=train.get("data_revision"))
    kind = kind_of_columns(opened.dataset.column_names) or "prompt"  # e.g. prompts only, for online runs
    rows = load_preferences(opened, kind=kind, identical=train.get("identical", "warn"))
    held = holdout_prompts(rows["prompt"], config.holdout, config.task_seed)
    if not held:
        return None, set(), {"missing": f"No held-out pairs: {config.data} has fewer than 2 distinct prompts."}
    source = (
        f"the {len(held)} prompts ({config.holdout:.0%}) held out of {config.data} by task_seed {config.task_seed}, "
        "not trained on"
    )
    if kind != "paired":
        missing = f"No held-out pairs: {config.data} holds {kind} rows; held-out accuracy needs an eval split of pairs."
        return None, held, {"source": source, "missing": missing}
    return split_by_prompt(rows, held)[1], held, {"source": source}


def check_user_data(config: CompareConfig) -> dict[str, Any]:
    """Read and check `config.data` the way the runs will (the train split for each data kind of the losses,
    the prompts of online ones, the held-out split) before the output folder is created or locked, so that bad
    data stops the comparison with nothing written. Returns {"eval_rows": ..., "heldout": `user_heldout`} ({} on
    the synthetic task); the files read from a folder are logged (`prefopt.data.loading.log_folder_reads`)."""
    if config.synthetic:
        return {}
    train = config.train
    kinds: dict[str, str] = {}  # each data kind of the losses → the first loss of that kind
    for name in config.losses:
        kinds.setdefault(loss_spec(name).kind, name)
    with record_folder_reads() as reads:
        for kind, name in kinds.items():
            if kind == "rollout":
                load_preferences(config.data, kind="prompt", split="train", revision=train.get("data_revision"))
            else:
                load_train_rows(
                    config.data,
                    kind=kind,
                    loss=name,
                    split=train.get("data_split"),
                    revision=train.get("data_revision"),
                    identical=train.get("identical", "warn"),
                )
        heldout = user_heldout(config)
        checked = {"eval_rows": heldout[0], "heldout": heldout}
        _check_reward_columns(config)
    log_folder_reads(reads)
    return checked


def _check_reward_columns(config: CompareConfig) -> None:
    """Refuse a reward function that requires a column (e.g. `references`, `prefopt.online.lexical_rewards`) which
    the rows its prompts come from lack: the train split (online runs) and the first held-out split (evaluation)."""
    if config.reward is None:
        return
    found = 0
    for split in ("train", "eval", "test", "validation"):
        if found == 2:
            break
        try:
            opened = open_preferences(config.data, split=split, revision=config.train.get("data_revision"))
        except MissingSplitError:
            continue
        found += 1
        columns = [name for name in opened.dataset.column_names if name not in NOT_REWARD_COLUMNS]
        check_reward_columns(config.reward, columns, "CompareConfig.reward", f"the {split!r} split of {config.data}")


def eval_batches(task: SharedTask, rows: Any, batch_size: int = 32) -> list[Any]:
    tokens = tokenize_preferences(rows, task.tokenizer, TokenizeConfig())
    pad = task.tokenizer.pad_token_id if task.tokenizer.pad_token_id is not None else task.tokenizer.eos_token_id
    collate = PreferenceCollator(int(pad))
    items = [tokens[i] for i in range(len(tokens))]
    return [collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


def synthetic_margins(preferences: Any) -> Any:
    """The synthetic task's paired train rows with the `margin` column a score-offset loss reads (ODPO: the score
    difference s(y_w) − s(y_l) > 0): the gold reward difference, as in ODPO's own experiments, where the scorer
    that gives the offsets is the one evaluated. The labels are noisy draws from the gold reward, so about a
    quarter of the pairs have a gold difference ≤ 0; their margin is `SCORE_MARGIN_FLOOR`, the smallest offset."""
    dataset = preferences.dataset("paired", with_gold=True)
    margins = [max(c - r, SCORE_MARGIN_FLOOR) for c, r in zip(dataset["chosen_gold"], dataset["rejected_gold"])]
    return dataset.remove_columns(["chosen_gold", "rejected_gold"]).add_column("margin", margins)
