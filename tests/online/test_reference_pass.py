"""The rollout's π_ref pass runs only where the run reads π_ref (`prefopt.online.annotation.scores_reference`): at
β = 0 every rollout loss with a KL coefficient gives the same loss and gradients without a reference as with one,
so a β = 0 run skips the pass, trains to the same weights and logs the same metrics apart from the KL ones;
`reference_kl="always"` scores it anyway, and β > 0, PPO's critic, online DPO and losses without β still score it."""

from __future__ import annotations

import pytest
import torch

import prefopt.online.annotation as annotation
from prefopt.data.synthetic import build_tokenizer
from prefopt.online.config import OnlineConfig
from prefopt.online.setup import setup_online_run, synthetic_prompts
from prefopt.online.trainer import train_online
from prefopt.registry import get_loss, list_losses, loss_spec

from ..train.tiny_task import tiny_llama
from .test_importance import _settings as run_settings

KL_METRICS = {"objective/kl", "kl"}  # the rollout's Σ_t k1 against π_ref, the loss's own KL term


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    return tiny_llama(tokenizer, seed=0), tokenizer, synthetic_prompts(0)[0][:16]


def _with_beta() -> list[str]:
    """Rollout losses whose β may be 0 (online DPO's β is DPO's inverse temperature, > 0)."""
    return [
        n
        for n in list_losses("rollout")
        for h in loss_spec(n).hparams
        if h.name == "beta" and (h.domain is None or 0.0 in h.domain)
    ]


def _rollout_inputs(spec, groups: int, k: int, width: int, seed: int = 0) -> dict:
    """Rollout tensors of S = groups·K rows for `spec`'s declared extra inputs (rewards, values, …)."""
    g = torch.Generator().manual_seed(seed)
    rows = groups * k
    made = {
        "rewards": torch.randn(groups, k, generator=g),
        "greedy_rewards": torch.randn(groups, generator=g),
        "values": torch.randn(rows, width, generator=g),
        "old_values": torch.randn(rows, width, generator=g),
        "advantages": torch.randn(rows, width, generator=g),
        "returns": torch.randn(rows, width, generator=g),
        "token_entropy": torch.rand(rows, width, generator=g),
    }
    return {name: made[name] for name in spec.extra_inputs if name in made}


@pytest.mark.parametrize("name", _with_beta())
def test_at_beta_zero_a_reference_changes_no_loss_and_no_gradient(name):
    """The registry's rule (`prefopt.loss_inputs`: ref_logps required only when β > 0) holds in each loss's body:
    at β = 0 the loss value and its gradient are the same with or without π_ref's log-probs, to float rounding."""
    spec = loss_spec(name)
    if spec.rollout_inputs:  # computed by the loop from the whole rollout; the loop scores π_ref for these
        pytest.skip(f"{name} declares rollout-wide inputs, for which the loop always scores π_ref")
    groups, k, width = 3, 4, 6
    g = torch.Generator().manual_seed(1)
    base = -torch.rand(groups * k, width, generator=g) - 0.1
    mask = torch.rand(groups * k, width, generator=g) > 0.2
    mask[:, 0] = True
    extra = _rollout_inputs(spec, groups, k, width)
    lengths = {"max_length": width} if any(h.name == "max_length" for h in spec.hparams) else {}  # Dr. GRPO's L_max
    loss = get_loss(name, beta=0.0, **lengths)
    results = []
    for ref in (None, base - 0.3 * torch.rand(base.shape, generator=g)):
        policy = (base + 0.05).clone().requires_grad_()
        kwargs = {**extra, **({} if ref is None else {"ref_logps": ref})}
        if "ref_logps" in spec.extra_inputs and ref is None and spec.defaults().get("beta") is None:
            pytest.skip(f"{name} has no β default")
        out = loss(policy, base, mask, **kwargs)
        out.loss.backward()
        results.append((out, policy.grad.clone()))
    (without, grad_without), (with_ref, grad_with) = results
    torch.testing.assert_close(without.loss, with_ref.loss, rtol=0, atol=1e-7)
    torch.testing.assert_close(grad_without, grad_with, rtol=0, atol=1e-7)
    for metric in set(without.metrics) & set(with_ref.metrics):
        torch.testing.assert_close(without.metrics[metric], with_ref.metrics[metric], rtol=0, atol=1e-6)
    assert set(with_ref.metrics) - set(without.metrics) <= KL_METRICS


def _runs(tiny, tmp_path, monkeypatch, **overrides):
    """Two steps each with reference_kl "auto" and "always": (records, weights, π_ref passes) per setting."""
    out = {}
    original = annotation.score_rows
    for setting in ("auto", "always"):
        calls = []

        def spy(engine, *args, **kwargs):
            calls.append(engine)
            return original(engine, *args, **kwargs)

        monkeypatch.setattr(annotation, "score_rows", spy)
        records = []
        settings = run_settings(tiny, tmp_path / setting, reference_kl=setting, **overrides)
        model = settings["model"]
        result = train_online(**settings, on_step=lambda s, r: records.append(r))
        assert result.steps == 2
        out[setting] = records, model.state_dict(), len(calls)
    return out


def test_a_beta_zero_run_skips_the_pass_and_trains_the_same(tiny, tmp_path, monkeypatch):
    runs = _runs(tiny, tmp_path, monkeypatch, loss_hparams={"beta": 0.0, "clip_range": 0.1})
    (auto, auto_weights, auto_calls), (always, always_weights, always_calls) = runs["auto"], runs["always"]
    assert auto_calls == 0 and always_calls == 2  # one π_ref pass per step, only when asked
    for a, b in zip(auto, always, strict=True):
        assert "objective/kl" not in a and "objective/kl" in b
        assert set(b) - set(a) <= KL_METRICS and a["objective/non_score_reward"] == 0.0
        for name in a:
            if not name.startswith("time/"):
                assert a[name] == pytest.approx(b[name], rel=1e-6, abs=1e-6), name
    for name, weight in always_weights.items():
        torch.testing.assert_close(auto_weights[name], weight, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss_hparams": {"beta": 0.02}},
        {"algorithm": "ppo", "loss_hparams": {}},
        {"algorithm": "online_dpo", "loss_hparams": {}},
        {"algorithm": "best_of_n", "loss_hparams": {}},
        {"algorithm": "reinforce_pp", "loss_hparams": {"beta": 0.0}},
        {"loss_hparams": {"beta": 0.0}, "reference_kl": "always"},
    ],
    ids=["beta>0", "ppo-critic", "online-dpo", "no-beta", "rollout-wide-inputs", "always"],
)
def test_who_scores_the_reference(tiny, tmp_path, overrides):
    settings = run_settings(tiny, tmp_path, **overrides)
    inputs = {name: settings.pop(name) for name in ("model", "tokenizer", "prompts", "reward")}
    run = setup_online_run(OnlineConfig(**settings), **inputs)
    assert annotation.scores_reference(run)
    grpo = run_settings(tiny, tmp_path / "zero", loss_hparams={"beta": 0.0})
    inputs = {name: grpo.pop(name) for name in ("model", "tokenizer", "prompts", "reward")}
    assert not annotation.scores_reference(setup_online_run(OnlineConfig(**grpo), **inputs))
    with pytest.raises(ValueError, match="reference_kl='never'"):
        OnlineConfig(reference_kl="never")
