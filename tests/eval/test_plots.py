"""Plots: non-empty PNGs written atomically, JSONL reading with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefopt.eval.plots import (
    FrontierPoint,
    plot_length_drift,
    plot_reward_kl_frontier,
    plot_training_curves,
    read_metrics_jsonl,
)
from prefopt.eval.stats import MeanCI

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG_MAGIC) and len(data) > 5000


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_frontier_png(tmp_path: Path) -> None:
    points = [
        FrontierPoint("dpo", MeanCI(0.4, 0.3, 0.5, 64), MeanCI(0.55, 0.5, 0.6, 64), "β=0.5"),
        FrontierPoint("dpo", MeanCI(3.9, 3.5, 4.3, 64), MeanCI(0.64, 0.6, 0.7, 64), "β=0.1"),
        FrontierPoint("ipo", 1.2, 0.58),
    ]
    out = plot_reward_kl_frontier(
        points, tmp_path / "plots" / "frontier.png", reference_reward=MeanCI(0.43, 0.4, 0.46, 64)
    )
    assert out == tmp_path / "plots" / "frontier.png" and _is_png(out) and _no_temporaries(out.parent)
    with pytest.raises(ValueError, match="no points"):
        plot_reward_kl_frontier([], tmp_path / "x.png")


def test_frontier_point_from_generation_metrics(tmp_path: Path) -> None:
    from prefopt.eval.generation import generation_metrics

    m = generation_metrics(
        [1.0, 2.0, 0.5], [0.0, 1.0, 1.0], [3, 4, 5], [3, 3, 3], kl_k3=[0.1, 0.3, 0.2], n_resamples=50
    )
    point = FrontierPoint.from_metrics("dpo", m, "β=0.1")
    assert point.kl is m.kl and point.reward is m.reward and point.kl.mean == pytest.approx(0.2)
    assert _is_png(plot_reward_kl_frontier([point], tmp_path / "one.png"))
    no_kl = generation_metrics([1.0], [0.0], [3], [3])
    with pytest.raises(ValueError, match="no KL estimate"):
        FrontierPoint.from_metrics("dpo", no_kl)


def test_training_curves_from_jsonl(tmp_path: Path) -> None:
    for name, slope in (("dpo", 0.01), ("ipo", 0.02)):
        lines = [
            json.dumps(
                {
                    "step": s,
                    "loss": 0.69 - slope * s,
                    "rewards/accuracies": 0.5 + slope * s,
                    "rewards/margins": slope * s,
                }
            )
            for s in range(10)
        ]
        lines.append(json.dumps({"step": 10, "eval/accuracy": 0.7}))  # an eval-only record is skipped
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n\n")
    assert len(read_metrics_jsonl(tmp_path / "dpo.jsonl")) == 11
    out = plot_training_curves(
        {"dpo": tmp_path / "dpo.jsonl", "ipo": str(tmp_path / "ipo.jsonl")}, tmp_path / "curves.png"
    )
    assert _is_png(out)
    records = [{"step": 0, "train/loss": 1.0}, {"step": 1, "train/loss": 0.5}]
    assert _is_png(plot_training_curves({"run": records}, tmp_path / "prefixed.png"))
    with pytest.raises(ValueError, match="logged keys: \\['step', 'train/loss'\\]"):
        plot_training_curves({"run": records}, tmp_path / "none.png", metrics=("kl",))


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 0}\n{"step": 1,\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
        read_metrics_jsonl(bad)
    bad.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=":1: expected a JSON object"):
        read_metrics_jsonl(bad)


def test_length_drift_png(tmp_path: Path) -> None:
    lengths = {"dpo": MeanCI(17.7, 16.9, 18.5, 128), "ipo": 13.9, "kto": MeanCI(14.2, 13.5, 15.0, 128)}
    out = plot_length_drift(lengths, tmp_path / "length.png", reference_length=MeanCI(13.7, 13.1, 14.3, 128))
    assert _is_png(out) and _no_temporaries(tmp_path)
    before = out.read_bytes()
    plot_length_drift({"dpo": 20.0}, out)  # overwrite in place
    assert _is_png(out) and out.read_bytes() != before
    with pytest.raises(ValueError, match="no lengths"):
        plot_length_drift({}, tmp_path / "x.png")
