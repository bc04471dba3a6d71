"""Local files and folders opened into splits for `prefopt.data.loading`, and the record of folder reads.

`OpenedData` is one split, opened but not validated; a file has one split, 'train'; a folder's files become
splits by name (`prefopt.data.folders`) and only the files of the split asked for are read; slices like
'train[:100]' keep each row's place in its file for messages. Folder reads are logged under the logger
`prefopt.data.loading`.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefopt.data.files import FileCheck, read_files
from prefopt.data.folders import folder_splits
from prefopt.data.schema import nearest_name
from prefopt.data.validate import MissingSplitError, PreferenceDataError

if TYPE_CHECKING:
    import datasets

__all__ = ["OpenedData", "SplitFiles", "record_folder_reads", "describe_folder_reads", "log_folder_reads"]

# The logger of `prefopt.data.loading`, where these reads have always been logged (the CLI listens there).
logger = logging.getLogger("prefopt.data.loading")


@dataclass(frozen=True)
class OpenedData:
    """One split of a source, opened but not validated (`open_preferences`).

    Attributes:
        dataset: the rows, columns as in the source.
        name: how messages call the source (the file or folder, the Hub name, or the object's type).
        where: row index → its place in the file(s) ("line 7", or "b.jsonl, line 7"), when known.
    """

    dataset: datasets.Dataset
    name: str
    where: Callable[[int], str] | None = None


@dataclass(frozen=True)
class SplitFiles:
    """One split read from the data files of a local folder: the folder, the split, its files (relative to
    the folder, in reading order) and the rows read from them (`record_folder_reads`)."""

    folder: str
    split: str
    files: tuple[str, ...]
    rows: int


_FOLDER_READS: ContextVar[list[SplitFiles] | None] = ContextVar("prefopt_folder_reads", default=None)


@contextlib.contextmanager
def record_folder_reads() -> Iterator[list[SplitFiles]]:
    """Collect, in order, the splits read from local folders inside the block (which files, how many rows)."""
    reads: list[SplitFiles] = []
    token = _FOLDER_READS.set(reads)
    try:
        yield reads
    finally:
        _FOLDER_READS.reset(token)


def describe_folder_reads(reads: Sequence[SplitFiles], max_files: int = 3) -> str | None:
    """One short line: "data/ → train: train.jsonl (1,007 rows), eval: eval.jsonl (127 rows)" (a split read
    twice is named once; more than `max_files` shards are shown as the first, …, the last); None for no reads."""
    folders: dict[str, dict[str, SplitFiles]] = {}
    for read in reads:
        folders.setdefault(read.folder, {}).setdefault(read.split, read)
    parts = []
    for folder, splits in folders.items():
        shown = []
        for read in splits.values():
            if len(read.files) > max_files:
                files = f"{read.files[0]}, …, {read.files[-1]} ({len(read.files)} files, {read.rows:,} rows)"
            else:
                files = f"{', '.join(read.files)} ({read.rows:,} row{'s' if read.rows != 1 else ''})"
            shown.append(f"{read.split}: {files}")
        parts.append(f"{folder.rstrip(os.sep)}{os.sep} → {', '.join(shown)}")
    return "; ".join(parts) or None


def log_folder_reads(reads: Sequence[SplitFiles]) -> None:
    """Log `describe_folder_reads(reads)` at INFO (logger `prefopt.data.loading`, the reads in the record's
    `prefopt_reads`): the `prefopt` commands print it when their progress output is on."""
    text = describe_folder_reads(reads)
    if text is not None:
        logger.info("%s", text, extra={"prefopt_reads": tuple(reads)})


class _RowOrigin:
    """Row index → its place in the files it was read from, for messages ("line 7" in a file, or
    "data/b.jsonl, line 7" in a folder `data`)."""

    def __init__(self, checks: Sequence[FileCheck], root: Path | None) -> None:
        self.names = [None if root is None else str(c.path) for c in checks]
        self.lines = [c.lines for c in checks]
        self.starts = [0]
        for check in checks[:-1]:
            self.starts.append(self.starts[-1] + check.rows)

    def __call__(self, row: int) -> str:
        f = bisect.bisect_right(self.starts, row) - 1
        line = f"line {self.lines[f][row - self.starts[f]]}"
        return line if self.names[f] is None else f"{self.names[f]}, {line}"


def _read(files: list[Path], cache: str | None, root: Path | None, name: str, kind: str | None) -> OpenedData:
    dataset, checks = read_files(files, cache, kind)
    known = all(len(c.lines) == c.rows for c in checks) and len(dataset) == sum(c.rows for c in checks)
    return OpenedData(dataset, name, _RowOrigin(checks, root) if known else None)


def _open_file(path: Path, split: str | None, cache: str | None, kind: str | None) -> OpenedData:
    for name, _ in _split_parts(split):
        if name != "train":
            raise MissingSplitError(
                f"{path}: a single file has one split, 'train' (slices like 'train[:100]' work); got split={split!r}"
            )
    return _pick_split({"train": lambda: _read([path], cache, None, str(path), kind)}, split, str(path))


def _open_folder(path: Path, split: str | None, cache: str | None, kind: str | None) -> OpenedData:
    splits = folder_splits(path)

    def opener(name: str) -> Callable[[], OpenedData]:
        def read() -> OpenedData:
            files = splits[name]
            used = ", ".join(str(f.relative_to(path)) for f in files)
            logger.info("%s: split %r read from %s (splits found: %s)", path, name, used, sorted(splits))
            opened = _read(files, cache, path, f"{path} ({used})", kind)
            reads = _FOLDER_READS.get()
            if reads is not None:
                reads.append(
                    SplitFiles(str(path), name, tuple(str(f.relative_to(path)) for f in files), len(opened.dataset))
                )
            return opened

        return read

    return _pick_split({name: opener(name) for name in splits}, split, str(path))


def _split_parts(split: str | None) -> list[tuple[str, str]]:
    """ "train[:10]+test" → [("train", "train[:10]"), ("test", "test")]."""
    if split is None:
        return []
    parts = []
    for part in split.split("+"):
        match = re.fullmatch(r"\s*([\w.-]+)\s*(\[.*\])?\s*", part)
        parts.append((match.group(1) if match else part.strip(), part.strip()))
    return parts


def _pick_split(splits: Mapping[str, Any], split: str | None, where: str) -> OpenedData:
    """The split (or slices of splits) named by `split` among `splits` (name → Dataset, OpenedData, or a
    callable opening it on demand, so a folder reads only the files of the split asked for)."""
    import datasets  # heavy: loaded on first use

    names = list(splits)
    if split is None:
        default = "train" if "train" in names else names[0] if len(names) == 1 else None
        if default is None:
            raise MissingSplitError(f"{where} has splits {names}; pass split= (prefopt: --split) to choose one")
        parts = [(default, default)]
    else:
        parts = _split_parts(split)
    pieces: list[OpenedData] = []
    for name, spec in parts:
        if name not in names:
            near = nearest_name(name, names)
            hint = f" Did you mean {near!r}?" if near else ""
            raise MissingSplitError(
                f"{where} has no split {name!r}.{hint} Splits: {names}; pass one of them (split=, prefopt: --split)"
            )
        value = splits[name]
        value = value() if callable(value) else value
        opened = value if isinstance(value, OpenedData) else OpenedData(value, where)
        pieces.append(_slice(opened, name, spec))
    if len(pieces) == 1:
        return pieces[0]
    return OpenedData(datasets.concatenate_datasets([p.dataset for p in pieces]), where)


def _slice(opened: OpenedData, name: str, spec: str) -> OpenedData:
    """`spec` ("train[:100]", "train[10%:20%]") applied to the split `name`; rows keep their origin."""
    import datasets  # heavy: loaded on first use

    if spec == name:
        return opened
    try:
        instructions = datasets.ReadInstruction.from_spec(spec).to_absolute({name: len(opened.dataset)})
    except (ValueError, AssertionError, KeyError) as err:
        raise PreferenceDataError(
            f"{opened.name}: split={spec!r} is not a valid slice ({err}); write it like "
            f"'{name}[:100]', '{name}[10%:]' or '{name}[:50%]+{name}[-10:]'"
        ) from None
    indices = [i for ins in instructions for i in range(ins.from_, ins.to)]
    where = opened.where
    return OpenedData(
        opened.dataset.select(indices), opened.name, None if where is None else (lambda row: where(indices[row]))
    )
