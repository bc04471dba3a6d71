"""The reproduce framework: listing, lookup errors, the checks table, atomic report files and the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import prefopt.reproduce as reproduce
from prefopt.atomic import write_atomic
from prefopt.cli.reproduce import COMMAND
from prefopt.reproduce import (
    Check,
    Outcome,
    Reproduction,
    Table,
    UnknownReproductionError,
    render_checks,
    run_reproduction,
)
from prefopt.reproduce.base import check_at_least, check_at_most, check_close, fmt, mean_ci


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="prefopt")
    COMMAND.add_to(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_listing_names_every_reproduction(capsys: pytest.CaptureFixture[str]) -> None:
    reps = reproduce.list_reproductions()
    names = [r.name for r in reps]
    assert len(names) == len(set(names)) == len(reproduce.REPRODUCTIONS)
    assert {"ipo-bandits", "dpo-optimum", "best-of-n", "kto-contradictory", "single-pair"} <= set(names)
    assert _main(["reproduce"]) == 0
    out = capsys.readouterr().out
    for r in reps:
        assert r.name in out and r.paper in out and r.runtime in out
        assert "arXiv" in r.paper or "Mitchell" in r.paper


def test_unknown_name_suggests_and_lists(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UnknownReproductionError, match="Did you mean 'best-of-n'"):
        reproduce.get_reproduction("best-of-m")
    assert _main(["reproduce", "ipo-bandit"]) == 2
    err = capsys.readouterr().err
    assert "'ipo-bandits'" in err and "single-pair" in err
    assert _main(["reproduce", "single-pair", "--seeds", "0"]) == 2
    assert [r.name for r in reproduce.list_reproductions() if r.seeded] == [
        "ipo-bandits",
        "dpo-optimum",
        "likelihood-displacement",
        "length-exploitation",
        "dpo-frontier",
        "rm-overoptimization",
    ]
    with pytest.raises(ValueError, match="seeds"):
        run_reproduction("single-pair", seeds=0)


def test_check_helpers_and_table() -> None:
    assert check_close("c", "p", 1.0005, 1.0, 1e-3).passed and not check_close("c", "p", 1.002, 1.0, 1e-3).passed
    assert not check_close("c", "p", float("nan"), 1.0, 1e-3).passed
    assert check_at_most("c", "p", 0.5, 0.5).passed and not check_at_least("c", "p", 0.49, 0.5).passed
    assert fmt(0.0) == "0" and fmt(1234.5678) == "1235" and fmt(1.5e-7) == "1.500e-07"
    text = render_checks(
        [Check("first claim", "paper says", "1", "± 0.1", True), Check("second", "x", "2", "≤ 1", False)]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["claim", "paper", "ours", "tolerance", "result"]
    assert lines[2].endswith("PASS") and lines[3].endswith("FAIL")
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        Table("t", ["a", "b"], [["only one"]])


def test_mean_ci_by_hand() -> None:
    """[1, 2, 3]: mean 2, s = 1, t_{0.975, 2} = 4.3027 → half-width 4.3027/√3 = 2.4841."""
    import torch

    mean, half = mean_ci(torch.tensor([[1.0], [2.0], [3.0]]))
    assert float(mean) == pytest.approx(2.0) and float(half) == pytest.approx(4.302653 / 3**0.5, rel=1e-6)
    assert torch.isnan(mean_ci(torch.tensor([[1.0]]))[1]).all()


def _fake(passed: bool) -> Reproduction:
    def run(config: object, progress: object) -> Outcome:
        progress(1, 1, "only stage")  # type: ignore[operator]
        check = Check("the claim", "the paper's value", "0.5", "± 0.1", passed, 0.5)

        def draw(fig: object) -> None:
            fig.subplots().plot([0, 1], [0, 1])  # type: ignore[attr-defined]

        return Outcome([check], [Table("detail table", ["a"], [["1 | 2"]])], draw, (3, 2), ["a note"], {"x": [1, 2]})

    return Reproduction(
        "fake", "a fake", "Nobody 2024, arXiv:0000.00000", "nothing", "0 s", lambda quick, seeds: {"quick": quick}, run
    )


@pytest.mark.parametrize("passed, status", [(True, 0), (False, 1)])
def test_cli_runs_writes_atomically_and_sets_the_exit_status(
    passed: bool, status: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(reproduce, "get_reproduction", lambda name: _fake(passed))
    out = tmp_path / "report"
    assert _main(["reproduce", "fake", "--out", str(out), "--quick"]) == status
    printed = capsys.readouterr().out
    assert "the claim" in printed and ("PASS" if passed else "FAIL") in printed
    assert sorted(p.name for p in out.iterdir()) == ["figure.png", "report.md", "result.json"]  # no temp files left
    report = (out / "report.md").read_text()
    assert "| the claim | the paper's value | 0.5 | ± 0.1 |" in report and "![fake](figure.png)" in report
    assert "## detail table" in report and "| 1 \\| 2 |" in report and "a note" in report and "Environment" in report
    result = json.loads((out / "result.json").read_text())
    assert result["passed"] is passed and result["checks"][0]["value"] == 0.5 and result["data"] == {"x": [1, 2]}


def test_default_out_dir_is_reproductions_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(reproduce, "get_reproduction", lambda name: _fake(True))
    monkeypatch.chdir(tmp_path)
    assert _main(["reproduce", "fake", "--seeds", "3"]) == 0
    assert (tmp_path / "reproductions" / "fake" / "report.md").exists()
    assert "--seeds is ignored" in capsys.readouterr().err  # the fake declares no seeds


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.md"
    write_atomic(target, "old")

    def disk_full(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("prefopt.reproduce.report.os.fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.md"]
