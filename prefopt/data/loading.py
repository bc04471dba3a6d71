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

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from prefopt.data.files import FILE_FORMATS
from prefopt.data.formats import derived_fingerprint, extract_prompts, order_ranked
from prefopt.data.opening import (
    OpenedData,
    SplitFiles,
    _open_file,
    _open_folder,
    _pick_split,
    describe_folder_reads,
    log_folder_reads,
    record_folder_reads,
)
from prefopt.data.schema import KindSchema, nearest_name, schema_for
from prefopt.data.validate import (
    DEFAULT_MAX_REPORTED,
    DataNotFoundError,
    MissingSplitError,
    PreferenceDataError,
    PreferenceDataWarning,
    validate_preferences,
)
from prefopt.progress import quiet_by_default

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


@quiet_by_default
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
    progress: bool | None = None,
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
        progress: show `datasets`' progress bars; None: quiet unless switched on (`prefopt.set_progress`,
            PREFOPT_PROGRESS=1; see `prefopt.progress`).
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


@quiet_by_default
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
