"""Run `prefopt.compare.compare` on the tiny synthetic task in a subprocess, for the multi-process tests.

    torchrun --nproc_per_node P tests/compare/compare_script.py SETTINGS_JSON

SETTINGS_JSON holds a list of CompareConfig field mappings (on top of `tiny_task()`), compared one after the other
(one launch for several comparisons; `"interrupt": RUN_ID` first cuts that run back to its step-1 checkpoint, as if
killed there); every process prints one JSON line per comparison: its rank and the labels of
the `CompareResult` it returned and the wall time of each run (the same when a run is loaded).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def interrupt(run_dir: Path) -> None:
    """Leave `run_dir` as a run killed after its step-1 checkpoint: no result, samples, later checkpoint or final/."""
    for path in (run_dir / "result.json", run_dir / "samples.jsonl", run_dir / "train" / "result.json"):
        path.unlink(missing_ok=True)
    for folder in (run_dir / "train" / "final", *sorted((run_dir / "train" / "checkpoints").glob("step-*"))[1:]):
        shutil.rmtree(folder)


def main() -> int:
    import torch

    torch.set_num_threads(1)
    from prefopt.compare import CompareConfig, compare, tiny_task

    for settings in json.loads(Path(sys.argv[1]).read_text()):
        interrupted = settings.pop("interrupt", None)  # a run folder to cut back to its step-1 checkpoint first
        if interrupted and int(os.environ.get("RANK", "0")) == 0:
            interrupt(Path(settings["output_dir"]) / interrupted)
        result = compare(CompareConfig(**{**tiny_task(), **settings}))
        rows, walls = [r["label"] for r in result.rows], [r["wall_time_s"] for r in result.records]
        line = json.dumps({"rank": int(os.environ.get("RANK", "0")), "rows": rows, "walls": walls}) + "\n"
        # one write of the whole line (under PIPE_BUF bytes: atomic on a pipe), so that the processes' lines never
        # interleave on the launcher's shared stdout (print writes the text and its newline separately)
        sys.stdout.flush()
        os.write(sys.stdout.fileno(), line.encode())
    return 0


if __name__ == "__main__":
    from tests.launch import exit_launched  # after the repository root is on sys.path

    code = main()
    exit_launched(code)
