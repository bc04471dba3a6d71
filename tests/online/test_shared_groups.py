"""Prefix-shared rollout groups (`prefopt.online.shared_groups`): the K samples of a prompt read it once.

The unshared rows are the truth: per-token log-probs of the policy and the reference, entropies, the critic's
values, and the GRPO and PPO losses with their gradients (policy and critic) must equal the unshared rows' to
1e-5 in float32 on a tiny Llama, with prompts and samples of different lengths (padded rows). The loop uses the
same functions (`prefopt.online.trainer`), and a one-step run with sharing on equals one with it off.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from prefopt import get_loss
from prefopt.batch import TokenBatch
from prefopt.cli.train_online import config_from_args as online_config_from_args
from prefopt.compare import CompareConfig
from prefopt.data.synthetic import build_tokenizer
from prefopt.engine import LogProbEngine
from prefopt.online import trainer
from prefopt.online.config import OnlineConfig
from prefopt.online.rollout_step import PreparedRollout, critic_targets, loss_inputs, prompt_rows
from prefopt.online.setup import synthetic_prompts
from prefopt.online.shared_groups import (
    RolloutRows,
    critic_values,
    rollout_rows,
    score_rows,
    share_prompt_setting,
    shared_layout,
)
from prefopt.online.trainer import train_online
from prefopt.online.value import critic_from_policy
from prefopt.registry import loss_spec
from prefopt.settings import SettingsError
from tests.train.tiny_task import tiny_llama

from .test_trainer_cli import _parse

ATOL = 1e-5
B, K = 3, 4
TOKENIZER = build_tokenizer()


def rollout_batch(k: int = K, seed: int = 0, prompt: tuple[int, int] = (8, 16), completion: tuple[int, int] = (1, 5)):
    """Group-major rows [x_b | y_b,k | padding] (row k·B + b), ragged prompts and samples."""
    g = torch.Generator().manual_seed(seed)
    vocab = len(TOKENIZER)
    prompts = [
        torch.randint(4, vocab, (int(torch.randint(*prompt, (1,), generator=g)),), generator=g) for _ in range(B)
    ]
    rows = [
        (prompts[b], torch.randint(4, vocab, (int(torch.randint(*completion, (1,), generator=g)),), generator=g))
        for _ in range(k)
        for b in range(B)
    ]
    width = max(len(x) + len(y) for x, y in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    real = torch.zeros(len(rows), width, dtype=torch.long)
    scored = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, (x, y) in enumerate(rows):
        ids[r, : len(x) + len(y)] = torch.cat([x, y])
        real[r, : len(x) + len(y)] = 1
        scored[r, len(x) : len(x) + len(y)] = True
    return TokenBatch.from_rows(ids, real, scored)


def test_shared_layout_reads_each_prompt_once():
    batch = rollout_batch()
    shared = shared_layout(batch, K)
    assert shared is not None and shared.shared_prefix and shared.input_ids.shape[0] == B
    assert (
        shared.attention_mask.sum()
        == batch.attention_mask.sum() - (K - 1) * (batch.attention_mask.bool() & ~batch.completion_mask)[:B].sum()
    )
    assert shared.completion_mask.sum() == batch.completion_mask.sum() and shared.num_sequences == B * K
    assert shared_layout(batch, K, "auto") is not None  # prompt:completion ≈ 4:1 saves far more than a fifth
    assert shared_layout(batch, K, False) is None and shared_layout(rollout_batch(k=1), 1) is None
    short = rollout_batch(prompt=(1, 2), completion=(20, 24))
    assert shared_layout(short, K, "auto") is None and shared_layout(short, K, True) is not None
    other = dataclasses.replace(batch, input_ids=batch.input_ids.clone())
    other.input_ids[B, 0] += 1  # sample 1 of prompt 0 with another prompt: nothing to share
    assert shared_layout(other, K) is None


def _models(seed: int = 0):
    policy, reference = tiny_llama(TOKENIZER, seed=seed), tiny_llama(TOKENIZER, seed=seed + 1)
    return policy.train(), reference.eval()


@pytest.mark.parametrize("share", [True, "auto"])
def test_per_token_log_probs_and_entropies_equal_unshared(share):
    batch = rollout_batch(seed=1)
    policy, _ = _models()
    engine = LogProbEngine(policy)
    with torch.no_grad():
        expected, _ = score_rows(engine, None, RolloutRows(batch), return_entropy=True)
        rows = rollout_rows(batch, K, share)
        assert rows.shared is not None
        out, _ = score_rows(engine, None, rows, return_entropy=True)
    for name in ("tokens", "token_entropy", "sum", "entropy"):
        torch.testing.assert_close(getattr(out, name), getattr(expected, name), atol=ATOL, rtol=0)
    assert out.tokens.shape == batch.input_ids.shape and torch.equal(out.count, expected.count)
    assert (out.tokens[~batch.completion_mask] == 0).all()


def _grpo(share: bool):
    """GRPO's loss on the rows (old log-probs shifted so the ratio is off 1 and some tokens clip) and the
    policy's gradient."""
    batch = rollout_batch(seed=2)
    policy, reference = _models()
    rows = rollout_rows(batch, K, share)
    with torch.no_grad():
        old, _ = score_rows(LogProbEngine(policy), None, rows)
        ref, _ = score_rows(LogProbEngine(reference), None, rows)
    shift = 0.3 * torch.randn(batch.input_ids.shape, generator=torch.Generator().manual_seed(0))
    out, _ = score_rows(LogProbEngine(policy), None, rows)
    rewards = torch.randn(B, K, generator=torch.Generator().manual_seed(1))
    mask = batch.completion_mask
    loss = get_loss("grpo", beta=0.2, clip_range=0.1)(
        out.tokens, old.tokens + shift * mask, mask, rewards=rewards, ref_logps=ref.tokens
    )
    loss.loss.backward()
    return loss, [p.grad.clone() for p in policy.parameters()], ref.tokens


def test_grpo_loss_and_gradients_equal_unshared():
    expected, expected_grads, expected_ref = _grpo(False)
    out, grads, ref = _grpo(True)
    torch.testing.assert_close(ref, expected_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.loss, expected.loss, atol=ATOL, rtol=0)
    for name, value in expected.metrics.items():
        torch.testing.assert_close(out.metrics[name], value, atol=ATOL, rtol=0)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def _ppo(share: bool):
    """PPO through the loop's own pieces (critic targets, loss inputs): the loss, the policy's and the critic's
    gradients, and the critic's values on the rollout."""
    batch = rollout_batch(seed=3)
    policy, reference = _models()
    critic = critic_from_policy(policy)
    torch.nn.init.normal_(critic.head.weight, std=0.5, generator=torch.Generator().manual_seed(2))
    rows = rollout_rows(batch, K, share)
    engine = LogProbEngine(policy)
    with torch.no_grad():
        old, _ = score_rows(engine, None, rows, return_entropy=True)
        ref, _ = score_rows(LogProbEngine(reference), None, rows)
        old_values = critic_values(critic, rows)
    scores = torch.randn(B, K, generator=torch.Generator().manual_seed(3))
    mask = batch.completion_mask
    prepared = PreparedRollout(scores, old.tokens, ref.tokens, mask)
    sequence_scores = scores.transpose(0, 1).reshape(-1)
    prepared.token_inputs, _ = critic_targets(
        sequence_scores,
        old.tokens,
        ref.tokens,
        mask,
        old_values,
        kl_coef=0.1,
        estimator="k3",
        gamma=0.9,
        lam=0.8,
        whiten=True,
    )
    prompts = torch.arange(B)
    policy_out, _ = score_rows(engine, None, rows, return_entropy=True)
    values = critic_values(critic, rows)
    args, kwargs = loss_inputs(
        loss_spec("ppo"), prepared, prompts, prompt_rows(prompts, B, K), mask.shape[1], policy=policy_out, values=values
    )
    loss = get_loss("ppo", clip_range=0.1, clip_range_value=0.1, vf_coef=0.3)(*args, **kwargs)
    loss.loss.backward()
    grads = [p.grad.clone() for m in (policy, critic) for p in m.parameters() if p.grad is not None]
    return loss, grads, old_values, values.detach()


def test_ppo_values_loss_and_gradients_equal_unshared():
    expected, expected_grads, expected_old, expected_values = _ppo(False)
    out, grads, old_values, values = _ppo(True)
    assert (expected_old != 0).any()
    torch.testing.assert_close(old_values, expected_old, atol=ATOL, rtol=0)
    torch.testing.assert_close(values, expected_values, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.loss, expected.loss, atol=ATOL, rtol=0)
    assert len(grads) == len(expected_grads)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_setting_refuses_a_model_that_cannot_take_the_mask():
    policy, _ = _models()
    assert share_prompt_setting("auto", policy) == "auto" and share_prompt_setting("off", policy) is False
    policy.config._attn_implementation = "flash_attention_2"
    assert share_prompt_setting("auto", policy) is False
    with pytest.raises(SettingsError, match="share_prompt='on'.*flash_attention_2.*--share-prompt auto or off"):
        share_prompt_setting("on", policy)
    with pytest.raises(ValueError, match="OnlineConfig.share_prompt='yes'"):
        OnlineConfig(share_prompt="yes")


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_a_step_with_sharing_equals_one_without(algorithm, tmp_path, monkeypatch):
    """One rollout step of the loop (the same samples: they are drawn before any update), shared and not."""
    shared = []

    def spy(*args):
        rows = rollout_rows(*args)
        shared.append(rows.shared is not None)
        return rows

    monkeypatch.setattr(trainer, "rollout_rows", spy)
    records = {}
    for share in ("on", "off"):
        result = train_online(
            algorithm=algorithm,
            model=tiny_llama(TOKENIZER, seed=0),
            tokenizer=TOKENIZER,
            prompts=synthetic_prompts(0)[0][:8],
            steps=1,
            prompts_per_step=2,
            num_samples=3,
            max_new_tokens=6,
            epochs=1,
            share_prompt=share,
            output_dir=str(tmp_path / share),
            progress=False,
            num_threads=1,
            lr=1e-3,
        )
        records[share] = result.final_metrics
        assert shared and all(shared) == (share == "on")  # the rollout and its minibatch, each shared when on
        shared.clear()
    for name, value in records["off"].items():
        if not name.startswith("time/"):
            assert records["on"][name] == pytest.approx(value, abs=1e-5, rel=1e-5), name


def test_command_line_and_compare_carry_the_switch():
    config = online_config_from_args(_parse(["--loss", "grpo", "--share-prompt", "off"]))
    assert config.share_prompt == "off" and OnlineConfig().share_prompt == "auto"
    assert CompareConfig(losses=["grpo"], online={"share_prompt": "on"}).online["share_prompt"] == "on"
