"""A trained reward model as a `RewardFunction`: `LearnedReward(path).score(prompts, completions)`.

Scoring tokenises each (prompt, completion) exactly as `prefopt train-rm` did in training (the saved
`TokenizeConfig`, `prefopt.online.reward_data.encode_completions`), sorts rows by length to cut padding,
and reads the score head at each row's last token (`reward_data.sequence_scores`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prefopt.batch import TokenBatch
from prefopt.data.tokenize import TokenizeConfig
from prefopt.online.reward_config import METADATA_FILE, RewardModelConfig
from prefopt.online.reward_data import encode_completions, pad_token_id, sequence_scores
from prefopt.threads import torch_threads

__all__ = ["LearnedReward", "load_reward_model", "check_reward_model", "point_pooling_at_pad"]


def check_reward_model(model: Any, where: str) -> None:
    """Raise a clear error unless `model` is a sequence-classification model with one output (a reward model)."""
    config = getattr(model, "config", None)
    if config is None or not type(model).__name__.endswith("ForSequenceClassification"):
        raise TypeError(
            f"{where}: {type(model).__name__} is not a sequence-classification reward model; build one "
            "with AutoModelForSequenceClassification.from_pretrained(path, num_labels=1), or pass the path"
        )
    if config.num_labels != 1:
        raise ValueError(
            f"{where}: the model has num_labels={config.num_labels}; a reward model outputs one scalar (num_labels=1)"
        )


def point_pooling_at_pad(model: Any, tokenizer: Any) -> None:
    """Point the model's last-token pooling at the tokenizer's pad id (EOS when it has no pad token)."""
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id(tokenizer)


class LearnedReward:
    """A trained reward model as a `RewardFunction`: `score(prompts, completions)` → float32 [B], no grad.

    Args:
        model_or_path: a saved reward model folder (`train_reward_model`'s `final/`, or any transformers
            sequence-classification model with num_labels = 1), or an in-memory such model.
        tokenizer: its tokenizer (default: loaded from the folder; required with an in-memory model).
        batch_size: sequences per forward; rows are sorted by length first to cut padding.
        device: where to run (default: the model's device; a loaded model goes to CUDA when available).
        num_threads: torch CPU threads while scoring (None: unchanged).
        tokenize_config: a `prefopt.data.TokenizeConfig`; default: the one the model was trained with
            (read from `prefopt_reward_model.json`), else training's default (max_length 512, capped at
            the model's max_position_embeddings).
    """

    def __init__(
        self,
        model_or_path: Any,
        tokenizer: Any = None,
        *,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        num_threads: int | None = None,
        tokenize_config: Any = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"LearnedReward: batch_size={batch_size!r} must be a positive integer")
        metadata: dict[str, Any] = {}
        if isinstance(model_or_path, (str, os.PathLike)):
            model, tokenizer, metadata = _load_saved(Path(model_or_path), tokenizer)
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        else:
            model = model_or_path
            if tokenizer is None:
                raise ValueError("LearnedReward: pass the tokenizer together with an in-memory model")
        check_reward_model(model, "LearnedReward")
        point_pooling_at_pad(model, tokenizer)
        if device is not None:
            model.to(device)
        self.model, self.tokenizer, self.metadata = model, tokenizer, metadata
        self.batch_size, self.num_threads = batch_size, num_threads
        if tokenize_config is None and "tokenize" in metadata:
            tokenize_config = TokenizeConfig(**metadata["tokenize"])
        self.tokenize_config = tokenize_config or RewardModelConfig().tokenize_config(model)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """r(x_b, y_b) for B rows → float32 [B] on the CPU (eval mode, no gradients; the mode is restored)."""
        if len(prompts) == len(completions) == 0:
            return torch.empty(0, dtype=torch.float32)
        batch = encode_completions(self.tokenizer, self.tokenize_config, prompts, completions)
        lengths = batch.attention_mask.sum(1)  # (B,)
        order = torch.argsort(lengths, descending=True)
        scores = torch.empty(len(prompts), dtype=torch.float32)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), torch_threads(self.num_threads):
                for start in range(0, len(order), self.batch_size):
                    rows = order[start : start + self.batch_size]
                    width = int(lengths[rows].max())
                    chunk = TokenBatch.from_rows(
                        batch.input_ids[rows, :width],
                        batch.attention_mask[rows, :width],
                        batch.completion_mask[rows, :width],
                    )
                    scores[rows] = sequence_scores(self.model, chunk.to(device)).cpu()
        finally:
            self.model.train(was_training)
        return scores


def _load_saved(path: Path, tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, metadata) of a saved sequence-classification reward model, with clear errors."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer  # heavy: loaded on first use

    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a saved reward model (no config.json); pass the `final/` folder "
            "that `prefopt train-rm` wrote, or a sequence-classification model folder"
        )
    architectures = AutoConfig.from_pretrained(path).architectures or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ValueError(
            f"{path} holds a {', '.join(architectures) or 'model of unknown architecture'}, not a "
            "sequence-classification reward model; train one with `prefopt train-rm`"
        )
    model = AutoModelForSequenceClassification.from_pretrained(path)
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path} has no tokenizer files ({err}); pass tokenizer=...") from err
    metadata_path = path / METADATA_FILE
    metadata = json.loads(metadata_path.read_text(encoding="utf-8")) if metadata_path.is_file() else {}
    return model, tokenizer, metadata


def load_reward_model(path: str | os.PathLike[str], **kwargs: Any) -> LearnedReward:
    """`LearnedReward(path, **kwargs)`: a saved reward model as a `RewardFunction`."""
    return LearnedReward(Path(path), **kwargs)
