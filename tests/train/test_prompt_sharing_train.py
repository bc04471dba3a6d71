"""Prefix-shared batches through the training stack: every offline loss by name (KTO's z₀ rows included), the
reference cache, and `train` with `share_prompt` on, off and auto on the tiny task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import prefopt
from prefopt import loss_arguments
from prefopt.data.collate import collate_preferences
from prefopt.engine import CacheKey, LogProbEngine, ReferenceCache, ReferenceLogProbs
from prefopt.errors import SettingsError
from prefopt.train import TrainConfig, train
from prefopt.train.setup import share_prompt_setting

from .test_loop import settings, trajectory
from .tiny_task import tiny_llama

PAIRS = [
    {"prompt_ids": [1, 5, 6, 7, 8, 9], "completion_ids": [[10, 11], [12, 13, 14]], "example_index": 0, "margin": 1.5},
    {"prompt_ids": [1, 20, 21, 22], "completion_ids": [[23, 24, 25], [26]], "example_index": 1, "margin": 0.5},
    {"prompt_ids": [1, 30, 31, 32, 33], "completion_ids": [[34], [35, 36]], "example_index": 2, "margin": 2.0},
]
RANKED = [
    {"prompt_ids": [1, 40, 41, 42], "completion_ids": [[43, 44], [45], [46, 47, 48]], "example_index": 0},
    {"prompt_ids": [1, 50, 51], "completion_ids": [[52], [53, 54], [55, 56]], "example_index": 1},
]
OFFLINE = [
    (kind, name)
    for kind in ("paired", "ranked", "unpaired")
    for name in prefopt.list_losses(kind)
    if prefopt.loss_spec(name).scores == "logps"
]


class Vocab:
    def __len__(self) -> int:
        return 64

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0


@pytest.fixture(scope="module")
def models():
    reference = tiny_llama(Vocab(), seed=2)
    with torch.no_grad():
        reference.lm_head.weight.mul_(4.0)  # a sharper reference: KTO's z₀ well above its clamp at 0
    return LogProbEngine(tiny_llama(Vocab(), seed=0)), ReferenceLogProbs.from_model(reference)


@pytest.mark.parametrize(("kind", "name"), OFFLINE, ids=[name for _, name in OFFLINE])
def test_every_offline_loss_reads_a_shared_batch_as_the_padded_one(models, kind, name):
    """Unpaired losses read the paired batch as rows (KTO's z₀ rows come from `uncollate` of the shared layout)."""
    engine, reference = models
    rows = RANKED if kind == "ranked" else PAIRS
    outs = []
    for share in (False, True):
        batch = collate_preferences(rows, pad_token_id=0, share_prompt=share)
        assert batch.shared_prefix == share
        with torch.no_grad():
            outs.append(prefopt.LossCall(name, engine=engine, reference=reference)(batch))
    torch.testing.assert_close(outs[1].per_example, outs[0].per_example, rtol=1e-5, atol=1e-5)
    assert set(outs[1].metrics) == set(outs[0].metrics)


def test_loss_arguments_of_a_shared_batch(models):
    engine, reference = models
    batch = collate_preferences(PAIRS, pad_token_id=0, share_prompt=True)
    args, kwargs = loss_arguments("kto", engine(batch), reference(batch), batch, policy=engine, reference=reference)
    assert args[0].shape == (6,) and float(kwargs["kl"]) >= 0.0


def test_reference_cache_does_not_depend_on_the_layout(models, tmp_path):
    _, reference = models
    key = CacheKey("pairs", "tokens", "reference")
    built = {}
    for share in (False, True):
        batches = [collate_preferences([row], pad_token_id=0, share_prompt=share) for row in PAIRS]
        built[share] = ReferenceCache.build(key, reference, batches, num_examples=3)
    torch.testing.assert_close(built[True].sums, built[False].sums, atol=1e-5, rtol=0)
    assert torch.equal(built[True].counts, built[False].counts)
    shared = collate_preferences(PAIRS, pad_token_id=0, share_prompt=True)
    torch.testing.assert_close(built[False].lookup(shared).sum, reference(shared).sum, atol=1e-5, rtol=0)


def test_train_share_prompt_on_and_off_agree(tiny_task, tmp_path):
    runs = {
        share: train(**settings(tiny_task, tmp_path / share, share_prompt=share, max_steps=2))
        for share in ("off", "on")
    }
    assert trajectory(runs["on"]) == pytest.approx(trajectory(runs["off"]), abs=1e-5)
    tokens = {
        s: [json.loads(line)["tokens"] for line in Path(r.metrics_path).read_text().splitlines()]
        for s, r in runs.items()
    }
    assert tokens["on"] == tokens["off"]  # the same sequences' tokens, however they were laid out


def test_share_prompt_setting_reads_the_model():
    model = tiny_llama(Vocab())
    config = TrainConfig(share_prompt="on")
    assert share_prompt_setting(config, model) is True
    assert share_prompt_setting(TrainConfig(), model) == "auto"
    assert share_prompt_setting(TrainConfig(share_prompt="off"), model) is False
    model.config._attn_implementation = "flash_attention_2"
    assert share_prompt_setting(TrainConfig(), model) is False  # auto: the model cannot take the mask
    with pytest.raises(SettingsError, match=r"share_prompt='on': attn_implementation='flash_attention_2'.*auto or off"):
        share_prompt_setting(config, model)
    with pytest.raises(SettingsError, match="TrainConfig.share_prompt='yes'"):
        TrainConfig(share_prompt="yes")
