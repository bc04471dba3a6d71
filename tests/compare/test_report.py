"""A real (tiny) comparison's samples, report.html and `prefopt report`: the samples kept per run, the page parsed
for its rows, rendered in a headless Chromium (non-blank, no console message, sortable), and rendered again
from a partial folder; a changed setting retrains the run with overwrite."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from prefopt.cli import main
from prefopt.compare import CompareConfig, compare, tiny_task
from prefopt.compare.samples import SAMPLES_FILE
from prefopt.errors import RunFolderError

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _config(out: Path, **changes) -> CompareConfig:
    settings = {**tiny_task(), "eval_prompts": 4, "max_new_tokens": 8}
    return CompareConfig(
        **{
            "losses": ("dpo", "ipo"),
            "output_dir": str(out),
            "progress": False,
            "train": {"max_steps": 2, "batch_size": 8},
            **settings,
            **changes,
        }
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny comparison of dpo and ipo (the synthetic task cached where tests/test_compare.py caches it)."""
    cache = tmp_path_factory.getbasetemp() / "prefopt-cache"
    before, threads = os.environ.get("PREFOPT_CACHE"), torch.get_num_threads()
    os.environ["PREFOPT_CACHE"] = str(cache)
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("report") / "cmp"
        result = compare(_config(out))
        yield out, result
    finally:
        torch.set_num_threads(threads)
        if before is None:
            os.environ.pop("PREFOPT_CACHE", None)
        else:
            os.environ["PREFOPT_CACHE"] = before


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_run_keeps_its_samples_beside_the_reference(finished) -> None:
    out, result = finished
    dpo, ipo = _lines(out / "dpo-seed0" / SAMPLES_FILE), _lines(out / "ipo-seed0" / SAMPLES_FILE)
    assert len(dpo) == len(ipo) == 4
    record = json.loads((out / "dpo-seed0" / "result.json").read_text())
    gen = record["generation"]
    assert [line["index"] for line in dpo] == [0, 1, 2, 3] and [line["prompt"] for line in dpo] == gen["prompts"]
    assert [line["completion"] for line in dpo] == gen["completions"]
    assert [line["reward"] for line in dpo] == gen["rewards"] and [line["length"] for line in dpo] == gen["lengths"]
    assert all(line["scorer"] == "gold reward" and line["run"] == "dpo-seed0" for line in dpo)
    assert all(math.isfinite(line["kl"]) and line["kl"] >= 0 for line in dpo)  # exact KL on the synthetic task
    # the reference's sample of each prompt is the same in every run (same evaluation seed), and it is scored
    for a, b in zip(dpo, ipo):
        assert a["prompt"] == b["prompt"] and a["reference_completion"] == b["reference_completion"]
        assert a["reference_reward"] == b["reference_reward"] and a["reference_length"] == b["reference_length"]
    assert [line["reference_reward"] for line in dpo] == gen["reference_rewards"]
    md = (out / "samples.md").read_text()
    assert f"## 1. {dpo[0]['prompt'].strip()}" in md
    assert "| reference |" in md and "| dpo |" in md and "| ipo |" in md
    assert result.files["report_html"] == str(out / "report.html")


class _Page(HTMLParser):
    """The table rows (cell texts and data-sort values), the images' sources, links and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[tuple[str, str | None]]] = []
        self.sources: list[str] = []
        self.text: list[str] = []
        self._table = self._cell = False
        self._sort: str | None = None

    def handle_starttag(self, tag, attrs) -> None:  # type: ignore[no-untyped-def]
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id") == "results"
        elif tag == "tr" and self._table:
            self.rows.append([])
        elif tag == "td" and self._table:
            self._cell, self._sort = True, attrs.get("data-sort")
            self.rows[-1].append(("", self._sort))
        self.sources += [v for k, v in attrs.items() if k in ("src", "href") and v]

    def handle_endtag(self, tag) -> None:  # type: ignore[no-untyped-def]
        if tag == "table":
            self._table = False
        elif tag == "td":
            self._cell = False

    def handle_data(self, data) -> None:  # type: ignore[no-untyped-def]
        self.text.append(data)
        if self._cell:
            text, sort = self.rows[-1][-1]
            self.rows[-1][-1] = (text + data, sort)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.rows = [r for r in page.rows if r]  # the header row has no <td>
    return page


def test_report_html_is_self_contained_with_the_table_rows(finished) -> None:
    out, result = finished
    page = _parse((out / "report.html").read_text(encoding="utf-8"))
    labels = [row[0][0] for row in page.rows]
    assert labels == [r["label"] for r in result.rows] and labels[:3] == ["dpo", "ipo", "reference"]
    reward = [k for k, _ in result.rows[0].items()]  # columns present: label first, then the table's
    assert "reward" in reward
    by_label = {row[0][0]: row for row in page.rows}
    assert by_label["reference"][0] == ("reference", "reference")
    table = result.table_text.splitlines()[2]  # dpo's line of the printed table: the same cells
    assert all(cell in table for cell, _ in by_label["dpo"][1:] if cell != "—")
    means = [float(s) for _, s in by_label["dpo"][1:] if s]
    assert result.rows[0]["reward"]["mean"] in means
    assert len(page.sources) == 3 and all(s.startswith("data:image/png;base64,") for s in page.sources)
    text = "".join(page.text)
    for words in ("Samples side by side", '"eval_prompts": 4', "python", torch.__version__, "dpo-seed0"):
        assert words in text, words
    assert "http://" not in text.split("<script")[0] and "https://" not in text


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp / 'profile'}"]
    command += ["--enable-logging=stderr", "--v=0", "--window-size=1280,2000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian: apt-get install chromium; CI installs it)")
def test_report_renders_in_a_headless_browser(finished, tmp_path) -> None:
    """The page draws (the screenshot is not one colour), logs nothing to the console (no script error), and its
    script sorts the table (`#sort=-reward`: highest reward first, the rows without one last)."""
    from PIL import Image

    out, result = finished
    url = (out / "report.html").as_uri()
    shot = tmp_path / "report.png"
    run = _chromium([f"--screenshot={shot}", url], tmp_path)
    assert shot.is_file(), run.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    counts = sorted((n for n, _ in image.getcolors(maxcolors=image.width * image.height)), reverse=True)
    assert len(counts) > 100 and counts[0] < 0.95 * image.width * image.height  # text, a table and plots drawn
    assert ":CONSOLE" not in run.stderr, [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    dom = _chromium(["--dump-dom", url + "#sort=-reward"], tmp_path)
    assert ":CONSOLE" not in dom.stderr and 'data-ready="1"' in dom.stdout, dom.stderr[-2000:]
    order = [row[0][0] for row in _parse(dom.stdout).rows]
    rewards = {r["label"]: r["reward"]["mean"] for r in result.rows if "reward" in r}
    without = [r["label"] for r in result.rows if "reward" not in r]
    assert order == sorted(rewards, key=lambda label: -rewards[label]) + without
    assert len(rewards) == 3 and 'data-key="reward" title="sort by reward" aria-sort="descending"' in dom.stdout


def test_prefopt_report_renders_a_partial_folder_again(finished, tmp_path, capsys) -> None:
    out, _ = finished
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    (partial / "ipo-seed0" / "result.json").unlink()  # stopped during ipo's run
    (partial / "report.html").unlink()
    assert main(["report", str(partial)]) == 0
    printed = capsys.readouterr().out
    assert "Partial: 1 of 2 runs have finished; not yet: ipo-seed0." in printed
    page = _parse((partial / "report.html").read_text(encoding="utf-8"))
    assert [row[0][0] for row in page.rows][:2] == ["dpo", "reference"]
    assert "ipo" not in [row[0][0] for row in page.rows]
    assert "Partial: 1 of 2 runs have finished" in "".join(page.text)
    (partial / "dpo-seed0" / "result.json").unlink()
    assert main(["report", str(partial)]) == 2
    assert "none of its 2 run(s) has finished" in capsys.readouterr().err


def test_a_changed_setting_retrains_the_run_with_overwrite(finished, tmp_path) -> None:
    out, _ = finished
    again = tmp_path / "again"
    shutil.copytree(out, again)
    changed = _config(again, losses=("dpo",), train={"max_steps": 1, "batch_size": 8})
    with pytest.raises(RunFolderError, match=r"dpo-seed0: train\.max_steps 2 → 1\)"):
        compare(changed)
    stamp = (again / "dpo-seed0" / "result.json").stat().st_mtime_ns
    result = compare(_config(again, losses=("dpo",), train={"max_steps": 1, "batch_size": 8}, overwrite=True))
    record = json.loads((again / "dpo-seed0" / "result.json").read_text())
    assert record["settings"]["train"]["max_steps"] == 1 and record["train"]["steps"] == 1
    assert (again / "dpo-seed0" / "result.json").stat().st_mtime_ns != stamp
    assert [r["label"] for r in result.rows][:2] == ["dpo", "reference"]
    assert (again / "ipo-seed0" / "result.json").exists()  # not a run of this comparison: left alone
