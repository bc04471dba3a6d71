"""How the multi-process tests launch prefopt on CPU: torchrun's command line and the environment of a gloo run
(one OpenMP thread per process, nothing from the hub)."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def launch_env() -> dict[str, str]:
    """The environment of a launched CPU run: Accelerate on CPU (gloo), one thread per process, offline."""
    return {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def torchrun(processes: int) -> list[str]:
    """`torchrun --standalone --nproc_per_node P` with this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]


def end_process_group() -> None:
    """A launched script's last step: end the process group its run started (`accelerate.PartialState`), so that gloo's
    threads do not outlive the interpreter's teardown (which can abort a finished process: "terminate called
    without an active exception")."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_launched(code: int) -> NoReturn:
    """A launched script's end: end the process group (`end_process_group`), flush, and leave without the
    interpreter's teardown. Even with the group ended, a finished rank aborted in teardown in 2 of about 30 CI runs
    ("terminate called without an active exception", SIGABRT): a thread of torch or gloo still joinable when its
    C++ destructor ran. Everything the tests read is written (atomically) and flushed by then."""
    end_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
