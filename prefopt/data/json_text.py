"""JSON text read strictly, for `prefopt.data.files`: objects with a repeated key refused (`DECODER` raises
`DuplicateKey`), one JSON Lines line parsed into a row or a problem, and the pieces of messages (what a
value is, json's message, the line of a position).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

__all__ = [
    "DECODER",
    "DuplicateKey",
    "JsonProblem",
    "array_rows",
    "json_message",
    "json_type",
    "line_at",
    "parse_jsonl_line",
]


class DuplicateKey(ValueError):
    """A key repeated within one JSON object (its `args[0]`)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def json_type(value: Any) -> str:
    """What a decoded JSON value is, for messages ("a JSON array", "JSON null", ...)."""
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str):
        return "a JSON string"
    if isinstance(value, bool) or value is None:
        return f"JSON {json.dumps(value)}"
    return "a JSON number" if isinstance(value, (int, float)) else type(value).__name__


def parse_jsonl_line(text: str, number: int, example: str) -> tuple[dict[str, Any] | None, tuple[str, str]]:
    """(the row, ()) if the line is one JSON object without repeated keys, else (None, (what is wrong, what to do))."""
    stripped = text.strip()
    try:
        value = DECODER.decode(stripped)
    except DuplicateKey as err:
        return None, (
            f"key {err.args[0]!r} appears twice in one object",
            "keep one of them (JSON objects need unique keys)",
        )
    except json.JSONDecodeError as err:
        if number == 1 and stripped in ("[", "{"):
            return None, (
                "a JSON value spread over several lines (pretty-printed JSON?)",
                "write one object per line (JSON Lines), or save a JSON array of objects as .json",
            )
        return None, (
            f"invalid JSON at column {err.colno} ({json_message(err)})",
            f"each line must be one complete JSON object, e.g. {example}",
        )
    if isinstance(value, dict):
        return value, ("", "")
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return None, (
            "a JSON array of objects on one line",
            "write one object per line (JSON Lines), or save the array as a .json file",
        )
    return None, (f"{json_type(value)}, not a JSON object", f"each line must be one JSON object, e.g. {example}")


def json_message(err: json.JSONDecodeError) -> str:
    """json's message without its dangling " at" ("Unterminated string starting at" → "... starting here")."""
    return err.msg[:-3] + " here" if err.msg.endswith(" at") else err.msg


def line_at(text: str, pos: int) -> int:
    """The 1-based line of position `pos` in `text`."""
    return text.count("\n", 0, pos) + 1


class JsonProblem(ValueError):
    """What is wrong with a JSON text, as `args` (1-based line, what is wrong, what to do)."""


_WS = re.compile(r"\s*")


def array_rows(text: str, example: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line where it starts, row object) for each item of the one JSON array `text` holds; JsonProblem at
    the first thing that is not so (`example`: a row for the message)."""
    i = _WS.match(text, 0).end()
    if text[i] != "[":
        _refuse_non_array(text, i, example)
    rows = 0
    i = _WS.match(text, i + 1).end()
    while i < len(text) and text[i] != "]":
        line = line_at(text, i)
        value, i = _array_item(text, i, line, rows + 1, example)
        rows += 1
        yield line, value
        i = _after_item(text, i)
    _check_array_end(text, i)


def _refuse_non_array(text: str, i: int, example: str) -> None:
    """The error for a .json file whose first value (at `i`) is not an array: JSON Lines, or another value."""
    try:
        value, end = DECODER.raw_decode(text, i)
    except (json.JSONDecodeError, DuplicateKey):
        value, end = None, -1
    after = _WS.match(text, end).end() if end >= 0 else -1
    if isinstance(value, dict) and text.startswith("{", after):
        raise JsonProblem(
            line_at(text, after),
            "one JSON object per line (JSON Lines) in a .json file",
            "rename the file to .jsonl",
        )
    what = f"an object with keys {list(value)}" if isinstance(value, dict) else "not a JSON array"
    raise JsonProblem(
        line_at(text, i),
        f"{what}, where a JSON array of row objects is expected",
        f"write the rows as [{example}, ...] (or one object per line in a .jsonl file)",
    )


def _array_item(text: str, i: int, line: int, item: int, example: str) -> tuple[dict[str, Any], int]:
    """(array item number `item`, which starts at `i` on `line`, as a row object; the position after it)."""
    try:
        value, i = DECODER.raw_decode(text, i)
    except DuplicateKey as err:
        raise JsonProblem(
            line,
            f"the object starting here repeats the key {err.args[0]!r}",
            "keep one of them (JSON objects need unique keys)",
        ) from None
    except json.JSONDecodeError as err:
        raise JsonProblem(
            err.lineno,
            f"invalid JSON at column {err.colno} ({json_message(err)})",
            "fix the JSON (a validator such as `python -m json.tool FILE` shows the spot)",
        ) from None
    if not isinstance(value, dict):
        raise JsonProblem(
            line,
            f"array item {item} is {json_type(value)}, not a JSON object",
            f"make every item a row object, e.g. {example}",
        )
    return value, i


def _after_item(text: str, i: int) -> int:
    """The position of the next array item (past a ','), of the closing ']', or the end of the text."""
    i = _WS.match(text, i).end()
    if i < len(text) and text[i] == ",":
        return _WS.match(text, i + 1).end()
    if i < len(text) and text[i] != "]":
        raise JsonProblem(
            line_at(text, i),
            "expected ',' or ']' after an array item",
            "separate the row objects with commas",
        )
    return i


def _check_array_end(text: str, i: int) -> None:
    """The array closes at `i`, and nothing but whitespace follows it."""
    if i >= len(text):
        raise JsonProblem(
            line_at(text, len(text)),
            "the JSON array is not closed (the file looks cut off)",
            "end it with ']' (or re-create the file)",
        )
    rest = _WS.match(text, i + 1).end()
    if rest < len(text):
        raise JsonProblem(
            line_at(text, rest),
            "text after the closing ']' of the array",
            "remove it, or put all rows in the one array",
        )
