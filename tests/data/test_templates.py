"""Recipe-level tokenisation settings: built-in chat templates, the system turn, where the assistant header goes,
and dropping rows with long prompts (`prefopt.data.templates`, `TokenizeConfig`)."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict

import datasets
import pytest

from prefopt.data import PreferenceDataWarning, PromptCompletionEncoder, TokenizeConfig, tokenize_preferences
from prefopt.data.templates import BUILTIN_TEMPLATES, resolve_chat_template, with_system_turn
from prefopt.data.tokenize import FORMAT_VERSION
from prefopt.errors import SettingsError
from prefopt.train.config import TrainConfig

USER = [{"role": "user", "content": "hi"}]
REPLY = [{"role": "assistant", "content": "ok"}]


def _texts(tokenizer, template: str, **settings) -> tuple[str, str]:
    """(prompt, completion) texts of USER → REPLY, decoded from the encoded ids (the byte BPE decodes exactly)."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = resolve_chat_template(template)
    out = PromptCompletionEncoder(tok, TokenizeConfig(append_eos=False, **settings)).encode(USER, [REPLY])
    return tok.decode(out["prompt_ids"]), tok.decode(out["completion_ids"][0])


def test_zephyr_with_the_empty_system_turn_and_the_header_in_the_prompt(byte_tokenizer):
    """alignment-handbook's zephyr DPO rendering: system turn "", generation prompt "<|assistant|>\\n" in the prompt."""
    prompt, completion = _texts(byte_tokenizer, "zephyr", system_prompt="")
    assert prompt == "<|system|>\n<eos>\n<|user|>\nhi<eos>\n<|assistant|>\n"
    assert completion == "ok<eos>\n"
    assert _texts(byte_tokenizer, "zephyr")[0] == "<|user|>\nhi<eos>\n<|assistant|>\n"  # None: no system turn


def test_simpo_scores_the_assistant_header(byte_tokenizer):
    """SimPO's run_simpo.py: prompt = template(prompt turns) without a generation prompt, completion =
    template([assistant turn]) = "<|assistant|>\\nok</s>\\n"; the header is scored and counted in |y|."""
    prompt, completion = _texts(byte_tokenizer, "zephyr", system_prompt="", assistant_header="completion")
    assert prompt == "<|system|>\n<eos>\n<|user|>\nhi<eos>\n"
    assert completion == "<|assistant|>\nok<eos>\n"


def test_halos_prompt_format(byte_tokenizer):
    """HALOs config.yaml: human_prefix "\\n<|user|>\\n", assistant_prefix "\\n<|assistant|>\\n", empty suffixes."""
    prompt, completion = _texts(byte_tokenizer, "halos")
    assert (prompt, completion) == ("\n<|user|>\nhi\n<|assistant|>\n", "ok")


def test_system_turn_is_not_added_twice() -> None:
    system = [{"role": "system", "content": "be brief"}, *USER]
    assert with_system_turn(system, "") == system
    assert with_system_turn(USER, "")[0] == {"role": "system", "content": ""}
    assert with_system_turn(USER, None) == USER


def test_template_names_are_checked() -> None:
    assert resolve_chat_template("zephyr") == BUILTIN_TEMPLATES["zephyr"]
    assert resolve_chat_template("{{ x }}") == "{{ x }}" and resolve_chat_template(None) is None
    with pytest.raises(ValueError, match="neither a built-in template \\(zephyr, halos\\)"):
        resolve_chat_template("chatml")


def test_drop_long_prompts_instead_of_truncating(byte_tokenizer):
    """prompt_truncation="drop": a row whose prompt is over max_prompt_length is dropped (xfactlab/orpo keeps
    rows with prompt length < prompt_max_length), counted in a warning; rows within it are untouched."""
    rows = datasets.Dataset.from_list(
        [
            {"prompt": "hi", "chosen": " yes", "rejected": " no"},
            {"prompt": "The answer is yes. " * 8, "chosen": " yes", "rejected": " no"},
        ]
    )
    config = TokenizeConfig(max_length=64, max_prompt_length=8, prompt_truncation="drop")
    with pytest.warns(PreferenceDataWarning, match="dropped 1 of 2 row.*longer than max_prompt_length=8"):
        tokens = tokenize_preferences(rows, byte_tokenizer, config)
    assert tokens["row_index"] == [0] and tokens["example_index"] == [0]
    kept = tokenize_preferences(rows, byte_tokenizer, TokenizeConfig(max_length=64, max_prompt_length=8))
    assert len(kept) == 2 and len(kept[1]["prompt_ids"]) == 8  # the default keeps the end of the prompt


def test_fingerprints_of_earlier_settings_do_not_change() -> None:
    """The new fields at their defaults stay out of the fingerprint, so caches keyed before them stay valid."""
    config = TokenizeConfig(max_length=512, max_prompt_length=256)
    fields = {k: v for k, v in asdict(config).items() if k not in ("num_proc", "system_prompt", "assistant_header")}
    text = json.dumps({"version": FORMAT_VERSION, **fields}, sort_keys=True)
    assert config.fingerprint() == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert TokenizeConfig(system_prompt="").fingerprint() != TokenizeConfig().fingerprint()


def test_train_config_names_the_bad_setting() -> None:
    with pytest.raises(SettingsError, match="TrainConfig.assistant_header='header'"):
        TrainConfig(assistant_header="header")
    with pytest.raises(SettingsError, match="TrainConfig.prompt_truncation='cut'"):
        TrainConfig(prompt_truncation="cut")
    with pytest.raises(SettingsError, match="chat_template='chatml'"):
        TrainConfig(chat_template="chatml")
    config = TrainConfig(prompt_truncation="keep_start", system_prompt="", assistant_header="completion")
    assert config.tokenize_config() == TokenizeConfig(
        max_length=512,
        max_prompt_length=256,
        prompt_truncation="keep_start",
        system_prompt="",
        assistant_header="completion",
    )
