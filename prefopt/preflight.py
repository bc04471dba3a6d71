"""What a run needs from this machine, checked before anything is built or written: an output folder it
can create, model folders that load (or hub names it can reach), an engine backend this machine runs.

Every entry point (`train`, `train_online`, `train_reward_model`, `compare`) calls these right after its
config is validated, so a mistake costs no model load, no synthetic task and no output folder. Each
failure is a `SettingsError` (a `ValueError`) whose one-line message names the setting and the fix;
`load_pretrained` gives the same kind of message when a load fails anyway (e.g. a hub name online).
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from prefopt.kernels.dispatch import triton_available
from prefopt.settings import SettingsError

__all__ = [
    "check_output_dir",
    "check_model_source",
    "check_tokenizer_source",
    "check_engine_backend",
    "check_device",
    "load_pretrained",
    "expand_user",
    "HUB_NAME",
]

# A Hugging Face repo id: `name` or `namespace/name` (letters, digits, - _ .). A path with more parts, or
# starting with / . ~, can only be a folder.
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_MODEL_HINT = (
    "a saved model's folder (config.json and weights, as `save_pretrained` writes it) or a hub name (name/repo)"
)


def expand_user(value: Any) -> Any:
    """A path setting with a leading `~` expanded (YAML and `--flag=~/x` leave it to us); anything else as is."""
    return os.path.expanduser(value) if isinstance(value, str) and value.startswith("~") else value


def check_output_dir(path: str | os.PathLike[str], what: str) -> None:
    """`path` is a folder this process can write, or one it can create (its nearest existing parent is a
    writable folder). Creates nothing."""
    folder = Path(path).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise SettingsError(
                f"{what}={str(path)!r} is a file, not a folder; give a folder path (it is created if missing)"
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            raise SettingsError(f"{what}={str(path)!r} is not writable by this user; give a folder you can write")
        return
    parent = folder.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise SettingsError(f"{what}={str(path)!r} cannot be created: {parent} is a file; give another folder path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SettingsError(
            f"{what}={str(path)!r} cannot be created: {parent} is not writable by this user; give "
            "a folder path you can write"
        )


def check_model_source(name: str, what: str, *, revision: str | None = None, tokenizer: bool = True) -> None:
    """`name` is a complete model folder (config.json, readable weights and, with `tokenizer`, a tokenizer)
    or a hub name (with HF_HUB_OFFLINE set: one in the local cache, at `revision`)."""
    path = Path(name).expanduser()
    if path.exists():
        _check_model_folder(path, name, what, tokenizer)
    else:
        _check_hub_name(name, what, revision, ("config.json", "adapter_config.json"))


def check_tokenizer_source(name: str, what: str, *, revision: str | None = None) -> None:
    """`name` is a folder holding a tokenizer, or a hub name (offline: cached)."""
    path = Path(name).expanduser()
    if not path.exists():
        _check_hub_name(name, what, revision, ("tokenizer_config.json", "tokenizer.json"), thing="tokenizer")
    elif not path.is_dir() or not any((path / f).exists() for f in TOKENIZER_FILES):
        raise SettingsError(
            f"{what}={name!r} holds no tokenizer ({' or '.join(TOKENIZER_FILES[:2])}); give the "
            "folder that `tokenizer.save_pretrained` wrote"
        )


def _check_model_folder(path: Path, name: str, what: str, tokenizer: bool) -> None:
    if not path.is_dir():
        raise SettingsError(f"{what}={name!r} is a file; give {_MODEL_HINT}")
    _check_model_config(path, name, what)
    _check_weights(path, name, what)
    if tokenizer and not any((path / f).exists() for f in TOKENIZER_FILES):
        raise SettingsError(
            f"{what}={name!r} holds no tokenizer ({' or '.join(TOKENIZER_FILES[:2])}); give the "
            "tokenizer's folder with --tokenizer (the `tokenizer` setting)"
        )


def _check_model_config(path: Path, name: str, what: str) -> None:
    """A config.json or adapter_config.json, each present one readable JSON."""
    if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        raise SettingsError(f"{what}={name!r} is not a model folder (no config.json); give {_MODEL_HINT}")
    for meta in ("config.json", "adapter_config.json"):
        if (path / meta).exists():
            try:
                json.loads((path / meta).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise SettingsError(
                    f"{what}={name!r}: {meta} is unreadable ({_first_line(err)}); re-save the model"
                ) from None


def _check_weights(path: Path, name: str, what: str) -> None:
    """Weight files or a shard index, each sound (shard indexes, safetensors headers, zip checkpoints)."""
    weights = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not weights and not any(p.name.endswith(".index.json") for p in path.iterdir()):
        raise SettingsError(
            f"{what}={name!r} holds no weights (model.safetensors or pytorch_model.bin); give {_MODEL_HINT}"
        )
    for index in path.glob("*.index.json"):
        _check_shard_index(index, what)
    for file in weights:
        if file.suffix == ".safetensors":
            _check_safetensors(file, what)
        elif file.suffix in (".bin", ".pt", ".pth"):
            _check_zip_checkpoint(file, what)


def _check_safetensors(file: Path, what: str) -> None:
    """The header parses and the data it describes fits the file (a copy cut short fails here, not mid-load)."""
    size = file.stat().st_size
    try:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size:
                raise ValueError("header longer than the file")
            header = json.loads(handle.read(length))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as err:
        raise SettingsError(
            f"{what}: weights file {file} is unreadable or damaged ({_first_line(err)}); re-save "
            "or re-download the model"
        ) from None
    if 8 + length + end > size:
        raise SettingsError(
            f"{what}: weights file {file} is truncated ({size} of {8 + length + end} bytes); re-save "
            "or re-download the model"
        )


def _check_zip_checkpoint(file: Path, what: str) -> None:
    """A torch.save zip archive whose central directory reads (a cut-short copy loses it)."""
    with file.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04":  # not a zip: a legacy pickle checkpoint, loaded as it is
        return
    try:
        with zipfile.ZipFile(file):
            pass
    except (zipfile.BadZipFile, OSError) as err:
        raise SettingsError(
            f"{what}: weights file {file} is truncated or damaged ({_first_line(err)}); re-save or "
            "re-download the model"
        ) from None


def _check_shard_index(index: Path, what: str) -> None:
    try:
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, AttributeError) as err:
        raise SettingsError(f"{what}: {index} is unreadable ({_first_line(err)}); re-save the model") from None
    missing = sorted(s for s in shards if not (index.parent / s).exists())
    if missing:
        raise SettingsError(
            f"{what}: {index.name} lists weight shards that are missing ({', '.join(missing[:3])}); "
            "copy the whole model folder"
        )


def _check_hub_name(name: str, what: str, revision: str | None, files: tuple[str, ...], thing: str = "model") -> None:
    if not HUB_NAME.fullmatch(name) or "--" in name or ".." in name:
        raise SettingsError(
            f"{what}={name!r} is neither a folder here nor a hub name (name/repo); give "
            + (_MODEL_HINT if thing == "model" else "a tokenizer's folder or a hub name")
        )
    from huggingface_hub import constants, try_to_load_from_cache  # heavy: only for hub names, not on every import

    if not constants.HF_HUB_OFFLINE:
        return  # the hub decides; `load_pretrained` reports its answer in one line
    at = f" at revision {revision!r}" if revision else ""
    if not any(isinstance(try_to_load_from_cache(name, f, revision=revision), str) for f in files):
        raise SettingsError(
            f"{what}={name!r} is not a folder here, and the hub {thing} {name!r}{at} is not in the "
            "local Hugging Face cache while HF_HUB_OFFLINE=1 forbids downloads; give a folder, or "
            f"download it first (`hf download {name}`)"
        )


def check_engine_backend(backend: str, what: str, *, cpu: bool = False) -> None:
    """The kernel backend `backend` can run here: "triton" needs CUDA (and `cpu` off) and the triton package."""
    if backend != "triton":
        return
    if cpu or not torch.cuda.is_available():
        where = "this run is forced onto the CPU (cpu=True)" if cpu else "this machine has no CUDA GPU"
        raise SettingsError(
            f"{what}='triton' runs on a CUDA GPU and {where}; use 'auto' (Triton on CUDA, else "
            "chunked), 'chunked' or 'reference'"
        )
    if not triton_available():
        raise SettingsError(
            f"{what}='triton' needs the triton package (pip install 'prefopt[triton]'); or use 'auto' or 'chunked'"
        )


def check_device(device: str | None, what: str) -> None:
    """`device` (None: the default) names a device torch knows and this machine has."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise SettingsError(
            f"{what}={device!r} is not a device ({_first_line(err)}); use cpu, cuda or cuda:N"
        ) from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count or count == 0:
            have = f"{count} CUDA device(s)" if count else "no CUDA GPU"
            raise SettingsError(f"{what}={device!r}: this machine has {have}; use cpu" + (", cuda" if count else ""))


def load_pretrained(loader: Any, name: str, what: str, *, revision: str | None = None, **kwargs: Any) -> Any:
    """`loader.from_pretrained(name, revision=..., **kwargs)` with a failure to find or read it (a hub name
    that cannot be reached, damaged files) as a one-line `SettingsError` naming `what`."""
    if revision is not None:
        kwargs["revision"] = revision
    try:
        return loader.from_pretrained(name, **kwargs)
    except (OSError, ValueError, SafetensorError) as err:
        at = f" at revision {revision!r}" if revision else ""
        raise SettingsError(f"{what}={name!r}{at} could not be loaded: {_first_line(err)}") from err


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."
