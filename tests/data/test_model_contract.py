"""The TokenBatch contract against a real (tiny, randomly initialised) causal LM.

`completion_mask[t]` marks tokens whose log-prob is log π(input_ids[t] | tokens < t of the same
sequence). Scoring a padded group-major batch in one forward pass must give, per sequence, the same sum
as scoring that sequence alone with no padding.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from prefopt.data import PreferenceCollator, load_preferences, tokenize_preferences

from .conftest import FIXTURES


def _sequence_logps(model, input_ids, attention_mask, completion_mask, sequence_ids, position_ids, num_sequences):
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None])[..., 0]  # (R, T-1)
    scored = completion_mask[:, 1:]
    return torch.zeros(num_sequences).index_add_(0, sequence_ids[:, 1:][scored], logp[scored])


def test_padded_batch_scores_each_sequence_as_if_alone(chat_tokenizer, cache_dir):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(chat_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    rows = load_preferences(FIXTURES / "paired_strings.jsonl", kind="paired", cache_dir=cache_dir)
    batch = PreferenceCollator(chat_tokenizer.pad_token_id)(list(tokenize_preferences(rows, chat_tokenizer)))
    assert batch.num_sequences == 8 and batch.attention_mask.min() == 0  # padding is really exercised
    with torch.no_grad():
        together = _sequence_logps(
            model,
            batch.input_ids,
            batch.attention_mask,
            batch.completion_mask,
            batch.sequence_ids,
            batch.position_ids,
            batch.num_sequences,
        )
        for s in range(batch.num_sequences):
            real = batch.sequence_ids[s] == s
            alone = _sequence_logps(
                model,
                batch.input_ids[s : s + 1, real],
                batch.attention_mask[s : s + 1, real],
                batch.completion_mask[s : s + 1, real],
                torch.zeros_like(batch.input_ids[s : s + 1, real]),
                batch.position_ids[s : s + 1, real],
                1,
            )
            torch.testing.assert_close(together[s], alone[0], rtol=1e-5, atol=1e-5)
