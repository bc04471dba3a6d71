"""PPO's critic and targets against brute force: values[r, t] = V(prompt + completion tokens < t), and the
KL-shaped rewards → GAE → whitening chain on hand-made rollouts whose completions sit after a prompt."""

from __future__ import annotations

import pytest
import torch

from prefopt.batch import TokenBatch
from prefopt.online.rollout_step import (
    completion_layout,
    critic_targets,
    from_completion_layout,
    prompt_minibatches,
    prompt_rows,
    to_completion_layout,
)
from prefopt.online.value import critic_from_policy, critic_from_reward_model

from .tiny_online import online_settings


def _tiny_llama(cls_name: str = "LlamaForCausalLM", **extra):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        pad_token_id=0,
        **extra,
    )
    return getattr(transformers, cls_name)(config).eval()


def _batch() -> TokenBatch:
    """3 rows: prompts of 3, 2, 4 tokens; completions of 3, 4, 2 tokens; right-padded to T = 7."""
    prompt_lengths, completion_lengths = [3, 2, 4], [3, 4, 2]
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 40, (3, 7), generator=generator)
    attention = torch.zeros(3, 7, dtype=torch.long)
    completion = torch.zeros(3, 7, dtype=torch.bool)
    for r, (p, c) in enumerate(zip(prompt_lengths, completion_lengths)):
        attention[r, : p + c] = 1
        completion[r, p : p + c] = True
        input_ids[r, p + c :] = 0
    sequence_ids = torch.where(attention.bool(), torch.arange(3)[:, None].expand(3, 7), -1)
    return TokenBatch(input_ids, attention, completion, sequence_ids, num_sequences=3)


def _brute_force_values(backbone, head, batch: TokenBatch) -> torch.Tensor:
    """V at completion token t = head(last hidden state of the prefix input_ids[:t]), one forward per prefix."""
    out = torch.zeros(batch.input_ids.shape)
    for r, t in batch.completion_mask.nonzero().tolist():
        hidden = backbone(input_ids=batch.input_ids[r : r + 1, :t]).last_hidden_state[0, -1]
        out[r, t] = head(hidden).squeeze()
    return out


def test_values_are_those_of_the_state_before_each_token():
    policy = _tiny_llama()
    critic = critic_from_policy(policy).eval()
    torch.nn.init.normal_(critic.head.weight)
    batch = _batch()
    with torch.no_grad():
        values = critic.values(batch)
        expected = _brute_force_values(critic.backbone, critic.head, batch)
    torch.testing.assert_close(values, expected, rtol=1e-4, atol=1e-5)
    assert (values[~batch.completion_mask] == 0).all()


def test_critic_from_policy_is_an_independent_copy_starting_at_zero():
    policy = _tiny_llama()
    critic = critic_from_policy(policy)
    batch = _batch()
    values = critic.values(batch)
    assert (values == 0).all()
    values.sum().backward()  # ∂V/∂w = hidden ≠ 0: the zero head still learns
    assert critic.head.weight.grad is not None and critic.head.weight.grad.abs().sum() > 0
    before = [p.detach().clone() for p in policy.parameters()]
    with torch.no_grad():
        for p in critic.backbone.parameters():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_critic_from_reward_model_reads_the_reward_head_per_prefix():
    """V(prefix) is the reward model's own score of that prefix (its last-token head output)."""
    reward_model = _tiny_llama("LlamaForSequenceClassification", num_labels=1)
    critic = critic_from_reward_model(reward_model).eval()
    batch = _batch()
    with torch.no_grad():
        values = critic.values(batch)
        for r, t in batch.completion_mask.nonzero().tolist():
            score = reward_model(input_ids=batch.input_ids[r : r + 1, :t]).logits[0, 0]
            assert values[r, t] == pytest.approx(float(score), rel=1e-4, abs=1e-5)
    with pytest.raises(ValueError, match="score"):
        critic_from_reward_model(_tiny_llama())


def _brute_force_targets(scores, old, ref, mask, values, beta, gamma, lam, estimator="k1"):
    """Python-loop PPO targets, per row over its completion positions t_0 < … < t_{L−1}:
    r_i = −β·k_i + [i = L−1]·score,  δ_i = r_i + γ·V_{i+1} − V_i (V_L = 0),  A_i = δ_i + γλ·A_{i+1},  G = A + V;
    A whitened with the mean and unbiased variance over every completion token of the batch (+1e-8)."""
    advantages, returns = torch.zeros(mask.shape, dtype=torch.float64), torch.zeros(mask.shape, dtype=torch.float64)
    for r in range(mask.shape[0]):
        positions = mask[r].nonzero().flatten().tolist()
        u = [float(ref[r, t] - old[r, t]) for t in positions]
        kl = [-x if estimator == "k1" else (torch.tensor(x).exp().item() - 1 - x) for x in u]
        rewards = [-beta * k for k in kl]
        rewards[-1] += float(scores[r])
        v = [float(values[r, t]) for t in positions] + [0.0]
        running = 0.0
        for i in reversed(range(len(positions))):
            running = rewards[i] + gamma * v[i + 1] - v[i] + gamma * lam * running
            advantages[r, positions[i]] = running
            returns[r, positions[i]] = running + v[i]
    valid = advantages[mask]
    whitened = (advantages - valid.mean()) / torch.sqrt(valid.var(unbiased=True) + 1e-8)
    return torch.where(mask, whitened, 0.0).float(), returns.float()


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_critic_targets_match_brute_force_gae(estimator):
    mask = _batch().completion_mask
    generator = torch.Generator().manual_seed(2)
    old, ref, values = (torch.randn(mask.shape, generator=generator) for _ in range(3))
    old, ref = old - 2.0, ref - 2.0
    values = torch.where(mask, values, 0.0)
    scores = torch.tensor([1.5, -0.5, 0.25])
    targets, kl = critic_targets(
        scores, old, ref, mask, values, kl_coef=0.1, estimator=estimator, gamma=0.9, lam=0.8, whiten=True
    )
    expected_advantages, expected_returns = _brute_force_targets(
        scores, old, ref, mask, values, 0.1, 0.9, 0.8, estimator
    )
    torch.testing.assert_close(targets["advantages"], expected_advantages, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(targets["returns"], expected_returns, rtol=1e-5, atol=1e-5)
    assert (kl[~mask] == 0).all() and (targets["advantages"][~mask] == 0).all()
    if estimator == "k1":
        torch.testing.assert_close(kl, torch.where(mask, old - ref, 0.0))


def test_completion_layout_round_trip():
    mask = _batch().completion_mask
    shifted = completion_layout(mask)
    assert shifted.tolist() == [[True, True, True, False], [True, True, True, True], [True, True, False, False]]
    x = torch.randn(mask.shape)
    left = to_completion_layout(x, mask, shifted)
    assert left[0, :3].tolist() == x[0, 3:6].tolist()
    torch.testing.assert_close(from_completion_layout(left, mask, shifted), torch.where(mask, x, 0.0))


def test_minibatches_keep_groups_whole():
    assert prompt_rows(torch.tensor([2, 0]), 3, 2).tolist() == [2, 0, 5, 3]
    parts = prompt_minibatches(7, 3, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(parts).tolist()) == list(range(7)) and [len(p) for p in parts] == [3, 2, 2]


def test_ppo_rollout_wiring_matches_brute_force(tmp_path):
    """The loop's PPO preparation on a real rollout: old values from the critic per prefix, then the targets
    of the scores, behaviour and reference log-probs it computed, exactly as the brute force."""
    from prefopt.online.config import OnlineConfig
    from prefopt.online.setup import setup_online_run
    from prefopt.online.trainer import _prepare

    settings = online_settings(tmp_path, algorithm="ppo", kl_coef=0.2, gamma=0.95, lam=0.9)
    model, tokenizer, prompts = settings.pop("model"), settings.pop("tokenizer"), settings.pop("prompts")
    run = setup_online_run(OnlineConfig(**settings), model=model, tokenizer=tokenizer, prompts=prompts)
    assert run.critic is not None
    torch.nn.init.normal_(run.critic.head.weight, std=0.1)
    rollout, prepared, metrics = _prepare(run, 0)
    batch = rollout.token_batch()
    with torch.no_grad():
        values = _brute_force_values(run.critic.backbone, run.critic.head, batch)
    torch.testing.assert_close(prepared.token_inputs["old_values"], values, rtol=1e-4, atol=1e-5)
    scores = prepared.scores[:, 0]  # K = 1
    advantages, returns = _brute_force_targets(
        scores, prepared.old_logps, prepared.ref_logps, batch.completion_mask, values, 0.2, 0.95, 0.9
    )
    torch.testing.assert_close(prepared.token_inputs["advantages"], advantages, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(prepared.token_inputs["returns"], returns, rtol=1e-4, atol=1e-4)
    assert metrics["kl_coef"] == 0.2 and metrics["objective/scores"] == pytest.approx(float(scores.mean()))
