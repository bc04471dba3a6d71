"""prefopt against values recorded from TRL's DPOTrainer (fixtures/trl_dpo_parity.json; TRL is not needed here).

The recording (`record_trl_parity.py`, run in a side environment with TRL) holds, for the rows, tokenizer and
two seeded tiny Llamas of `trl_parity.py`: TRL's token ids per row, its collated batch, its per-sequence
log-probs of policy and reference (fp32, `bf16=False`), float64 sums for scale, and its DPO loss (β = 0.1).

* Token ids: equal on the rows where tokenising prompt + completion jointly (TRL) and apart (prefopt) agree;
  on the boundary row ("… over the la" + "zy dog.") TRL's prompt loses its last tokens " la" and its
  completions start with the merged " lazy", where prefopt keeps the prompt and scores "zy" — asserted exactly.
* Log-probs: within 2e-5 relative (float32 rounding of sums of ~20 terms of magnitude ~5), both from prefopt's
  own tokenisation and from TRL's recorded batch through `from_trl_batch`; DPO losses within 1e-6.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import prefopt
from prefopt.data import PromptCompletionEncoder, TokenizeConfig, collate_preferences, from_trl_batch
from prefopt.engine import LogProbEngine
from tests.data.trl_parity import (
    AGREE,
    BETA,
    BOUNDARY,
    ROWS,
    parity_model,
    parity_tokenizer,
    tokenizer_checksum,
    weights_checksum,
)

RECORDED = json.loads((Path(__file__).parent / "fixtures" / "trl_dpo_parity.json").read_text())
RELATIVE = 2e-5  # float32 rounding of a per-sequence sum
REDO = "tests/data/trl_parity.py no longer builds what TRL was recorded on; re-record with record_trl_parity.py"


@pytest.fixture(scope="module")
def setup():
    tokenizer = parity_tokenizer()
    return tokenizer, parity_model(tokenizer, seed=0), parity_model(tokenizer, seed=1)


@pytest.fixture(scope="module")
def prefopt_rows(setup):
    encoder = PromptCompletionEncoder(setup[0], TokenizeConfig())
    return [encoder.encode(row["prompt"], [row["chosen"], row["rejected"]]) for row in ROWS]


def _logps(model, batch):
    with torch.no_grad():
        return LogProbEngine(model)(batch)


def _close(actual: torch.Tensor, expected: list[float]) -> None:
    expected_t = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.double(), expected_t, rtol=RELATIVE, atol=0.0)


def test_the_setup_is_the_recorded_one(setup):
    tokenizer, policy, ref = setup
    assert RECORDED["rows"] == ROWS and RECORDED["agree_rows"] == AGREE and RECORDED["beta"] == BETA, REDO
    assert tokenizer_checksum(tokenizer) == RECORDED["tokenizer_checksum"], REDO
    assert {"policy": weights_checksum(policy), "ref": weights_checksum(ref)} == RECORDED["weights_checksum"], REDO


def test_token_ids_equal_trls_where_the_boundary_is_a_token_boundary(prefopt_rows):
    for i in AGREE:
        trl = RECORDED["trl_tokens"][i]
        assert prefopt_rows[i]["prompt_ids"] == trl["prompt_ids"], i
        assert prefopt_rows[i]["completion_ids"] == [trl["chosen_ids"], trl["rejected_ids"]], i


def test_a_word_split_by_the_boundary_is_cut_differently(setup, prefopt_rows):
    """ "… over the la" + "zy dog.": TRL tokenises the joint text (" lazy" is one token), keeps the common
    prefix of prompt and prompt + completion as the prompt, so " la" leaves the prompt and " lazy" is scored;
    prefopt tokenises the halves apart and scores "z", "y"."""
    tokenizer = setup[0]
    ours, trl = prefopt_rows[BOUNDARY], RECORDED["trl_tokens"][BOUNDARY]
    cut = len(trl["prompt_ids"])
    assert ours["prompt_ids"][:cut] == trl["prompt_ids"]
    assert tokenizer.decode(ours["prompt_ids"][cut:]) == " la"  # in prefopt's prompt, absent from TRL's
    for ours_ids, trl_ids, word in zip(
        ours["completion_ids"], (trl["chosen_ids"], trl["rejected_ids"]), ("dog", "cat")
    ):
        assert tokenizer.decode(trl_ids[:1]) == " lazy" and tokenizer.decode(ours_ids[:2]) == "zy"
        assert trl_ids[1:] == ours_ids[2:]  # " dog" / " cat", ".", "</s>": the same tokens after the merge
        assert tokenizer.decode(ours_ids[2:3]) == f" {word}"
        assert tokenizer.decode(trl["prompt_ids"] + trl_ids) == tokenizer.decode(ours["prompt_ids"] + ours_ids)


def test_logprobs_and_dpo_loss_equal_trls_from_prefopts_tokens(setup, prefopt_rows):
    _, policy, ref = setup
    recorded = RECORDED["agree_rows_only"]
    batch = collate_preferences([prefopt_rows[i] for i in AGREE], pad_token_id=setup[0].pad_token_id)
    pol, rf = _logps(policy, batch), _logps(ref, batch)
    _close(pol.chosen(), recorded["policy_chosen_logps"])
    _close(pol.rejected(), recorded["policy_rejected_logps"])
    _close(rf.chosen(), recorded["ref_chosen_logps"])
    _close(rf.rejected(), recorded["ref_rejected_logps"])
    out = prefopt.get_loss("dpo", beta=BETA)(pol.chosen(), pol.rejected(), rf.chosen(), rf.rejected())
    assert abs(float(out.loss) - recorded["loss"]) < 1e-6


def test_trl_batch_through_the_adapter_gives_trls_logprobs_and_loss(setup):
    _, policy, ref = setup
    recorded = RECORDED["all_rows"]
    batch = from_trl_batch(recorded["batch"])
    assert (batch.num_sequences, batch.group_size) == (2 * len(ROWS), 2)
    pol, rf = _logps(policy, batch), _logps(ref, batch)
    _close(pol.chosen(), recorded["policy_chosen_logps"])
    _close(pol.rejected(), recorded["policy_rejected_logps"])
    _close(rf.chosen(), recorded["ref_chosen_logps"])
    _close(rf.rejected(), recorded["ref_rejected_logps"])
    _close(pol.sum, RECORDED["float64"]["policy"])  # and float32 rounding away from the float64 sums
    _close(rf.sum, RECORDED["float64"]["ref"])
    out = prefopt.get_loss("dpo", beta=BETA)(pol.chosen(), pol.rejected(), rf.chosen(), rf.rejected())
    assert abs(float(out.loss) - recorded["loss"]) < 1e-6


def test_the_adapter_lays_trls_batch_out_as_prefopts_collator_does(setup):
    """TRL's recorded collator batch and prefopt's collation of TRL's own token ids give the same tensors."""
    rows = [
        {"prompt_ids": t["prompt_ids"], "completion_ids": [t["chosen_ids"], t["rejected_ids"]]}
        for t in RECORDED["trl_tokens"]
    ]
    ours = collate_preferences(rows, pad_token_id=setup[0].pad_token_id)
    adapted = from_trl_batch(RECORDED["all_rows"]["batch"])
    for name in ("input_ids", "attention_mask", "completion_mask", "sequence_ids", "position_ids"):
        assert torch.equal(getattr(adapted, name), getattr(ours, name)), name
    assert torch.equal(adapted.extras["prompt_lengths"], ours.extras["prompt_lengths"])
