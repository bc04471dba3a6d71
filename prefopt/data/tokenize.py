"""Tokenisation with the exact prompt/completion boundary, truncation, and `datasets.map` caching.

The boundary rule. Every sequence is

    ids = [BOS]? + tok(prompt_text) + tok(completion_text) + [EOS]?        (each tokenised on its own)

and the completion mask covers exactly `tok(completion_text) + [EOS]`. Tokenising the two halves
separately, never `tok(prompt_text + completion_text)`, is deliberate: a BPE merge across the boundary
(prompt "…a" + completion "b…" → one token "ab") would leave a token that belongs to both halves, so
no mask could be exact. Separate tokenisation is also what generation produces — a sampled completion
continues the prompt's own tokens — so training scores completions the way the policy emits them, the
prompt tokens are identical for every completion of a prompt, and the masked tokens decode back to the
completion text exactly (tested on tokenizers where the two tokenisations differ).

Special tokens. Both halves are tokenised with `add_special_tokens=False`. BOS is prepended to the
prompt when the tokenizer's own convention adds one (`add_bos=None`) or when asked, and never if the
rendered prompt already starts with it (chat templates often write BOS as text): no double BOS. EOS is
appended to each completion unless its last token already is EOS.

Conversations. A conversational prompt P is rendered with `apply_chat_template(P,
add_generation_prompt=True)`; its completion C is the rest of `apply_chat_template(P + C)` after that
prefix (an end-of-turn marker the template writes is therefore part of the completion and scored). A
template that does not render P as a prefix of P + C is reported as an error.

Recipes (`prefopt.data.templates`): `system_prompt` puts a system message first in every conversational
prompt that has none; `assistant_header="completion"` renders the prompt without the generation prompt, so
the assistant header opens the completion and is scored (SimPO's rendering).

Truncation (`TokenizeConfig`): the prompt is cut to `max_prompt_length` (keep_end: its last tokens,
BOS kept; keep_start: its first), then each completion to `max_length − len(prompt)` (keep_start). The
prompt policy may be "drop" (rows whose prompt is longer are dropped, counted in a warning, as
xfactlab/orpo filters them), and either policy "error" to report every overflowing row at once instead.
A row where some completion is cut to zero tokens is dropped with a counted warning — it has no
log-probability, so keeping it would put a NaN or a zero-length division downstream.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from prefopt.data.formats import derived_fingerprint
from prefopt.data.schema import is_conversation, schema_for
from prefopt.data.templates import ASSISTANT_HEADERS, with_system_turn
from prefopt.data.validate import PreferenceDataError, PreferenceDataWarning, format_rows
from prefopt.progress import quiet_by_default

if TYPE_CHECKING:
    import datasets

__all__ = [
    "TokenizeConfig",
    "PromptCompletionEncoder",
    "tokenizer_fingerprint",
    "tokenization_fingerprint",
    "tokenize_preferences",
    "infer_kind",
]

FORMAT_VERSION = 1  # bump when the token layout changes, so cached datasets are not reused
PROMPT_POLICIES = ("keep_end", "keep_start", "drop", "error")
COMPLETION_POLICIES = ("keep_start", "keep_end", "error")
_CARRIED = ("label", "pair_id", "ranks", "margin", "weight", "id")
# Fields added after FORMAT_VERSION 1: left out of the fingerprint at their defaults, so caches keyed before stay valid.
_LATER_DEFAULTS = {"system_prompt": None, "assistant_header": "prompt"}


@dataclass(frozen=True)
class TokenizeConfig:
    """Tokenisation settings; part of every tokenised dataset's fingerprint (and of reference-cache keys).

    Attributes:
        max_length: cap on prompt + completion tokens per sequence (None: no cap).
        max_prompt_length: cap on prompt tokens (None: no cap; must be < max_length when both are set).
        prompt_truncation: "keep_end" (keep the last tokens, BOS kept), "keep_start", "drop" (drop the row), or
            "error".
        completion_truncation: "keep_start" (keep the first tokens), "keep_end", or "error".
        add_bos: prepend BOS to prompts; None follows the tokenizer (whether `tokenizer("a")` adds one).
        append_eos: append EOS to completions (not twice).
        num_proc: worker processes for `datasets.map` (None: automatic). Not part of the fingerprint.
        system_prompt: a system message put first in every conversational prompt without one (None: none).
        assistant_header: "prompt" (the chat template's generation prompt ends the prompt) or "completion"
            (it opens each completion and is scored); see `prefopt.data.templates`.
    """

    max_length: int | None = None
    max_prompt_length: int | None = None
    prompt_truncation: str = "keep_end"
    completion_truncation: str = "keep_start"
    add_bos: bool | None = None
    append_eos: bool = True
    num_proc: int | None = None
    system_prompt: str | None = None
    assistant_header: str = "prompt"

    def __post_init__(self) -> None:
        for name in ("max_length", "max_prompt_length", "num_proc"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"TokenizeConfig.{name}={value!r}: must be a positive integer or None")
        if self.max_length is not None and self.max_prompt_length is not None:
            if self.max_prompt_length >= self.max_length:
                raise ValueError(
                    f"TokenizeConfig: max_prompt_length={self.max_prompt_length} leaves no room for "
                    f"completions within max_length={self.max_length}; make it smaller"
                )
        if self.prompt_truncation not in PROMPT_POLICIES:
            raise ValueError(
                f"TokenizeConfig.prompt_truncation={self.prompt_truncation!r}: use one of {PROMPT_POLICIES}"
            )
        if self.completion_truncation not in COMPLETION_POLICIES:
            raise ValueError(
                f"TokenizeConfig.completion_truncation={self.completion_truncation!r}: use one of {COMPLETION_POLICIES}"
            )
        if self.assistant_header not in ASSISTANT_HEADERS:
            raise ValueError(
                f"TokenizeConfig.assistant_header={self.assistant_header!r}: use one of {ASSISTANT_HEADERS}"
            )
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise ValueError(f"TokenizeConfig.system_prompt={self.system_prompt!r}: must be a string or None")

    def fingerprint(self) -> str:
        """A stable 16-hex hash of every setting that changes the tokens (not `num_proc`)."""
        fields = {
            k: v
            for k, v in asdict(self).items()
            if k != "num_proc" and not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])
        }
        text = json.dumps({"version": FORMAT_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A stable 16-hex hash of a tokenizer's vocabulary, rules, special tokens and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    special = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    text = json.dumps([type(tokenizer).__name__, body, getattr(tokenizer, "chat_template", None), special])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tokenization_fingerprint(tokenizer: Any, config: TokenizeConfig) -> str:
    """The `tokenization` part of a reference-cache key: tokenizer and settings together (16 hex)."""
    return hashlib.sha256(f"{tokenizer_fingerprint(tokenizer)}:{config.fingerprint()}".encode()).hexdigest()[:16]


class PromptCompletionEncoder:
    """Encodes one prompt and its completions under the boundary rule (picklable for `num_proc` > 1).

    `encode(prompt, completions)` returns prompt_ids [P] and completion_ids [K][C_k] after truncation,
    plus flags saying what truncation did (see the module docstring).
    """

    def __init__(self, tokenizer: Any, config: TokenizeConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        if config.append_eos and self.eos is None:
            raise ValueError(
                "tokenizer has no eos_token but append_eos=True: set tokenizer.eos_token, or pass "
                "TokenizeConfig(append_eos=False)"
            )
        adds_bos = self.bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [self.bos]
        self.add_bos = adds_bos if config.add_bos is None else config.add_bos
        if self.add_bos and self.bos is None:
            raise ValueError("TokenizeConfig(add_bos=True) but the tokenizer has no bos_token")

    def render(self, prompt: Any, completion: Any = None) -> tuple[str, str | None]:
        """Texts of a prompt and a completion; conversations go through the chat template."""
        if not is_conversation(prompt):
            return prompt, completion
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                "conversational data needs a tokenizer with a chat_template; set "
                "tokenizer.chat_template, or give prompts and completions as strings"
            )
        template = self.tokenizer.apply_chat_template
        prompt = with_system_turn(prompt, self.config.system_prompt)
        header_in_prompt = self.config.assistant_header == "prompt"
        prompt_text = template(prompt, tokenize=False, add_generation_prompt=header_in_prompt)
        if completion is None:
            return prompt_text, None
        full = template(list(prompt) + list(completion), tokenize=False)
        if not full.startswith(prompt_text):
            raise ValueError(
                "the chat template does not render the prompt as a prefix of "
                f"prompt + completion: {prompt_text[-80:]!r} vs {full[: len(prompt_text)][-80:]!r}"
            )
        return prompt_text, full[len(prompt_text) :]

    def encode(self, prompt: Any, completions: list[Any]) -> dict[str, Any]:
        """prompt_ids, completion_ids and truncation flags for one row (K = len(completions) ≥ 0)."""
        return self.encode_batch([prompt], [completions])[0]

    def encode_batch(self, prompts: list[Any], completions: list[list[Any]]) -> list[dict[str, Any]]:
        """`encode` for many rows, with one batched tokenizer call for all prompts and one for all completions."""
        rendered = [[self.render(p, c) for c in cs] or [self.render(p)] for p, cs in zip(prompts, completions)]
        prompt_ids = self._tokenize([r[0][0] for r in rendered])
        completion_ids = self._tokenize([text for r, cs in zip(rendered, completions) if cs for _, text in r])
        rows, cursor = [], 0
        for ids, cs in zip(prompt_ids, completions):
            rows.append(self._assemble(ids, completion_ids[cursor : cursor + len(cs)]))
            cursor += len(cs)
        return rows

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def _assemble(self, prompt_ids: list[int], completion_ids: list[list[int]]) -> dict[str, Any]:
        """Apply the BOS/EOS rules and the truncation policy to one row's token lists."""
        cfg = self.config
        if self.add_bos and prompt_ids[:1] != [self.bos]:
            prompt_ids = [self.bos] + prompt_ids
        prompt_overflow = cfg.max_prompt_length is not None and len(prompt_ids) > cfg.max_prompt_length
        if prompt_overflow and cfg.prompt_truncation not in ("error", "drop"):
            prompt_ids = self._truncate_prompt(prompt_ids, cfg.max_prompt_length)  # type: ignore[arg-type]
        room = None if cfg.max_length is None else max(cfg.max_length - len(prompt_ids), 0)
        out_ids, completion_overflow = [], False
        for ids in completion_ids:
            if cfg.append_eos and ids[-1:] != [self.eos]:
                ids = ids + [self.eos]
            if room is not None and len(ids) > room:
                completion_overflow = True
                if cfg.completion_truncation == "keep_start":
                    ids = ids[:room]
                elif cfg.completion_truncation == "keep_end":
                    ids = ids[len(ids) - room :]
            out_ids.append(ids)
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": out_ids,
            "num_tokens": len(prompt_ids) * max(len(out_ids), 1) + sum(map(len, out_ids)),
            "longest_sequence": len(prompt_ids) + max(map(len, out_ids), default=0),
            "prompt_overflow": prompt_overflow,
            "completion_overflow": completion_overflow,
            "empty_completion": any(len(ids) == 0 for ids in out_ids),
        }

    def _truncate_prompt(self, ids: list[int], limit: int) -> list[int]:
        if self.config.prompt_truncation == "keep_start":
            return ids[:limit]
        if ids[:1] == [self.bos] and self.bos is not None:
            return [self.bos] + ids[len(ids) - (limit - 1) :] if limit > 1 else [self.bos]
        return ids[len(ids) - limit :]


def infer_kind(columns: list[str]) -> str:
    """The data kind of canonical columns: chosen → paired, completions → ranked, completion → unpaired."""
    if "chosen" in columns:
        return "paired"
    if "completions" in columns:
        return "ranked"
    if "completion" in columns:
        return "unpaired"
    return "prompt"


def _completions(kind: str, batch: dict[str, list[Any]], j: int) -> list[Any]:
    if kind == "paired":
        return [batch["chosen"][j], batch["rejected"][j]]
    if kind == "unpaired":
        return [batch["completion"][j]]
    if kind == "ranked":
        return list(batch["completions"][j])
    return []


@quiet_by_default
def tokenize_preferences(
    dataset: datasets.Dataset,
    tokenizer: Any,
    config: TokenizeConfig | None = None,
    *,
    kind: str | None = None,
    progress: bool | None = None,
) -> datasets.Dataset:
    """Tokenise canonical preference rows (from `load_preferences`) into id columns, cached by fingerprint.

    Output columns: `prompt_ids` [P], `completion_ids` [K][C_k] (paired: chosen, rejected; ranked: best
    first; unpaired: K = 1; prompt-only: K = 0), `num_tokens` (P·max(K,1) + Σ C_k, the row's packed size),
    `longest_sequence` (P + max_k C_k, what sets its padded width), `row_index` (position in `dataset`),
    and the carried columns label / pair_id / ranks / margin / weight / id. The map is fingerprinted with
    `derived_fingerprint(dataset, config, tokenizer)`, so re-running on a cached on-disk dataset reuses the
    cache file. `progress=True` shows `datasets`' progress bars; by default (None) the call is quiet unless
    they are switched on (`prefopt.set_progress(True)`, PREFOPT_PROGRESS=1; see `prefopt.progress`).

    Raises:
        PreferenceDataError: a "error" truncation policy was violated (every such row listed), or
            every row was dropped.
    """
    config = config or TokenizeConfig()
    kind = schema_for(kind or infer_kind(dataset.column_names)).kind
    encoder = PromptCompletionEncoder(tokenizer, config)

    def encode(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        rows = encoder.encode_batch(batch["prompt"], [_completions(kind, batch, j) for j in range(len(indices))])
        out = {key: [r[key] for r in rows] for key in rows[0]} if rows else {}
        out["row_index"] = list(indices)
        return out

    fingerprint = derived_fingerprint(
        dataset._fingerprint, "tokenize", kind, config.fingerprint(), tokenizer_fingerprint(tokenizer), FORMAT_VERSION
    )
    num_proc = config.num_proc or (1 if len(dataset) < 4096 else min(os.cpu_count() or 1, 8))
    keep = [c for c in _CARRIED if c in dataset.column_names]
    tokenized = dataset.map(
        encode,
        batched=True,
        with_indices=True,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=[c for c in dataset.column_names if c not in keep],
        new_fingerprint=fingerprint,
        desc="tokenize",
    )
    return _apply_truncation_policy(tokenized, config)


def _apply_truncation_policy(tokenized: datasets.Dataset, config: TokenizeConfig) -> datasets.Dataset:
    """Raise for "error" policies, drop rows with an empty completion (counted), remove the flag columns."""
    flags = tokenized.select_columns(["prompt_overflow", "completion_overflow", "empty_completion"])[:]
    problems = []
    if config.prompt_truncation == "error":
        rows = [i for i, f in enumerate(flags["prompt_overflow"]) if f]
        if rows:
            problems.append(
                f"{len(rows)} prompt(s) exceed max_prompt_length={config.max_prompt_length} tokens "
                f"(rows {format_rows(rows)}); raise it or use prompt_truncation='keep_end'"
            )
    if config.completion_truncation == "error":
        rows = [i for i, f in enumerate(flags["completion_overflow"]) if f]
        if rows:
            problems.append(
                f"{len(rows)} row(s) exceed max_length={config.max_length} tokens "
                f"(rows {format_rows(rows)}); raise it or use completion_truncation='keep_start'"
            )
    if problems:
        raise PreferenceDataError("tokenisation: " + "; ".join(problems))
    long = [i for i, f in enumerate(flags["prompt_overflow"]) if f] if config.prompt_truncation == "drop" else []
    empty = sorted(set(i for i, f in enumerate(flags["empty_completion"]) if f) - set(long))
    tokenized = tokenized.remove_columns(["prompt_overflow", "completion_overflow", "empty_completion"])
    if long or empty:
        tokenized = _drop_rows(tokenized, config, long, empty)
    # The position each example will have in the final dataset: what reference caches index by.
    return tokenized.add_column(
        "example_index",
        list(range(len(tokenized))),
        new_fingerprint=derived_fingerprint(tokenized._fingerprint, "example-index"),
    )


def _drop_rows(tokenized: datasets.Dataset, config: TokenizeConfig, long: list[int], empty: list[int]) -> Any:
    """Drop rows whose prompt is too long (`prompt_truncation="drop"`) or whose completion was cut to nothing,
    each group counted in a warning; every row dropped is an error."""
    if len(long) + len(empty) == len(tokenized):
        raise PreferenceDataError(
            f"tokenisation: every row ({len(tokenized)}) was dropped: {len(long)} with a prompt over "
            f"max_prompt_length={config.max_prompt_length} tokens, {len(empty)} with a completion truncated to "
            f"zero tokens; max_length={config.max_length} or max_prompt_length is too small for the prompts"
        )
    for rows, why, fix in (
        (long, f"prompt is longer than max_prompt_length={config.max_prompt_length} tokens", "raise max_prompt_length"),
        (empty, "completion was truncated to zero tokens", "raise max_length or lower max_prompt_length"),
    ):
        if rows:
            warnings.warn(
                f"dropped {len(rows)} of {len(tokenized)} row(s) whose {why} (rows {format_rows(rows)}); {fix}",
                PreferenceDataWarning,
                stacklevel=4,
            )
    dropped = set(long) | set(empty)
    tag = "drop-empty" if not long else f"drop-long-{config.max_prompt_length}"
    return tokenized.select(
        [i for i in range(len(tokenized)) if i not in dropped],
        new_fingerprint=derived_fingerprint(tokenized._fingerprint, tag),
    )
