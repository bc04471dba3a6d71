"""Bad `--data` through every command that reads it (`train`, `train-rm`, `compare`): the data is read and
checked before `--out` is created or locked and before any model loads, so a bad file is one stderr line
(file and line), exit code 2 and nothing written; row problems print the first bad row in full and the
numbers of the others; a `--data` folder is named with the files each split was read from (progress on).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from prefopt.cli import main
from prefopt.data import PreferenceDataError, load_preferences
from prefopt.train.run_folder import claim_run_folder

from .train.tiny_task import write_tiny_task

ROW = {"prompt": "Q?", "chosen": " yes", "rejected": " no"}
MALFORMED = json.dumps(ROW) + '\n{"prompt": "a", "chosen": \n'


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A complete model folder (a random 2-layer Llama and the synthetic tokenizer), written once."""
    return write_tiny_task(tmp_path_factory.mktemp("tiny"), pairs=4)["model"]


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "hf-cache"


@pytest.fixture(autouse=True)
def _no_model_loads(monkeypatch, tmp_path):
    """Any model load in these tests is a failure: the data must stop the command first."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    import prefopt.compare.run
    import prefopt.online.reward_model

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr(prefopt.online.reward_model, "_load_model", refuse)
    monkeypatch.setattr(prefopt.compare.run, "SharedTask", refuse)


def _argv(command: str, data: Path, out: Path, model: Path, progress: bool = False) -> list[str]:
    argv = {
        "train": ["train"],
        "train-rm": ["train-rm", "--model", str(model)],
        "compare": ["compare", "--losses", "dpo", "--model", str(model)],
    }[command]
    argv += ["--data", str(data), "--out", str(out)]
    if not progress:
        argv.append("--quiet")
    return argv


COMMANDS = ["train", "train-rm", "compare"]


@pytest.mark.parametrize("command", COMMANDS)
def test_malformed_data_is_one_line_and_out_is_never_created(command, tmp_path, tiny_model, capsys):
    data = tmp_path / "prefs.jsonl"
    data.write_text(MALFORMED)
    out = tmp_path / "runs" / "new"
    assert main(_argv(command, data, out, tiny_model)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"prefopt {command}: {data}, line 2: invalid JSON"), err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_malformed_data_leaves_an_existing_out_folder_as_it_was(command, tmp_path, tiny_model, capsys):
    data = tmp_path / "prefs.jsonl"
    data.write_text(MALFORMED)
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(_argv(command, data, out, tiny_model)) == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # no .lock, no config files, no run folders
    assert f"{data}, line 2" in capsys.readouterr().err


def _bad_rows(path: Path) -> None:
    """Row 0 (line 1) has two problems; rows 1-7 one each."""
    rows = [{"id": "a", "prompt": "", "chosen": "", "rejected": " no"}]
    rows += [{**ROW, "id": f"r{i}", "rejected": ""} for i in range(1, 8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("command", COMMANDS)
def test_row_problems_print_the_first_bad_row_in_full_then_the_others(command, tmp_path, tiny_model, capsys):
    data = tmp_path / "prefs.jsonl"
    _bad_rows(data)
    assert main(_argv(command, data, tmp_path / "run", tiny_model)) == 2
    err = capsys.readouterr().err
    assert err == (
        f"prefopt {command}: {data}, line 1: row 0 (id='a'), field 'prompt': is an empty string; "
        "field 'chosen': is an empty string (also: rows 1, 2, 3, 4, 5 and 2 more)\n"
    )
    assert not (tmp_path / "run").exists()


def test_a_bad_row_in_a_folder_is_named_by_its_file(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    _bad_rows(folder / "train.jsonl")
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith(
        f"prefopt train: {folder / 'train.jsonl'}, line 1: row 0 (id='a'), field 'prompt': is an empty string; "
    )


def test_the_library_error_keeps_every_problem_and_the_one_line_form(tmp_path, cache_dir):
    data = tmp_path / "prefs.jsonl"
    _bad_rows(data)
    with pytest.raises(PreferenceDataError) as info:
        load_preferences(data, kind="paired", cache_dir=cache_dir)
    error = info.value
    assert len(error.problems) == 9 and str(error).count("\n") == 9  # counts, then every problem
    assert error.one_line.endswith("(also: rows 1, 2, 3, 4, 5 and 2 more)") and "\n" not in error.one_line


@pytest.mark.parametrize(
    ("others", "tail"),
    [
        ([], ""),
        ([3], " (also: row 3)"),
        ([3, 9], " (also: rows 3 and 9)"),
        ([1, 2, 3, 4, 5], " (also: rows 1, 2, 3, 4 and 5)"),
    ],
)
def test_the_other_bad_rows_are_listed_readably(others, tail):
    from prefopt.data.validate import Problem, ValidationReport

    report = ValidationReport("paired", 10, [Problem(r, "prompt", "empty", "is an empty string") for r in [0, *others]])
    assert report.one_line("d.jsonl", lambda row: f"line {row + 1}") == (
        f"d.jsonl, line 1: row 0, field 'prompt': is an empty string{tail}"
    )


def test_column_problems_come_first_in_the_one_line_form():
    from prefopt.data.validate import Problem, ValidationReport

    problems = [
        Problem(None, "rejected", "missing_column", "missing; did you mean 'rejectd'?"),
        Problem(2, "prompt", "empty", "is an empty string"),
    ]
    assert ValidationReport("paired", 3, problems).one_line("d.jsonl") == (
        "d.jsonl: column 'rejected': missing; did you mean 'rejectd'? (also: row 2)"
    )


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    pairs = [{**ROW, "chosen": f" yes {i}"} for i in range(3)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    (folder / "eval.jsonl").write_text(json.dumps(ROW) + "\n")
    return folder


# The splits each command reads: train trains on `train`; train-rm and compare also hold out `eval`.
USED = {
    "train": "train: train.jsonl (3 rows)",
    "train-rm": "train: train.jsonl (3 rows), eval: eval.jsonl (1 row)",
    "compare": "train: train.jsonl (3 rows), eval: eval.jsonl (1 row)",
}


@pytest.mark.parametrize("progress", [True, False], ids=["progress", "quiet"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_data_folder_is_named_with_the_files_used(command, progress, tmp_path, tiny_model, capsys):
    """The folder's files are read before the run folder is claimed: another run holding --out stops the
    command right after the data line (when progress output is on) and before any model loads."""
    folder = _folder(tmp_path)
    out = tmp_path / "run"
    with claim_run_folder(out):
        assert main(_argv(command, folder, out, tiny_model, progress=progress)) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("prefopt")]  # not the bars
    assert "is in use by another prefopt run" in lines[-1]
    expected = [f"prefopt {command}: {folder}/ → {USED[command]}"] if progress else []
    assert lines[:-1] == expected


def test_library_calls_only_log_the_files_used(tmp_path, cache_dir, capsys, caplog):
    from prefopt.data.loading import describe_folder_reads, log_folder_reads, record_folder_reads

    folder = _folder(tmp_path)
    with caplog.at_level(logging.INFO, logger="prefopt.data.loading"), record_folder_reads() as reads:
        load_preferences(folder, kind="paired", cache_dir=cache_dir)
        load_preferences(folder, kind="paired", split="eval", cache_dir=cache_dir)
        load_preferences(folder, kind="paired", cache_dir=cache_dir)  # read again: named once
        log_folder_reads(reads)
    printed = capsys.readouterr()
    assert printed.out == "" and "→" not in printed.err and "prefopt" not in printed.err  # only datasets' bars
    line = f"{folder}/ → train: train.jsonl (3 rows), eval: eval.jsonl (1 row)"
    assert describe_folder_reads(reads) == line and line in caplog.text
    assert load_preferences(folder, kind="paired", cache_dir=cache_dir) is not None  # nothing recorded outside
    assert len(reads) == 3


def test_many_shards_are_shown_as_the_first_and_the_last():
    from prefopt.data.loading import SplitFiles, describe_folder_reads

    shards = tuple(f"train-{i:05d}-of-00012.parquet" for i in range(12))
    assert describe_folder_reads([SplitFiles("d", "train", shards, 1_234_567)]) == (
        "d/ → train: train-00000-of-00012.parquet, …, train-00011-of-00012.parquet (12 files, 1,234,567 rows)"
    )
