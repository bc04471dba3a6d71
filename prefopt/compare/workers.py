"""Runs of a comparison in worker processes (`CompareConfig.jobs`): a pool of processes, each of which starts
once (`start`: its thread count, the shared task) and then trains and evaluates the runs it is handed (`work`),
one at a time. A run computes the same thing in a worker as alone: its data, model, seeds and evaluation are
the comparison's, and each worker sets its own torch thread count.

    context = worker_context()          # "fork" (workers inherit the built task), or "spawn" once CUDA is in use
    records = run_in_workers(plans, jobs=2, context=context, start=worker_start, start_args=(config, task),
                             work=worker_run, progress=True, describe=lambda plan, record: plan.label)

Forked workers share the parent's task without rebuilding or pickling it, and need no `if __name__ ==
"__main__":` guard in the caller's script. A process that has initialised CUDA cannot be forked safely, so
there the workers are spawned and build the task again (a script calling `compare(jobs=...)` then needs the
guard, as every spawning library does).

Results come back in the order of `items`; the first run that fails stops the rest (runs still queued are
cancelled; finished runs are kept on disk, so re-running resumes from them).
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any

import torch
from tqdm.auto import tqdm

__all__ = ["run_in_workers", "worker_context"]


def worker_context() -> str:
    """ "fork" where it is safe (POSIX, CUDA not initialised in this process), else "spawn"."""
    fork = "fork" in multiprocessing.get_all_start_methods() and not torch.cuda.is_initialized()
    return "fork" if fork else "spawn"


def run_in_workers(
    items: Sequence[Any],
    *,
    jobs: int,
    context: str,
    start: Callable[..., None],
    start_args: tuple[Any, ...],
    work: Callable[[Any], Any],
    progress: bool,
    describe: Callable[[Any, Any], str],
) -> list[Any]:
    """`[work(item) for item in items]`, computed by `jobs` processes started by `context` ("fork" or "spawn") that
    each ran `start(*start_args)` first (`start` and `work`: module-level functions). With `progress`, a bar over
    the items and one line per finished item (`describe(item, result)`)."""
    results: list[Any] = [None] * len(items)
    bar = tqdm(total=len(items), desc=f"runs ({jobs} at once)", unit="run", disable=not progress)
    with ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context(context), initializer=start, initargs=start_args
    ) as pool:
        futures = {pool.submit(work, item): i for i, item in enumerate(items)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    index = futures[future]
                    results[index] = future.result()  # a run's error stops the comparison here
                    bar.update(1)
                    if progress:
                        bar.write(describe(items[index], results[index]))
                        sys.stdout.flush()  # a line per run, also when stdout is a file
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            bar.close()
    return results
