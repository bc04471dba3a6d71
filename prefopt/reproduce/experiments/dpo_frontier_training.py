"""The DPO side of `prefopt.reproduce.experiments.dpo_frontier`: the paper's preference data (all pairs of K
samples per prompt, labelled by the gold reward) and DPO trained to convergence with early stopping.

Rafailov et al. 2023 (arXiv:2305.18290, App. C.1) sample 4 completions per IMDb prefix from the SFT model
and form all 6 pairs, each labelled by the ground-truth sentiment classifier. Here the synthetic task's
groups hold K completions with their gold rewards; every pair (i < j) whose two completions differ and
whose gold rewards differ becomes one row, the higher-reward completion chosen (a deterministic labeller,
as a classifier's score is).

Training to convergence: DPO (`prefopt.train.train`, the `synthetic` optimiser preset) runs for at most
`max_steps` optimiser steps (reshuffled epochs); every `eval_every` optimiser steps the held-out DPO loss

    L_eval(θ) = mean over eval pairs of −log σ(β·[(log π_θ(y_w|x) − log π_ref(y_w|x)) − (… y_l …)])

is measured on the eval split's pairs, the weights with the lowest value so far are kept, and training
stops once `patience` evaluations in a row did not improve it. The returned policy carries the kept weights.
"""

from __future__ import annotations

import copy
import math
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from prefopt.registry import get_loss
from prefopt.reproduce.synthetic_runs import pair_batches, pair_logps
from prefopt.train import train

__all__ = ["all_pair_rows", "EarlyStopping", "Converged", "train_dpo_to_convergence"]


def all_pair_rows(groups: Iterable[Any], split: str) -> list[dict[str, str]]:
    """Every pair of a prompt's K completions, labelled by the gold reward: K(K−1)/2 rows per prompt at most.

    Args:
        groups: `PromptGroup`s (completions [K] with gold rewards [K]); only those of `split` are read.
    Returns:
        prompt/chosen/rejected rows, the higher gold reward chosen; pairs of equal texts or equal rewards
        carry no preference and are left out.
    """
    rows = []
    for g in groups:
        if g.split != split:
            continue
        for i in range(len(g.completions)):
            for j in range(i + 1, len(g.completions)):
                if g.completions[i] == g.completions[j] or g.rewards[i] == g.rewards[j]:
                    continue
                c, r = (i, j) if g.rewards[i] > g.rewards[j] else (j, i)
                rows.append({"prompt": g.prompt, "chosen": g.completions[c], "rejected": g.completions[r]})
    return rows


class Converged(Exception):
    """Raised from the trainer's step callback to end a run whose held-out loss stopped improving."""


@dataclass
class EarlyStopping:
    """Keeps the weights of the lowest held-out DPO loss and says when `patience` evaluations did not improve it.

    Attributes:
        policy: the module being trained (updated in place by the trainer).
        beta: DPO's β; eval_batches: the eval pairs; reference: [N, 2] log π_ref of (chosen, rejected).
        patience: evaluations without improvement before stopping.
    """

    policy: Any
    beta: float
    eval_batches: Sequence[Any]
    reference: torch.Tensor
    patience: int
    best_loss: float = math.inf
    best_step: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    evaluations: int = 0
    stale: int = 0

    def held_out_loss(self) -> float:
        """L_eval of the current weights (module docstring)."""
        policy = pair_logps(self.policy, self.eval_batches)  # [N, 2]
        out = get_loss("dpo", beta=self.beta)(policy[:, 0], policy[:, 1], self.reference[:, 0], self.reference[:, 1])
        return float(out.loss)

    def __call__(self, step: int) -> bool:
        """Evaluate at `step`; True when training should stop."""
        loss = self.held_out_loss()
        self.evaluations += 1
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.stale = loss, step, 0
            self.best_state = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
        else:
            self.stale += 1
        return self.stale >= self.patience


def train_dpo_to_convergence(
    reference: Any,
    tokenizer: Any,
    train_rows: Sequence[dict[str, str]],
    eval_rows: Sequence[dict[str, str]],
    *,
    beta: float,
    seed: int,
    batch_size: int,
    lr: float | None,
    max_steps: int,
    eval_every: int,
    patience: int,
) -> tuple[Any, dict[str, float]]:
    """DPO from a copy of `reference` on `train_rows`, stopped early on the held-out DPO loss of `eval_rows`.

    Returns:
        (policy with the best held-out weights, {"steps", "best_step", "best_eval_loss", "initial_eval_loss"}).
    """
    import datasets  # heavy: loaded on first use

    policy = copy.deepcopy(reference).train().requires_grad_(True)
    eval_batches = pair_batches(eval_rows, tokenizer)
    stopper = EarlyStopping(policy, beta, eval_batches, pair_logps(reference, eval_batches), patience)
    initial = stopper.held_out_loss()  # log 2 at step 0: the policy is the reference
    stopper.best_loss, stopper.best_state = initial, {k: v.detach().clone() for k, v in policy.state_dict().items()}
    last = [0]

    def on_step(step: int, record: dict[str, float]) -> None:
        last[0] = step
        if step % eval_every == 0 and stopper(step):
            raise Converged

    with tempfile.TemporaryDirectory(prefix="prefopt-frontier-dpo-") as folder, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".* left out of each epoch", category=UserWarning)
        try:
            train(
                model=policy,
                tokenizer=tokenizer,
                dataset=datasets.Dataset.from_list(list(train_rows)),
                loss="dpo",
                loss_hparams={"beta": beta},
                seed=seed,
                max_steps=max_steps,
                batch_size=batch_size,
                lr=lr,
                output_dir=folder,
                progress=False,
                ref_cache=False,
                engine_backend="reference",
                on_step=on_step,
            )
            if last[0] % eval_every:  # the last step is evaluated too
                stopper(last[0])
        except Converged:
            pass
    assert stopper.best_state is not None
    policy.load_state_dict(stopper.best_state)
    info = {
        "steps": float(last[0]),
        "best_step": float(stopper.best_step),
        "best_eval_loss": stopper.best_loss,
        "initial_eval_loss": initial,
    }
    return policy.eval(), info
