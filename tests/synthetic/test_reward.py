"""Gold reward r*(x, y) = content + λ_len·log(1 + |y|) − c_bad·1[ungrammatical], with hand-derived values.

Defaults λ_len = 0.25, c_bad = 2. Content is the mean over sentiment words of
valence × Π(multipliers earlier in the clause) × aspect weight; "not" multiplies by −1/2, "very" by 1.5,
"extremely" by 2, "slightly" by 0.5; for food, taste weighs 1.5, price 0.75, service 1.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefopt.data.synthetic import GoldReward, RewardFunction, gold_reward, gold_reward_components

PIZZA = "food review of the pizza :"


def content(completion: str, prompt: str = PIZZA) -> float:
    return float(gold_reward_components([prompt], [completion])["content"][0])


@pytest.mark.parametrize(
    "completion, expected",
    [
        (" it was good .", 1.0),
        (" it was not good .", -0.5),  # negation flips and halves
        (" it was not awful .", 1.0),  # −2 · −1/2
        (" it was very good .", 1.5),
        (" it was extremely good .", 2.0),
        (" it was slightly good .", 0.5),
        (" it was not very good .", -0.75),  # −1/2 · 1.5 · 1
        (" it was extremely awful .", -4.0),
        (" the taste was good .", 1.5),  # aspect weight 1.5 for food
        (" the price was good .", 0.75),
        (" the service was good .", 1.0),
        (" i really loved it .", 3.0),  # 1.5 · 2
        (" i did not really love it .", -1.5),  # −1/2 · 1.5 · 2
        (" it was not good and it was good .", 0.25),  # the conjunction ends the negation's scope: (−0.5 + 1)/2
        (" i bought it last week .", 0.0),  # no sentiment word
    ],
)
def test_content_hand_values(completion: str, expected: float) -> None:
    assert content(completion) == pytest.approx(expected)


def test_negation_and_intensity_order() -> None:
    ladder = [
        " it was extremely awful .",
        " it was awful .",
        " it was bad .",
        " it was not good .",
        " it was slightly good .",
        " it was good .",
        " it was very good .",
        " it was extremely good .",
    ]
    values = [content(c) for c in ladder]
    assert values == sorted(values) and len(set(values)) == len(values)


def test_opening_words_in_the_prompt_are_in_scope() -> None:
    assert content(" good .", "food review of the pizza : it was not") == pytest.approx(-0.5)
    assert content(" good .", "food review of the pizza : the taste was") == pytest.approx(1.5)


def test_length_component_is_mild_and_exact() -> None:
    short, long = " it was good .", " it was good . i bought it last week ."  # 4 and 10 words, content 1
    r = gold_reward([PIZZA, PIZZA], [short, long])
    assert float(r[0]) == pytest.approx(1.0 + 0.25 * math.log(5))
    assert float(r[1] - r[0]) == pytest.approx(0.25 * (math.log(11) - math.log(5)))
    assert float(r[1] - r[0]) < 0.25  # doubling the length is worth less than one "slightly"
    flat = gold_reward([PIZZA, PIZZA], [short, long], length_weight=0.0)
    assert float(flat[0]) == float(flat[1]) == pytest.approx(1.0)


def test_ungrammatical_text_is_penalised() -> None:
    parts = gold_reward_components([PIZZA], [" good good xyz"])
    assert not bool(parts["grammatical"][0]) and float(parts["content"][0]) == pytest.approx(1.0)
    r = gold_reward([PIZZA], [" good good xyz"])
    assert float(r[0]) == pytest.approx(1.0 + 0.25 * math.log(4) - 2.0)
    assert float(gold_reward([PIZZA], [" good good xyz"], ungrammatical_penalty=0.0)[0]) > float(r[0])


def test_batch_equals_rows_and_reward_object() -> None:
    prompts = [PIZZA, "hotel review of the hotel : the location", "book review of the novel :"]
    completions = [" it was not awful . i loved it .", " was extremely bad .", " the cover was very nice ."]
    batch = gold_reward(prompts, completions)
    rows = torch.cat([gold_reward([p], [c]) for p, c in zip(prompts, completions)])
    assert batch.dtype == torch.float32 and batch.shape == (3,)
    torch.testing.assert_close(batch, rows)
    assert float(batch[1]) == pytest.approx(-1 * 2 * 1.5 + 0.25 * math.log(5))  # location weighs 1.5
    assert float(batch[2]) == pytest.approx(1 * 1.5 * 0.5 + 0.25 * math.log(7))  # a book's cover weighs 0.5
    model = GoldReward()
    assert isinstance(model, RewardFunction)
    torch.testing.assert_close(model.score(prompts, completions), batch)


def test_bad_input_is_reported() -> None:
    with pytest.raises(ValueError, match="row 1"):
        gold_reward([PIZZA, "tell me a story"], [" it was good .", " it was good ."])
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        gold_reward([PIZZA, PIZZA], [" it was good ."])
    with pytest.raises(ValueError, match="≥ 0"):
        GoldReward(length_weight=-1.0)
