"""Tokenisation: the exact prompt/completion boundary, BOS/EOS rules, truncation, caching, fingerprints."""

from __future__ import annotations

import dataclasses

import datasets
import pytest

from prefopt.data import (
    PreferenceDataError,
    PreferenceDataWarning,
    PromptCompletionEncoder,
    TokenizeConfig,
    load_preferences,
    tokenize_preferences,
    tokenizer_fingerprint,
)

from .conftest import FIXTURES


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_boundary_is_separate_tokenisation_where_merges_differ(byte_tokenizer):
    """Prompt "The answ" + completion "er is yes": the joint string merges "answer" across the boundary."""
    tok = byte_tokenizer
    prompt, completion = "The answ", "er is yes"
    assert _ids(tok, prompt) + _ids(tok, completion) != _ids(tok, prompt + completion)  # the trap exists
    out = PromptCompletionEncoder(tok, TokenizeConfig()).encode(prompt, [completion])
    assert out["prompt_ids"] == _ids(tok, prompt)  # no BOS: this tokenizer adds none
    assert out["completion_ids"] == [_ids(tok, completion) + [tok.eos_token_id]]
    assert tok.decode(out["completion_ids"][0][:-1]) == completion


def test_no_double_bos_with_template_that_writes_bos(chat_tokenizer):
    tok = chat_tokenizer
    enc = PromptCompletionEncoder(tok, TokenizeConfig())
    assert enc.add_bos  # the tokenizer's post-processor adds BOS, so prompts get one
    conv = enc.encode([{"role": "user", "content": "hi"}], [[{"role": "assistant", "content": "Hello there"}]])
    text = enc.encode("hi", [" Hello there"])
    for out in (conv, text):
        assert out["prompt_ids"][0] == tok.bos_token_id
        assert out["prompt_ids"].count(tok.bos_token_id) == 1
    assert PromptCompletionEncoder(tok, TokenizeConfig(add_bos=False)).encode("hi", [" x"])["prompt_ids"][0] != 1


def test_conversation_completion_is_template_suffix_with_end_of_turn(chat_tokenizer):
    tok = chat_tokenizer
    enc = PromptCompletionEncoder(tok, TokenizeConfig())
    prompt = [{"role": "user", "content": "What is 2+2?"}]
    out = enc.encode(prompt, [[{"role": "assistant", "content": "4."}]])
    assert tok.decode(out["prompt_ids"]) == "<bos><|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(out["completion_ids"][0]) == "4.<|im_end|>\n<eos>"


def test_eos_appended_once(byte_tokenizer):
    enc = PromptCompletionEncoder(byte_tokenizer, TokenizeConfig())
    eos = byte_tokenizer.eos_token_id
    assert enc.encode("q", [" done<eos>"])["completion_ids"][0].count(eos) == 1
    no_eos = PromptCompletionEncoder(byte_tokenizer, TokenizeConfig(append_eos=False)).encode("q", [" done"])
    assert eos not in no_eos["completion_ids"][0]


def test_chat_data_needs_a_template(byte_tokenizer):
    enc = PromptCompletionEncoder(byte_tokenizer, TokenizeConfig())
    with pytest.raises(ValueError, match="needs a tokenizer with a chat_template"):
        enc.encode([{"role": "user", "content": "q"}], [[{"role": "assistant", "content": "a"}]])


def test_truncation_keep_end_prompt_keeps_bos_and_keep_start_completion(chat_tokenizer):
    tok = chat_tokenizer
    prompt, completion = "the cat sat on the mat the dog ate the bone", " red, green, blue; hello there" * 3
    full_p = [tok.bos_token_id] + _ids(tok, prompt)
    full_c = _ids(tok, completion) + [tok.eos_token_id]
    out = PromptCompletionEncoder(tok, TokenizeConfig(max_length=12, max_prompt_length=5)).encode(prompt, [completion])
    assert out["prompt_ids"] == [tok.bos_token_id] + full_p[-4:]
    assert out["completion_ids"] == [full_c[:7]]
    assert out["prompt_overflow"] and out["completion_overflow"] and not out["empty_completion"]
    keep_start = TokenizeConfig(
        max_prompt_length=5, prompt_truncation="keep_start", completion_truncation="keep_end", max_length=12
    )
    out = PromptCompletionEncoder(tok, keep_start).encode(prompt, [completion])
    assert out["prompt_ids"] == full_p[:5] and out["completion_ids"] == [full_c[-7:]]


def _rows(n_long: int = 1) -> datasets.Dataset:
    long = "the cat sat on the mat " * 8
    rows = [{"prompt": "Say hi.", "chosen": " Hi there!", "rejected": " No."}] * 2
    rows += [{"prompt": long, "chosen": " yes", "rejected": " no"}] * n_long
    return load_preferences(datasets.Dataset.from_list(rows), kind="paired")


def test_zero_token_completions_dropped_with_count(byte_tokenizer):
    config = TokenizeConfig(max_length=20)
    with pytest.warns(PreferenceDataWarning, match=r"dropped 1 of 3 row\(s\) .* \(rows \[2\]\)"):
        out = tokenize_preferences(_rows(), byte_tokenizer, config)
    assert out["row_index"] == [0, 1]
    with pytest.warns(PreferenceDataWarning, match=r"dropped 2 of 4 .* \(rows \[0, 2\]\)"):
        out = tokenize_preferences(_rows(2).select([2, 0, 3, 1]), byte_tokenizer, config)
    assert out["row_index"] == [1, 3] and out["example_index"] == [0, 1]
    assert all(len(c) > 0 for row in out["completion_ids"] for c in row)
    only_long = load_preferences(_rows().select([2]), kind="paired")
    with pytest.raises(PreferenceDataError, match="every row"):
        tokenize_preferences(only_long, byte_tokenizer, config)


def test_error_policies_report_every_row(byte_tokenizer):
    with pytest.raises(PreferenceDataError, match=r"2 prompt\(s\) exceed max_prompt_length=8 tokens \(rows \[2, 3\]\)"):
        tokenize_preferences(_rows(2), byte_tokenizer, TokenizeConfig(max_prompt_length=8, prompt_truncation="error"))
    with pytest.raises(PreferenceDataError, match=r"2 row\(s\) exceed max_length=20 tokens \(rows \[2, 3\]\)"):
        tokenize_preferences(_rows(2), byte_tokenizer, TokenizeConfig(max_length=20, completion_truncation="error"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_length": 0}, "max_length=0"),
        ({"max_prompt_length": 8, "max_length": 8}, "leaves no room"),
        ({"prompt_truncation": "left"}, "prompt_truncation='left'"),
        ({"completion_truncation": "keep_end_"}, "completion_truncation='keep_end_'"),
        ({"num_proc": True}, "num_proc=True"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenizeConfig(**kwargs)


def test_config_is_frozen_and_fingerprint_stable():
    a = TokenizeConfig(max_length=64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.max_length = 3  # type: ignore[misc]
    assert a.fingerprint() == TokenizeConfig(max_length=64, num_proc=2).fingerprint()  # workers don't change tokens
    assert a.fingerprint() != TokenizeConfig(max_length=65).fingerprint()
    assert a.fingerprint() == "%s" % TokenizeConfig(max_length=64).fingerprint() and len(a.fingerprint()) == 16


def test_tokenizer_fingerprint(byte_tokenizer, chat_tokenizer):
    assert tokenizer_fingerprint(byte_tokenizer) == tokenizer_fingerprint(byte_tokenizer)
    assert tokenizer_fingerprint(byte_tokenizer) != tokenizer_fingerprint(chat_tokenizer)


def test_map_is_cached_by_fingerprint(chat_tokenizer, cache_dir, monkeypatch):
    ds = load_preferences(FIXTURES / "paired_strings.jsonl", kind="paired", cache_dir=cache_dir)
    first = tokenize_preferences(ds, chat_tokenizer, TokenizeConfig(max_length=64))
    assert first.cache_files  # written to an Arrow cache file beside the source's

    def fail(*args, **kwargs):
        raise AssertionError("re-tokenised although the result was cached")

    monkeypatch.setattr(PromptCompletionEncoder, "encode_batch", fail)
    again = tokenize_preferences(ds, chat_tokenizer, TokenizeConfig(max_length=64))
    assert again._fingerprint == first._fingerprint and again.to_list() == first.to_list()
    with pytest.raises(AssertionError, match="re-tokenised"):
        tokenize_preferences(ds, chat_tokenizer, TokenizeConfig(max_length=65))  # new settings → new fingerprint


def test_every_kind_tokenises(chat_tokenizer, cache_dir):
    cases = {
        "ranked_ranks": ("ranked", 3),
        "unpaired_conversational": ("unpaired", 1),
        "prompt_only": ("prompt", 0),
        "paired_implicit_text": ("paired", 2),
    }
    for name, (kind, k) in cases.items():
        ds = tokenize_preferences(
            load_preferences(FIXTURES / f"{name}.jsonl", kind=kind, cache_dir=cache_dir), chat_tokenizer
        )
        assert {len(c) for c in ds["completion_ids"]} == {k}, name
        row = ds[0]
        assert row["num_tokens"] == len(row["prompt_ids"]) * max(k, 1) + sum(map(len, row["completion_ids"]))
        assert row["longest_sequence"] == len(row["prompt_ids"]) + max(map(len, row["completion_ids"]), default=0)
        carried = {"ranked": "ranks", "unpaired": "label"}.get(kind)
        assert carried is None or carried in ds.column_names


def test_parallel_map_matches_serial(byte_tokenizer):
    rows = load_preferences(
        datasets.Dataset.from_list(
            [{"prompt": f"Question {i}?", "chosen": f" answer {i}", "rejected": " no"} for i in range(8)]
        ),
        kind="paired",
    )
    serial = tokenize_preferences(rows, byte_tokenizer, TokenizeConfig(num_proc=1))
    parallel = tokenize_preferences(rows, byte_tokenizer, TokenizeConfig(num_proc=2))
    assert parallel.to_list() == serial.to_list()
