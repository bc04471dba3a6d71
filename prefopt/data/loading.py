"""`load_preferences`: any source of preference data → validated rows in the canonical columns of a kind.

    ds = load_preferences("prefs.jsonl", kind="paired")                   # JSONL / JSON / Parquet / CSV
    ds = load_preferences("data/", kind="ranked", split="test")           # a folder of files, or save_to_disk
    ds = load_preferences("org/name", kind="unpaired", split="train", revision="a1b2c3d")   # a Hub dataset, pinned
    ds = load_preferences(my_dataset, kind="paired", columns={"question": "prompt"})

Local files are checked line by line first (`prefopt.data.files`: a malformed file is one
`PreferenceDataError` naming the file, the 1-based line, the problem and the fix), then read with
`datasets.Dataset.from_json/from_csv/from_parquet` (memory-mapped Arrow cache, deterministic
fingerprints, and no network request), so the tokenised dataset and the engine's reference cache can key
on the fingerprint. A folder's files become splits by their names (train/test/eval/validation); an
ambiguous folder is refused. Hub names go through `datasets.load_dataset` (pin a version with
`revision=`). Every source is then renamed, validated as a whole (all problems reported at once, with
the file's line numbers), and normalised: implicit prompts extracted, ranked completions ordered best
first, 0/1 labels made boolean, unknown columns dropped.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefopt.data.files import FILE_FORMATS, FileCheck, read_files
from prefopt.data.folders import folder_splits
from prefopt.data.formats import derived_fingerprint, extract_prompts, order_ranked
from prefopt.data.schema import KindSchema, nearest_name, schema_for
from prefopt.data.validate import (
    DEFAULT_MAX_REPORTED,
    DataNotFoundError,
    MissingSplitError,
    PreferenceDataError,
    PreferenceDataWarning,
    validate_preferences,
)

if TYPE_CHECKING:
    import datasets

__all__ = [
    "load_preferences",
    "open_preferences",
    "OpenedData",
    "FILE_BUILDERS",
    "SplitFiles",
    "record_folder_reads",
    "describe_folder_reads",
    "log_folder_reads",
]

logger = logging.getLogger(__name__)

# Supported suffixes → the `datasets` reader of each (kept for callers of earlier versions; see FILE_FORMATS).
FILE_BUILDERS: dict[str, str] = {suffix: "json" if fmt == "jsonl" else fmt for suffix, fmt in FILE_FORMATS.items()}


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


def load_preferences(
    source: str | os.PathLike[str] | datasets.Dataset | datasets.DatasetDict | OpenedData,
    *,
    kind: str,
    split: str | None = None,
    columns: Mapping[str, str] | None = None,
    ties: str = "error",
    identical: str = "warn",
    config_name: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    max_reported: int = DEFAULT_MAX_REPORTED,
) -> datasets.Dataset:
    """Load, rename, validate and normalise preference data of one kind.

    Args:
        source: a file (.jsonl/.json/.parquet/.csv), a folder of such files or a `save_to_disk` folder,
            a `datasets.Dataset`/`DatasetDict`, a Hub dataset name, or what `open_preferences` returned.
        kind: "paired" | "unpaired" | "ranked" | "prompt" (= "rollout"); usually `loss_spec(name).kind`.
        split: split to use ("train" by default when there is one; slices like "train[:100]" work).
        columns: renames applied first, `{your_name: canonical_name}`.
        ties: ranked rows with equal ranks/scores — "error", "drop" or "keep" (see `formats`).
        identical: pairs with chosen == rejected — "warn" (kept, counted), "drop" or "error".
        config_name: the Hub dataset's configuration name, if it has several.
        revision: the Hub dataset's git revision (commit, tag or branch) to pin; only for Hub names.
        cache_dir: where `datasets` caches Arrow files (default: its usual cache).
        max_reported: problems shown in an error message (all are in `PreferenceDataError.problems`).
    Returns:
        A `datasets.Dataset` with the kind's canonical columns plus any of margin/weight/id/pair_id.
    Raises:
        PreferenceDataError: listing every problem found, with row ids (and a file's line numbers), counts
            and fixes; a malformed file, an ambiguous folder, or data with none of the kind's columns in
            one line. MissingSplitError (a PreferenceDataError) for a split the source does not have.
    """
    import datasets  # heavy: loaded on first use

    schema = schema_for(kind)
    opened = open_preferences(
        source, split=split, config_name=config_name, revision=revision, cache_dir=cache_dir, kind=schema.kind
    )
    dataset = _rename(opened.dataset, columns or {})
    _check_some_known_column(dataset.column_names, schema, opened.name)
    report = validate_preferences(dataset, schema.kind, ties=ties, identical=identical)
    report.raise_if_errors(max_reported, source=opened.name, where=opened.where)
    for message in report.warnings:
        warnings.warn(message, PreferenceDataWarning, stacklevel=2)
    if report.identical_rows and identical == "drop":
        drop = set(report.identical_rows)
        dataset = dataset.select(
            [i for i in range(len(dataset)) if i not in drop],
            new_fingerprint=derived_fingerprint(dataset._fingerprint, "drop-identical"),
        )
    keep = [c for c in dataset.column_names if c in schema.known_columns]
    dataset = dataset.select_columns(keep)
    if schema.kind == "paired":
        dataset = extract_prompts(dataset)
    elif schema.kind == "ranked":
        dataset = order_ranked(dataset, ties)
    elif schema.kind == "unpaired":
        features = dataset.features.copy()
        features["label"] = datasets.Value("bool")
        dataset = dataset.map(
            lambda r: {"label": bool(r["label"])},
            features=features,
            desc="labels to bool",
            new_fingerprint=derived_fingerprint(dataset._fingerprint, "bool-labels"),
        )
    return dataset


def _check_some_known_column(columns: list[str], schema: KindSchema, name: str) -> None:
    """One line for data that shares no column with the kind (validation would list every column as missing)."""
    if set(columns) & set(schema.known_columns):
        return
    needs = list(schema.required) + [" or ".join(group) for group in schema.one_of]
    raise PreferenceDataError(
        f"{name}: none of its columns {columns} is a column of {schema.kind} data, which needs "
        f"{', '.join(needs)} (optional: {', '.join(schema.optional)}); rename yours in the file, or pass "
        f"columns={{'<your name>': {schema.required[-1]!r}, ...}} to load_preferences"
    )


def open_preferences(
    source: str | os.PathLike[str] | datasets.Dataset | datasets.DatasetDict | OpenedData,
    *,
    split: str | None = None,
    config_name: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    kind: str | None = None,
) -> OpenedData:
    """Any supported source → one split, not yet validated (`load_preferences` validates it).

    Local files are checked line by line first and read without any network request; a folder's files
    are split by name (`prefopt.data.folders.folder_splits`) and the files used are logged. `split` may
    slice ("train[:100]", "train[10%:]") and join ("train+test"). `kind` only shapes the example row that
    messages about a malformed file show.

    Raises:
        PreferenceDataError: a malformed file or an ambiguous folder (one line naming the file and line);
            MissingSplitError for a split the source lacks; DataNotFoundError (also a FileNotFoundError) for a
            missing local path.
    """
    import datasets  # heavy: loaded on first use

    if isinstance(source, OpenedData):
        return source
    if revision is not None and not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"revision={revision!r} pins a Hub dataset; a {type(source).__name__} has none")
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return _open_in_memory(source, split)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"load_preferences: source must be a path, a Hub name or a datasets.Dataset, got {type(source).__name__}"
        )
    cache = None if cache_dir is None else str(cache_dir)
    return _open_path(source, split, config_name, cache, revision, kind)


def _open_in_memory(source: datasets.Dataset | datasets.DatasetDict, split: str | None) -> OpenedData:
    """A Dataset as it is (no split to pick), or the split of a DatasetDict."""
    import datasets  # heavy: loaded on first use

    if isinstance(source, datasets.Dataset):
        if split is not None:
            raise ValueError(f"split={split!r} given but source is already a single Dataset; leave split out")
        return OpenedData(source, type(source).__name__)
    return _pick_split(dict(source), split, "the DatasetDict")


def _open_path(
    source: str | os.PathLike[str],
    split: str | None,
    config_name: str | None,
    cache: str | None,
    revision: str | None,
    kind: str | None,
) -> OpenedData:
    """A local file or folder, or else a Hub dataset when `source` does not look like a path."""
    path = Path(source).expanduser()
    if revision is not None and path.exists():
        raise PreferenceDataError(
            f"{path}: revision={revision!r} pins a version of a Hub dataset; a local file or "
            "folder has none (leave the revision out, or give the Hub name)"
        )
    if path.is_file():
        return _open_file(path, split, cache, kind)
    if path.is_dir():
        return _open_dir(path, split, cache, kind)
    if path.suffix.lower() in FILE_BUILDERS or str(source).startswith((".", "/", "~")) or str(source).count("/") > 1:
        raise DataNotFoundError(f"{source}: no such file or folder (relative to {Path.cwd()}); check the path")
    return _from_hub(str(source), split, config_name, cache, revision)


def _open_dir(path: Path, split: str | None, cache: str | None, kind: str | None) -> OpenedData:
    """A `save_to_disk` folder (a Dataset or a DatasetDict), or a folder of data files."""
    import datasets  # heavy: loaded on first use

    if any((path / f).exists() for f in ("state.json", "dataset_dict.json")):
        saved = datasets.load_from_disk(str(path))
        if isinstance(saved, datasets.DatasetDict):
            return _pick_split(dict(saved), split, str(path))
        return _pick_split({"train": saved}, split, str(path))
    return _open_folder(path, split, cache, kind)


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


def _offline() -> bool:
    import datasets  # heavy: loaded on first use
    import huggingface_hub.constants  # heavy: loaded on first use

    return bool(datasets.config.HF_HUB_OFFLINE or huggingface_hub.constants.HF_HUB_OFFLINE)


def _from_hub(
    name: str, split: str | None, config_name: str | None, cache_dir: str | None, revision: str | None = None
) -> OpenedData:
    """The real `datasets.load_dataset` path, with a clear message when offline and not cached."""
    import datasets  # heavy: loaded on first use

    label = name if revision is None else f"{name}@{revision}"
    try:
        loaded = datasets.load_dataset(name, config_name, split=split, cache_dir=cache_dir, revision=revision)
    except (ConnectionError, FileNotFoundError, OSError) as err:
        if _offline():
            raise PreferenceDataError(
                f"dataset {label!r} is not in the local cache and offline mode is on (HF_DATASETS_OFFLINE or "
                f"HF_HUB_OFFLINE): load it once with network access to cache it, or pass a local file or "
                f"folder. ({type(err).__name__}: {err})"
            ) from err
        raise PreferenceDataError(
            f"could not load {label!r} with datasets.load_dataset: {err}. If it is a local path, check that it exists."
        ) from err
    except ValueError as err:
        if "split" in str(err).lower():
            raise MissingSplitError(f"{label}: {err}") from err
        raise
    if isinstance(loaded, datasets.DatasetDict):
        return _pick_split(dict(loaded), None, label)
    return OpenedData(loaded, label)


def _rename(dataset: datasets.Dataset, columns: Mapping[str, str]) -> datasets.Dataset:
    """Apply `{source: canonical}` renames; unknown source names are errors with a suggestion."""
    missing = [src for src in columns if src not in dataset.column_names]
    if missing:
        hints = {m: nearest_name(m, dataset.column_names) for m in missing}
        detail = "; ".join(f"{m!r}" + (f" (did you mean {h!r}?)" if h else "") for m, h in hints.items())
        raise ValueError(
            f"columns= renames {detail}, which the dataset does not have; its columns are {dataset.column_names}"
        )
    clashes = [dst for src, dst in columns.items() if dst in dataset.column_names and dst not in columns]
    if clashes:
        raise ValueError(f"columns= renames onto {clashes}, which already exist; drop or rename those first")
    renames = {src: dst for src, dst in columns.items() if src != dst}
    return dataset.rename_columns(renames) if renames else dataset
