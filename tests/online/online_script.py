"""Run `prefopt.online.train_online` in a subprocess for the multi-process tests.

    torchrun --nproc_per_node P tests/online/online_script.py SETTINGS_JSON

SETTINGS_JSON holds a list of OnlineConfig field mappings, trained one after the other (one launch for several
runs); rank 0 prints each run's result as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    import torch

    torch.set_num_threads(1)
    from prefopt.online import train_online

    for settings in json.loads(Path(sys.argv[1]).read_text()):
        result = train_online(**settings)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
