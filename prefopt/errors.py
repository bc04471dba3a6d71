"""The errors prefopt raises for a user's mistake, in one leaf module every layer may import.

Each message names what is wrong and the fix. The classes are re-exported where they are raised
(`prefopt.registry.UnknownLossError`, `prefopt.data.validate.PreferenceDataError`, ...), so either path
works. `USER_ERRORS` is the set a command reports as one line and exit code 2 instead of a traceback.

A leaf: it imports nothing of prefopt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "BatchError",
    "DataNotFoundError",
    "DistributedSetupError",
    "GenerationServerError",
    "LossInputError",
    "MissingSplitError",
    "OnlineDivergedError",
    "PreferenceDataError",
    "PreferenceDataWarning",
    "Problem",
    "RewardError",
    "RunFolderError",
    "SettingsError",
    "StaleCacheError",
    "TrainDataError",
    "TrainingDivergedError",
    "USER_ERRORS",
    "UnknownLossError",
    "UnknownReproductionError",
]


class SettingsError(ValueError):
    """A setting a run cannot use: the message names the field (or flag, or file) and how to fix it."""


class LossInputError(ValueError):
    """Bad input to a loss: names the argument, the rows and the fix."""


class UnknownLossError(ValueError):
    """An unknown loss or hyper-parameter name; the message lists the valid ones."""


class BatchError(ValueError):
    """A batch the engine cannot read: a mapping with a missing, unknown or mismatched key (`TokenBatch.from_dict`,
    `prefopt.data.from_trl_batch`). The message names the key and the fix."""


@dataclass(frozen=True)
class Problem:
    """One problem: `row` is the dataset index (None for a column problem), `code` its category."""

    row: int | None
    field: str
    code: str
    message: str
    row_id: Any = None

    def __str__(self) -> str:
        if self.row is None:
            return f"column '{self.field}': {self.message}"
        ident = f" (id={self.row_id!r})" if self.row_id is not None else ""
        return f"row {self.row}{ident}, field '{self.field}': {self.message}"


class PreferenceDataError(ValueError):
    """Bad preference data. `problems` holds every problem found (the message shows the first few);
    `one_line` is the message as a command line prints it (None: the message is one line already)."""

    def __init__(self, message: str, problems: list[Problem] | None = None, *, one_line: str | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []
        self.one_line = one_line


class MissingSplitError(PreferenceDataError):
    """The source has no split of that name (a single file has only "train"); the message lists those it has."""


class DataNotFoundError(PreferenceDataError, FileNotFoundError):
    """A local data path that does not exist (a `PreferenceDataError` and a `FileNotFoundError`)."""


class PreferenceDataWarning(UserWarning):
    """Data that is usable but suspicious or altered (identical pairs, dropped rows, unused columns)."""


class TrainDataError(ValueError):
    """The training data does not fit the loss (wrong kind, too few rows)."""


class StaleCacheError(RuntimeError):
    """The cache on disk was built for another dataset, tokenisation, model or format version."""


class RunFolderError(ValueError):
    """The run folder does not fit the run: an earlier run's checkpoints would be overwritten, a resumed
    run's settings differ from the saved ones, another run uses the folder, a file of it is a link or not
    one prefopt wrote. The message says which and the ways on."""


class DistributedSetupError(RuntimeError):
    """The launcher and Accelerate disagree on the number of processes, or a loss cannot be split."""


class GenerationServerError(RuntimeError):
    """The generation server (`prefopt.online.vllm_samplers`, a `trl vllm-serve` server) cannot be reached or
    refused a request; the message names the server, the request and the fix."""


class TrainingDivergedError(RuntimeError):
    """A step produced a non-finite loss or gradient; the message names the step, examples and checkpoint."""


class OnlineDivergedError(RuntimeError):
    """A step produced a non-finite loss or gradient; the message names the step and the fix."""


class RewardError(ValueError):
    """A reward function that cannot score: a reference (`module:function`) that does not import, or a
    function that returned the wrong number of values, a non-finite value, or raised. The message names the
    function (`module:qualname`), the row and the fix; an exception raised inside is chained."""


class UnknownReproductionError(ValueError):
    """An unknown reproduction name; the message lists the valid ones."""


# What a command reports as one line and exit code 2: bad settings, bad data, a run folder that does not fit
# the run, a refused launch, a diverged run (each message names the fix).
USER_ERRORS: tuple[type[Exception], ...] = (
    SettingsError,
    RunFolderError,
    PreferenceDataError,
    TrainDataError,
    LossInputError,
    UnknownLossError,
    DistributedSetupError,
    TrainingDivergedError,
    OnlineDivergedError,
    RewardError,
    GenerationServerError,
)
