"""docs/atlas.md is the table of every registered algorithm on the default task: a loss added to the registry
without a row there fails here, naming the command that adds it."""

from __future__ import annotations

from pathlib import Path

from prefopt.compare.defaults import all_losses

ATLAS = Path(__file__).resolve().parents[2] / "docs" / "atlas.md"


def _rows(text: str) -> set[str]:
    """The first cell of every markdown table row."""
    return {line.split("|")[1].strip().strip("`") for line in text.splitlines() if line.startswith("|")}


def test_the_atlas_has_a_row_for_every_registered_algorithm() -> None:
    rows = _rows(ATLAS.read_text(encoding="utf-8"))
    missing = [name for name in all_losses(synthetic=True, reward=None) if name not in rows]
    assert not missing, (
        f"docs/atlas.md has no row for {missing}: run `prefopt compare --losses all --seeds 0,1,2 --out runs/atlas` "
        "(in the folder of the last atlas only the new losses train) and put its table.md in the page"
    )
