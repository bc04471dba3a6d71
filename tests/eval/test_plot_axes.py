"""The frontier's KL axis turns logarithmic when the KLs span more than a decade (KL ≤ 0 kept on a symmetric-log
axis), and every plot carries the setting line under its axes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import prefopt.eval.plots as plots
from prefopt.eval.plots import FrontierPoint, kl_axis_scale
from prefopt.eval.stats import MeanCI


@pytest.mark.parametrize(
    ("kls", "expected"),
    [
        ([0.4, 1.2, 3.9], ("linear", 0.1)),  # 3.9 / 0.4 < 10: one decade at most
        ([0.38, 0.47, 1.39, 29.1], ("log", 0.1)),  # the README's default run: KTO at 29 nats
        ([0.0, 0.38, 29.1], ("symlog", 0.1)),  # the reference at KL 0
        ([-0.02, 0.005, 0.3], ("symlog", 0.001)),  # a sampled k1 estimate below 0
        ([0.0, 0.5], ("linear", 0.1)),  # one positive value spans nothing
        ([0.0, 0.0], ("linear", 1.0)),
        ([float("nan"), 0.2, 5.0], ("log", 0.1)),
    ],
)
def test_kl_axis_scale(kls: list[float], expected: tuple[str, float]) -> None:
    scale, linthresh = kl_axis_scale(kls)
    assert (scale, pytest.approx(linthresh)) == expected


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plot functions save (the PNGs are still written)."""
    saved: list[Any] = []
    real = plots._save

    def keep(fig: Any, path: Any, footer: str | None = None) -> Path:
        saved.append(fig)
        return real(fig, path, footer)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def _footer(fig: Any) -> str:
    label = fig._supxlabel  # matplotlib's figure-level x label, where the footer goes
    return "" if label is None else label.get_text().replace("\n", " ")


def test_frontier_axis_and_footer(tmp_path: Path, figures: list[Any]) -> None:
    setting = "synthetic task (seed 0) · dpo, kto × seed 0 · 62 steps · eval 128 prompts"
    wide = [FrontierPoint("dpo", MeanCI(0.38, 0.34, 0.42, 128), 0.76), FrontierPoint("kto", 29.1, 0.6)]
    plots.plot_reward_kl_frontier(wide, tmp_path / "wide.png", reference_reward=0.36, footer=setting)
    narrow = [FrontierPoint("dpo", 0.38, 0.76), FrontierPoint("ipo", 0.47, 0.69)]
    plots.plot_reward_kl_frontier(narrow, tmp_path / "narrow.png", reference_reward=0.36)
    plots.plot_reward_kl_frontier(wide, tmp_path / "positive.png")  # no reference at KL 0: a plain log axis
    (wide_fig, narrow_fig, positive_fig) = figures
    axis = wide_fig.axes[0]
    assert axis.get_xscale() == "symlog" and "log scale (linear below 0.1)" in axis.get_xlabel()
    assert _footer(wide_fig) == setting
    assert narrow_fig.axes[0].get_xscale() == "linear" and _footer(narrow_fig) == ""
    assert positive_fig.axes[0].get_xscale() == "log"
    with pytest.raises(ValueError, match="kl_scale='cubic'"):
        plots.plot_reward_kl_frontier(wide, tmp_path / "bad.png", kl_scale="cubic")


def test_every_plot_prints_the_setting(tmp_path: Path, figures: list[Any]) -> None:
    setting = "synthetic task (seed 0, 64/16/16 train/eval/held-out prompts) · " * 3  # long: wrapped, all kept
    records = [{"step": 1, "loss": 0.69}, {"step": 2, "loss": 0.6}]
    plots.plot_training_curves({"dpo": records}, tmp_path / "curves.png", footer=setting)
    plots.plot_length_drift({"dpo": 12.0, "ipo": 15.0}, tmp_path / "length.png", reference_length=15.1, footer=setting)
    for fig in figures:
        assert " ".join(_footer(fig).split()) == " ".join(setting.split())
        assert "\n" in fig._supxlabel.get_text()  # wrapped to the figure's width
