"""Generation for the online algorithms: layout, reproducibility, greedy and nucleus decoding, errors."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prefopt.data.synthetic.tokenizer import build_tokenizer
from prefopt.online.generation import GenerationConfig, Rollout, generate

PROMPTS = ["the soup was", "i liked the", "the service was truly", "it"]


@pytest.fixture(scope="module")
def lm() -> tuple[LlamaForCausalLM, object]:
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # make EOS likely so that some rows finish inside max_new_tokens
        model.lm_head.weight[tokenizer.eos_token_id] += 0.5 * model.lm_head.weight.std() * 8
    return model, tokenizer


def _rollout(lm: tuple, **kwargs: object) -> Rollout:
    model, tokenizer = lm
    seed = int(kwargs.pop("seed", 0))  # type: ignore[call-overload]
    return generate(model, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=6, **kwargs), seed=seed)  # type: ignore[arg-type]


def test_layout_is_group_major_and_masks_match_tokens(lm: tuple) -> None:
    model, tokenizer = lm
    rollout = _rollout(lm, num_samples=3)
    B, K = len(PROMPTS), 3
    assert rollout.num_prompts == B and rollout.num_samples == K and len(rollout.completions) == B * K
    assert rollout.row_prompts()[5] == PROMPTS[5 % B]
    eos = tokenizer.eos_token_id
    for s in range(B * K):
        prompt_ids = tokenizer(PROMPTS[s % B])["input_ids"]
        ids = rollout.input_ids[s][rollout.attention_mask[s].bool()].tolist()
        assert ids[: len(prompt_ids)] == prompt_ids, "row s holds a sample of prompt s % B"
        completion = rollout.input_ids[s][rollout.completion_mask[s]].tolist()
        assert ids[len(prompt_ids) :] == completion and 1 <= len(completion) <= 6
        assert bool(rollout.finished[s]) == (completion[-1] == eos)
        assert eos not in completion[:-1], "nothing after the first EOS"
        words = tokenizer.decode([t for t in completion if t != eos], skip_special_tokens=True)
        assert rollout.completions[s].strip() == words.strip()
    assert rollout.finished.any() and not rollout.finished.all(), "both kinds of rows are exercised"
    assert torch.equal(rollout.lengths(), rollout.completion_mask.sum(1))


def test_token_batch_selects_rows_and_trims_padding(lm: tuple) -> None:
    rollout = _rollout(lm, num_samples=2)
    batch = rollout.token_batch([1, 6])
    assert batch.num_sequences == 2 and batch.input_ids.shape[1] == int(rollout.attention_mask[[1, 6]].sum(1).max())
    assert torch.equal(batch.completion_mask, rollout.completion_mask[[1, 6], : batch.input_ids.shape[1]])
    assert (batch.sequence_ids[batch.attention_mask.bool()] >= 0).all()


def test_same_seed_same_samples_and_caller_rng_untouched(lm: tuple) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, again = _rollout(lm, num_samples=2, seed=7), _rollout(lm, num_samples=2, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    assert first.completions == again.completions and torch.equal(first.input_ids, again.input_ids)
    other = _rollout(lm, num_samples=2, seed=8)
    assert other.completions != first.completions


def test_greedy_matches_an_argmax_loop(lm: tuple) -> None:
    model, tokenizer = lm
    rollout = _rollout(lm, do_sample=False)
    ids = torch.tensor([tokenizer(PROMPTS[2])["input_ids"]])
    with torch.no_grad():
        for _ in range(6):
            token = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, token.view(1, 1)], dim=1)
            if int(token) == tokenizer.eos_token_id:
                break
    expected = ids[0].tolist()
    assert rollout.input_ids[2][rollout.attention_mask[2].bool()].tolist() == expected


def test_tiny_top_p_is_greedy(lm: tuple) -> None:
    nucleus = _rollout(lm, top_p=1e-6, num_samples=2, seed=3)
    greedy = _rollout(lm, do_sample=False)
    B = len(PROMPTS)
    assert nucleus.completions[:B] == greedy.completions and nucleus.completions[B:] == greedy.completions


def test_training_mode_is_restored(lm: tuple) -> None:
    model, _ = lm
    model.train()
    _rollout(lm)
    assert model.training
    model.eval()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"do_sample": False, "num_samples": 2}, "greedy"),
        ({"backend": "tgi"}, "backend"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**kwargs)


def test_bad_prompts_and_missing_vllm_are_clear_errors(lm: tuple) -> None:
    model, tokenizer = lm
    with pytest.raises(ValueError, match="list of prompts"):
        generate(model, tokenizer, "one prompt")
    with pytest.raises(ValueError, match="no prompts"):
        generate(model, tokenizer, [])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="vLLM"):
            generate("some/model", tokenizer, PROMPTS, GenerationConfig(backend="vllm"))
    # "auto" with an in-memory model is the transformers path, vLLM or not
    assert (
        len(generate(model, tokenizer, PROMPTS[:1], GenerationConfig(backend="auto", max_new_tokens=2)).completions)
        == 1
    )


def test_model_path_loads_with_transformers(lm: tuple, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = lm
    model.save_pretrained(tmp_path)
    from_path = generate(str(tmp_path), tokenizer, PROMPTS, GenerationConfig(max_new_tokens=6, backend="hf"), seed=0)
    assert from_path.completions == _rollout(lm).completions


def test_vllm_backend_lays_out_its_samples_like_generate(lm: tuple, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """vLLM is absent here, so a stand-in module with vLLM's interface checks our side of the call: sampling
    parameters, EOS put back where vLLM stopped on it (it drops the stop token), rows group-major."""
    import sys
    import types

    from prefopt.online import generation

    _, tokenizer = lm
    eos = tokenizer.eos_token_id
    calls: dict = {}

    class SamplingParams:
        def __init__(self, **kwargs):  # type: ignore[no-untyped-def]
            calls["params"] = kwargs

    class LLM:
        def __init__(self, model, seed):  # type: ignore[no-untyped-def]
            calls["model"] = model

        def generate(self, prompts, params):  # type: ignore[no-untyped-def]
            word = tokenizer("soup")["input_ids"][-1]
            out = types.SimpleNamespace
            return [
                out(
                    outputs=[
                        out(token_ids=[word], finish_reason="stop"),  # stopped on EOS
                        out(token_ids=[word, word], finish_reason="length"),
                    ]
                )  # cut by max_tokens
                for _ in prompts
            ]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    monkeypatch.setattr(generation, "vllm_available", lambda: True)
    rollout = generate(
        str(tmp_path),
        tokenizer,
        PROMPTS[:2],
        GenerationConfig(num_samples=2, max_new_tokens=2, top_p=0.9, backend="vllm"),
    )
    assert calls["model"] == str(tmp_path)
    assert calls["params"]["n"] == 2 and calls["params"]["max_tokens"] == 2 and calls["params"]["top_p"] == 0.9
    assert calls["params"]["stop_token_ids"] == [eos]
    assert rollout.finished.tolist() == [True, True, False, False], "rows k·B + b: sample 0 of both prompts first"
    assert rollout.lengths().tolist() == [2, 2, 2, 2]  # "soup" + EOS, and two words cut at the cap
    assert rollout.completions[0].strip() == "soup" and rollout.completions[2].strip() == "soup soup"


def test_conversations_use_the_chat_template_and_bos_is_not_doubled(lm: tuple) -> None:
    """A conversation prompt is rendered with the chat template and its generation prompt; a rendered text that
    already starts with BOS gets no second one (tokenizer(text) would add it)."""
    model, tokenizer = lm
    conversation = [{"role": "user", "content": "the soup was"}]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith(tokenizer.bos_token)
    config = GenerationConfig(max_new_tokens=3)
    from_messages = generate(model, tokenizer, [conversation], config, seed=1)
    from_text = generate(model, tokenizer, [rendered], config, seed=1)
    prompt_ids = from_messages.input_ids[0][~from_messages.completion_mask[0] & from_messages.attention_mask[0].bool()]
    assert prompt_ids.tolist().count(tokenizer.bos_token_id) == 1
    assert torch.equal(from_messages.input_ids, from_text.input_ids)
    assert from_messages.prompts == [conversation]
