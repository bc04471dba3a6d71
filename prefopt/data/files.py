"""Local data files, read strictly: a malformed file is one `PreferenceDataError` line naming the file, the
1-based line, what is wrong and what to do.

    check_file("prefs.jsonl")            # FileCheck(rows, columns, lines) or PreferenceDataError
    read_files([Path("prefs.jsonl")])    # checked, then a memory-mapped datasets.Dataset

JSON syntax (duplicate keys, one object per line, one array of objects) is read by `prefopt.data.json_text`;
a folder's files are grouped into splits by `prefopt.data.folders`.

Why not `datasets.load_dataset("json", ...)` directly: a broken line surfaces as a bare
`DatasetGenerationError` (the cause only in a log line, with a 0-based row), an empty file as
`StopIteration`, a non-UTF-8 byte without its position, a duplicate key as a pyarrow message; a folder of
mixed files silently loses some of them; and `load_dataset` sends a download-counter request over the
network even for a local file. Here each file is checked in one streaming pass (UTF-8 with the line of a
bad byte, `json.loads` per line with duplicate keys refused, one JSON object per line), then read with
`Dataset.from_json` / `from_csv` / `from_parquet`: the same Arrow cache keyed by the file's contents and
modification time, and no network.

Accepted as harmless: blank or whitespace-only lines, Windows line endings, a UTF-8 byte-order mark,
`NaN`/`Infinity` (validation reports them where a finite number is needed).
"""

from __future__ import annotations

import csv
import json
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prefopt.data.json_text import JsonProblem, array_rows, parse_jsonl_line
from prefopt.data.schema import schema_for
from prefopt.data.validate import PreferenceDataError

if TYPE_CHECKING:
    import datasets

__all__ = [
    "FILE_FORMATS",
    "FileCheck",
    "check_file",
    "example_row",
    "file_format",
    "read_files",
]

FILE_FORMATS: dict[str, str] = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_MORE = 5  # further bad lines listed after the first
_BOM = b"\xef\xbb\xbf"
_EXAMPLES = {
    "paired": '{"prompt": "...", "chosen": "...", "rejected": "..."}',
    "unpaired": '{"prompt": "...", "completion": "...", "label": true}',
    "ranked": '{"prompt": "...", "completions": ["...", "..."], "ranks": [1, 2]}',
    "prompt": '{"prompt": "..."}',
}


def example_row(kind: str | None) -> str:
    """A JSON row of data kind `kind` for messages (paired when the kind is not known)."""
    return _EXAMPLES[schema_for(kind).kind if kind is not None else "paired"]


@dataclass
class FileCheck:
    """What the check of one file found: `rows` data rows, the `columns` seen, each row's 1-based `lines`
    (empty for Parquet, which has no lines)."""

    path: Path
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    lines: array = field(default_factory=lambda: array("I"))  # 4 bytes a row


def _error(
    path: Path, line: int | None, what: str, fix: str, more: Sequence[int] = (), extra: int = 0
) -> PreferenceDataError:
    where = f"{path}, line {line}" if line is not None else str(path)
    tail = ""
    if more:
        listed = ", ".join(map(str, more)) + (f" and {extra} more" if extra else "")
        tail = f" (also bad: line{'s' if len(more) + extra > 1 else ''} {listed})"
    return PreferenceDataError(f"{where}: {what}; {fix}{tail}")


def _decode(path: Path, raw: bytes, line: int) -> str:
    """`raw` as UTF-8, or an error naming the line, column and byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        column = len(raw[: err.start].decode("utf-8", "replace")) + 1
        raise _error(
            path,
            line,
            f"byte 0x{raw[err.start]:02x} at column {column} is not UTF-8",
            "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
        ) from None


def _refuse_utf16(path: Path, start: bytes) -> None:
    if start[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 byte-order marks
        raise _error(path, 1, "the file is UTF-16, not UTF-8", "save it as UTF-8")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded text without its line ending), a byte-order mark dropped."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            if number == 1:
                _refuse_utf16(path, raw)
            if b"\x00" in raw:
                raise _error(
                    path, number, "the line holds NUL bytes (a binary or UTF-16 file?)", "save the data as UTF-8 text"
                )
            yield number, _decode(path, raw, number).rstrip("\r\n")


def _check_jsonl(path: Path, example: str) -> FileCheck:
    result = FileCheck(path)
    columns: dict[str, None] = {}
    first: tuple[int, str, str] | None = None  # (line, what is wrong, what to do) of the first bad line
    bad: list[int] = []
    last = 0  # the last non-blank line
    for number, text in _lines(path):
        if not text.strip():
            continue
        last = number
        row, problem = parse_jsonl_line(text, number, example)
        if row is not None:
            columns.update(dict.fromkeys(row))
            result.rows += 1
            result.lines.append(number)
        elif first is None:
            first = (number, *problem)
        else:
            bad.append(number)
    if first is not None:
        line, what, fix = first
        if not bad and line == last and not _ends_with_newline(path):
            what += " (the last line looks cut off: an interrupted write or download?)"
        raise _error(path, line, what, fix, bad[:_MORE], max(0, len(bad) - _MORE))
    result.columns = list(columns)
    return _require_rows(result, "line", example)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, 2)
        if f.tell() == 0:
            return True
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def _check_json(path: Path, example: str) -> FileCheck:
    """A .json file: one array of row objects (`[{...}, {...}]`); each row's line is where its object starts."""
    text = _json_text(path, example)
    result = FileCheck(path)
    columns: dict[str, None] = {}
    try:
        for line, row in array_rows(text, example):
            columns.update(dict.fromkeys(row))
            result.rows += 1
            result.lines.append(line)
    except JsonProblem as problem:
        raise _error(path, *problem.args) from None
    result.columns = list(columns)
    return _require_rows(result, "array item", example)


def _json_text(path: Path, example: str) -> str:
    """The file's text: UTF-8 (a bad byte reported with its line), a byte-order mark dropped, not blank."""
    raw = path.read_bytes()
    _refuse_utf16(path, raw)
    for number, line in enumerate(raw.split(b"\n"), 1):  # UTF-8 errors with their line number
        _decode(path, line[len(_BOM) :] if number == 1 and line.startswith(_BOM) else line, number)
    text = raw.decode("utf-8-sig")
    if not text.strip():
        raise _error(
            path,
            None,
            "the file is empty" if not raw else "the file holds only whitespace",
            f"write a JSON array of row objects, e.g. [{example}]",
        )
    return text


def _check_csv(path: Path, example: str) -> FileCheck:
    result = FileCheck(path)
    reader = csv.reader(text + "\n" for _, text in _lines(path))
    header: list[str] | None = None
    previous = 0  # the line the previous record ended on: a quoted field may span lines
    try:
        for row in reader:
            start, previous = previous + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank lines are skipped (as pandas does)
            if header is None:
                header = row
                repeated = sorted({c for c in row if row.count(c) > 1 and c})
                if repeated:
                    raise _error(
                        path,
                        start,
                        f"the header names the column(s) {repeated} twice",
                        "give every column a unique name",
                    )
                continue
            if len(row) != len(header):
                raise _error(
                    path,
                    start,
                    f"{len(row)} fields where the header has {len(header)}",
                    'quote fields that contain commas or line breaks ("like, this")',
                )
            result.rows += 1
            result.lines.append(start)
    except csv.Error as err:
        raise _error(path, reader.line_num, f"unreadable CSV ({err})", "fix the quoting of that line") from None
    if header is None:
        raise _error(
            path,
            None,
            "the file is empty" if path.stat().st_size == 0 else "the file has no header line",
            f"write a header line of column names (e.g. {','.join(json.loads(example))}), then one row per line",
        )
    result.columns = header
    return _require_rows(result, "row under the header", example)


def _check_parquet(path: Path, example: str) -> FileCheck:
    import pyarrow.parquet as pq  # heavy: loaded on first use

    try:
        metadata = pq.ParquetFile(path).metadata
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError for empty, truncated or foreign files
        size = path.stat().st_size
        what = "the file is empty (0 bytes)" if size == 0 else f"not a readable Parquet file ({err})"
        raise _error(path, None, what, "re-export it (e.g. `Dataset.to_parquet`), or use .jsonl") from None
    result = FileCheck(path, rows=metadata.num_rows, columns=list(metadata.schema.to_arrow_schema().names))
    return _require_rows(result, "row", example)


def _require_rows(result: FileCheck, unit: str, example: str) -> FileCheck:
    if result.rows == 0:
        empty = result.path.stat().st_size == 0
        what = "the file is empty (0 bytes)" if empty else f"no data (not one {unit})"
        raise _error(
            result.path,
            None,
            what + (", only blank lines" if unit == "line" and not empty else ""),
            "add rows, or point to the file that holds them",
        )
    if not result.columns:
        raise _error(
            result.path,
            result.lines[0] if result.lines else None,
            f"every row is an empty object {{}} ({result.rows} rows, no columns)",
            f"give each row the data's columns, e.g. {example}",
        )
    return result


_CHECKS = {"jsonl": _check_jsonl, "json": _check_json, "csv": _check_csv, "parquet": _check_parquet}


def file_format(path: Path) -> str:
    """ "jsonl" | "json" | "csv" | "parquet" from the suffix; PreferenceDataError for any other."""
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None and path.suffix.lower() in (".gz", ".bz2", ".xz", ".zst", ".zip"):
        raise PreferenceDataError(
            f"{path}: compressed files are not read; decompress it first (e.g. `gunzip -k "
            f"{path.name}`) and pass the {''.join(path.suffixes[:-1]) or 'data'} file"
        )
    if fmt is None:
        raise PreferenceDataError(
            f"{path}: unsupported file type {path.suffix!r}; use one of "
            f"{sorted(FILE_FORMATS)} (or a folder of them, or a save_to_disk folder)"
        )
    return fmt


def check_file(path: str | Path, kind: str | None = None) -> FileCheck:
    """Check one local file of a supported format; PreferenceDataError (one line) at the first problem, with
    an example row of data kind `kind` where the fix needs one."""
    path = Path(path)
    check = _CHECKS[file_format(path)]
    try:
        return check(path, example_row(kind))
    except OSError as err:  # unreadable: permissions, a vanished file, an I/O error
        raise _error(
            path, None, f"cannot be read ({err.strerror or err})", "check that it is a readable file"
        ) from None


def read_files(
    paths: Sequence[Path], cache_dir: str | None = None, kind: str | None = None
) -> tuple[datasets.Dataset, list[FileCheck]]:
    """Check every file, then read them (one format) as one memory-mapped `datasets.Dataset`, in order."""
    import datasets  # heavy: loaded on first use

    checks = [check_file(p, kind) for p in paths]
    fmt = file_format(paths[0])
    files = [str(p) for p in paths]
    reader = {
        "jsonl": datasets.Dataset.from_json,
        "json": datasets.Dataset.from_json,
        "csv": datasets.Dataset.from_csv,
        "parquet": datasets.Dataset.from_parquet,
    }[fmt]
    try:
        dataset = reader(files if len(files) > 1 else files[0], cache_dir=cache_dir)
    except Exception as err:  # the checks passed, so this is a datasets/pyarrow limit, not a syntax error
        cause = err.__cause__ or err
        raise PreferenceDataError(
            f"{', '.join(files)}: passed prefopt's checks but datasets could not read it "
            f"({type(cause).__name__}: {cause}); please report this, with the file if "
            "you can"
        ) from err
    return dataset, checks
