"""A word-level fast tokenizer for the toy language, built in-process (no download).

One token per whitespace-separated word of `language.vocabulary()`, plus the special tokens

    <pad> 0   <s> 1 (BOS, prepended by `tokenizer(text)`)   </s> 2 (EOS)   <unk> 3
    <system> <user> <assistant>   role markers written by the chat template

The chat template renders a conversation as `<s> <user> TEXT <assistant> TEXT </s> …`: each message is
its role marker followed by its content, and a completed assistant turn ends with EOS.
`add_generation_prompt=True` appends `<assistant>`, so the rendered prompt is a prefix of the rendered
conversation (what the data layer's boundary rule requires).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefopt.data.synthetic.language import vocabulary

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["SPECIAL_TOKENS", "CHAT_TEMPLATE", "build_tokenizer"]

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
ROLE_TOKENS = ("<system>", "<user>", "<assistant>")
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, *ROLE_TOKENS)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ ' <' + message['role'] + '> ' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ ' <assistant>' }}{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer of the toy language (191 words + 7 special tokens = 198 ids).

    Encoding splits on whitespace and maps each word to its id (unknown words to `<unk>`); with
    `add_special_tokens=True` (the default) BOS is prepended. Decoding joins words with single spaces.
    Right padding with `<pad>`; `model_max_length` 128.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors  # heavy: loaded on first use
    from transformers import PreTrainedTokenizerFast  # heavy: transformers is slow to import

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in vocabulary():
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    # WordPiece's decoder with an empty prefix joins tokens by spaces (and undoes nothing else).
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=128,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
