"""The reference policy: bit-for-bit deterministic training, an atomic cache, and a model that speaks
the language (grammar acceptance above a stated threshold even at test size)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from prefopt.data.synthetic import (
    SFTConfig,
    cache_root,
    load_reference_policy,
    reference_policy,
    train_reference_policy,
)
from prefopt.data.synthetic import policy as policy_module

MICRO = SFTConfig(
    hidden_size=16,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=32,
    steps=6,
    batch_size=8,
    warmup_steps=2,
    eval_reviews=4,
    eval_samples=4,
    max_new_tokens=8,
)
# The test-size model (≈110k parameters, 300 steps of 32 reviews; 0.78 measured on the 2-core dev box) must
# have at least this share of its 64 samples accepted by the grammar (the default model: 0.86).
TINY_ACCEPTANCE_THRESHOLD = 0.6


def weights(policy) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in policy.model.state_dict().items()}


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        SFTConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="steps"):
        SFTConfig(steps=0)
    with pytest.raises(ValueError, match="learning_rate"):
        SFTConfig(learning_rate=0.0)
    assert SFTConfig().fingerprint() != SFTConfig.tiny().fingerprint()


def test_training_is_bit_for_bit_deterministic() -> None:
    rng_state = torch.random.get_rng_state()
    first = train_reference_policy(MICRO, 3, progress=False)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the caller's RNG is left alone
    again = train_reference_policy(MICRO, 3, progress=False)
    other = train_reference_policy(MICRO, 4, progress=False)
    a, b, c = weights(first), weights(again), weights(other)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert first.report["perplexity"] == again.report["perplexity"]


def test_cache_is_keyed_loaded_and_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = reference_policy(5, MICRO, cache_dir=tmp_path, progress=False)
    assert built.path is not None and built.path.parent == tmp_path / "synthetic"
    assert f"seed5-{MICRO.fingerprint()}" in built.path.name
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == [built.path.name]  # no temp folder left

    def no_training(*args, **kwargs):
        raise AssertionError("should have loaded from the cache")

    monkeypatch.setattr(policy_module, "train_reference_policy", no_training)
    loaded = reference_policy(5, MICRO, cache_dir=tmp_path, progress=False)
    a, b = weights(built), weights(loaded)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.report["acceptance_rate"] == built.report["acceptance_rate"]
    prompt = "food review of the pizza :"
    assert loaded.tokenizer(prompt)["input_ids"] == built.tokenizer(prompt)["input_ids"]

    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path / "elsewhere"))
    assert cache_root() == tmp_path / "elsewhere"
    with pytest.raises(FileNotFoundError, match="no synthetic reference policy"):
        load_reference_policy(tmp_path)


def test_failed_save_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = train_reference_policy(MICRO, 0, progress=False)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(policy.tokenizer, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        policy_module.save_reference_policy(policy, tmp_path / "target")
    assert list(tmp_path.iterdir()) == []


def test_tiny_policy_speaks_the_language(tiny_policy) -> None:
    report = tiny_policy.report
    assert report["acceptance_rate"] >= TINY_ACCEPTANCE_THRESHOLD, report["examples"]
    assert report["perplexity"] < 8.0  # a uniform guess over the ≈200 words would be ≈200
    assert report["distinct_rate"] > 0.9  # varied, not one memorised review
    assert report["config"] == dataclasses.asdict(SFTConfig.tiny())
    assert 50_000 < report["parameters"] < 200_000
