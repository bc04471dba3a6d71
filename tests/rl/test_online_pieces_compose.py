"""The pure online pieces compose into working algorithms (the recipes of docs/online.md).

A toy policy: T independent positions, each a categorical over V tokens with its own logits; the reward
of a completion is the fraction of its tokens equal to 0 (the reference puts probability 1/V on it).
A few optimiser steps of every rollout loss must raise P(token 0) well above 1/V, which checks sign
conventions, the group-major layout and the estimators together rather than one formula at a time.
"""

from __future__ import annotations

import pytest
import torch

import prefopt
from prefopt.losses import best_worst_pairs
from prefopt.rl import (
    AdaptiveKLController,
    apply_eos_penalty,
    contains_eos,
    gae,
    kl_penalized_rewards,
    masked_whiten,
)

V, T, B, K = 4, 3, 8, 4
S = B * K


class ToyPolicy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(T, V))
        self.value = torch.nn.Parameter(torch.zeros(T))

    def sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        probs = torch.softmax(self.logits.detach(), -1)  # (T, V)
        return torch.multinomial(probs, n, replacement=True, generator=g).T  # (n, T)

    def logps(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.logits, -1).gather(1, tokens.T).T  # (n, T)

    def p_target(self) -> float:
        return float(torch.softmax(self.logits.detach(), -1)[:, 0].mean())


def reward(tokens: torch.Tensor) -> torch.Tensor:
    return (tokens == 0).float().mean(1)


def _group_step(name: str, policy: ToyPolicy, g: torch.Generator, loss_fn) -> None:
    tokens = policy.sample(S, g)  # rows group-major: row k·B + b is sample k of prompt b
    mask = torch.ones(S, T, dtype=torch.bool)
    rewards = reward(tokens).reshape(K, B).T  # [B, K]
    kwargs: dict[str, object] = {"rewards": rewards}
    if prefopt.loss_spec(name).needs_reference:
        kwargs["ref_logps"] = torch.full((S, T), -torch.log(torch.tensor(float(V))))
    if name == "remax":
        kwargs = {
            "rewards": rewards,
            "greedy_rewards": torch.full((B,), float(reward(policy.logits.argmax(-1).unsqueeze(0))[0])),
        }
    loss_fn(policy.logps(tokens), None, mask, **kwargs).loss.backward()


@pytest.mark.parametrize(
    "name", ["grpo", "dr_grpo", "rloo", "remax", "best_of_n", "dapo", "gspo", "cispo", "reinforce_pp"]
)
def test_group_losses_raise_the_reward(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    policy = ToyPolicy()
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.2)
    required = {"max_length": T} if "max_length" in prefopt.loss_spec(name).defaults() else {}  # Dr. GRPO's L_max
    loss_fn = prefopt.get_loss(name, **required)
    for _ in range(10):
        optimizer.zero_grad()
        _group_step(name, policy, g, loss_fn)
        optimizer.step()
    assert policy.p_target() > 0.5, f"{name}: P(target) = {policy.p_target():.3f} (start 0.25)"


def test_ppo_recipe_raises_the_reward_with_adaptive_kl() -> None:
    g = torch.Generator().manual_seed(0)
    policy = ToyPolicy()
    ref_logits = policy.logits.detach().clone()
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.1)
    loss_fn = prefopt.get_loss("ppo")
    kl_ctl = AdaptiveKLController(value=0.05, target=0.5, horizon=1000)
    eos = 3
    for _ in range(8):
        tokens = policy.sample(S, g)
        mask = torch.ones(S, T, dtype=torch.bool)
        with torch.no_grad():
            old_logps = policy.logps(tokens)
            ref_logps = torch.log_softmax(ref_logits, -1).gather(1, tokens.T).T
            old_values = policy.value.expand(S, T).clone()
        scores = apply_eos_penalty(reward(tokens), contains_eos(tokens, mask, eos), penalty=0.0)
        rewards, kl = kl_penalized_rewards(scores, old_logps, ref_logps, mask, beta=kl_ctl.value)
        advantages, returns = gae(rewards, old_values, mask, gamma=1.0, lam=0.95)
        advantages = masked_whiten(advantages, mask)
        kl_ctl.update(float(kl.sum(1).mean()), n_steps=S)
        for _epoch in range(4):
            optimizer.zero_grad()
            out = loss_fn(
                policy.logps(tokens),
                old_logps,
                mask,
                advantages=advantages,
                values=policy.value.expand(S, T),
                old_values=old_values,
                returns=returns,
            )
            out.loss.backward()
            optimizer.step()
        assert 0.0 <= float(out.metrics["policy/clipfrac"]) <= 1.0
    assert policy.p_target() > 0.5, f"ppo: P(target) = {policy.p_target():.3f} (start 0.25)"
    assert kl_ctl.value != 0.05, "the controller moved β"


def test_online_dpo_recipe_raises_the_reward() -> None:
    """Sample K per prompt, pair best against worst, take a DPO step on the valid pairs."""
    g = torch.Generator().manual_seed(0)
    policy = ToyPolicy()
    ref_logits = policy.logits.detach().clone()
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.2)
    dpo = prefopt.get_loss("dpo", beta=0.5)
    for _ in range(10):
        tokens = policy.sample(S, g)
        chosen, rejected, valid = best_worst_pairs(reward(tokens).reshape(K, B).T)
        c, r = chosen[valid], rejected[valid]
        if c.numel() == 0:
            continue
        policy_sum = policy.logps(tokens).sum(1)
        ref_sum = torch.log_softmax(ref_logits, -1).gather(1, tokens.T).T.sum(1)
        optimizer.zero_grad()
        dpo(policy_sum[c], policy_sum[r], ref_sum[c], ref_sum[r]).loss.backward()
        optimizer.step()
    assert policy.p_target() > 0.5, f"online dpo: P(target) = {policy.p_target():.3f} (start 0.25)"
