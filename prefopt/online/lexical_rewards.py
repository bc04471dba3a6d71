"""RL4LMs' lexical rewards (Ramamurthy et al. 2022, arXiv:2210.01241, §3): each sample's similarity to the
reference texts of its prompt, computed by the maintained libraries, never re-implemented here.

    function   library (`pip install 'prefopt[lexical]'`)        reward of one completion y, references R
    rouge_1    rouge-score: RougeScorer(["rouge1"], use_stemmer)   F-measure of unigram overlap with R[0]
    rouge_2    rouge-score: RougeScorer(["rouge2"], use_stemmer)   F-measure of bigram overlap with R[0]
    rouge_l    rouge-score: RougeScorer(["rougeL"], use_stemmer)   F-measure of the longest common subsequence
    bleu       sacrebleu: BLEU().corpus_score([y], R)            BLEU / 100, y as a one-sentence corpus
    chrf       sacrebleu: CHRF().corpus_score([y], R)            chrF / 100
    meteor     nltk: meteor_score(R, y) on whitespace tokens     METEOR (max over R), needs WordNet's data

These are RL4LMs' reward functions (`rl4lms.envs.text_generation.reward`): ROUGE with the stemmer against
the first reference (`RougeRewardFunction`, `use_single_ref=True`), sacreBLEU and chrF over all references
divided by 100 (`SacreBleu`, `chrF`), METEOR over all references (`MeteorRewardFunction`). Each is a reward
function in TRL's convention, `f(prompts, completions, **columns)` (`prefopt.online.reward_functions`), that
reads the prompts' `references` column (a list of texts per prompt, or one text), which it requires, so
prompts without it are refused before a run starts; name one with
`--reward prefopt.online.lexical_rewards:rouge_l`. In the online loop the columns are
the prompt file's other fields (`train-online --prompts prompts.jsonl`, rows like
{"prompt": "...", "references": ["...", "..."]}); in `prefopt compare` on your data, the data rows' other fields
(`prefopt.compare.online.PromptColumnsReward`: online runs, generation columns and best-of-N).

METEOR needs NLTK's WordNet data, which nothing here downloads: `python -m nltk.downloader wordnet omw-1.4`
once (or set NLTK_DATA to a folder that holds it). Without it `meteor` raises a `RewardError` saying so;
the other five need only their package.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from prefopt.errors import RewardError

__all__ = ["rouge_1", "rouge_2", "rouge_l", "bleu", "chrf", "meteor", "references_of", "wordnet_available"]

_INSTALL = "pip install 'prefopt[lexical]' (rouge-score, sacrebleu, nltk)"


def references_of(count: int, references: Sequence[Any], where: str) -> list[list[str]]:
    """Each completion's reference texts from the `references` column (a list of texts, or one text, per row),
    aligned with the completions.

    Raises:
        RewardError: a row without any reference text, or a column of the wrong length.
    """
    values = list(references)
    if len(values) != count:
        raise RewardError(f"{where}: the references column has {len(values)} values for {count} completions")
    out = []
    for i, value in enumerate(values):
        texts = [value] if isinstance(value, str) else list(value or [])
        if not texts or not all(isinstance(t, str) for t in texts):
            raise RewardError(f"{where}: row {i} has no reference text in `references` (got {value!r}); give text(s)")
        out.append(texts)
    return out


def _needs(package: str, where: str) -> RewardError:
    return RewardError(f"{where} needs the {package} package, which is not installed: {_INSTALL}")


def _lexical(score: Callable[[str, list[str]], float]) -> Callable[..., list[float]]:
    """A reward function in TRL's convention from `score(completion, references) -> float`."""

    def reward(completions: Sequence[str], references: Sequence[Any], **columns: Any) -> list[float]:
        refs = references_of(len(completions), references, f"prefopt.online.lexical_rewards:{score.__name__}")
        return [float(score(text, texts)) for text, texts in zip(completions, refs)]

    # its name and doc, not functools.wraps: the signature callers read (`references` required, so a prompt
    # file without that column is refused before a run starts) must stay this one
    reward.__name__ = reward.__qualname__ = score.__name__
    reward.__doc__ = score.__doc__
    return reward


@functools.lru_cache(maxsize=None)
def _rouge_scorer(kind: str) -> Any:
    try:
        from rouge_score import rouge_scorer  # heavy: optional, `pip install 'prefopt[lexical]'`
    except ImportError:
        raise _needs("rouge-score", f"prefopt.online.lexical_rewards (ROUGE {kind})") from None
    return rouge_scorer.RougeScorer([kind], use_stemmer=True)


def _rouge(kind: str, completion: str, references: list[str]) -> float:
    return _rouge_scorer(kind).score(references[0], completion)[kind].fmeasure


@_lexical
def rouge_1(completion: str, references: list[str]) -> float:
    """ROUGE-1 F-measure against the first reference (rouge-score, Porter stemmer; RL4LMs' default)."""
    return _rouge("rouge1", completion, references)


@_lexical
def rouge_2(completion: str, references: list[str]) -> float:
    """ROUGE-2 F-measure against the first reference (rouge-score, Porter stemmer)."""
    return _rouge("rouge2", completion, references)


@_lexical
def rouge_l(completion: str, references: list[str]) -> float:
    """ROUGE-L F-measure against the first reference (rouge-score, Porter stemmer)."""
    return _rouge("rougeL", completion, references)


@functools.lru_cache(maxsize=None)
def _sacrebleu(kind: str) -> Any:
    try:
        from sacrebleu.metrics import BLEU, CHRF  # heavy: optional, `pip install 'prefopt[lexical]'`
    except ImportError:
        raise _needs("sacrebleu", f"prefopt.online.lexical_rewards:{kind}") from None
    return BLEU() if kind == "bleu" else CHRF()


def _corpus(kind: str, completion: str, references: list[str]) -> float:
    """sacrebleu's corpus score of the one-sentence corpus [completion], one reference stream per text, / 100."""
    return _sacrebleu(kind).corpus_score([completion], [[text] for text in references]).score / 100.0


@_lexical
def bleu(completion: str, references: list[str]) -> float:
    """sacreBLEU (default tokenizer and smoothing) of the completion against all references, / 100."""
    return _corpus("bleu", completion, references)


@_lexical
def chrf(completion: str, references: list[str]) -> float:
    """chrF (sacrebleu's defaults: character 6-grams, β = 2) against all references, / 100."""
    return _corpus("chrf", completion, references)


def wordnet_available() -> bool:
    """True when nltk is installed and finds WordNet's data (what METEOR's synonym matching reads)."""
    try:
        import nltk  # heavy: optional, `pip install 'prefopt[lexical]'`
    except ImportError:
        return False
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        try:
            nltk.data.find("corpora/wordnet.zip")
        except LookupError:
            return False
    return True


@_lexical
def meteor(completion: str, references: list[str]) -> float:
    """METEOR (nltk, max over the references) on whitespace tokens; needs WordNet (module docstring)."""
    try:
        from nltk.translate.meteor_score import meteor_score  # heavy: optional, `pip install 'prefopt[lexical]'`
    except ImportError:
        raise _needs("nltk", "prefopt.online.lexical_rewards:meteor") from None
    if not wordnet_available():
        raise RewardError(
            "prefopt.online.lexical_rewards:meteor needs NLTK's WordNet data, which is not installed: run "
            "`python -m nltk.downloader wordnet omw-1.4` once (or point NLTK_DATA at a folder that holds it)"
        )
    return meteor_score([text.split() for text in references], completion.split())
