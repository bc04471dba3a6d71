"""Run `prefopt.online.train_online` in a subprocess for the multi-process tests.

    torchrun --nproc_per_node P tests/online/online_script.py SETTINGS_JSON [--kill-at STEP]

SETTINGS_JSON holds a list of OnlineConfig field mappings, trained one after the other (one launch for several
runs); rank 0 prints each run's result as one JSON line. With --kill-at, every process sends itself SIGKILL right
after rollout step STEP of the list's last run (mid-run, no cleanup), the way `kill -9` of the job would end it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    import torch

    torch.set_num_threads(1)
    from prefopt.online import train_online

    parser = argparse.ArgumentParser()
    parser.add_argument("settings", type=Path)
    parser.add_argument("--kill-at", type=int, default=None)
    args = parser.parse_args()

    def on_step(step: int, record: dict) -> None:
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    runs = json.loads(args.settings.read_text())
    for i, settings in enumerate(runs):
        result = train_online(on_step=on_step if i == len(runs) - 1 else None, **settings)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    from tests.launch import exit_launched  # after the repository root is on sys.path

    code = main()
    exit_launched(code)
