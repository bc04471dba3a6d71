"""What the TRL parity test and its recorder share: rows, a tokenizer and two tiny Llamas, all built in-process.

Nothing here imports prefopt or TRL: `record_trl_parity.py` runs it in a side environment with TRL installed,
`test_trl_parity.py` in the suite without TRL. Every piece is deterministic by construction, so the recorded
values stay valid across library versions, and the fixture holds checksums that make a drift visible:

* the tokenizer: a byte-level BPE (GPT-2's byte alphabet and split rule) whose merges come from a small
  deterministic trainer below (most frequent pair, ties broken by the pair itself) on `CORPUS`;
* the models: a 2-layer, 32-wide Llama from a config, its weights then overwritten from a seeded
  `torch.Generator` in parameter-name order (independent of transformers' own initialisation);
* the rows: `AGREE` rows, where tokenising prompt + completion jointly (TRL) and apart (prefopt) give the
  same tokens, and the `BOUNDARY` row, whose prompt ends inside a word ("… over the la" + "zy dog.").
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from tests.train.tiny_task import tiny_llama

__all__ = [
    "AGREE",
    "BETA",
    "BOUNDARY",
    "CORPUS",
    "ROWS",
    "parity_model",
    "parity_tokenizer",
    "tokenizer_checksum",
    "weights_checksum",
]

BETA = 0.1
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"

ROWS: list[dict[str, str]] = [
    {"prompt": "Question: What colour is the sky?\nAnswer:", "chosen": " The sky is blue.", "rejected": " Green."},
    {"prompt": "Question: Is the sea salty?\nAnswer:", "chosen": " Yes, the sea is salty.", "rejected": " No."},
    {"prompt": "Say hello.", "chosen": " Hello there!", "rejected": " Goodbye."},
    {"prompt": "Name a fruit:", "chosen": " An apple.", "rejected": " A chair, which is not a fruit."},
    {"prompt": "Count to three:", "chosen": " one, two, three.", "rejected": " one, three, two."},
    {"prompt": "What does the cat sit on?", "chosen": " The cat sits on the mat.", "rejected": " The moon."},
    {
        "prompt": "Finish the sentence: The quick brown fox jumps over the la",
        "chosen": "zy dog.",
        "rejected": "zy cat.",
    },
]
BOUNDARY = 6  # the row whose prompt ends inside a word
AGREE = [i for i in range(len(ROWS)) if i != BOUNDARY]

CORPUS: list[str] = [
    *(row["prompt"] + row[key] for row in ROWS for key in ("chosen", "rejected")),
    "The lazy dog sleeps. A lazy cat sleeps too. The sky is blue and the sea is salty.",
    "Question: what is the answer? Answer: the answer is yes. Hello, hello there.",
    "one, two, three, four. The cat sat on the mat; the dog ate the bone.",
]


def _byte_alphabet() -> list[str]:
    """GPT-2's reversible byte → printable character map, as a list indexed by byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _learn_merges(corpus: list[str], limit: int = 400) -> list[tuple[str, str]]:
    """Plain BPE training: repeatedly merge the most frequent adjacent pair (ties: the smallest pair)
    until no pair occurs twice. Deterministic, unlike trainers whose tie-breaking may change."""
    split = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split rule, bytes as characters
    words = Counter(tuple(piece) for text in corpus for piece, _ in split.pre_tokenize_str(text))
    merges: list[tuple[str, str]] = []
    for _ in range(limit):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best, count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if count < 2:
            break
        merges.append(best)
        words = Counter({_merge(word, best): c for word, c in words.items()})
    return merges


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def parity_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with BOS prepended (as Llama's tokenizers do), EOS "</s>", pad "<pad>"."""
    merges = _learn_merges(CORPUS)
    vocab = {token: i for i, token in enumerate([PAD, BOS, EOS, UNK, *_byte_alphabet()])}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )


def tokenizer_checksum(tokenizer: PreTrainedTokenizerFast) -> str:
    """sha256 (16 hex) of the vocabulary and of the ids of `CORPUS`: equal wherever it tokenises the same."""
    ids = [tokenizer(text)["input_ids"] for text in CORPUS]
    return hashlib.sha256(json.dumps([sorted(tokenizer.get_vocab().items()), ids]).encode()).hexdigest()[:16]


def parity_model(tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    """A 2-layer, 32-wide fp32 Llama whose weights come from `torch.Generator().manual_seed(seed)` only:
    embeddings N(0, 0.5²), matrices N(0, 1/fan_in), norm weights 1 + N(0, 0.1²), in parameter-name order."""
    model = tiny_llama(tokenizer, seed=seed).float().eval()  # every weight is overwritten below
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if param.ndim == 1:
                param.copy_(1.0 + 0.1 * noise)
            elif "embed_tokens" in name:
                param.copy_(0.5 * noise)
            else:
                param.copy_(noise / param.shape[1] ** 0.5)
    return model


def weights_checksum(model: torch.nn.Module) -> str:
    """sha256 (16 hex) of every parameter's name and float32 bytes, in name order."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
