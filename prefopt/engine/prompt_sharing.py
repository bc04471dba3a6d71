"""Prefix-shared batches (`TokenBatch.shared_prefix`) in the engine: the mask, the checks, the head rows.

A row `[x_b | y_b,0 | y_b,1 | …]` (layout: `prefopt.data.prompt_sharing`) runs through the model once,
with an attention mask that gives every token the context it would have in its own sequence:

    allowed(q, k) = k ≤ q  ∧  group[k] = group[q] ≥ 0  ∧  (seq[k] = seq[q]  ∨  k is a prompt token)
                    [∧  pos[q] − pos[k] < W  on the layers with a sliding window W]

and position ids that continue from the prompt (y_b,k's first token has position P_b), so rotary and
learned absolute positions (GPT-2) see what the unshared sequence would. Token y_b,k[0] is scored from
the hidden state at the prompt's last token — one row shared by the K completions, read K times with K
labels (`head_rows`); every other completion token from its predecessor, as in the other layouts.

The mask reaches the attention as an additive 4-D float mask [R, 1, T, T] (eager and sdpa attention) or
as a flex-attention `BlockMask` (`attn_implementation="flex_attention"`; on CPU torch 2.13 runs flex
attention forward only, without gradients). transformers passes a 4-D mask through unchanged in models
that build their masks with `masking_utils.create_causal_mask`; models with sliding-window layers that
take a mapping {layer type: mask} get one mask per layer type. `sharing_unsupported(model)` says why a
model cannot take it: flash attention (no arbitrary masks), a modeling module that builds its own masks,
layer types other than full and sliding attention, or sequences longer than a sliding window that the
model's forward cannot be given a mask for.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention.flex_attention import create_block_mask

from prefopt.batch import TokenBatch
from prefopt.errors import BatchError

__all__ = ["PromptSharing", "check_shared_batch", "head_rows", "shared_positions", "source_index"]

_MASKED_ATTENTION = ("eager", "sdpa", "flex_attention")
_LAYER_TYPES = {"full_attention", "sliding_attention"}


def _sliding_window(config: Any) -> int | None:
    """The model's sliding window W when some layer uses one, else None."""
    window = getattr(config, "sliding_window", None)
    if window is None or not getattr(config, "use_sliding_window", True):
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return int(window)


def _takes_mask_mapping(module: Any) -> bool:
    """True when the modeling module's forward accepts {layer type: mask} (transformers' `causal_mask_mapping`)."""
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return False
    return "causal_mask_mapping := attention_mask, dict" in source


@dataclass(frozen=True)
class PromptSharing:
    """What the engine needs to know about a model to run prefix-shared batches on it.

    Attributes:
        unsupported: why the model cannot take the block mask (None when it can).
        attention: the model's attention implementation ("eager", "sdpa", "flex_attention", ...).
        window: the sliding window W of its sliding layers, or None.
        per_layer_type: the model's forward takes one mask per layer type (sliding windows applied exactly).
    """

    unsupported: str | None
    attention: str
    window: int | None
    per_layer_type: bool

    @classmethod
    def of(cls, model: nn.Module) -> "PromptSharing":
        """Read `model` (a transformers causal LM, PEFT unwrapped)."""
        config = getattr(model, "config", None)
        attention = str(getattr(config, "_attn_implementation", None) or "eager")
        module = sys.modules.get(type(model).__module__)
        window = _sliding_window(config)
        per_layer_type = window is not None and _takes_mask_mapping(module)
        layer_types = set(getattr(config, "layer_types", None) or ())
        reason = None
        if config is None:
            reason = "it has no transformers config"
        elif attention not in _MASKED_ATTENTION:
            reason = f"attn_implementation={attention!r} takes no arbitrary mask; load it with 'sdpa' or 'eager'"
        elif not hasattr(module, "create_causal_mask"):
            reason = f"{type(model).__name__} builds its own attention masks and may not honour a custom 4-D mask"
        elif layer_types - _LAYER_TYPES:
            reason = f"it has {sorted(layer_types - _LAYER_TYPES)} layers, which a block mask does not describe"
        return cls(reason, attention, window, per_layer_type)

    def refusal(self, batch: TokenBatch, model_name: str) -> str | None:
        """Why this model cannot run the prefix-shared `batch` exactly, or None when it can."""
        if self.unsupported is not None:
            return f"prefix-shared batches need a block mask, but {self.unsupported}"
        if self.window is not None and not self.per_layer_type:
            longest = int(shared_positions(batch).max()) + 1 if batch.input_ids.numel() else 0
            if longest > self.window:
                return (
                    f"a prefix-shared sequence of {longest} tokens exceeds {model_name}'s sliding_window="
                    f"{self.window}, which its forward cannot be given a mask for"
                )
        return None

    def body_kwargs(self, batch: TokenBatch, dtype: torch.dtype) -> dict[str, Any]:
        """Keyword arguments of the model body for a prefix-shared batch: ids, positions, the block mask."""
        positions = shared_positions(batch)
        if batch.position_ids is not None:
            real = batch.attention_mask.bool()
            if not torch.equal(batch.position_ids[real], positions[real]):
                raise BatchError(
                    "TokenBatch.position_ids disagree with the prefix-shared layout: they must count 0..P−1 over "
                    "each prompt and restart at P on each of its completions"
                )
        masks = {"full_attention": self._mask(batch, positions, None, dtype)}
        if self.window is not None and self.per_layer_type:
            masks["sliding_attention"] = self._mask(batch, positions, self.window, dtype)
        mask: Any = masks if len(masks) > 1 else masks["full_attention"]
        return {"input_ids": batch.input_ids, "position_ids": positions, "attention_mask": mask, "use_cache": False}

    def _mask(self, batch: TokenBatch, positions: Tensor, window: int | None, dtype: torch.dtype) -> Any:
        assert batch.group_ids is not None
        if self.attention == "flex_attention":
            return flex_block_mask(batch.group_ids, batch.sequence_ids, positions, window)
        allowed = allowed_pairs(batch.group_ids, batch.sequence_ids, positions, window)  # (R, T, T)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def allowed_pairs(group: Tensor, seq: Tensor, pos: Tensor, window: int | None = None) -> Tensor:
    """[R, T, T] bool: query q may attend to key k (module docstring); padding queries see themselves only."""
    t = group.shape[1]
    index = torch.arange(t, device=group.device)
    allowed = (index[None, :, None] >= index[None, None, :]) & (group[:, :, None] == group[:, None, :])
    allowed &= group[:, None, :] >= 0
    allowed &= (seq[:, :, None] == seq[:, None, :]) | (seq[:, None, :] < 0)
    if window is not None:
        allowed &= pos[:, :, None] - pos[:, None, :] < window
    return allowed | torch.eye(t, dtype=torch.bool, device=group.device)


def flex_block_mask(group: Tensor, seq: Tensor, pos: Tensor, window: int | None = None) -> Any:
    """The same rule as `allowed_pairs`, as a flex-attention `BlockMask` [R, 1, T, T]."""
    r, t = group.shape
    return create_block_mask(shared_mask_mod(group, seq, pos, window), r, None, t, t, device=group.device)


def shared_mask_mod(group: Tensor, seq: Tensor, pos: Tensor, window: int | None = None) -> Any:
    """flex attention's `mask_mod(b, h, q, k) → bool` of `allowed_pairs`' rule (index tensors broadcast)."""

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        same = (group[b, q] == group[b, k]) & (group[b, k] >= 0)
        visible = (k <= q) & same & ((seq[b, q] == seq[b, k]) | (seq[b, k] < 0))
        if window is not None:
            visible = visible & (pos[b, q] - pos[b, k] < window)
        return visible | (q == k)

    return mask_mod


def shared_positions(batch: TokenBatch) -> Tensor:
    """[R, T] long: 0..P_b−1 over each prompt, P_b + i at the i-th token of each completion; 0 on padding."""
    group, seq = batch.group_ids, batch.sequence_ids
    assert group is not None
    r, t = seq.shape
    index = torch.arange(t, device=seq.device).expand(r, t)
    start = torch.ones_like(seq, dtype=torch.bool)
    start[:, 1:] = (seq[:, 1:] != seq[:, :-1]) | (group[:, 1:] != group[:, :-1])
    first = torch.where(start, index, torch.zeros_like(index)).cummax(dim=1).values  # start of the token's run
    is_prompt = (group >= 0) & (seq < 0)
    prompt_len = torch.zeros(r, int(group.max()) + 2 if group.numel() else 1, dtype=torch.long, device=seq.device)
    prompt_len.scatter_add_(1, (group + 1).clamp(min=0), is_prompt.long())  # [R, 1 + B]: P_b of the row's groups
    offset = torch.where(is_prompt, torch.zeros_like(index), prompt_len.gather(1, (group + 1).clamp(min=0)))
    return torch.where(group >= 0, index - first + offset, torch.zeros_like(index))


def source_index(batch: TokenBatch, select: Tensor) -> Tensor:
    """[N] long: for each completion token (in `select`'s row-major order), the flat index r·T + t' of the
    position whose hidden state predicts it: t − 1, or the group's last prompt token for a completion's first."""
    r, t = batch.input_ids.shape
    index = torch.arange(t, device=select.device).expand(r, t)
    if not batch.shared_prefix:
        source = index[:, :-1]
    else:
        assert batch.group_ids is not None
        is_prompt = (batch.group_ids >= 0) & (batch.sequence_ids < 0)
        last_prompt = torch.where(is_prompt, index, torch.full_like(index, -1)).cummax(dim=1).values  # (R, T)
        follows = batch.sequence_ids[:, 1:] == batch.sequence_ids[:, :-1]  # t − 1 is in the same completion
        source = torch.where(follows, index[:, :-1], last_prompt[:, 1:])
    rows = torch.arange(r, device=select.device)[:, None] * t
    return (rows + source)[select]


def head_rows(states: Tensor, batch: TokenBatch, select: Tensor) -> Tensor:
    """(N, …) rows of per-position `states` (R, T, …) that predict the completion tokens: `states[:, :-1][select]`
    for the padded and packed layouts, a gather (the prompt's last row repeated K times) for the shared one."""
    if not batch.shared_prefix:
        return states[:, :-1][select]
    return states.flatten(0, 1).index_select(0, source_index(batch, select))


def check_shared_batch(batch: TokenBatch) -> None:
    """Raise BatchError, naming row and position, where a prefix-shared batch breaks its layout: a scored
    prompt token, a completion token that is padding or outside its group, or a completion with no prompt
    token of its group before it."""
    group, seq = batch.group_ids, batch.sequence_ids
    assert group is not None
    cm = batch.completion_mask.bool()
    real = batch.attention_mask.bool()
    b = max(batch.num_groups, 1)
    bad = cm & (~real | (seq < 0) | (group < 0) | (seq % b != group))
    bad |= real & (group < 0)
    if bool(bad.any()):
        row, pos = (int(v) for v in bad.nonzero()[0])
        raise BatchError(
            f"TokenBatch row {row}, position {pos}: in a prefix-shared batch every real token needs its group, and "
            "a scored token is a completion token (sequence k·B + b of group b), never a prompt token or padding"
        )
    r, t = seq.shape
    index = torch.arange(t, device=seq.device).expand(r, t)
    is_prompt = real & (seq < 0)
    last_prompt = torch.where(is_prompt, index, torch.full_like(index, -1)).cummax(dim=1).values
    prompt_group = group.gather(1, last_prompt.clamp(min=0))
    orphan = (seq >= 0) & ((last_prompt < 0) | (prompt_group != group))
    if bool(orphan.any()):
        row, pos = (int(v) for v in orphan.nonzero()[0])
        raise BatchError(
            f"TokenBatch row {row}, position {pos}: a completion token of a prefix-shared batch must follow its own "
            "group's prompt in the same row ([prompt | y_0 | y_1 | …])"
        )
    if seq.numel() and int(seq.max()) >= batch.num_sequences:
        raise BatchError(f"TokenBatch: sequence_ids reach {int(seq.max())} but num_sequences={batch.num_sequences}")
