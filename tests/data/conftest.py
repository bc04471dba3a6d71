"""Offline tokenizers for the data tests: byte-level BPEs trained in-process, wrapped as fast tokenizers.

`byte_tokenizer`: byte-level BPE, no BOS, EOS "<eos>"; decode(encode(s)) == s for every string.
`chat_tokenizer`: the same model with a post-processor that adds BOS, and a ChatML-like chat template
that itself writes BOS as text (the double-BOS trap).
Both learn merges such as "answer" from the corpus, so tokenize(p) + tokenize(c) ≠ tokenize(p + c) when
a word is split across the boundary.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

FIXTURES = Path(__file__).parent / "fixtures"

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "The answer is yes. The answer is no. What is the answer? answer answer answers",
    "Question: what is the capital of France? Answer: Paris is the capital of France.",
    "Human: tell me a joke. Assistant: why did the chicken cross the road?",
    "the cat sat on the mat; the dog ate the bone; colours: red, green, blue",
    "Describe the sea. The sea is a large body of salt water. Hello there, hi!",
] * 20


def _train(add_bos: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=SPECIAL,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        clean_up_tokenization_spaces=False,
    )
    if add_bos:
        fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def byte_tokenizer():
    return _train(add_bos=False)


@pytest.fixture(scope="session")
def chat_tokenizer():
    return _train(add_bos=True)


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "hf-cache"
