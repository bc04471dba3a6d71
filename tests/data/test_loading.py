"""load_preferences: every public format and every kind of source, normalised to canonical columns."""

from __future__ import annotations

import json
import socket

import datasets
import pytest

from prefopt.data import PreferenceDataError, PreferenceDataWarning, load_preferences, to_unpaired

from .conftest import FIXTURES


def _load(name: str, kind: str, cache_dir, **kw):
    return load_preferences(FIXTURES / f"{name}.jsonl", kind=kind, cache_dir=cache_dir, **kw)


def test_paired_strings_keep_rows_and_ids(cache_dir):
    ds = _load("paired_strings", "paired", cache_dir)
    assert ds.column_names == ["prompt", "chosen", "rejected", "id"]
    assert ds[0] == {
        "prompt": "What is the capital of France?",
        "chosen": " The capital of France is Paris.",
        "rejected": " It is Lyon.",
        "id": "p0",
    }
    assert len(ds) == 4


def test_conversational_prompt_is_kept_as_messages(cache_dir):
    ds = _load("paired_conversational", "paired", cache_dir)
    assert ds[0]["prompt"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "4."}]


def test_implicit_text_prompt_is_common_prefix_at_word_boundary(cache_dir):
    ds = _load("paired_implicit_text", "paired", cache_dir)
    row = ds[0]
    assert row["prompt"] == "\n\nHuman: What is the boiling point of water?\n\nAssistant:"
    assert row["chosen"] == " 100 degrees Celsius at sea level."
    assert row["rejected"] == " About 50 degrees."
    # "Why did…" vs "Why not.": the shared whole word "Why" is part of the common prefix.
    assert ds[1]["prompt"].endswith("Assistant: Why") and ds[1]["rejected"] == " not."
    # chosen "Yes, on a clear day." vs rejected "Yes.": no prefix swallows a whole completion.
    assert ds[2]["rejected"] == " Yes." and ds[2]["chosen"] == " Yes, on a clear day."


def test_implicit_conversation_with_string_prompt_extracts_messages(cache_dir):
    ds = _load("paired_implicit_conversational", "paired", cache_dir)
    assert ds[1]["prompt"] == [{"role": "user", "content": "What is 3*3?"}]
    assert ds[1]["chosen"] == [{"role": "assistant", "content": "9"}]
    assert "score_chosen" not in ds.column_names  # unknown columns are dropped


def test_unpaired_labels_are_bool_and_ints_accepted():
    ds = load_preferences(
        datasets.Dataset.from_list(
            [{"prompt": "q", "completion": " a", "label": 1}, {"prompt": "q", "completion": " b", "label": 0}]
        ),
        kind="unpaired",
    )
    assert ds.features["label"].dtype == "bool" and ds["label"] == [True, False]


def test_ranked_by_ranks_orders_best_first(cache_dir):
    ds = _load("ranked_ranks", "ranked", cache_dir)
    assert ds[0]["completions"] == [" The sea is a large body of salt water.", " Blue and vast.", " Wet."]
    assert ds[0]["ranks"] == [0, 1, 2]


def test_ranked_scores_ties_explicit(cache_dir):
    with pytest.raises(PreferenceDataError, match=r"row 1, field 'scores': has ties"):
        _load("ranked_scores", "ranked", cache_dir)
    kept = _load("ranked_scores", "ranked", cache_dir, ties="keep")
    assert kept[1]["completions"] == [" Mars.", " Earth.", " Pluto.", " The Sun."]  # stable among the tie
    assert kept[1]["ranks"] == [0, 0, 1, 2] and kept[1]["scores"] == [8.0, 8.0, 4.0, 0.5]
    dropped = _load("ranked_scores", "ranked", cache_dir, ties="drop")
    assert len(dropped) == 1 and dropped[0]["prompt"] == "Explain gravity."


def test_prompt_only_and_rollout_alias(cache_dir):
    ds = _load("prompt_only", "rollout", cache_dir)
    assert ds.column_names == ["prompt"] and len(ds) == 2


def test_csv_parquet_json_and_folders_agree(tmp_path, cache_dir):
    base = _load("paired_strings", "paired", cache_dir)
    base.to_csv(tmp_path / "p.csv", index=False)
    base.to_parquet(tmp_path / "p.parquet")
    (tmp_path / "p.json").write_text(json.dumps(base.to_list()))
    folder = tmp_path / "folder"
    folder.mkdir()
    base.select(range(3)).to_json(folder / "train.jsonl")
    base.select(range(3, 4)).to_json(folder / "test.jsonl")
    for name in ("p.csv", "p.parquet", "p.json"):
        assert load_preferences(tmp_path / name, kind="paired", cache_dir=cache_dir).to_list() == base.to_list()
    assert len(load_preferences(folder, kind="paired", cache_dir=cache_dir)) == 3
    assert load_preferences(str(folder), kind="paired", split="test", cache_dir=cache_dir)["id"] == ["p3"]
    assert len(load_preferences(tmp_path / "p.csv", kind="paired", split="train[:2]", cache_dir=cache_dir)) == 2


def test_datasets_objects_and_save_to_disk(tmp_path, cache_dir):
    base = _load("paired_strings", "paired", cache_dir)
    assert load_preferences(base, kind="paired").to_list() == base.to_list()
    dd = datasets.DatasetDict({"train": base.select(range(2)), "eval": base.select(range(2, 4))})
    assert load_preferences(dd, kind="paired", split="eval")["id"] == ["p2", "p3"]
    dd.save_to_disk(tmp_path / "dd")
    base.save_to_disk(tmp_path / "single")
    assert load_preferences(tmp_path / "dd", kind="paired")["id"] == ["p0", "p1"]
    assert load_preferences(tmp_path / "single", kind="paired").to_list() == base.to_list()
    with pytest.raises(ValueError, match=r"no split 'evl'. Did you mean 'eval'"):
        load_preferences(dd, kind="paired", split="evl")
    with pytest.raises(ValueError, match="single Dataset"):
        load_preferences(base, kind="paired", split="train")


def test_column_mapping_and_bad_mapping(cache_dir):
    raw = datasets.Dataset.from_list([{"question": "q", "good": " a", "bad": " b"}])
    ds = load_preferences(raw, kind="paired", columns={"question": "prompt", "good": "chosen", "bad": "rejected"})
    assert ds[0] == {"prompt": "q", "chosen": " a", "rejected": " b"}
    with pytest.raises(ValueError, match=r"'questoin' \(did you mean 'question'\?\)"):
        load_preferences(raw, kind="paired", columns={"questoin": "prompt"})
    with pytest.raises(ValueError, match="already exist"):
        load_preferences(ds, kind="paired", columns={"chosen": "rejected"})


def test_identical_pairs_warn_drop_or_error():
    raw = datasets.Dataset.from_list(
        [{"prompt": "q", "chosen": " a", "rejected": " b"}, {"prompt": "q", "chosen": " same", "rejected": " same"}]
    )
    with pytest.warns(PreferenceDataWarning, match=r"1 pair\(s\) have chosen identical to rejected \(rows \[1\]\)"):
        assert len(load_preferences(raw, kind="paired")) == 2
    assert load_preferences(raw, kind="paired", identical="drop")["chosen"] == [" a"]
    with pytest.raises(PreferenceDataError, match=r"row 1, field 'rejected': is identical to chosen"):
        load_preferences(raw, kind="paired", identical="error")
    implicit = datasets.Dataset.from_list(
        [{"chosen": "Q: x A: yes", "rejected": "Q: x A: no"}, {"chosen": "Q: x A: yes", "rejected": "Q: x A: yes"}]
    )
    with pytest.raises(PreferenceDataError, match=r"row 1, field 'rejected': is identical to chosen and there is no"):
        load_preferences(implicit, kind="paired")
    assert load_preferences(implicit, kind="paired", identical="drop")["prompt"] == ["Q: x A:"]


def test_fingerprint_is_deterministic(cache_dir):
    a = _load("paired_implicit_text", "paired", cache_dir)
    b = _load("paired_implicit_text", "paired", cache_dir)
    assert a._fingerprint == b._fingerprint
    assert a._fingerprint != _load("paired_strings", "paired", cache_dir)._fingerprint


def test_hub_name_offline_fails_fast_with_clear_message(monkeypatch, cache_dir):
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError("load_preferences tried to reach the network in offline mode")

    # Failing fast means never opening a connection (which is what would take ~48 s to time out).
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(PreferenceDataError, match="not in the local cache and offline mode is on"):
        load_preferences("prefopt-tests/no-such-dataset", kind="paired", cache_dir=cache_dir)


def test_missing_path_and_bad_file_type(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_preferences(tmp_path / "missing.jsonl", kind="paired")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        load_preferences(tmp_path / "x.txt", kind="paired")
    with pytest.raises(ValueError, match="a single file has one split"):
        load_preferences(FIXTURES / "paired_strings.jsonl", kind="paired", split="test")
    with pytest.raises(ValueError, match=r"unknown data kind 'pairde'. Did you mean 'paired'"):
        load_preferences(FIXTURES / "paired_strings.jsonl", kind="pairde")


def test_to_unpaired_keeps_pairing_and_optional_columns(cache_dir):
    ds = to_unpaired(_load("paired_margin_weight", "paired", cache_dir))
    assert ds["label"] == [True, False] * 3
    assert ds["pair_id"] == [0, 0, 1, 1, 2, 2]
    assert ds["completion"][:2] == [" Seven.", " Banana."]
    assert ds["margin"] == [2.0, 2.0, 0.5, 0.5, 1.0, 1.0] and ds["id"] == [1, 1, 2, 2, 3, 3]
    # the split data is itself valid unpaired data
    assert load_preferences(ds, kind="unpaired")["pair_id"] == ds["pair_id"]
    with pytest.raises(ValueError, match="missing"):
        to_unpaired(ds)
