"""The toy language: sampler and acceptor agree, the acceptor rejects what the grammar does not make,
and the word-level tokenizer round-trips every word with BOS/EOS/PAD and a prefix-safe chat template."""

from __future__ import annotations

import random

import pytest

from prefopt.data.synthetic import accepts, build_tokenizer, sample_review, vocabulary
from prefopt.data.synthetic.language import MAX_SENTENCES, item_category, split_prompt

PIZZA = "food review of the pizza :"


def test_every_sampled_review_is_accepted_and_in_vocabulary() -> None:
    rng = random.Random(0)
    words = set(vocabulary())
    reviews = [sample_review(rng) for _ in range(500)]
    assert all(accepts(r.prompt, r.completion) for r in reviews)
    assert all(set((r.prompt + r.completion).split()) <= words for r in reviews)
    assert all(r.completion.startswith(" ") and r.completion.split() for r in reviews)
    assert {r.mood for r in reviews} == {"positive", "negative", "mixed"}
    assert 150 <= len(words) <= 400


def test_sampler_is_deterministic_for_a_seed() -> None:
    first = [sample_review(random.Random(7)) for _ in range(3)]
    again = [sample_review(random.Random(7)) for _ in range(3)]
    assert first == again


@pytest.mark.parametrize(
    "prompt, completion",
    [
        (PIZZA, " it was good ."),
        (PIZZA, " the taste was not very good ."),
        (PIZZA, " honestly , i did not really love it and the price was awful ."),
        (PIZZA, " to be fair , i bought it last week . it was fine ."),
        ("food review of the pizza : the taste", " was superb ."),
        ("film review of the movie : i", " truly hated it ."),
    ],
)
def test_acceptor_accepts_grammatical_reviews(prompt: str, completion: str) -> None:
    assert accepts(prompt, completion)


@pytest.mark.parametrize(
    "prompt, completion, why",
    [
        (PIZZA, " the story was good .", "aspect of another category"),
        (PIZZA, " it was good", "no full stop"),
        (PIZZA, " it was very not good .", "modifiers out of order"),
        (PIZZA, " i loved it and .", "dangling conjunction"),
        (PIZZA, " i did not loved it .", "negated verb must be the base form"),
        (PIZZA, "", "empty completion"),
        (PIZZA, " it was good ." * (MAX_SENTENCES + 1), "too many sentences"),
        ("food review of the spaceship :", " it was good .", "unknown item"),
        ("the pizza :", " it was good .", "bad prompt header"),
        ("film review of the pizza :", " it was good .", "item of another category"),
    ],
)
def test_acceptor_rejects(prompt: str, completion: str, why: str) -> None:
    assert not accepts(prompt, completion), why


def test_prompt_parsing() -> None:
    assert split_prompt("gadget review of the laptop : honestly ,") == ("laptop", ["honestly", ","])
    assert split_prompt("hello") is None
    assert item_category("hotel") == "hotel"
    with pytest.raises(ValueError, match="unknown item"):
        item_category("spaceship")


def test_tokenizer_round_trip_and_specials(tmp_path) -> None:
    tok = build_tokenizer()
    assert len(tok) == len(vocabulary()) + 7
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    text = "food review of the pizza : it was extremely good ."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text.split()) + 1
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    # whitespace is not a token: prompt + completion tokenise like their halves, so masks are exact
    assert (
        tok(PIZZA)["input_ids"] + tok(" it was good .", add_special_tokens=False)["input_ids"]
        == tok(PIZZA + " it was good .")["input_ids"]
    )
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == ids and loaded.chat_template == tok.chat_template


def test_chat_template_prompt_is_prefix_of_conversation() -> None:
    tok = build_tokenizer()
    prompt = [{"role": "user", "content": PIZZA}]
    full = prompt + [{"role": "assistant", "content": "it was good ."}]
    head = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    whole = tok.apply_chat_template(full, tokenize=False)
    assert whole.startswith(head)
    assert whole == f"<s> <user> {PIZZA} <assistant> it was good . </s>"
    assert tok.unk_token_id not in tok(whole, add_special_tokens=False)["input_ids"]
