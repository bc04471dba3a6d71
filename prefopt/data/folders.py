"""The data files of a local folder grouped by split, from their names:

    folder_splits(Path("data/"))         # {"train": [train.jsonl], "test": [test.jsonl]} or an error

A folder whose files cannot be told apart (mixed formats, files that name no split beside split files,
several unrelated files that name none) is one `PreferenceDataError` line saying what to do.
"""

from __future__ import annotations

import re
from pathlib import Path

from prefopt.data.files import FILE_FORMATS
from prefopt.data.validate import PreferenceDataError

__all__ = ["SPLIT_NAMES", "folder_splits"]

# Split of a file in a folder: the first of these words among its name's parts (or its sub-folder's).
SPLIT_NAMES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "test": "test",
    "testing": "test",
    "eval": "eval",
    "evaluation": "eval",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
}
_METADATA = {"dataset_info.json", "dataset_infos.json", "state.json", "dataset_dict.json"}
_SHARD = re.compile(r"^(?P<stem>.+?)[-_]\d+(?:[-_]of[-_]\d+)?$")


def _split_of(relative: Path) -> str | None:
    """The split a file's name (or one of its folders) names, e.g. train-00000-of-00002.parquet → train."""
    for part in (relative.stem, *reversed(relative.parts[:-1])):
        for word in re.split(r"[^A-Za-z]+", part.lower()):
            if word in SPLIT_NAMES:
                return SPLIT_NAMES[word]
    return None


def folder_splits(folder: Path) -> dict[str, list[Path]]:
    """The data files of a folder grouped by split; PreferenceDataError when the folder is ambiguous.

    Files are the supported ones anywhere below `folder` (hidden files and folders and datasets' metadata
    files left out). One format only. Each file's split is the first split word in its name or folders
    (train/training, test/testing, eval/evaluation, validation/valid/val/dev); files that name none are
    the train split when they are a single file or the shards of one (`name-00000-of-00003.jsonl`).
    """
    found = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in FILE_FORMATS
        and p.name not in _METADATA
        and not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
    )
    rel = [str(p.relative_to(folder)) for p in found]
    if not found:
        others = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))[:10]
        raise PreferenceDataError(
            f"{folder}: no data files (.jsonl, .json, .csv or .parquet) in the folder (it "
            f"holds {others or 'nothing'}); pass a data file, or a folder of them"
        )
    formats = sorted({FILE_FORMATS[p.suffix.lower()] for p in found})
    if len(formats) > 1:
        raise PreferenceDataError(
            f"{folder}: mixes file formats ({', '.join(rel)}); keep one format in the "
            f"folder, or pass one file with --data {folder / rel[0]}"
        )
    splits: dict[str, list[Path]] = {}
    unnamed = [p for p in found if _split_of(p.relative_to(folder)) is None]
    if unnamed and len(unnamed) < len(found):
        names = ", ".join(str(p.relative_to(folder)) for p in unnamed)
        raise PreferenceDataError(
            f"{folder}: {names} name{'s' if len(unnamed) == 1 else ''} no split beside "
            f"split files ({', '.join(rel)}); rename or move {'it' if len(unnamed) == 1 else 'them'}"
            " (train/test/eval/validation in the name), or pass one file"
        )
    if unnamed:
        stems = {(m.group("stem") if (m := _SHARD.match(p.stem)) else p.stem) for p in unnamed}
        if len(unnamed) > 1 and len(stems) > 1:
            raise PreferenceDataError(
                f"{folder}: several data files and none names a split ({', '.join(rel)}); "
                f"pass one file (--data {folder / rel[0]}), or name them train.*, test.* "
                "(eval, validation) to make them splits"
            )
        splits["train"] = unnamed
    for p in found:
        if p not in unnamed:
            splits.setdefault(_split_of(p.relative_to(folder)) or "train", []).append(p)
    return splits
