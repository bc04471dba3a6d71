"""Truncated importance sampling (`prefopt.online.importance`): the weights and metrics by hand, the gradient of a
reweighted loss equal to the hand-weighted loss's, the sampler's log-probs recorded by HF `generate` (and read from
vLLM's answer), and the online loop with an identical sampler (training unchanged, bit for bit) and a perturbed one
(mismatch logged, weights min(exp(old − sampler), C) on hand-picked tokens). A random-init 2-layer Llama, CPU."""

from __future__ import annotations

import copy
import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

import prefopt.online.annotation as annotation
import prefopt.online.group_sampling as group_sampling
import prefopt.online.trainer as trainer
from prefopt.data.synthetic import build_tokenizer
from prefopt.engine import LogProbEngine
from prefopt.losses import grpo, gspo
from prefopt.online.config import OnlineConfig
from prefopt.online.generation import GenerationConfig, generate
from prefopt.online.importance import importance_weights, mismatch_metrics, reweight_gradient
from prefopt.online.sampler_logprobs import vllm_logprobs
from prefopt.online.setup import setup_online_run, synthetic_prompts
from prefopt.online.trainer import _minibatch_loss, _prepare, train_online
from prefopt.settings import SettingsError

from ..train.tiny_task import tiny_llama

MASK = torch.tensor([[True, True, True, False], [True, True, False, False]])
OLD = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-3.0, -0.2, 0.0, 0.0]])
SAMPLER = torch.tensor([[-1.5, -1.9, -0.5, -7.0], [-1.0, -0.3, 0.0, 0.0]])


def test_token_weights_by_hand():
    """log r = old − sampler = [0.5, −0.1, 0 | −2, 0.1]; w = min(e^{log r}, C = 1.5); padding gets 1."""
    w = importance_weights(OLD, SAMPLER, MASK, mode="token", cap=1.5)
    expected = torch.tensor([[math.exp(0.5), math.exp(-0.1), 1.0, 1.0], [math.exp(-2.0), math.exp(0.1), 1.0, 1.0]])
    expected[0, 0] = 1.5  # e^0.5 = 1.65 > C
    torch.testing.assert_close(w, expected, rtol=1e-6, atol=0)
    assert not w.requires_grad


def test_sequence_weights_by_hand():
    """Sequence mode: w_i = min(exp(Σ_t log r_t), C) on every token of row i: e^{0.4} and e^{−1.9}."""
    w = importance_weights(OLD, SAMPLER, MASK, mode="sequence", cap=1.4)
    torch.testing.assert_close(w[0, :3], torch.full((3,), 1.4))  # e^0.4 = 1.49 > C
    torch.testing.assert_close(w[1, :2], torch.full((2,), math.exp(-1.9)))
    assert w[0, 3] == 1 and w[1, 2:].eq(1).all()


def test_mismatch_metrics_by_hand():
    """|Δ| = [0.5, 0.1, 0, 2, 0.1]: mean 0.54, max 2; ratios e^{0.5} (capped at 1.5) … e^{−2}."""
    m = mismatch_metrics(OLD, SAMPLER, MASK, mode="token", cap=1.5)
    assert m["is/logp_diff_mean"] == pytest.approx(2.7 / 5)
    assert m["is/logp_diff_max"] == pytest.approx(2.0)
    assert m["is/ratio_max"] == pytest.approx(math.exp(0.5)) and m["is/ratio_min"] == pytest.approx(math.exp(-2))
    assert m["is/capped_frac"] == pytest.approx(1 / 5)
    expected = (1.5 + math.exp(-0.1) + 1 + math.exp(-2) + math.exp(0.1)) / 5
    assert m["is/weight_mean"] == pytest.approx(expected)
    seq = mismatch_metrics(OLD, SAMPLER, MASK, mode="sequence", cap=1.5)
    assert seq["is/ratio_max"] == pytest.approx(math.exp(0.4)) and seq["is/capped_frac"] == 0


def test_a_sampler_without_log_probs_gets_no_correction():
    """NaN (vLLM gave no log-prob, e.g. a stop token it did not return) means ratio 1 there."""
    sampler = SAMPLER.clone()
    sampler[0, 0] = float("nan")
    w = importance_weights(OLD, sampler, MASK, mode="token", cap=1.5)
    assert w[0, 0] == 1 and torch.isfinite(w).all()
    assert math.isfinite(mismatch_metrics(OLD, sampler, MASK, mode="token", cap=1.5)["is/logp_diff_mean"])


def test_reweighting_keeps_values_and_scales_each_tokens_gradient():
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, 4, dtype=torch.float64)
    y = reweight_gradient(x, w)
    assert torch.equal(y, x)  # same values, bit for bit
    (g,) = torch.autograd.grad((y * torch.arange(8.0, dtype=torch.float64).view(2, 4)).sum(), x)
    torch.testing.assert_close(g, w * torch.arange(8.0, dtype=torch.float64).view(2, 4))
    ones = reweight_gradient(x, torch.ones_like(x))
    (g1,) = torch.autograd.grad(ones.pow(2).sum(), x)
    (g0,) = torch.autograd.grad(x.pow(2).sum(), x)
    assert torch.equal(g1, g0)  # w = 1: the uncorrected gradient, bit for bit


def _rollout_tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, 3:] = False
    mask[3, 4:] = False
    old = -torch.rand(4, 5, generator=g, dtype=torch.float64) - 0.1
    policy = (old + 0.3 * torch.randn(4, 5, generator=g, dtype=torch.float64)).requires_grad_(True)
    ref = old - 0.2 * torch.rand(4, 5, generator=g, dtype=torch.float64)
    sampler = old + 0.5 * torch.randn(4, 5, generator=g, dtype=torch.float64)
    rewards = torch.tensor([[1.0, 0.0], [0.5, 2.0]], dtype=torch.float64)  # B = 2 prompts, K = 2
    return policy, old, ref, sampler, mask, rewards


def test_grpo_gradient_equals_the_hand_weighted_loss():
    """GRPO (β = 0.05, ε = 0.1, not the defaults) with TIS weights w: the gradient equals that of
    mean_i (1/|o_i|) Σ_t w_t·[max(−Â_i ρ_t, −Â_i clip(ρ_t, 1 ± ε)) + β·k3_t], Â_i = (r_i − mean)/(std + 1e-4),
    written out here by hand."""
    policy, old, ref, sampler, mask, rewards = _rollout_tensors()
    w = importance_weights(old, sampler, mask, mode="token", cap=1.3)
    assert (w[mask] < 1.3).any() and (w[mask] == 1.3).any()  # some tokens capped, some not
    out = grpo(reweight_gradient(policy, w), old, mask, rewards=rewards, ref_logps=ref, beta=0.05, clip_range=0.1)
    (got,) = torch.autograd.grad(out.loss, policy)

    adv = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)  # [B, K]
    adv = adv.t().reshape(-1, 1)  # row s = k·B + b
    ratio = torch.exp(policy - old)
    surrogate = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.9, 1.1))
    u = ref - policy
    k3 = torch.exp(u) - u - 1
    token = torch.where(mask, w * (surrogate + 0.05 * k3), torch.zeros_like(policy))
    hand = (token.sum(1) / mask.sum(1)).mean()
    (expected,) = torch.autograd.grad(hand, policy)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert out.loss.item() == pytest.approx(
        grpo(policy, old, mask, rewards=rewards, ref_logps=ref, beta=0.05, clip_range=0.1).loss.item(), abs=1e-15
    )  # the loss's value is unchanged: only its gradient is weighted


def test_sequence_mode_scales_each_sequences_gradient():
    """Sequence mode on GSPO (sequence ratios): the gradient is that of mean_i w_i·loss_i."""
    policy, old, _, sampler, mask, rewards = _rollout_tensors(1)
    w = importance_weights(old, sampler, mask, mode="sequence", cap=2.0)
    out = gspo(reweight_gradient(policy, w), old, mask, rewards=rewards, clip_low=0.05, clip_high=0.08)
    (got,) = torch.autograd.grad(out.loss, policy)
    plain = gspo(policy, old, mask, rewards=rewards, clip_low=0.05, clip_high=0.08)
    (expected,) = torch.autograd.grad((w[:, 0] * plain.per_example).mean(), policy)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = tiny_llama(tokenizer)
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)  # logits far from uniform, so that a temperature changes them visibly
    return model, tokenizer, synthetic_prompts(0)[0][:16]


@pytest.mark.parametrize(("temperature", "top_p"), [(0.7, 1.0)])
def test_generate_records_the_samplers_log_probs(tiny, temperature, top_p):
    """HF generate's recorded log-probs are those of the distribution it drew from (the engine's at the same
    temperature, fp32 both), at the completion tokens; recording them leaves the samples unchanged."""
    model, tokenizer, prompts = tiny
    config = GenerationConfig(max_new_tokens=8, num_samples=2, temperature=temperature, top_p=top_p, backend="hf")
    plain = generate(model, tokenizer, prompts[:3], config, seed=5)
    recorded = generate(model, tokenizer, prompts[:3], GenerationConfig(**{**vars(config), "logprobs": True}), seed=5)
    assert plain.sampler_logps is None and torch.equal(plain.input_ids, recorded.input_ids)
    assert recorded.sampler_logps is not None and recorded.sampler_logps.shape == recorded.input_ids.shape
    mask = recorded.completion_mask
    assert recorded.sampler_logps[~mask].eq(0).all()
    with torch.no_grad():
        engine = LogProbEngine(model, temperature=temperature)(recorded.token_batch(), return_tokens=True).tokens
    torch.testing.assert_close(recorded.sampler_logps[mask], engine[mask], rtol=0, atol=1e-5)


def test_vllm_log_probs_are_read_per_sampled_token():
    entry = SimpleNamespace(logprob=-0.25)
    completion = SimpleNamespace(logprobs=[{7: entry, 3: SimpleNamespace(logprob=-9.0)}, {5: -1.5}])
    got = vllm_logprobs(completion, [7, 5, 2])  # the stop token 2 was put back by prefopt: vLLM gave none
    assert got[:2] == [-0.25, -1.5] and math.isnan(got[2])


def _settings(tiny, tmp_path, **overrides):
    model, tokenizer, prompts = tiny
    settings = {
        "algorithm": "grpo",
        "model": copy.deepcopy(model),
        "tokenizer": tokenizer,
        "prompts": prompts,
        "reward": lambda prompts, completions: [float(len(c) % 5) for c in completions],
        "steps": 2,
        "prompts_per_step": 4,
        "num_samples": 2,
        "max_new_tokens": 10,
        "output_dir": str(tmp_path / "run"),
        "progress": False,
        "num_threads": 1,
        "lr": 1e-2,
        "checkpoint_every": 0,
        "loss_hparams": {"beta": 0.02},
    }
    settings.update(overrides)
    return settings


def _final_weights(tiny, tmp_path, **overrides):
    """(the step records, the trained weights) of a run; `train_online` trains the model it is given in place."""
    records = []
    settings = _settings(tiny, tmp_path, **overrides)
    train_online(**settings, on_step=lambda s, r: records.append(r))
    return records, {k: v.clone() for k, v in settings["model"].state_dict().items()}


def test_an_identical_sampler_trains_exactly_as_without_correction(tiny, tmp_path, monkeypatch):
    """A sampler whose log-probs are the learner's own: every ratio is 1 and training equals the uncorrected run
    bit for bit. HF generate itself (fp32 here) differs from the engine by float rounding only."""
    records_off, off = _final_weights(tiny, tmp_path / "off")
    records_hf, hf = _final_weights(tiny, tmp_path / "hf", importance_sampling="token")
    assert records_hf[0]["is/logp_diff_max"] < 1e-4 and records_hf[0]["is/capped_frac"] == 0
    assert records_hf[0]["grad_norm"] == pytest.approx(records_off[0]["grad_norm"], rel=1e-5)
    for name in off:  # updates of ~lr = 1e-2 per step; Adam turns the weights' 1e-6 into up to ~1e-5 on a few
        torch.testing.assert_close(hf[name], off[name], rtol=0, atol=1e-4)

    original = annotation.importance_sampling
    monkeypatch.setattr(annotation, "importance_sampling", lambda run, _, old, *a: original(run, old, old, *a))
    records_same, same = _final_weights(tiny, tmp_path / "same", importance_sampling="token")
    assert records_same[0]["is/logp_diff_max"] == 0 and records_same[0]["is/weight_mean"] == 1
    assert all(torch.equal(same[name], off[name]) for name in off)
    assert not all(torch.equal(off[name], v) for name, v in tiny[0].state_dict().items())  # it did train
    assert {k: v for k, v in records_same[-1].items() if not k.startswith(("is/", "time/"))} == {
        k: v for k, v in records_off[-1].items() if not k.startswith("time/")
    }


def test_a_perturbed_sampler_is_measured_and_corrected(tiny, tmp_path, monkeypatch):
    """A sampler at temperature 1.6 while the learner scores at 1: the mismatch is logged, the weights are
    min(exp(old − sampler), C) on tokens checked by hand, and the gradient reaching each token's log-prob is w_t
    times the loss's own."""
    real = group_sampling.generation_config
    monkeypatch.setattr(
        group_sampling, "generation_config", lambda config: dataclasses.replace(real(config), temperature=1.6)
    )
    settings = _settings(tiny, tmp_path, importance_sampling="token", importance_sampling_cap=1.5)
    inputs = {name: settings.pop(name) for name in ("model", "tokenizer", "prompts", "reward")}
    run = setup_online_run(OnlineConfig(**settings), **inputs)
    rollout, prepared, metrics = _prepare(run, 0)
    assert metrics["is/logp_diff_mean"] > 0.05 and metrics["is/capped_frac"] > 0 and metrics["is/ratio_max"] > 1.5
    mask, old, sampler = prepared.completion_mask, prepared.old_logps, rollout.sampler_logps
    assert prepared.is_weights is not None and sampler is not None
    for s, t in mask.nonzero()[::7][:6].tolist():  # a few tokens, by hand
        assert float(prepared.is_weights[s, t]) == pytest.approx(min(math.exp(old[s, t] - sampler[s, t]), 1.5))
    seen = {}

    def recording(policy_logps, weights):
        seen["policy"], seen["weights"] = policy_logps, weights
        seen["input"] = reweight_gradient(policy_logps, weights)
        return seen["input"]

    monkeypatch.setattr(trainer, "reweight_gradient", recording)
    out = _minibatch_loss(run, rollout, prepared, torch.arange(prepared.num_prompts))
    to_policy, to_input = torch.autograd.grad(out.loss, [seen["policy"], seen["input"]])
    assert (seen["weights"] != 1).any() and to_input.abs().sum() > 0
    torch.testing.assert_close(to_policy, seen["weights"] * to_input, rtol=1e-6, atol=1e-9)


def test_sequence_mode_in_the_loop(tiny, tmp_path, monkeypatch):
    """One GRPO step with sequence weights against a perturbed sampler: the sequence metrics are logged."""
    real = group_sampling.generation_config
    monkeypatch.setattr(
        group_sampling, "generation_config", lambda config: dataclasses.replace(real(config), temperature=1.6)
    )
    records, _ = _final_weights(tiny, tmp_path, steps=1, importance_sampling="sequence", importance_sampling_cap=1.5)
    record = records[0]
    assert all(math.isfinite(v) for v in record.values())
    assert record["is/ratio_max"] > 1.5 and 0 < record["is/capped_frac"] <= 1 and record["is/weight_mean"] != 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"importance_sampling": "tokens"}, "OnlineConfig.importance_sampling='tokens'.*token"),
        ({"importance_sampling": "token", "importance_sampling_cap": 0.5}, "importance_sampling_cap=0.5.*≥ 1"),
        ({"importance_sampling": "token", "importance_sampling_cap": math.inf}, "importance_sampling_cap"),
        ({"algorithm": "online_dpo", "pair_loss": "ipo", "importance_sampling": "token"}, "pair_loss='ipo'.*'off'"),
    ],
)
def test_bad_settings_are_one_line(settings, message):
    with pytest.raises(SettingsError, match=message) as caught:
        OnlineConfig(**settings)
    assert "\n" not in str(caught.value)
