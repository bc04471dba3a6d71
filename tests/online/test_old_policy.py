"""π_old from the learner's forward (`prefopt.online.old_policy`): when one optimiser step uses the rollout, the
no-gradient π_old pass is skipped and the loss, its gradients and every logged metric equal the annotated path's
(the π_old forward run, `reuses_learner_forward` forced off) to 1e-6; where π_old is read before or after the first
update (two minibatches, PPO's critic, importance sampling) the pass still runs. A random-init 2-layer Llama, CPU."""

from __future__ import annotations

import pytest
import torch

import prefopt.online.annotation as annotation
from prefopt.data.synthetic import build_tokenizer
from prefopt.online.config import OnlineConfig
from prefopt.online.old_policy import reuses_learner_forward
from prefopt.online.setup import setup_online_run, synthetic_prompts
from prefopt.online.trainer import _minibatch_loss, _prepare, train_online

from ..train.tiny_task import tiny_llama
from .test_importance import _settings as run_settings


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    return tiny_llama(tokenizer, seed=0), tokenizer, synthetic_prompts(0)[0][:16]


def _settings(tiny, tmp_path, **overrides):
    """The importance-sampling tests' tiny GRPO run, with a clip range that bites."""
    return run_settings(tiny, tmp_path, **{"loss_hparams": {"beta": 0.04, "clip_range": 0.1}, **overrides})


def _step_grads(tiny, tmp_path, reuse: bool, monkeypatch, **overrides):
    """(loss output, the policy's gradients, the annotation's metrics, prepared) of step 0's one minibatch."""
    monkeypatch.setattr(annotation, "reuses_learner_forward", reuses_learner_forward if reuse else lambda run: False)
    run = _run(tiny, tmp_path, **overrides)
    rollout, prepared, metrics = _prepare(run, 0)
    assert prepared.old_from_learner == reuse
    out = _minibatch_loss(
        run, rollout, prepared, torch.randperm(prepared.num_prompts, generator=torch.Generator().manual_seed(0))
    )
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in run.policy.named_parameters() if p.grad is not None}
    return out, grads, metrics, prepared


@pytest.mark.parametrize("share_prompt", ["off", "on"])
def test_the_learners_forward_gives_what_the_old_pass_gives(tiny, tmp_path, monkeypatch, share_prompt):
    kw = {"share_prompt": share_prompt}
    out, grads, metrics, prepared = _step_grads(tiny, tmp_path / "reuse", True, monkeypatch, **kw)
    ref_out, ref_grads, ref_metrics, ref_prepared = _step_grads(tiny, tmp_path / "old", False, monkeypatch, **kw)
    assert "objective/kl" not in metrics and "objective/kl" in ref_metrics  # made after the learner's forward
    torch.testing.assert_close(out.loss, ref_out.loss, rtol=0, atol=1e-6)
    assert set(out.scalars()) == set(ref_out.scalars())
    for name, value in out.scalars().items():
        assert value == pytest.approx(ref_out.scalars()[name], abs=1e-6), name
    assert grads.keys() == ref_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=0, atol=1e-6)
    mask = prepared.completion_mask
    torch.testing.assert_close(prepared.old_logps[mask], ref_prepared.old_logps[mask], rtol=0, atol=1e-6)
    torch.testing.assert_close(prepared.old_entropy, ref_prepared.old_entropy, rtol=0, atol=1e-5)


def test_logged_metrics_and_weights_equal_the_old_pass(tiny, tmp_path, monkeypatch):
    """Two steps of `train_online`: every logged metric (time/* aside) and the trained weights to 1e-6."""
    runs = {}
    for reuse in (True, False):
        monkeypatch.setattr(annotation, "reuses_learner_forward", reuses_learner_forward if reuse else lambda r: False)
        records = []
        settings = _settings(tiny, tmp_path / str(reuse))
        train_online(**settings, on_step=lambda s, r: records.append(r))
        runs[reuse] = records, settings["model"].state_dict()
    (new, new_weights), (old, old_weights) = runs[True], runs[False]
    for a, b in zip(new, old, strict=True):
        assert {"objective/kl", "objective/entropy"} <= a.keys() and a.keys() == b.keys()
        for name in a:
            if not name.startswith("time/"):
                assert a[name] == pytest.approx(b[name], rel=1e-6, abs=1e-6), name
    for name in old_weights:
        torch.testing.assert_close(new_weights[name], old_weights[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"num_minibatches": 2}, {"epochs": 2}, {"importance_sampling": "token"}, {"algorithm": "ppo"}],
    ids=["one-step", "minibatches", "epochs", "importance", "critic"],
)
def test_when_the_old_pass_is_skipped(tiny, tmp_path, overrides):
    run = _run(tiny, tmp_path, **overrides, **({"loss_hparams": {}} if overrides.get("algorithm") == "ppo" else {}))
    assert reuses_learner_forward(run) == (not overrides)


@pytest.mark.parametrize("algorithm", ["best_of_n", "cispo", "dapo", "dr_grpo", "gspo", "online_dpo", "remax", "rloo"])
def test_every_algorithm_that_skips_the_pass_gets_the_same_loss_and_gradients(tiny, tmp_path, monkeypatch, algorithm):
    """The shortcut is read from the run, not from a name: every rollout loss whose run takes it gets the loss and
    gradients of the annotated path (at its own defaults; the algorithms it never takes are checked above)."""
    overrides = {"algorithm": algorithm, "loss_hparams": {}, "num_minibatches": 1, "epochs": 1}
    if not reuses_learner_forward(_run(tiny, tmp_path / "probe", **overrides)):
        pytest.skip(f"{algorithm}'s run reads π_old before its update: the pass runs")
    out, grads, _, _ = _step_grads(tiny, tmp_path / "reuse", True, monkeypatch, **overrides)
    ref_out, ref_grads, _, _ = _step_grads(tiny, tmp_path / "old", False, monkeypatch, **overrides)
    torch.testing.assert_close(out.loss, ref_out.loss, rtol=0, atol=1e-6)
    for name, value in out.scalars().items():
        assert value == pytest.approx(ref_out.scalars()[name], abs=1e-6), name
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=0, atol=1e-6)


def _run(tiny, tmp_path, **overrides):
    settings = _settings(tiny, tmp_path, **overrides)
    inputs = {name: settings.pop(name) for name in ("model", "tokenizer", "prompts", "reward")}
    return setup_online_run(OnlineConfig(**settings), **inputs)
