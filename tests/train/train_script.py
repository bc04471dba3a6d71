"""Run `prefopt.train.train` in a subprocess for the multi-process and kill -9 tests.

    python tests/train/train_script.py SETTINGS_JSON [--kill-at STEP]

SETTINGS_JSON holds TrainConfig fields, or a list of such objects trained one after the other (one
process launch for several runs). With --kill-at, the process sends itself SIGKILL right after
optimiser step STEP (mid-run, no cleanup), the way `kill -9` from outside would end it.
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
    from prefopt.train import train

    parser = argparse.ArgumentParser()
    parser.add_argument("settings", type=Path)
    parser.add_argument("--kill-at", type=int, default=None)
    args = parser.parse_args()
    loaded = json.loads(args.settings.read_text())

    def on_step(step: int, record: dict) -> None:
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    for settings in loaded if isinstance(loaded, list) else [loaded]:
        result = train(on_step=on_step, **settings)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    from tests.launch import exit_launched  # after the repository root is on sys.path

    code = main()
    exit_launched(code)
