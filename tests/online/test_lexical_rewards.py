"""RL4LMs' lexical rewards (`prefopt.online.lexical_rewards`): hand-computed ROUGE, sacrebleu's own BLEU/chrF
through the reward's plumbing (references column, several references), METEOR when WordNet's data is there,
and the reward spelled `module:function` scoring a rollout with the prompts' columns. Skipped without the
optional packages (`pip install 'prefopt[lexical]'`)."""

from __future__ import annotations

import pytest

from prefopt.errors import RewardError, SettingsError
from prefopt.online import lexical_rewards as lexical
from prefopt.online.reward_functions import CallableReward
from prefopt.online.reward_spec import check_reward_columns
from prefopt.online.rewards import as_reward_function

rouge_score = pytest.importorskip("rouge_score")
sacrebleu = pytest.importorskip("sacrebleu")

COMPLETIONS = ["the cat sat on a mat", "the dog barked loudly"]
REFERENCES = [["the cat sat on the mat"], "a dog barked"]


def test_rouge_hand_computed() -> None:
    """Row 0: 6 tokens each, 5 unigrams shared (`the` once) → F1 = 5/6; bigrams: the-cat, cat-sat, sat-on shared of
    5 each → F2 = 3/5; the longest common subsequence has 5 tokens → FL = 5/6. Row 1, Porter stemmer (barked →
    bark): unigrams dog, bark shared, P = 2/4, R = 2/3 → F1 = 4/7; bigram dog-bark: P = 1/3, R = 1/2 → F2 = 0.4."""
    assert lexical.rouge_1(COMPLETIONS, references=REFERENCES) == pytest.approx([5 / 6, 4 / 7])
    assert lexical.rouge_2(COMPLETIONS, references=REFERENCES) == pytest.approx([0.6, 0.4])
    assert lexical.rouge_l(COMPLETIONS, references=REFERENCES) == pytest.approx([5 / 6, 4 / 7])
    assert lexical.rouge_l(["a b c"], references=["a b c"]) == [1.0]


def test_bleu_and_chrf_are_sacrebleus_scores_over_all_references() -> None:
    refs = [["the cat sat on the mat", "a cat was on the mat"], ["a dog barked"]]
    got_bleu = lexical.bleu(COMPLETIONS, references=refs)
    got_chrf = lexical.chrf(COMPLETIONS, references=refs)
    for i, (text, texts) in enumerate(zip(COMPLETIONS, refs)):
        streams = [[t] for t in texts]
        assert got_bleu[i] == pytest.approx(sacrebleu.corpus_bleu([text], streams).score / 100)
        assert got_chrf[i] == pytest.approx(sacrebleu.corpus_chrf([text], streams).score / 100)
    assert lexical.bleu(["the cat sat on the mat"], references=[["the cat sat on the mat"]]) == [pytest.approx(1.0)]
    assert 0 < got_bleu[0] < 1 and 0 < got_chrf[1] < 1


def test_meteor_needs_wordnet() -> None:
    pytest.importorskip("nltk")
    if not lexical.wordnet_available():
        with pytest.raises(RewardError, match="nltk.downloader wordnet"):
            lexical.meteor(COMPLETIONS, references=REFERENCES)
        pytest.skip("NLTK's WordNet data is not installed (python -m nltk.downloader wordnet omw-1.4)")
    scores = lexical.meteor(COMPLETIONS, references=REFERENCES)
    assert scores[0] > scores[1] > 0 and lexical.meteor(["a b c d"], references=["a b c d"])[0] > 0.9


def test_missing_or_empty_references_are_clear_errors() -> None:
    """Prompts without a `references` column are refused before a run (the column is required)."""
    with pytest.raises(SettingsError, match="needs the column 'references'.*columns: answer"):
        check_reward_columns("prefopt.online.lexical_rewards:rouge_1", ["answer"], "--reward", "prompts.jsonl")
    check_reward_columns("prefopt.online.lexical_rewards:rouge_1", ["references"], "--reward", "prompts.jsonl")
    with pytest.raises(RewardError, match="row 1 has no reference text"):
        lexical.bleu(COMPLETIONS, references=[["x"], []])


def test_named_reward_scores_with_the_prompts_columns() -> None:
    """`--reward prefopt.online.lexical_rewards:rouge_l` resolves to the function, called in TRL's convention with
    the columns aligned with the completions (a prompt's value repeated for its samples)."""
    reward = as_reward_function("prefopt.online.lexical_rewards:rouge_l")
    assert isinstance(reward, CallableReward) and reward.name == "rouge_l"
    values = reward.values(["p0", "p1"], COMPLETIONS, references=REFERENCES)
    assert values.tolist() == pytest.approx([5 / 6, 4 / 7])
