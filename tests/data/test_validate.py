"""Validation: every error path names its row and field, and all problems come back in one report."""

from __future__ import annotations

import datasets
import pytest

from prefopt.data import PreferenceDataError, load_preferences, validate_preferences

from .conftest import FIXTURES


def _errors(name: str, kind: str, cache_dir, **kw) -> PreferenceDataError:
    with pytest.raises(PreferenceDataError) as info:
        load_preferences(FIXTURES / f"{name}.jsonl", kind=kind, cache_dir=cache_dir, **kw)
    return info.value


def _found(err: PreferenceDataError) -> set[tuple[int | None, str, str]]:
    return {(p.row, p.field, p.code) for p in err.problems}


def test_misspelled_columns_suggest_nearest_name(cache_dir):
    err = _errors("broken_misspelled_columns", "paired", cache_dir)
    assert _found(err) == {(None, "chosen", "missing_column"), (None, "prompt", "missing_column")}
    text = str(err)
    assert "column 'chosen': missing; did you mean 'choosen'? Pass columns={'choosen': 'chosen'}" in text
    assert "column 'prompt': missing; did you mean 'promt'?" in text
    raw = datasets.Dataset.from_list([{"prompt": "q", "chosen": " a", "rejected": " b", "wieght": 1.0}])
    report = validate_preferences(raw, "paired")
    assert report.ok and any("did you mean 'weight'" in w for w in report.warnings)


def test_paired_rows_all_reported_at_once(cache_dir):
    err = _errors("broken_paired_rows", "paired", cache_dir)
    assert _found(err) == {
        (1, "prompt", "empty"),
        (2, "chosen", "empty"),
        (4, "rejected", "missing_value"),
        (5, "margin", "bad_margin"),
        (6, "weight", "bad_weight"),
    }
    text = str(err)
    assert "row 1 (id='r1'), field 'prompt': is an empty string" in text
    assert "row 4 (id='r4'), field 'rejected': is missing (null)" in text
    assert "has 5 problem(s) in 5 row(s): empty ×2, missing_value ×1, bad_margin ×1, bad_weight ×1" in text


def test_optional_column_must_be_set_in_every_row():
    raw = datasets.Dataset.from_list(
        [
            {"prompt": "q", "chosen": " a", "rejected": " b", "weight": 2.0},
            {"prompt": "q", "chosen": " a", "rejected": " c"},
        ]
    )
    report = validate_preferences(raw, "paired")
    assert [str(p) for p in report.problems] == [
        "row 1, field 'weight': is missing (null); an optional column must be set in every row, or dropped"
    ]


def test_bad_id_and_pair_id():
    raw = datasets.Dataset.from_list([{"prompt": "q", "completion": " a", "label": True, "id": 1.5, "pair_id": "x"}])
    report = validate_preferences(raw, "unpaired")
    assert {(p.row, p.field, p.code) for p in report.problems} == {(0, "id", "bad_id"), (0, "pair_id", "bad_pair_id")}
    assert "row 0 (id=1.5), field 'pair_id': must be an integer" in str(report.problems[1])


def test_wrong_types(cache_dir):
    err = _errors("broken_types", "paired", cache_dir)
    assert _found(err) == {(1, "prompt", "wrong_type"), (2, "chosen", "wrong_type")}
    assert "row 1, field 'prompt': must be a string or a list of {role, content} messages, got int" in str(err)
    assert "got an empty list" in str(err)


def test_conversation_problems(cache_dir):
    err = _errors("broken_conversational", "paired", cache_dir)
    assert _found(err) == {
        (0, "prompt", "bad_message"),
        (1, "chosen", "bad_message"),
        (2, "rejected", "mixed_styles"),
        (3, "chosen", "bad_message"),
    }
    text = str(err)
    assert "row 0, field 'prompt': message 0 has no 'role'" in text
    assert "row 1, field 'chosen': message 0 has role 'robot'" in text
    assert "row 3, field 'chosen': message 0 (assistant) has no string 'content'" in text


def test_conversational_prompt_with_string_completions():
    raw = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}])
    report = validate_preferences(raw, "paired")
    assert [(p.row, p.field, p.code) for p in report.problems] == [(0, "chosen", "mixed_styles")]


def test_implicit_prompt_without_common_prefix(cache_dir):
    err = _errors("broken_implicit", "paired", cache_dir)
    assert _found(err) == {(0, "chosen", "no_common_prefix")}
    assert "row 0, field 'chosen': no prompt given" in str(err)


def test_unpaired_non_boolean_labels(cache_dir):
    err = _errors("broken_unpaired_labels", "unpaired", cache_dir)
    assert _found(err) == {(1, "label", "bad_label"), (2, "label", "bad_label"), (3, "label", "bad_label")}
    assert "row 1, field 'label': must be a boolean (true = desirable; 0/1 accepted), got 'yes'" in str(err)


def test_ranked_problems(cache_dir):
    err = _errors("broken_ranked", "ranked", cache_dir)
    assert _found(err) == {
        (1, "completions", "too_few_completions"),
        (2, "ranks", "length_mismatch"),
        (3, "ranks", "tie"),
        (4, "completions", "inconsistent_k"),
        (5, "ranks", "bad_ranking"),
    }
    text = str(err)
    assert "row 1, field 'completions': must be a list of K ≥ 2 completions, got 1" in text
    assert "row 2, field 'ranks': has 2 values but completions has 3" in text
    assert "row 4, field 'completions': has K=2 completions but 1 rows have K=3" in text


def test_ranked_needs_ranks_or_scores_not_both():
    neither = datasets.Dataset.from_list([{"prompt": "q", "completions": [" a", " b"], "rank": [1, 2]}])
    report = validate_preferences(neither, "ranked")
    assert report.problems[0].code == "missing_column" and "is 'rank' one of them?" in report.problems[0].message
    both = datasets.Dataset.from_list(
        [{"prompt": "q", "completions": [" a", " b"], "ranks": [1, 2], "scores": [1.0, 0.0]}]
    )
    assert [p.code for p in validate_preferences(both, "ranked").problems] == ["ambiguous_column"]


def test_report_truncates_but_keeps_all_problems():
    raw = datasets.Dataset.from_list([{"prompt": "", "chosen": " a", "rejected": " b"}] * 30)
    with pytest.raises(PreferenceDataError) as info:
        load_preferences(raw, kind="paired", max_reported=5)
    assert len(info.value.problems) == 30
    assert "… and 25 more" in str(info.value) and "empty ×30" in str(info.value)


def test_empty_dataset_and_unknown_tie_policy():
    empty = datasets.Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})
    assert [p.code for p in validate_preferences(empty, "paired").problems] == ["empty_dataset"]
    with pytest.raises(ValueError, match="ties='random'"):
        validate_preferences(empty, "ranked", ties="random")
