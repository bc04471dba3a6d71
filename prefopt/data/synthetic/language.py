"""The toy review language: a small grammar of product reviews with content, style and length.

Modelled on the controlled-sentiment setting of the DPO paper (Rafailov et al. 2023, arXiv:2305.18290,
Sec. 6.1: IMDb prefixes, GPT-2 policy, sentiment classifier as gold reward), shrunk to a language a
~1M-parameter model learns in two minutes on a CPU. Words are separated by single spaces, punctuation
included (`,` and `.` are words), so a whitespace split is the exact tokenisation.

    prompt      := CATEGORY "review of the" ITEM(category) ":" OPENING
    body        := OPENING completion = SENTENCE{1..MAX_SENTENCES}
    SENTENCE    := [OPENER ","] CLAUSE [CONJ CLAUSE] "."
    CLAUSE      := EVAL | VERBAL | NEUTRAL
    EVAL        := ("it" | "the" ASPECT(item)) "was" [NEGATION] [INTENSIFIER] ADJECTIVE
    VERBAL      := "i" [VERB_INTENSIFIER] VERB_PAST "it" | "i did not" [VERB_INTENSIFIER] VERB_BASE "it"
    NEUTRAL     := "i" NEUTRAL_VERB "it" TIME

OPENING is a proper prefix (0–3 words) of the first sentence, so prompts condition completions on a
category ("food", "film", "gadget", "hotel", "book"; it fixes which aspects are grammatical and how much
each weighs in the gold reward), an item of that category, and opening words. The category leads the
prompt so that a tiny model conditions on one early token rather than memorising 50 item → category
links. A completion string
starts with one space (the public convention: prompt + completion is the full text). Reviews are drawn
with a latent mood (positive, negative or mixed) that biases every sentiment word, which gives the
reference policy a spread of gold rewards for preference optimisation to shift.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "CATEGORIES",
    "ADJECTIVES",
    "INTENSIFIERS",
    "VERB_INTENSIFIERS",
    "NEGATIONS",
    "VERBS",
    "ASPECT_WEIGHTS",
    "BOUNDARY_WORDS",
    "MAX_SENTENCES",
    "Review",
    "vocabulary",
    "item_category",
    "split_prompt",
    "sample_review",
    "sample_prompt",
    "accepts",
]

MAX_SENTENCES = 4
PROMPT_HEAD = ("review", "of", "the")  # after the category word

# category -> (items, aspects); an aspect is grammatical only for items of its category.
CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "food": (
        (
            "pizza",
            "burger",
            "pasta",
            "salad",
            "soup",
            "curry",
            "sandwich",
            "taco",
            "sushi",
            "cake",
            "steak",
            "omelette",
        ),
        ("taste", "portion", "price", "service", "texture", "smell"),
    ),
    "film": (
        ("movie", "film", "show", "series", "documentary", "cartoon", "musical", "thriller", "comedy", "drama"),
        ("story", "acting", "music", "ending", "pacing", "dialogue"),
    ),
    "gadget": (
        (
            "phone",
            "laptop",
            "camera",
            "tablet",
            "watch",
            "speaker",
            "headset",
            "charger",
            "keyboard",
            "monitor",
            "printer",
            "mouse",
        ),
        ("battery", "screen", "design", "price", "sound", "software"),
    ),
    "hotel": (
        ("hotel", "hostel", "resort", "apartment", "cabin", "motel", "inn", "lodge"),
        ("room", "staff", "location", "breakfast", "bed", "view"),
    ),
    "book": (
        ("book", "novel", "cookbook", "biography", "comic", "memoir", "textbook", "guide"),
        ("plot", "writing", "characters", "cover", "ending", "pacing"),
    ),
}

# Gold weight of a clause about an aspect (a clause about "it" weighs 1): what a reader of the category
# cares most about counts more. Aspects not listed weigh 1.
ASPECT_WEIGHTS: dict[str, dict[str, float]] = {
    "food": {"taste": 1.5, "price": 0.75, "smell": 0.75},
    "film": {"story": 1.5, "acting": 1.25, "dialogue": 0.75},
    "gadget": {"battery": 1.5, "software": 1.25, "design": 0.75},
    "hotel": {"room": 1.25, "location": 1.5, "view": 0.75},
    "book": {"plot": 1.5, "writing": 1.25, "cover": 0.5},
}

# valence of each adjective: ±2 strong, ±1 mild
ADJECTIVES: dict[str, int] = {
    **dict.fromkeys(
        ("amazing", "wonderful", "excellent", "superb", "fantastic", "brilliant", "outstanding", "perfect"), 2
    ),
    **dict.fromkeys(("good", "nice", "fine", "pleasant", "decent", "solid", "enjoyable", "charming"), 1),
    **dict.fromkeys(("bad", "dull", "bland", "poor", "mediocre", "boring", "weak", "disappointing"), -1),
    **dict.fromkeys(
        ("awful", "terrible", "horrible", "dreadful", "atrocious", "disgusting", "abysmal", "unbearable"), -2
    ),
}
# intensity multipliers of the adjective that follows
INTENSIFIERS: dict[str, float] = {
    "very": 1.5,
    "really": 1.5,
    "truly": 1.5,
    "quite": 1.25,
    "extremely": 2.0,
    "incredibly": 2.0,
    "fairly": 0.75,
    "somewhat": 0.5,
    "slightly": 0.5,
}
VERB_INTENSIFIERS: dict[str, float] = {"really": 1.5, "truly": 1.5}
# negation multiplies the sentiment that follows in its clause by −1/2: "not good" is mildly negative,
# "not awful" mildly positive (a negated word is weaker than its antonym).
NEGATIONS: dict[str, float] = {"not": -0.5, "never": -0.5}
# past form -> (base form, valence)
VERBS: dict[str, tuple[str, int]] = {
    "loved": ("love", 2),
    "adored": ("adore", 2),
    "liked": ("like", 1),
    "enjoyed": ("enjoy", 1),
    "disliked": ("dislike", -1),
    "regretted": ("regret", -1),
    "hated": ("hate", -2),
    "despised": ("despise", -2),
}
OPENERS: tuple[tuple[str, ...], ...] = (
    ("honestly",),
    ("overall",),
    ("frankly",),
    ("well",),
    ("anyway",),
    ("basically",),
    ("personally",),
    ("also",),
    ("in", "short"),
    ("to", "be", "fair"),
    ("all", "in", "all"),
    ("to", "be", "honest"),
)
CONJUNCTIONS: tuple[str, ...] = ("and", "but")
NEUTRAL_VERBS: tuple[str, ...] = ("bought", "tried", "found", "got", "ordered", "picked", "chose", "used")
TIMES: tuple[tuple[str, ...], ...] = (
    ("last", "week"),
    ("yesterday",),
    ("on", "monday"),
    ("on", "friday"),
    ("this", "morning"),
    ("last", "month"),
    ("with", "my", "family"),
    ("with", "friends"),
    ("for", "a", "friend"),
    ("on", "sale"),
    ("last", "year"),
)
# words that end the scope of a negation or intensifier (used by the gold reward)
BOUNDARY_WORDS: tuple[str, ...] = (",", ".", ":") + CONJUNCTIONS
_MOODS = ("positive", "negative", "mixed")


def vocabulary() -> list[str]:
    """Every word of the language, in a fixed order (no special tokens): 191 words."""
    words: list[str] = list(CATEGORIES) + list(PROMPT_HEAD) + [":", ",", ".", "it", "was", "the", "i", "did"]
    for items, aspects in CATEGORIES.values():
        words += list(items) + list(aspects)
    words += list(ADJECTIVES) + list(INTENSIFIERS) + list(NEGATIONS) + list(CONJUNCTIONS) + list(NEUTRAL_VERBS)
    for past, (base, _) in VERBS.items():
        words += [past, base]
    for phrase in OPENERS + TIMES:
        words += list(phrase)
    return list(dict.fromkeys(words))


_ITEM_CATEGORY = {item: cat for cat, (items, _) in CATEGORIES.items() for item in items}


def item_category(item: str) -> str:
    """The category ("food", "film", ...) of an item word; ValueError for an unknown item."""
    if item not in _ITEM_CATEGORY:
        raise ValueError(f"unknown item {item!r}: items are the nouns of CATEGORIES (e.g. 'pizza', 'movie')")
    return _ITEM_CATEGORY[item]


def split_prompt(prompt: str) -> tuple[str, list[str]] | None:
    """(item, opening words) of a prompt "CATEGORY review of the ITEM : OPENING…", or None if it is not
    one (including an item of another category)."""
    words = prompt.split()
    if len(words) < 6 or tuple(words[1:4]) != PROMPT_HEAD or words[5] != ":":
        return None
    if _ITEM_CATEGORY.get(words[4]) != words[0]:
        return None
    return words[4], words[6:]


@dataclass(frozen=True)
class Review:
    """One sampled review: `prompt` (header + opening words) and `completion` (" " + the rest)."""

    item: str
    mood: str
    prompt: str
    completion: str


def _sentiment_sign(mood: str, rng: random.Random) -> int:
    if mood == "mixed":
        return rng.choice((1, -1))
    agree = rng.random() < 0.85
    return (1 if mood == "positive" else -1) * (1 if agree else -1)


def _clause(category: str, mood: str, rng: random.Random) -> list[str]:
    """One clause; its sentiment (after negation) leans towards `mood`."""
    kind = rng.choices(("eval", "verbal", "neutral"), weights=(0.6, 0.25, 0.15))[0]
    if kind == "neutral":
        return ["i", rng.choice(NEUTRAL_VERBS), "it", *rng.choice(TIMES)]
    sign = _sentiment_sign(mood, rng)
    negate = rng.random() < 0.2
    want = -sign if negate else sign  # the word's own valence sign, so that negation lands on `sign`
    if kind == "verbal":
        past = rng.choice([v for v, (_, val) in VERBS.items() if (val > 0) == (want > 0)])
        boost = [rng.choice(list(VERB_INTENSIFIERS))] if rng.random() < 0.3 else []
        if negate:
            return ["i", "did", "not", *boost, VERBS[past][0], "it"]
        return ["i", *boost, past, "it"]
    aspects = CATEGORIES[category][1]
    subject = ["it"] if rng.random() < 0.35 else ["the", rng.choice(aspects)]
    adjective = rng.choice([a for a, val in ADJECTIVES.items() if (val > 0) == (want > 0)])
    modifiers = [rng.choice(tuple(NEGATIONS))] if negate else []
    if rng.random() < 0.4:
        modifiers.append(rng.choice(list(INTENSIFIERS)))
    return [*subject, "was", *modifiers, adjective]


def _sentence(category: str, mood: str, rng: random.Random) -> list[str]:
    words = [*rng.choice(OPENERS), ","] if rng.random() < 0.25 else []
    words += _clause(category, mood, rng)
    if rng.random() < 0.3:
        words += [rng.choice(CONJUNCTIONS), *_clause(category, mood, rng)]
    return words + ["."]


def sample_review(rng: random.Random, *, item: str | None = None, max_opening: int = 3) -> Review:
    """Draw one review: item, mood, 1..MAX_SENTENCES sentences; the first 0..max_opening words of the
    body (never the whole first sentence) go into the prompt as its opening."""
    item = item or rng.choice(sorted(_ITEM_CATEGORY))
    category = item_category(item)
    mood = rng.choice(_MOODS)
    sentences = [_sentence(category, mood, rng) for _ in range(rng.randint(1, MAX_SENTENCES))]
    body = [w for s in sentences for w in s]
    cut = rng.randint(0, min(max_opening, len(sentences[0]) - 1))
    prompt = " ".join([category, *PROMPT_HEAD, item, ":", *body[:cut]])
    return Review(item, mood, prompt, " " + " ".join(body[cut:]))


def sample_prompt(rng: random.Random, *, max_opening: int = 3) -> str:
    """A prompt alone ("CATEGORY review of the ITEM :" plus 0..max_opening opening words)."""
    return sample_review(rng, max_opening=max_opening).prompt


# ---------------------------------------------------------------------------------------------- acceptor


def _match(words: Sequence[str], i: int, phrase: Sequence[str]) -> int | None:
    return i + len(phrase) if tuple(words[i : i + len(phrase)]) == tuple(phrase) else None


def _parse_clause(words: Sequence[str], i: int, aspects: tuple[str, ...]) -> int | None:
    """End index of a CLAUSE starting at i, or None."""
    w = words[i : i + 2]
    if w[:1] == ["it"] or (w[:1] == ["the"] and len(w) == 2 and w[1] in aspects):
        j = i + (1 if w[0] == "it" else 2)
        if _match(words, j, ("was",)) is None:
            return None
        j += 1
        j += j < len(words) and words[j] in NEGATIONS
        j += j < len(words) and words[j] in INTENSIFIERS
        return j + 1 if j < len(words) and words[j] in ADJECTIVES else None
    if w[:1] != ["i"]:
        return None
    j = i + 1
    if j < len(words) and words[j] in NEUTRAL_VERBS:
        if _match(words, j + 1, ("it",)) is None:
            return None
        return next((e for t in TIMES if (e := _match(words, j + 2, t)) is not None), None)
    negated = _match(words, j, ("did", "not")) is not None
    j += 2 * negated
    j += j < len(words) and words[j] in VERB_INTENSIFIERS
    forms = {base for base, _ in VERBS.values()} if negated else set(VERBS)
    if j < len(words) and words[j] in forms:
        return _match(words, j + 1, ("it",))
    return None


def _parse_sentence(words: Sequence[str], i: int, aspects: tuple[str, ...]) -> int | None:
    for opener in OPENERS:
        j = _match(words, i, opener)
        if j is not None and _match(words, j, (",",)) is not None:
            i = j + 1
            break
    j = _parse_clause(words, i, aspects)
    if j is None:
        return None
    if j < len(words) and words[j] in CONJUNCTIONS:
        j = _parse_clause(words, j + 1, aspects)
        if j is None:
            return None
    return _match(words, j, (".",))


def accepts(prompt: str, completion: str) -> bool:
    """True if prompt + completion is a review of the language: a valid prompt header, and a body
    (opening words + completion) of 1..MAX_SENTENCES sentences whose aspects fit the prompt's item."""
    parsed = split_prompt(prompt)
    if parsed is None:
        return False
    item, opening = parsed
    words = opening + completion.split()
    aspects = CATEGORIES[item_category(item)][1]
    i, sentences = 0, 0
    while i < len(words):
        end = _parse_sentence(words, i, aspects)
        if end is None:
            return False
        i, sentences = end, sentences + 1
    return 1 <= sentences <= MAX_SENTENCES and len(completion.split()) > 0
