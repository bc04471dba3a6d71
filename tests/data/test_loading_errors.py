"""Malformed data files: each is one line naming the file, the 1-based line, what is wrong and what to do —
from `load_preferences` and from `prefopt train --data` (exit code 2, nothing written to --out).

Also: the harmless variants (CRLF, BOM, blank lines) still load, a folder's files become splits by name or
the folder is refused, local files never touch the network, and a Hub dataset's revision is passed on.
"""

from __future__ import annotations

import argparse
import json
import socket
import warnings

import datasets
import pytest

from prefopt.cli import main
from prefopt.cli.train import COMMAND as TRAIN
from prefopt.cli.train import config_from_args
from prefopt.data import MissingSplitError, PreferenceDataError, PreferenceDataWarning, load_preferences
from prefopt.data.validate import DataNotFoundError
from prefopt.train.config import TrainConfig
from prefopt.train.data import load_train_rows
from prefopt.train.setup import load_user_rows

ROW = {"prompt": "Q?", "chosen": " yes", "rejected": " no"}
GOOD = json.dumps(ROW).encode()
PAIRED = b"".join(json.dumps({**ROW, "id": i}).encode() + b"\n" for i in range(4))


def _csv_parquet(rows: list[dict]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(
        pa.Table.from_pylist(
            rows, schema=pa.schema([("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())])
        ),
        buffer,
    )
    return buffer.getvalue()


# (id, files {relative path: bytes}, the path to load, substrings of the message). Every message must also
# hold the path and be a single line.
MALFORMED = [
    (
        "jsonl-broken-line",
        {"d.jsonl": GOOD + b'\n{"prompt": "q", "chosen": " a"\n' + GOOD + b"\n"},
        "d.jsonl",
        ["d.jsonl, line 2", "invalid JSON at column 31", "one complete JSON object"],
    ),
    (
        "jsonl-truncated-last-line",
        {"d.jsonl": GOOD + b"\n" + GOOD[:20]},
        "d.jsonl",
        ["d.jsonl, line 2", "invalid JSON", "looks cut off"],
    ),
    (
        "jsonl-bare-string",
        {"d.jsonl": GOOD + b'\n"hello"\n'},
        "d.jsonl",
        ["line 2", "a JSON string, not a JSON object", "each line must be one JSON object"],
    ),
    ("jsonl-number", {"d.jsonl": b"42\n" + GOOD + b"\n"}, "d.jsonl", ["line 1", "a JSON number, not a JSON object"]),
    ("jsonl-null", {"d.jsonl": GOOD + b"\nnull\n"}, "d.jsonl", ["line 2", "JSON null, not a JSON object"]),
    ("jsonl-array-line", {"d.jsonl": GOOD + b"\n[1, 2]\n"}, "d.jsonl", ["line 2", "a JSON array, not a JSON object"]),
    (
        "jsonl-array-of-objects",
        {"d.jsonl": b"[" + GOOD + b", " + GOOD + b"]\n"},
        "d.jsonl",
        ["line 1", "array of objects on one line", ".json file"],
    ),
    (
        "jsonl-pretty-printed",
        {"d.jsonl": json.dumps([ROW, ROW], indent=2).encode()},
        "d.jsonl",
        ["line 1", "spread over several lines", "one object per line"],
    ),
    (
        "jsonl-duplicate-key",
        {"d.jsonl": GOOD + b'\n{"prompt": "q", "chosen": " a", "chosen": " c", "rejected": " b"}\n'},
        "d.jsonl",
        ["line 2", "key 'chosen' appears twice", "keep one"],
    ),
    (
        "jsonl-nested-duplicate-key",
        {"d.jsonl": b'{"chosen": [{"role": "user", "role": "assistant", "content": "x"}]}\n'},
        "d.jsonl",
        ["line 1", "key 'role' appears twice"],
    ),
    ("jsonl-empty-file", {"d.jsonl": b""}, "d.jsonl", ["the file is empty (0 bytes)", "add rows"]),
    ("jsonl-blank-lines-only", {"d.jsonl": b"\n  \n\r\n"}, "d.jsonl", ["no data", "only blank lines"]),
    (
        "jsonl-empty-objects",
        {"d.jsonl": b"{}\n{}\n"},
        "d.jsonl",
        ["line 1", "every row is an empty object {}", '"chosen"'],
    ),
    (
        "jsonl-not-utf8",
        {"d.jsonl": GOOD + b'\n{"prompt": "q\xff", "chosen": " a", "rejected": " b"}\n'},
        "d.jsonl",
        ["line 2", "byte 0xff at column 14 is not UTF-8", "save the file as UTF-8"],
    ),
    ("jsonl-utf16", {"d.jsonl": (json.dumps(ROW) + "\n").encode("utf-16")}, "d.jsonl", ["line 1", "UTF-16"]),
    ("jsonl-nul-bytes", {"d.jsonl": GOOD + b"\n\x00\x00\n"}, "d.jsonl", ["line 2", "NUL bytes"]),
    (
        "jsonl-several-bad-lines",
        {"d.jsonl": GOOD + b"\n{\n" + GOOD + b"\n[\n}\n"},
        "d.jsonl",
        ["line 2", "also bad: lines 4, 5"],
    ),
    (
        "jsonl-no-known-column",
        {"d.jsonl": b'{"text": "a"}\n{"text": "b"}\n'},
        "d.jsonl",
        ["none of its columns ['text']", "needs prompt, chosen, rejected", "rename yours"],
    ),
    ("json-empty-file", {"d.json": b""}, "d.json", ["the file is empty", "JSON array of row objects"]),
    ("json-empty-array", {"d.json": b"[]"}, "d.json", ["no data (not one array item)"]),
    (
        "json-single-object",
        {"d.json": GOOD},
        "d.json",
        ["line 1", "an object with keys ['prompt', 'chosen', 'rejected']", "JSON array of row objects"],
    ),
    (
        "json-holding-json-lines",
        {"d.json": GOOD + b"\n" + GOOD + b"\n"},
        "d.json",
        ["line 2", "one JSON object per line", "rename the file to .jsonl"],
    ),
    (
        "json-item-not-object",
        {"d.json": b"[\n  " + GOOD + b",\n  7\n]"},
        "d.json",
        ["line 3", "array item 2 is a JSON number"],
    ),
    (
        "json-duplicate-key",
        {"d.json": b"[\n  " + GOOD + b',\n  {"prompt": "q", "prompt": "r"}\n]'},
        "d.json",
        ["line 3", "repeats the key 'prompt'"],
    ),
    ("json-invalid", {"d.json": b"[\n  " + GOOD + b',\n  {"prompt": q}\n]'}, "d.json", ["line 3", "invalid JSON"]),
    ("json-unclosed", {"d.json": b"[\n  " + GOOD + b",\n  " + GOOD}, "d.json", ["not closed", "cut off"]),
    (
        "json-text-after-array",
        {"d.json": b"[" + GOOD + b"]\n[" + GOOD + b"]"},
        "d.json",
        ["line 2", "after the closing ']'"],
    ),
    ("json-not-utf8", {"d.json": b"[\n" + GOOD + b',\n{"prompt": "\xe9"}\n]'}, "d.json", ["line 3", "not UTF-8"]),
    ("csv-empty-file", {"d.csv": b""}, "d.csv", ["the file is empty", "header line", "prompt,chosen,rejected"]),
    ("csv-header-only", {"d.csv": b"prompt,chosen,rejected\n"}, "d.csv", ["no data (not one row under the header)"]),
    (
        "csv-extra-field",
        {"d.csv": b"prompt,chosen,rejected\nq,a,b\nq,a, b,c\n"},
        "d.csv",
        ["line 3", "4 fields where the header has 3", "quote fields"],
    ),
    ("csv-duplicate-column", {"d.csv": b"prompt,chosen,chosen\nq,a,b\n"}, "d.csv", ["line 1", "['chosen'] twice"]),
    ("csv-not-utf8", {"d.csv": b"prompt,chosen,rejected\nq,caf\xe9,b\n"}, "d.csv", ["line 2", "not UTF-8"]),
    ("parquet-empty-file", {"d.parquet": b""}, "d.parquet", ["the file is empty (0 bytes)"]),
    ("parquet-not-parquet", {"d.parquet": GOOD}, "d.parquet", ["not a readable Parquet file", "re-export"]),
    ("parquet-no-rows", {"d.parquet": _csv_parquet([])}, "d.parquet", ["no data"]),
    ("unsupported-suffix", {"d.txt": GOOD}, "d.txt", ["unsupported file type '.txt'", ".jsonl"]),
    ("compressed", {"d.jsonl.gz": b"\x1f\x8b\x08\x00"}, "d.jsonl.gz", ["compressed files are not read", "gunzip"]),
    ("missing-file", {}, "nope.jsonl", ["no such file or folder", "check the path"]),
    (
        "folder-mixed-formats",
        {"f/train.jsonl": PAIRED, "f/test.csv": b"prompt,chosen,rejected\nq,a,b\n"},
        "f",
        ["mixes file formats", "test.csv, train.jsonl", "keep one format"],
    ),
    (
        "folder-unnamed-files",
        {"f/a.jsonl": PAIRED, "f/b.jsonl": PAIRED},
        "f",
        ["none names a split", "a.jsonl, b.jsonl", "pass one file"],
    ),
    (
        "folder-stray-file",
        {"f/train.jsonl": PAIRED, "f/notes.jsonl": PAIRED},
        "f",
        ["notes.jsonl names no split", "train.jsonl"],
    ),
    ("folder-no-data-files", {"f/README.md": b"# data\n"}, "f", ["no data files", "README.md"]),
    (
        "folder-bad-train-file",
        {"f/train.jsonl": GOOD + b"\n{oops\n", "f/test.jsonl": PAIRED},
        "f",
        ["train.jsonl, line 2", "invalid JSON"],
    ),
]


def _write(tmp_path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_file_is_one_line_with_file_line_and_fix(case, tmp_path, cache_dir):
    _, files, source, expected = case
    _write(tmp_path, files)
    with pytest.raises(PreferenceDataError) as info:
        load_preferences(tmp_path / source, kind="paired", cache_dir=cache_dir)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(tmp_path / source) in message
    for part in expected:
        assert part in message, (part, message)


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_cli_train_prints_one_line_exits_2_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    _, files, source, expected = case
    _write(tmp_path, files)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / source), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("prefopt train: ") and str(tmp_path / source) in err and expected[0] in err
    assert not out.exists()


def test_cli_leaves_an_existing_empty_out_folder_empty(tmp_path, capsys):
    (tmp_path / "d.jsonl").write_bytes(GOOD + b"\n{bad\n")
    out = tmp_path / "run"
    out.mkdir()
    assert main(["train", "--data", str(tmp_path / "d.jsonl"), "--out", str(out), "--quiet"]) == 2
    assert list(out.iterdir()) == []
    assert "d.jsonl, line 2" in capsys.readouterr().err


def test_cli_names_the_file_not_dataset_in_validation_and_kind_errors(tmp_path, capsys):
    bad_rows = tmp_path / "rows.jsonl"
    bad_rows.write_text(json.dumps(ROW) + "\n\n" + json.dumps({**ROW, "prompt": ""}) + "\n")
    assert main(["train", "--data", str(bad_rows), "--out", str(tmp_path / "a"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (
        f"prefopt train: {bad_rows}, line 3: row 1, field 'prompt': is an empty string\n" == err
    )  # blank line 2 counts
    assert "Dataset" not in err
    ranked = tmp_path / "ranked.jsonl"
    ranked.write_text(json.dumps({"prompt": "q", "completions": ["a", "b"], "ranks": [1, 2]}) + "\n")
    assert main(["train", "--data", str(ranked), "--out", str(tmp_path / "b"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"holds ranked data ({ranked}, columns" in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "text",
    [
        GOOD + b"\r\n" + GOOD + b"\r\n",  # Windows line endings
        b"\xef\xbb\xbf" + GOOD + b"\n" + GOOD + b"\n",  # a UTF-8 byte-order mark
        b"\n" + GOOD + b"\n\n   \n" + GOOD,  # blank lines anywhere, no final newline
        b"  " + GOOD + b"  \t\n" + GOOD + b" \n",  # whitespace around the object
    ],
    ids=["crlf", "bom", "blank-lines", "whitespace"],
)
def test_harmless_variants_load(text, tmp_path, cache_dir):
    (tmp_path / "d.jsonl").write_bytes(text)
    rows = load_preferences(tmp_path / "d.jsonl", kind="paired", cache_dir=cache_dir)
    assert rows.to_list() == [ROW, ROW]


def test_json_array_with_bom_and_crlf_loads(tmp_path, cache_dir):
    (tmp_path / "d.json").write_bytes(b"\xef\xbb\xbf[\r\n" + GOOD + b",\r\n" + GOOD + b"\r\n]\r\n")
    assert load_preferences(tmp_path / "d.json", kind="paired", cache_dir=cache_dir).to_list() == [ROW, ROW]


def test_validation_problems_carry_line_numbers_through_slices(tmp_path, cache_dir):
    rows = [ROW, {**ROW, "rejected": ""}, ROW, {**ROW, "chosen": None}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) + "\n" for r in rows))  # a blank line after each
    with pytest.raises(PreferenceDataError) as info:
        load_preferences(tmp_path / "d.jsonl", kind="paired", cache_dir=cache_dir)
    assert "  line 3: row 1, field 'rejected'" in str(info.value)
    assert "  line 7: row 3, field 'chosen'" in str(info.value)
    with pytest.raises(PreferenceDataError, match=r"line 7: row 1, field 'chosen'"):
        load_preferences(tmp_path / "d.jsonl", kind="paired", split="train[2:]", cache_dir=cache_dir)


def test_folder_splits_by_name_and_logs_the_files(tmp_path, cache_dir, caplog):
    folder = tmp_path / "f"
    _write(
        tmp_path,
        {
            "f/train-00000-of-00002.jsonl": PAIRED,
            "f/train-00001-of-00002.jsonl": PAIRED,
            "f/eval.jsonl": PAIRED[: len(PAIRED) // 2],
            "f/README.md": b"notes",
            "f/.hidden.jsonl": b"{",
        },
    )
    with caplog.at_level("INFO", logger="prefopt.data.loading"):
        train = load_preferences(folder, kind="paired", cache_dir=cache_dir)
    assert len(train) == 8
    assert "train-00000-of-00002.jsonl, train-00001-of-00002.jsonl" in caplog.text
    assert len(load_preferences(folder, kind="paired", split="eval", cache_dir=cache_dir)) == 2
    assert len(load_preferences(folder, kind="paired", split="train[:3]+eval", cache_dir=cache_dir)) == 5
    with pytest.raises(MissingSplitError, match=r"has no split 'test'.*Splits: \['eval', 'train'\]"):
        load_preferences(folder, kind="paired", split="test", cache_dir=cache_dir)


def test_folder_of_one_unnamed_file_or_a_split_subfolder(tmp_path, cache_dir):
    _write(
        tmp_path,
        {
            "one/prefs.jsonl": PAIRED,
            "hub/data/train-0000.jsonl": PAIRED,
            "hub/data/test-0000.jsonl": PAIRED,
            "hub/dataset_info.json": b"{}",
        },
    )
    assert len(load_preferences(tmp_path / "one", kind="paired", cache_dir=cache_dir)) == 4
    assert len(load_preferences(tmp_path / "hub", kind="paired", split="test", cache_dir=cache_dir)) == 4


def test_a_bad_split_file_is_not_read_when_another_split_is_asked_for(tmp_path, cache_dir):
    _write(tmp_path, {"f/train.jsonl": PAIRED, "f/test.jsonl": b"{broken\n"})
    assert len(load_preferences(tmp_path / "f", kind="paired", cache_dir=cache_dir)) == 4
    with pytest.raises(PreferenceDataError, match=r"test.jsonl, line 1: invalid JSON"):
        load_preferences(tmp_path / "f", kind="paired", split="test", cache_dir=cache_dir)


def test_unreadable_file_is_one_line(tmp_path, monkeypatch):
    from prefopt.data import files

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    (tmp_path / "d.jsonl").write_bytes(PAIRED)
    monkeypatch.setattr(files, "open", denied, raising=False)
    with pytest.raises(PreferenceDataError, match=r"d.jsonl: cannot be read \(Permission denied\); check that it is"):
        load_preferences(tmp_path / "d.jsonl", kind="paired")


def test_missing_path_is_a_file_not_found_and_a_data_error(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_preferences(tmp_path / "missing.jsonl", kind="paired")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, PreferenceDataError)


def test_local_files_make_no_network_request(tmp_path, monkeypatch, cache_dir):
    """With the offline switches off, reading local files must not open a connection (datasets.load_dataset
    does: a download-counter request per load). Attempts are recorded, since datasets swallows the error."""
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    _write(
        tmp_path,
        {
            "d.jsonl": PAIRED,
            "d.json": json.dumps([ROW]).encode(),
            "d.csv": b"prompt,chosen,rejected\nq,a,b\n",
            "d.parquet": _csv_parquet([ROW]),
            "f/train.jsonl": PAIRED,
            "f/test.jsonl": PAIRED,
        },
    )
    for name in ("d.jsonl", "d.json", "d.csv", "d.parquet", "f"):
        load_preferences(tmp_path / name, kind="paired", cache_dir=cache_dir)
    assert load_train_rows(str(tmp_path / "d.jsonl"), kind="paired", loss="dpo")["prompt"] == ["Q?"] * 4
    assert attempts == []
    # the guard sees what the old path did: load_dataset on a local file tries the network
    datasets.load_dataset("json", data_files=str(tmp_path / "d.jsonl"), split="train", cache_dir=str(cache_dir))
    assert attempts


def test_hub_revision_is_passed_to_load_dataset(monkeypatch, tmp_path):
    calls: list[dict] = []
    rows = datasets.Dataset.from_list([ROW, {**ROW, "chosen": " sure"}])

    def fake_load_dataset(name, config_name=None, **kwargs):
        calls.append({"name": name, "config_name": config_name, **kwargs})
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_preferences("org/prefs", kind="paired", revision="a1b2c3d", split="train")
    assert len(loaded) == 2 and calls[-1]["revision"] == "a1b2c3d" and calls[-1]["name"] == "org/prefs"
    load_train_rows("org/prefs", kind="paired", loss="dpo", revision="v1.0")
    assert calls[-1]["revision"] == "v1.0"
    config = _train_config(["--data", "org/prefs", "--data-revision", "main"])
    assert config.data_revision == "main"
    assert len(load_user_rows(config)) == 2 and calls[-1]["revision"] == "main"
    with pytest.raises(PreferenceDataError, match="a local file or folder has none"):
        load_preferences(tmp_path, kind="paired", revision="main")


def test_hub_revision_from_the_cli_reaches_load_dataset(monkeypatch, tmp_path, capsys):
    calls: list[dict] = []

    def fake_load_dataset(name, config_name=None, **kwargs):
        calls.append(kwargs)
        return datasets.Dataset.from_list([{"text": "x"}])  # no usable column: the run stops at the data

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = tmp_path / "run"
    assert main(["train", "--data", "org/prefs", "--data-revision", "v2", "--out", str(out), "--quiet"]) == 2
    assert calls[-1]["revision"] == "v2"
    assert "org/prefs@v2: none of its columns ['text']" in capsys.readouterr().err and not out.exists()


def _train_config(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    TRAIN.add_to(parser.add_subparsers())
    return config_from_args(parser.parse_args(["train", *argv]))


def test_identical_flag_reaches_the_data_and_the_warning_names_it(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(ROW) + "\n" + json.dumps({**ROW, "rejected": ROW["chosen"]}) + "\n")
    with pytest.warns(PreferenceDataWarning, match=r"--identical drop"):
        assert len(load_user_rows(_train_config(["--data", str(data)]))) == 2
    config = _train_config(["--data", str(data), "--identical", "drop"])
    assert config.identical == "drop"
    with warnings.catch_warnings():
        warnings.simplefilter("error", PreferenceDataWarning)
        assert load_user_rows(config)["rejected"] == [" no"]
    with pytest.raises(PreferenceDataError, match=r"line 2: row 1, field 'rejected': is identical to chosen"):
        load_user_rows(_train_config(["--data", str(data), "--identical", "error"]))
    assert TrainConfig.from_dict({"data": str(data), "identical": "drop"}).identical == "drop"


def test_identical_and_revision_settings_are_checked(capsys, tmp_path):
    assert main(["train", "--identical", "dorp", "--out", str(tmp_path / "a")]) == 2
    assert "identical='dorp': use one of ('warn', 'drop', 'error')" in capsys.readouterr().err
    assert main(["train", "--data-revision", "v1", "--out", str(tmp_path / "b")]) == 2
    assert "data_revision='v1'" in capsys.readouterr().err
    from prefopt.compare import CompareConfig

    assert CompareConfig(train={"identical": "drop"}).train["identical"] == "drop"
    with pytest.raises(ValueError, match="identical='dorp'"):
        CompareConfig(train={"identical": "dorp"})
