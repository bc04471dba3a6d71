"""The valid values of the commands' flags, read from the modules that define them (none listed by hand).

Loss names come from the registry, grouped by the command that trains them: `prefopt train` the offline
losses (paired, unpaired and ranked data, scored by log-probs), `prefopt train-online` the rollout losses,
`prefopt train-rm` the reward-model losses. Engine backends, optimisers, schedules, KL estimators and the
precision settings are the tuples their own modules validate against.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import get_args

from prefopt.data.schema import IDENTICAL_POLICIES
from prefopt.kernels.params import BACKENDS
from prefopt.losses.combine import is_combination
from prefopt.online.importance import IMPORTANCE_SAMPLING
from prefopt.online.reward_config import INITS
from prefopt.online.samplers import GENERATION_BACKENDS
from prefopt.registry import Kind, LossInputError, UnknownLossError, list_losses, loss_spec
from prefopt.rl.kl import KL_ESTIMATORS
from prefopt.train.config import QUANTIZATION, REPORT_TO, SHARE_PROMPT
from prefopt.train.precision import MASTER_WEIGHTS, MIXED_PRECISION, SAVE_DTYPES
from prefopt.train.presets import OPTIMIZERS, PRESETS, SCHEDULES

__all__ = [
    "BACKENDS",
    "GENERATION_BACKENDS",
    "IDENTICAL_POLICIES",
    "IMPORTANCE_SAMPLING",
    "INITS",
    "KL_ESTIMATORS",
    "MASTER_WEIGHTS",
    "MIXED_PRECISION",
    "OPTIMIZERS",
    "QUANTIZATION",
    "REPORT_TO",
    "SAVE_DTYPES",
    "SCHEDULES",
    "SHARE_PROMPT",
    "Choice",
    "LossGroup",
    "OFFLINE",
    "ONLINE",
    "PAIRED",
    "REWARD_MODEL",
    "loss_kinds",
    "presets",
]


def loss_kinds() -> tuple[str, ...]:
    """The registry's data kinds: paired, unpaired, ranked, rollout."""
    return get_args(Kind)


@dataclass(frozen=True)
class LossGroup:
    """The losses one command (or flag) takes: `what` names one of them in a sentence, `command` trains them."""

    what: str
    command: str
    accepts: Callable[[str, str], bool]  # (kind, scores) → member

    def names(self) -> list[str]:
        return [n for n in list_losses() if self.accepts(loss_spec(n).kind, loss_spec(n).scores)]

    def combination(self, name: str) -> bool:
        """Whether `name` spells a valid weighted sum of this group's losses ("dpo:0.8+sft:1", MPO)."""
        if not is_combination(name):
            return False
        try:
            spec = loss_spec(name)
        except (UnknownLossError, LossInputError):
            return False
        return self.accepts(spec.kind, spec.scores)

    def explain(self, where: str, *, suggest: bool = True) -> Callable[[str], str]:
        """The one line for a name outside this group: unknown (with a did-you-mean), a combination's mistake, or
        of another group (with the command that trains it when `suggest`)."""

        def message(name: str) -> str:
            valid = self.names()
            if is_combination(name):
                try:
                    loss_spec(name)
                except (UnknownLossError, LossInputError) as err:
                    return f"{where}: {err}"
            try:
                spec = loss_spec(name)
            except UnknownLossError:
                near = difflib.get_close_matches(name, valid, n=3)
                hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
                return f"{where}: unknown loss {name!r}.{hint} Use one of: {', '.join(valid)}"
            home = next((g for g in (OFFLINE, ONLINE, REWARD_MODEL) if g.accepts(spec.kind, spec.scores)), None)
            where_else = f": train it with `{home.command} --loss {name}`" if suggest and home else ""
            article = "an" if spec.kind[0] in "aeiou" else "a"
            what = home.what if home else f"{article} {spec.kind} loss"
            return f"{where}={name!r} is {what}{where_else}. Use one of: {', '.join(valid)}"

        return message


OFFLINE = LossGroup(
    "an offline loss (preference data, log-probs)",
    "prefopt train",
    lambda kind, scores: kind != "rollout" and scores == "logps",
)
ONLINE = LossGroup("an online (rollout) loss", "prefopt train-online", lambda kind, scores: kind == "rollout")
REWARD_MODEL = LossGroup(
    "a reward-model loss (reward scores)", "prefopt train-rm", lambda kind, scores: scores == "rewards"
)
PAIRED = LossGroup(
    "a paired log-prob loss", "prefopt train", lambda kind, scores: kind == "paired" and scores == "logps"
)


def presets() -> list[str]:
    """Optimiser presets: the published ones (`prefopt.train.PRESETS`) and every offline loss (DPO's otherwise)."""
    return sorted(set(PRESETS) | set(OFFLINE.names()))


class Choice:
    """argparse `type` of an option with a fixed set of values. A value outside it is a usage mistake whose
    line names the setting (`where`, e.g. TrainConfig.engine_backend) as the config's own check does, lists
    the valid values and suggests a near miss; `explain` may word it instead (losses do)."""

    def __init__(
        self,
        values: Sequence[str],
        where: str,
        explain: Callable[[str], str] | None = None,
        accept: Callable[[str], bool] | None = None,
    ) -> None:
        self.values = tuple(values)
        self.where = where
        self.explain = explain
        self.accept = accept  # valid values outside `values` (a combination of losses)
        self.__name__ = where  # argparse names the type in some messages

    def __call__(self, text: str) -> str:
        if text in self.values or (self.accept is not None and self.accept(text)):
            return text
        if self.explain is not None:
            raise argparse.ArgumentTypeError(self.explain(text))
        if len(self.values) <= 6:  # the config's own words for the same mistake in a YAML file
            raise argparse.ArgumentTypeError(f"{self.where}={text!r}: use one of {self.values}")
        near = difflib.get_close_matches(text, self.values, n=3)
        hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise argparse.ArgumentTypeError(
            f"{self.where}={text!r} is not one of its values.{hint} Use one of: {', '.join(self.values)}"
        )
