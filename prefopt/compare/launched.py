"""`prefopt compare` under a distributed launcher (`torchrun`, `accelerate launch`): every run on every process.

    processes = compare_processes(config)        # this process among the launched ones; Processes() otherwise
    with claim_on_main(processes, out): ...      # the main process locks the output folder, all stop if it cannot
    with main_first(processes): ...              # the main process first (it builds and caches), then the others
    value = on_main(processes, write_it)         # the main process computes (and writes); every process gets it

What each process does, one run after the other (`CompareConfig.jobs`' worker processes are not used: a run
already has every launched process; `jobs` > 1 is refused in one line):

    train       every process, each with its share of the data: `prefopt.train.train` and
                `prefopt.online.train_online` shard the batch (offline: DDP-style; online: the step's prompts,
                groups whole) and sum the gradients over processes, so a run equals its one-process run
    evaluate    the main process (held-out pairs and samples of the trained policy), then it writes samples.jsonl
                and result.json atomically; the others wait for it and get the same record
    report      the main process (table, plots, results.json, report.html; best-of-N points); the others return
                the same `CompareResult`

So only the main process writes the comparison's folder (each run's `train/` folder is the trainers' and is also
written by their main process only), and a mistake the main process finds there (a refused reuse, a folder in use)
stops every process with the same one line. Reuse and resume work as in one process: a finished run is loaded
(the main process reads it), an interrupted one resumes from its last checkpoint, with the same number of
processes (the trainers refuse another).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch.distributed as dist

from prefopt.errors import USER_ERRORS
from prefopt.online.distributed import Processes, launched_processes
from prefopt.settings import SettingsError
from prefopt.train.run_folder import claim_run_folder

__all__ = ["claim_on_main", "compare_processes", "main_first", "on_main"]

T = TypeVar("T")


def compare_processes(config: Any) -> Processes:
    """This process among those a launcher started (`Processes()` without one); refuses `jobs` > 1 under a launcher,
    whose processes already train each run together."""
    processes = launched_processes()
    if processes.launched and config.jobs is not None and config.jobs > 1:
        raise SettingsError(
            f"CompareConfig.jobs={config.jobs} (--jobs): under torchrun / accelerate launch every run trains on all "
            f"{processes.size} launched processes, one run at a time; drop --jobs or set it to 1"
        )
    return processes


def on_main(processes: Processes, compute: Callable[[], T]) -> T:
    """`compute()` on the main process, its value (or the user mistake it raised) on every process."""
    if processes.size == 1:
        return compute()
    box: list[Any] = [None, None]
    if processes.main:
        try:
            box[0] = compute()
        except USER_ERRORS as err:  # every process stops with the same one line
            box[1] = err
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise box[1]
    return box[0]


@contextlib.contextmanager
def main_first(processes: Processes) -> Iterator[None]:
    """The block on the main process first, then on the others (e.g. the synthetic task's reference policy: trained
    and cached once, then loaded)."""
    if not processes.main:
        processes.wait()
    yield
    if processes.main:
        processes.wait()


@contextlib.contextmanager
def claim_on_main(processes: Processes, output_dir: str | Path) -> Iterator[None]:
    """`prefopt.train.run_folder.claim_run_folder` by the main process; a refusal stops every process."""
    lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()

    def claim() -> None:
        nonlocal lock
        lock = claim_run_folder(output_dir)

    on_main(processes, claim)
    with lock:
        yield
