"""Whole-dataset validation: every problem of every row found in one pass and reported at once.

    report = validate_preferences(dataset, "paired")
    report.raise_if_errors()      # PreferenceDataError listing the first N problems with row ids + counts

Column problems (a missing required column, with the nearest existing name suggested by difflib) and
row problems (nulls, wrong types, empty strings, conversations without roles, non-boolean labels, ranked
rows with K < 2 or mismatched lengths, ties, implicit prompts with no common prefix, bad margin/weight)
are collected, never raised one at a time, so a user fixes a file in one go. Pairs whose chosen equals
their rejected carry no preference; `identical` decides: "warn" and "drop" list them in
`report.identical_rows` (a warning is added for "warn"), "error" makes each a problem. An identical
pair with no prompt column is always a problem unless dropped: no prompt can be extracted from it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefopt.data.formats import TIE_POLICIES, has_ties, needs_prompt_extraction, split_common_prefix
from prefopt.data.schema import IDENTICAL_POLICIES, MESSAGE_ROLES, KindSchema, is_conversation, nearest_name, schema_for
from prefopt.errors import DataNotFoundError, MissingSplitError, PreferenceDataError, PreferenceDataWarning, Problem

if TYPE_CHECKING:
    import datasets

__all__ = [
    "Problem",
    "ValidationReport",
    "PreferenceDataError",
    "MissingSplitError",
    "DataNotFoundError",
    "PreferenceDataWarning",
    "validate_preferences",
    "format_rows",
]

DEFAULT_MAX_REPORTED = 20
_ALSO_SHOWN = 5  # other bad rows a one-line message lists by number
AddProblem = Callable[[str, str, str], None]  # (field, code, message) → record a problem of the current row


@dataclass
class ValidationReport:
    """The result of `validate_preferences`: problems (errors), identical pairs, warnings, K of ranked data."""

    kind: str
    num_rows: int
    problems: list[Problem] = field(default_factory=list)
    identical_rows: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    num_completions: int | None = None

    @property
    def ok(self) -> bool:
        """True if no problem was found (warnings and identical pairs do not count)."""
        return not self.problems

    def summary(
        self,
        max_reported: int = DEFAULT_MAX_REPORTED,
        source: str = "dataset",
        where: Callable[[int], str] | None = None,
    ) -> str:
        """Counts per category, then the first `max_reported` problems with row ids (each after `where(row)`,
        e.g. "line 7", when the rows came from a file)."""
        rows = {p.row for p in self.problems if p.row is not None}
        counts = Counter(p.code for p in self.problems)
        lines = [
            f"{source} ({self.kind}, {self.num_rows} rows) has {len(self.problems)} problem(s) in "
            f"{len(rows)} row(s): " + ", ".join(f"{code} ×{n}" for code, n in counts.most_common())
        ]
        lines += [
            f"  {where(p.row)}: {p}" if where is not None and p.row is not None else f"  {p}"
            for p in self.problems[:max_reported]
        ]
        if len(self.problems) > max_reported:
            lines.append(f"  … and {len(self.problems) - max_reported} more (pass max_reported= to see more)")
        return "\n".join(lines)

    def one_line(self, source: str = "dataset", where: Callable[[int], str] | None = None) -> str:
        """The problems as one line (what `prefopt` commands print): the column problems, else the first bad
        row's problems in full, then the other bad rows, e.g. "(also: rows 5, 9, 12, 14, 20 and 3 more)"."""
        columns = [p for p in self.problems if p.row is None]
        rows = sorted({p.row for p in self.problems if p.row is not None})
        if columns or not rows:
            head = f"{source}: " + "; ".join(str(p) for p in columns)
        else:
            first = [p for p in self.problems if p.row == rows[0]]
            place = source if where is None else where(rows[0])
            place = f"{source}, {place}" if place.startswith("line ") else place  # else it names its file
            head = f"{place}: {first[0]}" + "".join(f"; field '{p.field}': {p.message}" for p in first[1:])
            rows = rows[1:]
        if not rows:
            return head
        shown, extra = rows[:_ALSO_SHOWN], len(rows) - _ALSO_SHOWN
        if extra > 0:
            listed = f"{', '.join(map(str, shown))} and {extra} more"
        else:
            listed = ", ".join(map(str, shown[:-1])) + " and " * (len(shown) > 1) + str(shown[-1])
        return f"{head} (also: row{'s' if len(rows) > 1 else ''} {listed})"

    def raise_if_errors(
        self,
        max_reported: int = DEFAULT_MAX_REPORTED,
        source: str = "dataset",
        where: Callable[[int], str] | None = None,
    ) -> None:
        """Raise PreferenceDataError with `summary()` (and `one_line()`) if any problem was found."""
        if self.problems:
            raise PreferenceDataError(
                self.summary(max_reported, source, where), list(self.problems), one_line=self.one_line(source, where)
            )


def format_rows(rows: list[int], limit: int = 10) -> str:
    """'[3, 7, 9]' or '[3, 7, …] (+5 more)' for messages."""
    head = ", ".join(map(str, rows[:limit]))
    return f"[{head}]" if len(rows) <= limit else f"[{head}, …] (+{len(rows) - limit} more)"


def validate_preferences(
    dataset: datasets.Dataset,
    kind: str,
    *,
    ties: str = "error",
    identical: str = "warn",
    batch_size: int = 1024,
) -> ValidationReport:
    """Check a whole dataset against the schema of `kind`; never raises for data problems.

    Args:
        dataset: rows already renamed to canonical column names.
        kind: "paired" | "unpaired" | "ranked" | "prompt" ("rollout").
        ties: ranked tie policy; only "error" makes a tie a problem.
        identical: "warn" | "drop" | "error" for pairs whose chosen equals rejected (see module docstring).
        batch_size: rows read per batch (memory bound, not a result knob).
    Returns:
        A ValidationReport; call `raise_if_errors()` to stop on problems.
    """
    if ties not in TIE_POLICIES:
        raise ValueError(f"ties={ties!r}: use one of {TIE_POLICIES}")
    if identical not in IDENTICAL_POLICIES:
        raise ValueError(f"identical={identical!r}: use one of {IDENTICAL_POLICIES}")
    schema = schema_for(kind)
    report = ValidationReport(schema.kind, len(dataset))
    present = _check_columns(schema, list(dataset.column_names), report)
    if len(dataset) == 0:
        report.problems.append(Problem(None, "*", "empty_dataset", "the dataset has no rows"))
    ks: dict[int, list[int]] = {}
    for index, row in _rows(dataset, present, batch_size):
        _check_row(schema, index, row, report, ties, identical, ks)
    if len(ks) > 1:
        common = max(ks, key=lambda k: len(ks[k]))
        for k, rows in sorted(ks.items()):
            if k != common:
                for i in rows:
                    report.problems.append(
                        Problem(
                            i,
                            "completions",
                            "inconsistent_k",
                            f"has K={k} completions but "
                            f"{len(ks[common])} rows have K={common}; a ranked dataset needs "
                            "one K (keep the top-K of each row, or split the dataset)",
                        )
                    )
    report.num_completions = next(iter(ks)) if len(ks) == 1 else None
    report.problems.sort(key=lambda p: -1 if p.row is None else p.row)  # column problems first, then by row
    if report.identical_rows and identical == "warn":
        report.warnings.append(
            f"{len(report.identical_rows)} pair(s) have chosen identical to rejected (rows "
            f"{format_rows(report.identical_rows)}); they carry no preference signal. Pass "
            "identical='drop' (prefopt train --identical drop) to remove them or "
            "identical='error' (--identical error) to stop."
        )
    return report


def _check_columns(schema: KindSchema, columns: list[str], report: ValidationReport) -> list[str]:
    """Column-level checks; returns the canonical columns present (row checks read only those)."""
    known = schema.known_columns
    unknown = [c for c in columns if c not in known]
    required = list(schema.required)
    if schema.kind == "paired" and "prompt" not in columns and nearest_name("prompt", unknown) is None:
        required.remove("prompt")  # implicit prompt (extracted from chosen/rejected), unless it looks misspelled
    for name in required:
        if name not in columns:
            report.problems.append(Problem(None, name, "missing_column", _missing_hint(name, unknown, columns)))
    for group in schema.one_of:
        found = [c for c in group if c in columns]
        if not found:
            hints = [h for h in (nearest_name(c, unknown) for c in group) if h]
            fix = f" (is {hints[0]!r} one of them? pass columns={{{hints[0]!r}: ...}})" if hints else ""
            report.problems.append(
                Problem(
                    None,
                    "|".join(group),
                    "missing_column",
                    f"needs one of {list(group)}{fix}; dataset columns: {columns}",
                )
            )
        elif len(found) > 1:
            report.problems.append(
                Problem(
                    None,
                    "|".join(found),
                    "ambiguous_column",
                    f"has both {found}; keep one (drop the other column or rename it)",
                )
            )
    for name in unknown:
        near = nearest_name(name, known)
        if near is not None and near not in columns:
            report.warnings.append(
                f"column {name!r} is not used by {schema.kind} data; did you mean {near!r}? "
                f"Pass columns={{{name!r}: {near!r}}}."
            )
    return [c for c in columns if c in known]


def _missing_hint(name: str, unknown: list[str], columns: list[str]) -> str:
    near = nearest_name(name, unknown)
    if near is not None:
        return f"missing; did you mean {near!r}? Pass columns={{{near!r}: {name!r}}}"
    return f"missing; dataset columns are {columns}. Map yours with columns={{'<your name>': {name!r}}}"


def _rows(dataset: datasets.Dataset, columns: list[str], batch_size: int) -> Iterator[tuple[int, dict[str, Any]]]:
    if not columns or len(dataset) == 0:
        return
    index = 0
    for batch in dataset.select_columns(columns).iter(batch_size=batch_size):
        for j in range(len(batch[columns[0]])):
            yield index, {c: batch[c][j] for c in columns}
            index += 1


def _check_row(
    schema: KindSchema,
    i: int,
    row: dict[str, Any],
    report: ValidationReport,
    ties: str,
    identical: str,
    ks: dict[int, list[int]],
) -> None:
    """All checks of one row; problems are appended to `report`."""
    row_id = row.get("id")

    def add(name: str, code: str, message: str) -> None:
        report.problems.append(Problem(i, name, code, message, row_id))

    texts_ok = all([_check_text(row[name], name, add) for name in schema.text_columns if name in row])  # every field
    if schema.kind == "paired" and texts_ok and "chosen" in row and "rejected" in row:
        _check_pair(row, add, report, i, identical)
    elif schema.kind == "unpaired" and "label" in row:
        if not (isinstance(row["label"], bool) or (type(row["label"]) is int and row["label"] in (0, 1))):
            add("label", "bad_label", f"must be a boolean (true = desirable; 0/1 accepted), got {row['label']!r}")
    elif schema.kind == "ranked" and "completions" in row:
        _check_ranked(row, add, ties, ks, i)
    _check_numbers(row, add)
    if "id" in row and (isinstance(row_id, bool) or not isinstance(row_id, (str, int))):
        add("id", "bad_id", f"must be a string or an integer, got {row_id!r}")
    if "pair_id" in row and (isinstance(row["pair_id"], bool) or not isinstance(row["pair_id"], int)):
        add("pair_id", "bad_pair_id", f"must be an integer (the index of the source pair), got {row['pair_id']!r}")


def _check_numbers(row: dict[str, Any], add: AddProblem) -> None:
    """The optional numeric columns: `margin` a finite number, `weight` a finite number ≥ 0, neither null."""
    for name in ("margin", "weight"):
        value = row.get(name)
        if name in row and value is None:
            add(name, "missing_value", "is missing (null); an optional column must be set in every row, or dropped")
        elif name in row and not (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (name == "margin" or value >= 0)
        ):
            want = "a finite number" if name == "margin" else "a finite number ≥ 0"
            add(name, f"bad_{name}", f"must be {want}, got {value!r}")


def _check_text(value: Any, name: str, add: AddProblem) -> bool:
    """A string or a conversation; True if usable."""
    if value is None:
        add(name, "missing_value", "is missing (null)")
        return False
    if isinstance(value, str):
        if not value.strip():
            add(name, "empty", "is an empty string")
            return False
        return True
    if not isinstance(value, list) or not value:
        what = "an empty list" if isinstance(value, list) else type(value).__name__
        add(name, "wrong_type", f"must be a string or a list of {{role, content}} messages, got {what}")
        return False
    ok = True
    for j, message in enumerate(value):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(message, dict):
            add(name, "bad_message", f"message {j} must be a {{role, content}} dict, got {type(message).__name__}")
        elif role is None:
            add(name, "bad_message", f"message {j} has no 'role' (one of {list(MESSAGE_ROLES)})")
        elif role not in MESSAGE_ROLES:
            add(name, "bad_message", f"message {j} has role {role!r}; expected one of {list(MESSAGE_ROLES)}")
        elif not isinstance(content, str):
            add(name, "bad_message", f"message {j} ({role}) has no string 'content', got {content!r}")
        else:
            continue
        ok = False
    return ok


def _check_pair(row: dict[str, Any], add: AddProblem, report: ValidationReport, i: int, identical: str) -> None:
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    if isinstance(chosen, str) != isinstance(rejected, str):
        add("rejected", "mixed_styles", "chosen and rejected must both be strings or both be conversations")
        return
    if chosen == rejected:
        if identical == "error":
            add(
                "rejected",
                "identical",
                "is identical to chosen; fix the pair or pass identical='drop' (--identical drop)",
            )
        elif identical == "warn" and needs_prompt_extraction(row):
            add(
                "rejected",
                "identical",
                "is identical to chosen and there is no prompt to keep the row by; "
                "pass identical='drop' (--identical drop) or add a 'prompt' column",
            )
        else:
            report.identical_rows.append(i)
        return
    if needs_prompt_extraction(row):
        if split_common_prefix(chosen, rejected) is None:
            add(
                "chosen",
                "no_common_prefix",
                "no prompt given and chosen/rejected share no common prefix "
                "(whole leading messages, or text up to a word boundary); add a 'prompt' column",
            )
    elif is_conversation(prompt) and isinstance(chosen, str):
        add(
            "chosen",
            "mixed_styles",
            "prompt is a conversation but chosen/rejected are strings; give "
            "completions as [{'role': 'assistant', 'content': ...}] lists",
        )


def _check_ranked(row: dict[str, Any], add: AddProblem, ties: str, ks: dict[int, list[int]], i: int) -> None:
    completions = row["completions"]
    if not isinstance(completions, list) or len(completions) < 2:
        n = len(completions) if isinstance(completions, list) else type(completions).__name__
        add("completions", "too_few_completions", f"must be a list of K ≥ 2 completions, got {n}")
        return
    texts_ok = all([_check_text(c, f"completions[{j}]", add) for j, c in enumerate(completions)])  # every one
    key = "ranks" if "ranks" in row else "scores" if "scores" in row else None
    if key is None:
        return
    values = row[key]
    numeric = isinstance(values, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )
    if not numeric or (key == "ranks" and not all(float(v).is_integer() for v in values)):
        add(
            key,
            "bad_ranking",
            f"must be a list of finite {'integers' if key == 'ranks' else 'numbers'}, got {values!r}",
        )
    elif len(values) != len(completions):
        add(key, "length_mismatch", f"has {len(values)} values but completions has {len(completions)}")
    elif ties == "error" and has_ties(values if key == "ranks" else None, values if key == "scores" else None):
        add(key, "tie", f"has ties {values!r}; pass ties='keep' (stable order, tied ranks kept) or ties='drop'")
    elif texts_ok:
        ks.setdefault(len(completions), []).append(i)
