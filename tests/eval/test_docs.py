"""The `python` blocks of docs/evaluation.md run as written and print what the page says they print.

(`py` blocks need a trained model; the same calls are tested on a small one in test_generation.py.)
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"


def test_examples_run_and_print_what_the_page_says() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    namespace: dict[str, object] = {}
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - the documentation's own examples
    printed = stdout.getvalue()
    for line in (
        "0.5 0.25 0.5",
        "0.7153 [0.6986, 0.7297]",
        "0.4975 [0.4678, 0.5258]",
        "2 [-0.4841, 4.484]",
        "0.58 [0.5055, 0.6545] t",
        "algo3  θ=2.01 [1.93, 2.11]  elo=1349",
        "algo0  θ=0.00 [0.00, 0.00]  elo=1000",
    ):
        assert line in printed, f"docs/evaluation.md promises {line!r}; the examples printed:\n{printed}"
