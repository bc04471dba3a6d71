"""Preference data: Bradley–Terry / Plackett–Luce labelling knobs, exports in the public formats that pass
the data layer's validation, splits by prompt, determinism."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from prefopt.data.synthetic import PreferenceConfig, build_preferences
from prefopt.data.synthetic.preferences import label_pairs, label_rankings
from prefopt.data.validate import validate_preferences

SMALL = PreferenceConfig(
    train_prompts=12,
    eval_prompts=4,
    heldout_prompts=4,
    completions_per_prompt=4,
    label_temperature=0.0,
    max_new_tokens=40,
)


def test_noiseless_labels_follow_the_utility_and_ties_are_fair() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5000, generator=g), torch.randn(5000, generator=g)
    wins = label_pairs(a, b, 0.0, g)
    assert torch.equal(wins, a > b)
    tie = torch.zeros(20000)
    assert 0.48 < float(label_pairs(tie, tie, 0.0, g).double().mean()) < 0.52


def test_label_temperature_moves_agreement_from_bt_to_a_coin() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.ones(20000), torch.zeros(20000)
    assert float(label_pairs(a, b, 1.0, g).double().mean()) == pytest.approx(1 / (1 + torch.e**-1), abs=0.015)
    assert float(label_pairs(a, b, 0.25, g).double().mean()) == pytest.approx(1 / (1 + torch.e**-4), abs=0.01)
    assert float(label_pairs(a, b, 1e6, g).double().mean()) == pytest.approx(0.5, abs=0.015)


def test_rankings_noiseless_are_strict_and_noisy_are_plackett_luce() -> None:
    g = torch.Generator().manual_seed(2)
    u = torch.tensor([[0.0, 2.0, 1.0, 2.0]])
    scores = label_rankings(u, 0.0, g)
    assert len(set(scores[0].tolist())) == 4  # the 2.0 tie is broken
    assert scores[0].argsort(descending=True)[2:].tolist() == [2, 0]
    assert float((scores - u).abs().max()) < 1e-5
    # PL with utilities u/T: P(item 0 first) = e^{u0/T} / Σ e^{u/T}
    many = torch.tensor([[1.0, 0.0, 0.0]]).expand(30000, 3)
    first = label_rankings(many, 1.0, g).argmax(-1)
    assert float((first == 0).double().mean()) == pytest.approx(torch.e / (torch.e + 2), abs=0.015)


@pytest.fixture(scope="module")
def data(tiny_policy):
    return build_preferences(tiny_policy.model, tiny_policy.tokenizer, seed=0, config=SMALL)


def test_noiseless_pairs_always_agree_with_gold(data) -> None:
    for split in ("train", "eval"):
        for row in data.rows("paired", split, with_gold=True):
            assert row["chosen_gold"] >= row["rejected_gold"]
    assert data.summary()["label_agreement"] == 1.0


def test_exports_pass_validation_in_every_kind(data) -> None:
    for kind in ("paired", "unpaired", "ranked"):
        for split in ("train", "eval"):
            dataset = data.dataset(kind, split)
            report = validate_preferences(dataset, kind)
            assert report.ok, report.problems[:3]
    paired = data.rows("paired", "train")
    assert set(paired[0]) == {"id", "prompt", "chosen", "rejected"}
    assert len(paired) == 2 * sum(g.split == "train" for g in data.groups)  # K = 4: two pairs per prompt
    assert len(data.groups) + data.dropped_prompts == 12 + 4
    unpaired = data.rows("unpaired", "train")
    assert len(unpaired) == 2 * len(paired) and [r["label"] for r in unpaired[:2]] == [True, False]
    assert unpaired[0]["pair_id"] == unpaired[1]["pair_id"] == 0
    ranked = data.rows("ranked", "train", with_gold=True)
    for row in ranked:
        assert row["scores"] == sorted(row["scores"], reverse=True) and len(row["completions"]) == 4
        assert row["gold_rewards"] == sorted(row["gold_rewards"], reverse=True)  # T = 0: scores are gold
    assert set(data.dataset_dict("paired")) == {"train", "eval"}


def test_splits_are_disjoint_by_prompt_and_data_is_deterministic(data, tiny_policy) -> None:
    train = {r["prompt"] for r in data.rows("paired", "train")}
    evaluation = {r["prompt"] for r in data.rows("paired", "eval")}
    assert train and evaluation and not train & evaluation
    assert len(data.heldout_prompts) == 4 and not set(data.heldout_prompts) & (train | evaluation)
    again = build_preferences(tiny_policy.model, tiny_policy.tokenizer, seed=0, config=SMALL)
    assert again.rows("ranked", "train") == data.rows("ranked", "train")
    other = build_preferences(tiny_policy.model, tiny_policy.tokenizer, seed=1, config=SMALL)
    assert other.rows("paired", "train") != data.rows("paired", "train")


def test_length_bias_makes_the_labeller_prefer_longer(tiny_policy) -> None:
    config = dataclasses.replace(SMALL, length_bias=100.0)
    data = build_preferences(tiny_policy.model, tiny_policy.tokenizer, seed=0, config=config)
    for g in data.groups:
        for c, r in g.pairs:
            assert g.lengths[c] >= g.lengths[r]


def test_config_and_export_arguments_are_checked(data) -> None:
    with pytest.raises(ValueError, match="completions_per_prompt"):
        PreferenceConfig(completions_per_prompt=1)
    with pytest.raises(ValueError, match="label_temperature"):
        PreferenceConfig(label_temperature=-1.0)
    with pytest.raises(ValueError, match="kind"):
        data.rows("pairs")
    with pytest.raises(ValueError, match="split"):
        data.rows("paired", "test")


def test_exports_tokenise_with_an_exact_boundary(data, tiny_policy) -> None:
    from prefopt.data.tokenize import tokenize_preferences

    tok = tiny_policy.tokenizer
    rows = data.rows("paired", "eval")
    tokenized = tokenize_preferences(data.dataset("paired", "eval"), tok)
    for row, encoded in zip(rows, tokenized):
        assert encoded["prompt_ids"] == tok(row["prompt"])["input_ids"]  # BOS + prompt words
        chosen_ids = encoded["completion_ids"][0]
        assert chosen_ids[-1] == tok.eos_token_id
        assert tok.decode(chosen_ids[:-1]) == row["chosen"].strip()


def test_samples_convert_to_a_token_batch(tiny_policy) -> None:
    from prefopt.data.synthetic import sample

    drawn = sample(
        tiny_policy.model,
        tiny_policy.tokenizer,
        ["food review of the pizza :"] * 3,
        generator=torch.Generator().manual_seed(0),
        max_new_tokens=12,
    )
    batch = drawn.token_batch()
    assert batch.num_sequences == 3 and batch.input_ids.shape == drawn.input_ids.shape
    assert torch.equal(batch.sequence_ids >= 0, drawn.attention_mask.bool())
    for i in range(3):
        ids = drawn.input_ids[i][drawn.completion_mask[i]].tolist()
        words = tiny_policy.tokenizer.decode([t for t in ids if t != tiny_policy.tokenizer.eos_token_id])
        assert words == drawn.completions[i].strip()
        assert bool(drawn.finished[i]) == (ids[-1] == tiny_policy.tokenizer.eos_token_id)


def test_summary_counts_the_exported_pairs(data) -> None:
    """summary.json's pair counts are the rows the paired files hold; identical pairs are counted apart."""
    summary = data.summary()
    for split in ("train", "eval"):
        assert summary["pairs"][split] == len(data.rows("paired", split))
        total = sum(len(g.pairs) for g in data.groups if g.split == split)
        assert summary["pairs"][split] + summary["identical_pairs"][split] == total
