"""The PPO critic: a copy of a transformer backbone plus a scalar head, V(state) per completion token.

A separate critic (as TRL's PPO trainer, and Ziegler et al. 2019, arXiv:1909.08593, who initialise it
from the reward model) rather than a value head on the policy, so the value loss never pulls on the
policy's features and the two get their own optimisers. A LoRA policy (`prefopt.online.lora_policy`) instead puts
the head on its own adapter-enabled trunk (`critic_on_trunk`), so no second copy of the base is held:

    hidden = backbone(input_ids, attention_mask)         # (R, T, D)
    v      = head(hidden).squeeze(-1)                   # (R, T): V(s_t) for the state "prompt + y_≤t"
    values[r, t] = v[r, t − 1],  values[r, 0] = 0       # (R, T), ALIGNED WITH THE ENGINE'S TOKENS

Alignment. The engine's `tokens[r, t]` is log π(input_ids[r, t] | tokens < t), computed from the hidden
state at t − 1. The value of the state in which token t is chosen is read from the same hidden state, so
`values[r, t]` = V(x, y_<t), the value *before* token t. GAE (`prefopt.rl.gae`) then uses, at the last
completion token L − 1, δ = r_{L−1} − V_{L−1} (the episode ends after it), and in between
δ_t = r_t + γ·V_{t+1} − V_t. Values are zeroed outside `completion_mask` (they are never read there).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from prefopt.engine.head import unwrap_peft

__all__ = ["ValueModel", "critic_from_policy", "critic_on_trunk", "critic_from_reward_model"]


def _backbone(model: nn.Module) -> nn.Module:
    """The transformer body of a transformers model (`model.base_model`), e.g. `LlamaModel`."""
    body = getattr(model, "base_model", None)
    if body is None or body is model:
        raise ValueError(
            f"{type(model).__name__} exposes no separate backbone (`base_model`); the critic needs "
            "a transformers *ForCausalLM or *ForSequenceClassification model"
        )
    return body


def _hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not isinstance(size, int):
        raise ValueError(f"{type(model).__name__}: cannot read hidden_size from its config")
    return size


class ValueModel(nn.Module):
    """A critic: `backbone` (hidden states [R, T, D]) and `head` (Linear(D, 1)).

    Call: `critic(input_ids [R, T], attention_mask [R, T], completion_mask [R, T] bool) -> values [R, T]`
    float32 with values[r, t] = V(state before token t) at completion tokens and 0 elsewhere (module
    docstring). Differentiable unless run under `torch.no_grad()`.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        if head.out_features != 1:
            raise ValueError(f"ValueModel: the head must output one number per position, got {head.out_features}")
        self.backbone = backbone
        self.head = head

    def forward(self, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor) -> Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (R, T, D)
        v = self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()  # (R, T): V after token t
        before = torch.cat([v.new_zeros(v.shape[0], 1), v[:, :-1]], dim=1)  # (R, T): V before token t
        return torch.where(completion_mask, before, torch.zeros((), dtype=before.dtype, device=before.device))

    def own_parameters(self, policy: nn.Module | None = None) -> list[nn.Parameter]:
        """The trainable parameters the critic's optimiser steps: all of them, less those it shares with
        `policy` (a value head on the policy's trunk, `critic_on_trunk`, shares the backbone)."""
        shared = {id(p) for p in policy.parameters()} if policy is not None else set()
        return [p for p in self.parameters() if p.requires_grad and id(p) not in shared]

    def values(self, batch: Any) -> Tensor:
        """Values [R, T] of a padded `TokenBatch` (one sequence per row)."""
        if batch.packed:
            raise ValueError("ValueModel.values: packed batches are not supported; use one sequence per row")
        return self(batch.input_ids, batch.attention_mask, batch.completion_mask)


def critic_from_policy(policy: nn.Module) -> ValueModel:
    """A critic whose backbone is a trainable copy of the policy's and whose head starts at 0 (V ≡ 0).

    A zero head makes the first GAE step use plain Monte-Carlo-style advantages; it still gets
    gradients (∂V/∂w = h), so the value loss trains it from the first update.
    """
    backbone = copy.deepcopy(_backbone(policy))
    backbone.requires_grad_(True)
    head = nn.Linear(_hidden_size(policy), 1)
    param = next(backbone.parameters())
    head = head.to(device=param.device, dtype=param.dtype if param.dtype.is_floating_point else torch.float32)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return ValueModel(backbone, head).train()


def critic_on_trunk(policy: nn.Module) -> ValueModel:
    """A value head (starting at 0) on the policy's own backbone, not a copy: with a LoRA policy the adapter-
    enabled trunk, so the value loss trains the head and, through the trunk, the adapter (no second base).

    The critic's backbone parameters *are* the policy's: give the critic's optimiser only the head
    (`ValueModel.own_parameters`), the policy's optimiser steps the rest.
    """
    backbone = _backbone(unwrap_peft(policy))  # e.g. LlamaModel with the LoRA layers injected
    param = next(p for p in backbone.parameters() if p.is_floating_point())
    head = nn.Linear(_hidden_size(unwrap_peft(policy)), 1).to(device=param.device, dtype=torch.float32)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return ValueModel(backbone, head)


def critic_from_reward_model(reward_model: nn.Module) -> ValueModel:
    """A critic initialised from a scalar reward model (Ziegler et al. 2019; TRL's default): a copy of
    its backbone and of its one-output `score` head (`*ForSequenceClassification` with num_labels = 1)."""
    score = getattr(reward_model, "score", None)
    if not isinstance(score, nn.Linear) or score.out_features != 1:
        raise ValueError(
            f"{type(reward_model).__name__} has no one-output `score` head; pass a reward model saved by "
            "prefopt.online.reward_model (a *ForSequenceClassification with num_labels=1)"
        )
    critic = ValueModel(copy.deepcopy(_backbone(reward_model)), copy.deepcopy(score))
    critic.requires_grad_(True)
    return critic.train()
