"""Chat templates by name, and the conversation settings that the official recipes differ in.

Conversational data is rendered through the tokenizer's chat template (`prefopt.data.tokenize`). Three
things change what a run scores, and published recipes differ in each:

    chat template       the tokenizer's own, or one set for the run (`chat_template`: a Jinja text or a
                        built-in name below); xfactlab/orpo's main.py sets the zephyr format when the
                        tokenizer has none, HALOs writes its own role prefixes
    system turn         `system_prompt`: a system message put first in every prompt that has none
                        ("" is the empty system turn that alignment-handbook and SimPO insert)
    assistant header    `assistant_header`: "prompt" (the generation prompt, e.g. "<|assistant|>\\n", ends
                        the prompt, so it is not scored) or "completion" (the prompt is rendered without
                        it and the header opens each completion, so it is scored and counted in |y|, as
                        SimPO's run_simpo.py renders prompt and completion)

Built-in templates (written here from the formats their sources document, not copied):

    zephyr   <|system|>\\n{content}</s>\\n<|user|>\\n{content}</s>\\n<|assistant|>\\n{content}</s>\\n ...;
             generation prompt "<|assistant|>\\n" (the HuggingFaceH4 zephyr format; xfactlab/orpo main.py)
    halos    \\n<|user|>\\n{content}\\n<|assistant|>\\n{content} ...; generation prompt "\\n<|assistant|>\\n"
             (ContextualAI/HALOs config.yaml human_prefix / assistant_prefix, empty suffixes); a system
             message is written with the user prefix
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ASSISTANT_HEADERS", "BUILTIN_TEMPLATES", "resolve_chat_template", "with_system_turn"]

ASSISTANT_HEADERS = ("prompt", "completion")

_ZEPHYR = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
_HALOS = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '\n<|assistant|>\n' + message['content'] }}"
    "{% else %}{{ '\n<|user|>\n' + message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n<|assistant|>\n' }}{% endif %}"
)
BUILTIN_TEMPLATES: Mapping[str, str] = {"zephyr": _ZEPHYR, "halos": _HALOS}


def resolve_chat_template(template: str | None) -> str | None:
    """The Jinja text of `template`: a built-in name (`BUILTIN_TEMPLATES`) or a template given as text.

    A name-like value (no Jinja markup) that is not a built-in is refused, naming the built-ins.
    """
    if template is None or template in BUILTIN_TEMPLATES:
        return None if template is None else BUILTIN_TEMPLATES[template]
    if "{{" not in template and "{%" not in template:
        raise ValueError(
            f"chat_template={template!r} is neither a built-in template ({', '.join(BUILTIN_TEMPLATES)}) "
            "nor Jinja text; give one of those names or the template itself"
        )
    return template


def with_system_turn(messages: Sequence[Mapping[str, Any]], system_prompt: str | None) -> list[Any]:
    """`messages` with a system message of `system_prompt` first, unless it is None or the first message is one."""
    messages = list(messages)
    if system_prompt is None or (messages and messages[0].get("role") == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]
