"""When a comparison may reuse what an output folder already holds: each run's exact settings, recorded and
compared.

    settings = run_fingerprint(plan, config)   # everything the run's numbers depend on, resolved (JSON-able)
    check_reuse(config)                        # before anything is written: runs made with other settings
                                               # are refused in one line, or removed with config.overwrite
    finished_runs(config)                      # the result.json records that are current, and what is not

Every run writes its fingerprint into `<run>/config.json` before it trains and into `<run>/result.json`
(`"settings"`). A re-run loads a finished run, or resumes an interrupted one from its checkpoints, only
when the recorded fingerprint equals the one it would run with now. The fingerprint holds the task (the
synthetic task's seed and sizes, or the data, model, revision and reward), the evaluation settings, the
loss with every hyper-parameter (paper defaults filled in), the seed, the trainer's settings with their
defaults and the optimiser settings they resolve to (so a changed default of the code shows up too), and
the prefopt version. Settings that only say where or how often a run writes (output folder, progress,
checkpoint and log intervals, the reference cache's folder, threads) are left out.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from prefopt import __version__
from prefopt.compare.config import CompareConfig, RunPlan, run_settings
from prefopt.data.synthetic import PreferenceConfig, SFTConfig
from prefopt.errors import RunFolderError
from prefopt.online.config import OnlineConfig
from prefopt.registry import loss_spec
from prefopt.train.checkpoint import field_defaults
from prefopt.train.config import TrainConfig

__all__ = ["FORMAT", "check_reuse", "differences", "finished_runs", "run_fingerprint"]

FORMAT = 1
# CompareConfig fields that do not change what one run computes, or that the run's own settings resolve.
_NOT_RUN_SETTINGS = (
    "losses",
    "hparams",
    "seeds",
    "output_dir",
    "progress",
    "num_threads",
    "bon_n",
    "bon_samples",
    "overwrite",
    "jobs",
    "train",
    "online",
)
# Trainer fields that say where or how often a run writes, not what it computes.
_BOOKKEEPING = (
    "output_dir",
    "resume",
    "progress",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "report_to",
    "ref_cache_dir",
    "num_threads",
)


def _plain(value: Any) -> Any:
    """`value` as JSON reads it back (tuples → lists, keys → strings), so a fresh and a saved one compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def run_fingerprint(plan: RunPlan, config: CompareConfig) -> dict[str, Any]:
    """The exact settings one run's numbers depend on (see the module docstring), as plain JSON values."""
    kind, settings = run_settings(plan, config, Path(config.output_dir) / plan.run_id)
    trainer: Any
    if kind == "rollout":
        if not config.synthetic:
            settings["model"] = config.model
        trainer = OnlineConfig(**settings)
        section, resolved = "online", {"learning_rate": trainer.learning_rate}
    else:
        trainer = TrainConfig(**settings)
        section, resolved = "train", {"optimizer": dataclasses.asdict(trainer.optimizer_settings())}
    task = {k: v for k, v in config.to_dict().items() if k not in _NOT_RUN_SETTINGS}
    if config.synthetic:  # the task's sizes as the code's defaults resolve them
        task["sft_config"] = dataclasses.asdict(config.sft_config or SFTConfig())
        task["preference_config"] = dataclasses.asdict(config.preference_config or PreferenceConfig())
    trainer_settings = {k: v for k, v in trainer.to_dict().items() if k not in _BOOKKEEPING}
    return _plain(
        {
            "format": FORMAT,
            "prefopt": __version__,
            "task": task,
            "loss": plan.loss,
            "hparams": {**loss_spec(plan.loss).defaults(), **dict(plan.hparams)},
            "seed": plan.seed,
            section: {**trainer_settings, **resolved},
        }
    )


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def setting_defaults(loss: str) -> dict[str, Any]:
    """The default of every setting a fingerprint of `loss`'s run can hold, flat and dotted as `differences`
    reads them: a setting a saved run predates (a field or hyper-parameter added since) counts as its default."""
    return _flat(
        _plain(
            {
                "task": field_defaults(CompareConfig),
                "hparams": loss_spec(loss).defaults(),
                "train": field_defaults(TrainConfig),
                "online": field_defaults(OnlineConfig),
            }
        )
    )


def differences(saved: Any, now: dict[str, Any], defaults: dict[str, Any] | None = None) -> list[tuple[str, Any, Any]]:
    """(setting, saved value, current value) of every setting that differs, dotted (`train.lr`); the task's
    settings are named without `task.`. Missing settings compare as None, except that a setting missing from
    `saved` whose current value is its default in `defaults` (`setting_defaults`) is no difference: the saved
    run predates it, and the default computes what that run computed."""
    old, new, defaults = _flat(saved if isinstance(saved, dict) else {}), _flat(now), defaults or {}
    keys = list(dict.fromkeys([*new, *old]))
    found = [
        (k.removeprefix("task."), old.get(k), new.get(k))
        for k in keys
        if old.get(k) != new.get(k) and not (k not in old and k in defaults and defaults[k] == new.get(k))
    ]
    return found


def same_settings(saved: Any, plan: RunPlan, config: CompareConfig) -> bool:
    """Whether a run folder's recorded settings are `plan`'s under `config` (fields added since at their defaults)."""
    return isinstance(saved, dict) and not differences(
        saved, run_fingerprint(plan, config), setting_defaults(plan.loss)
    )


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 24 else text[:21] + "..."


def _recorded(run_dir: Path) -> tuple[str, Any]:
    """("done" | "started" | "new" | "unknown", the settings the folder records)."""
    for name, state in (("result.json", "done"), ("config.json", "started")):
        path = run_dir / name
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return "unknown", None
            return state, record.get("settings") if isinstance(record, dict) else None
    if run_dir.is_dir() and any(run_dir.iterdir()):
        return "unknown", None
    return "new", None


def _stale(config: CompareConfig) -> list[tuple[RunPlan, list[tuple[str, Any, Any]]]]:
    """The runs whose folder holds results or checkpoints of other settings, with the differences (empty:
    the folder records no settings)."""
    stale = []
    for plan in config.runs():
        state, saved = _recorded(Path(config.output_dir) / plan.run_id)
        if state == "new":
            continue
        now = run_fingerprint(plan, config)
        if saved is None or not same_settings(saved, plan, config):
            stale.append((plan, differences(saved, now, setting_defaults(plan.loss)) if saved is not None else []))
    return stale


def _summary(stale: list[tuple[RunPlan, list[tuple[str, Any, Any]]]], limit: int = 4) -> str:
    """What differs, once per setting (a resolved optimiser value only where its setting is not named)."""
    seen: dict[str, tuple[Any, Any]] = {}
    unrecorded = False
    for _, diffs in stale:
        unrecorded = unrecorded or not diffs
        for key, old, new in diffs:
            seen.setdefault(key, (old, new))
    named = {k.split(".")[-1] for k in seen if ".optimizer." not in f".{k}"}
    keys = [k for k in seen if ".optimizer." not in f".{k}" or k.split(".")[-1] not in named]
    parts = [f"{k} {_short(seen[k][0])} → {_short(seen[k][1])}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"{len(keys) - limit} more")
    if unrecorded:
        parts.append("settings not recorded (an earlier prefopt)")
    return "; ".join(parts)


def check_reuse(config: CompareConfig) -> list[str]:
    """Refuse, or with `config.overwrite` remove, the run folders of `config` that hold another run's results or
    checkpoints; call it before anything of the comparison is written. Returns the run ids removed.

    Raises:
        RunFolderError: one line naming the runs, what differs, and the two ways on.
    """
    stale = _stale(config)
    if not stale:
        return []
    out = Path(config.output_dir)
    ids = [plan.run_id for plan, _ in stale]
    named = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
    if not config.overwrite:
        raise RunFolderError(
            f"{out} holds {len(ids)} run(s) made with other settings ({named}: {_summary(stale)}); pass another "
            "output_dir (--out) to keep them, or overwrite=True (--overwrite) to retrain them there"
        )
    for run_id in ids:
        folder = out / run_id
        if folder.is_symlink():
            raise RunFolderError(f"{folder} is a symbolic link; remove it yourself or pass another --out")
        shutil.rmtree(folder)
    if config.progress:
        print(f"retraining {len(ids)} run(s) made with other settings ({named}: {_summary(stale)})", flush=True)
    return ids


def finished_runs(config: CompareConfig) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """(the result.json records of `config`'s runs made with its settings, in run order; the run ids not
    finished; the run ids whose result.json holds other settings)."""
    records, missing, stale = [], [], []
    for plan in config.runs():
        path = Path(config.output_dir) / plan.run_id / "result.json"
        if not path.is_file():
            missing.append(plan.run_id)
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # being replaced, or damaged: not a finished run to show
            missing.append(plan.run_id)
            continue
        if not isinstance(record, dict) or not same_settings(record.get("settings"), plan, config):
            stale.append(plan.run_id)
            continue
        records.append(record)
    return records, missing, stale
