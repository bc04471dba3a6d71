"""The batch and the engine outputs as a loss's data kind reads them, and the batch as a `batch_inputs`
provider sees it (`prefopt.loss_state.GlobalBatch`): the rows of `prefopt.loss_call`'s docstring."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.batch import TokenBatch
from prefopt.data.collate import collate_preferences, uncollate
from prefopt.engine import SequenceLogProbs
from prefopt.errors import LossInputError
from prefopt.registry import LossSpec

__all__ = ["BatchRows", "KindView", "Scorer", "batch_rows", "kind_view", "pairs_as_rows"]

# The engine, or a reference: a batch → its SequenceLogProbs (LogProbEngine, ReferenceLogProbs, any callable).
Scorer = Callable[..., SequenceLogProbs]


@dataclass
class KindView:
    """The batch and the engine outputs as the loss's kind reads them (a paired batch as unpaired rows too)."""

    batch: TokenBatch
    policy: SequenceLogProbs
    reference: SequenceLogProbs | None
    extras: Mapping[str, Tensor]
    rows: Callable[[], list[dict[str, Any]]]


_HELD = {1: "unpaired rows (group_size 1)", 2: "pairs (group_size 2)"}
_TAKES = {
    "paired": "pairs: rows with completion_ids [chosen, rejected]",
    "unpaired": "labelled rows (completion_ids [y], label) or pairs",
    "ranked": "rankings: rows with K ≥ 2 completion_ids, best first",
}


def kind_view(spec: LossSpec, policy_out: Any, ref_out: Any, batch: TokenBatch) -> KindView:
    """The batch as `spec`'s kind reads it; another data kind is a one-line error."""
    k = batch.group_size
    fits = {"paired": k == 2, "ranked": k >= 2, "unpaired": k in (1, 2)}[spec.kind]
    if not fits:
        held = _HELD.get(k, f"rankings of {k} completions (group_size {k})")
        article = "an" if spec.kind[0] in "aeiou" else "a"
        raise LossInputError(
            f"{spec.name} is {article} {spec.kind} loss and takes {_TAKES[spec.kind]}; this batch holds {held}. "
            f"Collate {spec.kind} data, or use a loss of the batch's kind (prefopt.list_losses(kind))."
        )
    if spec.kind == "unpaired" and k == 2:
        return pairs_as_rows(policy_out, ref_out, batch)
    if spec.kind == "unpaired" and "labels" not in batch.extras:
        raise LossInputError(
            f"{spec.name} needs labels: collate unpaired rows with a boolean `label` (True = desirable), or pass "
            f"a paired batch (chosen = desirable, rejected = undesirable)."
        )
    return KindView(batch, policy_out, ref_out, batch.extras, lambda: uncollate(batch))


def pairs_as_rows(policy_out: Any, ref_out: Any, batch: TokenBatch) -> KindView:
    """A paired batch read as unpaired rows: row 2b + k is sequence k·B + b (k = 0 chosen, 1 rejected)."""
    b = batch.num_groups
    order = torch.arange(2 * b, device=policy_out.sum.device).reshape(2, b).t().reshape(-1)  # [S]

    def rows_of(out: Any) -> SequenceLogProbs | None:
        if out is None:
            return None
        rows = order.to(out.sum.device)
        by_row = lambda t: None if t is None else t[rows]  # noqa: E731
        return SequenceLogProbs(
            out.sum[rows],
            out.count[order.to(out.count.device)],
            1,
            log_sum_sq_probs=by_row(getattr(out, "log_sum_sq_probs", None)),
            seq_kl=by_row(getattr(out, "seq_kl", None)),
        )

    extras = {
        name: value.repeat_interleave(2, dim=0)
        for name, value in batch.extras.items()
        if value.dim() == 1 and value.shape[0] == b and name not in ("example_index", "row_index", "labels")
    }
    extras["labels"] = torch.tensor([True, False]).repeat(b)
    extras.setdefault("pair_ids", torch.arange(b).repeat_interleave(2))

    def rows() -> list[dict[str, Any]]:
        return [
            {"prompt_ids": r["prompt_ids"], "completion_ids": [c], "label": k == 0}
            for r in uncollate(batch)
            for k, c in enumerate(r["completion_ids"])
        ]

    return KindView(batch, rows_of(policy_out), rows_of(ref_out), extras, rows)  # type: ignore[arg-type]


@dataclass(frozen=True)
class BatchRows:
    """One batch as a `batch_inputs` provider sees it (`prefopt.loss_state.GlobalBatch`), on one process."""

    rows: Sequence[Mapping[str, Any]]
    hparams: Mapping[str, Any]
    policy: Scorer
    reference: Scorer
    packed: bool
    device: torch.device

    @property
    def positions(self) -> Sequence[int]:
        return range(len(self.rows))

    def score(self, rows: Sequence[Mapping[str, Any]]) -> tuple[SequenceLogProbs, SequenceLogProbs]:
        """(policy, reference) log-probs of `rows`, collated like the batch, without gradient."""
        batch = collate_preferences(list(rows), pad_token_id=0, packed=self.packed).to(self.device)
        with torch.no_grad():
            return self.policy(batch).detach(), self.reference(batch).detach()

    def all_reduce_sum(self, values: Tensor) -> Tensor:
        return values


def batch_rows(loss: Any, name: str, view: KindView, policy: Scorer | None, reference: Any) -> BatchRows:
    spec: LossSpec = loss.spec
    models = policy is not None and callable(reference) and getattr(reference, "source", None) != "cache"
    if not models:
        raise LossInputError(
            f"{spec.name}: its input {name!r} is computed from the batch by scoring new rows under the policy and "
            f"the reference models: give policy=<the policy's engine> and a reference model (ReferenceLogProbs."
            f"from_model or .from_disabled_adapter; a cache or log-probs cannot score new rows), or pass {name}= "
            f"yourself."
        )
    hparams = {**spec.defaults(), **getattr(loss, "hparams", {})}
    device = view.batch.input_ids.device
    return BatchRows(view.rows(), hparams, policy, reference, view.batch.packed, device)  # type: ignore[arg-type]
