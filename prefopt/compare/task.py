"""What every run of a comparison shares: the starting model, its tokenizer, the data, the reward and the
held-out evaluation set; and the check of the user's data before anything is written.
"""

from __future__ import annotations

from typing import Any

from prefopt.compare.config import CompareConfig
from prefopt.compare.online import data_prompts
from prefopt.data import PreferenceCollator, TokenizeConfig, load_preferences, synthetic, tokenize_preferences
from prefopt.data.loading import log_folder_reads, record_folder_reads
from prefopt.errors import MissingSplitError
from prefopt.online.rewards import as_reward_function
from prefopt.preflight import load_pretrained
from prefopt.registry import loss_spec
from prefopt.train.data import load_train_rows

__all__ = ["SharedTask", "check_user_data", "eval_batches"]


class SharedTask:
    """What every run shares: the model to start from, its tokenizer, the data and the evaluation set."""

    def __init__(self, config: CompareConfig) -> None:
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
        self._prompts: dict[str, list[str]] = {}
        self.reward: Any = self.synthetic.reward if self.synthetic is not None else None
        if config.reward is not None:
            self.reward = as_reward_function(config.reward)

    def prompts(self, split: str) -> list[str]:
        """Distinct prompts of the train split (online runs sample them) or the held-out ones (evaluation:
        the synthetic task's held-out prompts, or your data's eval split), as text."""
        if self.synthetic is not None:
            if split == "train":
                return [group.prompt for group in self.synthetic.preferences.groups if group.split == "train"]
            return list(self.synthetic.preferences.heldout_prompts)
        if split not in self._prompts:  # read and rendered once, not once per run
            self._prompts[split] = data_prompts(
                self.config.data, split, self.tokenizer, revision=self.config.train.get("data_revision")
            )
        return list(self._prompts[split])

    def train_dataset(self, kind: str) -> Any:
        return self.synthetic.preferences.dataset(kind) if self.synthetic is not None else None

    def eval_rows(self) -> Any:
        """Held-out paired rows (preference metrics are computed on pairs for every loss), or None."""
        if self.synthetic is not None:
            return load_preferences(self.synthetic.preferences.dataset("paired", "eval"), kind="paired")
        return _user_eval_rows(self.config)


def _user_eval_rows(config: CompareConfig) -> Any:
    """The held-out paired rows of `config.data` (its eval, test or validation split), or None."""
    train = config.train
    for split in ("eval", "test", "validation"):
        try:  # bad rows in a split that exists raise: say so rather than skip it
            return load_preferences(
                config.data,
                kind="paired",
                split=split,
                revision=train.get("data_revision"),
                identical=train.get("identical", "warn"),
            )
        except MissingSplitError:
            continue
    return None  # no held-out split: the table has no held-out preference metrics


def check_user_data(config: CompareConfig) -> dict[str, Any]:
    """Read and check `config.data` the way the runs will (the train split for each data kind of the losses,
    the prompts of online ones, the held-out split) before the output folder is created or locked, so that bad
    data stops the comparison with nothing written. Returns {"eval_rows": ...} ({} on the synthetic task); the
    files read from a folder are logged (`prefopt.data.loading.log_folder_reads`)."""
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
        checked = {"eval_rows": _user_eval_rows(config)}
    log_folder_reads(reads)
    return checked


def eval_batches(task: SharedTask, rows: Any, batch_size: int = 32) -> list[Any]:
    tokens = tokenize_preferences(rows, task.tokenizer, TokenizeConfig())
    pad = task.tokenizer.pad_token_id if task.tokenizer.pad_token_id is not None else task.tokenizer.eos_token_id
    collate = PreferenceCollator(int(pad))
    items = [tokens[i] for i in range(len(tokens))]
    return [collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
