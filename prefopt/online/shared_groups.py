"""Prefix-shared rollout groups: the K samples of one prompt read that prompt once in the learner's passes.

A rollout's rows are group-major (row k·B + b = [x_b | y_b,k], `prefopt.online.generation.Rollout`), and the
learner scores them several times per step: the behaviour policy and the reference (no gradient), the policy on
every minibatch (with gradient), and PPO's critic on the rollout and on every minibatch. With sharing on, each of
these passes runs the prefix-shared layout of the same rows (`prefopt.data.prompt_sharing`: one row
[x_b | y_b,0 | … | y_b,K−1] per prompt, the block mask and the positions of `prefopt.engine.prompt_sharing`,
through the engine's own prefix-sharing path), and every per-token result is put back in the rollout's layout,
so the rest of the loop (KL, GAE, the losses, the minibatch cuts) never sees the difference:

    rows    = rollout.token_batch(rows)              [S, T]  one sample per row: the layout of every per-token tensor
    shared  = shared_layout(rows, K)                 [B, max_b (P_b + Σ_k C_b,k)]
    tokens  = engine(shared, return_tokens=True)     per-token values where the shared layout has the tokens
    out[s, t] = the value of sequence s's i-th completion token, t its i-th completion position in `rows`

(`to_rollout_layout`, a gather: gradients flow back through it). The critic's backbone takes the same mask and
positions, and the value before a completion's first token is read at its prompt's last token (`head_rows`, as
the engine reads the first log-prob), so the values equal the unshared critic's.

Runs unshared: K = 1; `share_prompt="auto"` where the shared layout would not run at least a fifth fewer
positions (`sharing_pays`, padding included); rows that are not [prompt | completion | padding] or whose K
prompts differ; a model whose attention cannot take the mask (`PromptSharing`: per model, so a critic that cannot
runs unshared beside a policy that can); NLPO's action mask (its masking policy scores the rows unshared) and
online DPO's best/worst pairs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prefopt.batch import TokenBatch
from prefopt.data.prompt_sharing import collate_shared, sharing_pays
from prefopt.engine import LogProbEngine, SequenceLogProbs
from prefopt.engine.head import unwrap_peft
from prefopt.engine.inputs import scored_positions
from prefopt.engine.prompt_sharing import PromptSharing, head_rows
from prefopt.online.action_mask import TopPActionMask, score_tokens
from prefopt.online.trunk import to_tokens
from prefopt.online.value import ValueModel
from prefopt.settings import SettingsError

__all__ = [
    "RolloutRows",
    "Share",
    "critic_values",
    "rollout_rows",
    "score_rows",
    "share_prompt_setting",
    "shared_layout",
    "to_rollout_layout",
]

Share = bool | Literal["auto"]


def share_prompt_setting(share_prompt: str, policy: nn.Module) -> Share:
    """`OnlineConfig.share_prompt` for the loop: "off" → False; "auto" → "auto" (per rollout) when the policy's
    attention takes the block mask, else False; "on" → True, or SettingsError naming why the policy cannot."""
    if share_prompt == "off":
        return False
    unsupported = PromptSharing.of(unwrap_peft(policy)).unsupported
    if unsupported is None:
        return True if share_prompt == "on" else "auto"
    if share_prompt == "on":
        raise SettingsError(f"OnlineConfig.share_prompt='on': {unsupported}; use --share-prompt auto or off")
    return False


@dataclass(frozen=True)
class RolloutRows:
    """Rows of a rollout as the learner scores them.

    Attributes:
        batch: the rows one sample per row ([S, T], group-major): the layout of every per-token result.
        shared: the prefix-shared layout of the same rows, or None when they run unshared.
    """

    batch: TokenBatch
    shared: TokenBatch | None = None


def _groups(batch: TokenBatch, num_samples: int) -> list[tuple[list[int], list[list[int]]]] | None:
    """(prompt ids, the K completions' ids) of each prompt of group-major rows, or None when a row is not
    [prompt | completion | padding] or the K rows of a prompt have different prompts."""
    real, completion = batch.attention_mask.bool(), batch.completion_mask.bool()
    index = torch.arange(real.shape[1], device=real.device)[None, :]
    length, prompt = real.sum(1, keepdim=True), (real & ~completion).sum(1, keepdim=True)
    if not (torch.equal(real, index < length) and torch.equal(completion, (index >= prompt) & (index < length))):
        return None
    ids, ends, starts = batch.input_ids.tolist(), length.squeeze(1).tolist(), prompt.squeeze(1).tolist()
    b = batch.num_sequences // num_samples
    groups = []
    for j in range(b):
        rows = [k * b + j for k in range(num_samples)]
        prompts = {tuple(ids[r][: starts[r]]) for r in rows}
        if len(prompts) != 1:
            return None
        groups.append((list(prompts.pop()), [ids[r][starts[r] : ends[r]] for r in rows]))
    return groups


def shared_layout(batch: TokenBatch, num_samples: int, share: Share = True) -> TokenBatch | None:
    """The prefix-shared layout of group-major rollout rows (one sample per row, K samples per prompt), or None
    when they run unshared: `share` False, K = 1, "auto" and no fifth of the positions saved, rows that cannot
    (module docstring). Sequence k·B + b of the result is row k·B + b of `batch`."""
    if share is False or num_samples < 2 or batch.num_sequences % num_samples or batch.packed:
        return None
    groups = _groups(batch, num_samples)
    if groups is None or (share == "auto" and not sharing_pays(groups)):
        return None
    return collate_shared(groups, pad_token_id=0)


def rollout_rows(batch: TokenBatch, num_samples: int, share: Share) -> RolloutRows:
    """`RolloutRows` of `batch` (e.g. `Rollout.token_batch(rows)`) under the loop's `share` setting."""
    return RolloutRows(batch, shared_layout(batch, num_samples, share))


def to_rollout_layout(values: Tensor, ran: TokenBatch, rows: TokenBatch) -> Tensor:
    """Per-token values [R', T'] of the layout that ran (value of token t at column t, as the engine's `tokens`)
    → [S, T] at the completion tokens of `rows` (0 elsewhere), differentiable; `values` itself when `ran` is
    `rows`. Both layouts hold each sequence's completion tokens in order, so the i-th value of sequence s lands
    on its i-th completion position."""
    if ran is rows:
        return values
    scored = ran.completion_mask.bool()
    order = torch.sort(ran.sequence_ids[scored], stable=True).indices  # sequence-major, token order kept
    out = torch.zeros(rows.completion_mask.shape, dtype=values.dtype, device=values.device)
    return out.masked_scatter(rows.completion_mask.bool(), values[scored][order])


def _layout(engine: LogProbEngine, rows: RolloutRows) -> TokenBatch:
    """The layout `engine` runs: the shared one where its `share_prompt` and its model's attention allow (with
    share_prompt=True a model that cannot is given it, and the engine refuses it by name), else the rows."""
    if rows.shared is None or engine.share_prompt is False:
        return rows.batch
    refusal = engine.prompt_sharing.refusal(rows.shared, type(unwrap_peft(engine.model)).__name__)
    return rows.shared if refusal is None or engine.share_prompt is True else rows.batch


def score_rows(
    engine: LogProbEngine, action_mask: TopPActionMask | None, rows: RolloutRows, **engine_kwargs: Any
) -> tuple[SequenceLogProbs, Tensor | None]:
    """`score_tokens` of the rows (the engine's output with per-token `tokens` and, with `return_entropy`,
    `token_entropy`; NLPO's log Z_θ with an action mask), run shared where it can be, per-token tensors in the
    rows' layout [S, T]."""
    ran = rows.batch if action_mask is not None else _layout(engine, rows)
    out, mass = score_tokens(engine, action_mask, ran, **engine_kwargs)
    if ran is rows.batch:
        return out, mass
    assert out.tokens is not None
    entropy = out.token_entropy
    return dataclasses.replace(
        out,
        group_size=rows.batch.group_size,
        tokens=to_rollout_layout(out.tokens, ran, rows.batch),
        token_sequence_ids=rows.batch.sequence_ids,
        token_entropy=None if entropy is None else to_rollout_layout(entropy, ran, rows.batch),
    ), mass


def critic_values(critic: ValueModel, rows: RolloutRows) -> Tensor:
    """The critic's values [S, T] of the rows (`ValueModel.values`: V before each completion token, 0 elsewhere),
    its backbone run on the shared layout when it can take the mask."""
    sharing = PromptSharing.of(critic.backbone)
    if rows.shared is None or sharing.refusal(rows.shared, type(critic.backbone).__name__) is not None:
        return critic.values(rows.batch)
    shared = rows.shared
    param = next(critic.backbone.parameters())
    dtype = param.dtype if param.dtype.is_floating_point else torch.float32
    out = critic.backbone(**sharing.body_kwargs(shared, dtype))
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (R, T', D)
    select, _, _ = scored_positions(shared)
    states = head_rows(hidden, shared, select)  # (N, D): the state before each completion token
    values = critic.head(states.to(critic.head.weight.dtype)).squeeze(-1).float()  # (N,)
    return to_rollout_layout(to_tokens(values, select), shared, rows.batch)
