"""The report of a comparison folder rendered again from what it holds: `prefopt report RUN_DIR`.

    result = report_folder("runs/compare")   # table.md/csv, results.json, plots, samples.md, report.html

It reads the folder's compare_config.json and the result.json of each of its runs that has finished with
those settings (`prefopt.compare.reuse.finished_runs`), so it works on a finished comparison, on one that
is still running or was stopped (the report then says which runs it lacks), and after the plots or the
page changed in a newer prefopt. It trains and samples nothing, and takes no lock: the comparison itself
rewrites the same files, atomically, when it ends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefopt.compare.config import CompareConfig
from prefopt.compare.online import saved_best_of_n
from prefopt.compare.report import CompareResult, write_report
from prefopt.compare.reuse import finished_runs
from prefopt.errors import RunFolderError

__all__ = ["folder_config", "report_folder"]


def folder_config(run_dir: str | Path) -> CompareConfig:
    """The `CompareConfig` a comparison folder was run with (its output_dir set to where the folder is now).

    Raises:
        RunFolderError: no such folder, or no compare_config.json in it.
    """
    folder = Path(run_dir)
    path = folder / "compare_config.json"
    if not folder.is_dir():
        raise RunFolderError(f"{folder}: no such folder; give the --out folder of a `prefopt compare` run")
    if not path.is_file():
        raise RunFolderError(
            f"{folder} holds no compare_config.json, so it is not the --out folder of a `prefopt compare` run "
            "(it is written when the comparison starts)"
        )
    try:
        values: Any = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise RunFolderError(f"{path} is not valid JSON ({err}); run the comparison again to rewrite it") from None
    if not isinstance(values, dict):
        raise RunFolderError(f"{path} must hold one JSON object of CompareConfig settings")
    return CompareConfig.from_dict({**values, "output_dir": str(folder)}, source=str(path))


def report_folder(run_dir: str | Path) -> CompareResult:
    """Write the report of `run_dir` again from its finished runs (see the module docstring).

    Raises:
        RunFolderError: not a comparison folder, or no run has finished in it yet.
    """
    config = folder_config(run_dir)
    records, missing, stale = finished_runs(config)
    total = len(records) + len(missing) + len(stale)
    if not records:
        raise RunFolderError(
            f"{run_dir}: none of its {total} run(s) has finished with the settings of its compare_config.json "
            "yet (no <run>/result.json); wait for the first run, or run `prefopt compare` again"
        )
    status = []
    if missing:
        status.append(f"Partial: {len(records)} of {total} runs have finished; not yet: {', '.join(missing)}.")
    if stale:
        status.append(f"Left out, made with other settings than compare_config.json: {', '.join(stale)}.")
    best_of_n = None
    if "best_of_n" in config.losses:
        best_of_n = saved_best_of_n(config, Path(config.output_dir) / "best_of_n.json")
    for line in status:
        print(line)
    return write_report(records, config, best_of_n=best_of_n, status=tuple(status))
