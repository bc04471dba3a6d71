"""Run folders are safe: nothing in them runs code on resume, nothing is written outside them, one run
holds a folder at a time, metrics.jsonl never repeats a step, and the folder may be spelled any way.

Offline runs are a few steps of the tiny task's 30k-parameter Llama; online and reward-model runs use the
same tiny model (a reward model reads it with a fresh score head), so each takes about a second.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from prefopt.train import train
from prefopt.train.checkpoint import RunFolderError, latest_checkpoint
from prefopt.train.rng_state import load_rng_state, save_rng_state
from prefopt.train.run_folder import claim_run_folder

from .test_loop import settings, trajectory


class _Exploit:
    """Pickles to `os.system("touch MARKER")`: loading it with a full unpickler runs the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


def _plant(path: Path, marker: Path) -> None:
    path.unlink(missing_ok=True)
    torch.save(_Exploit(marker), path)


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from prefopt.cli import main

    code = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()  # libraries' progress bars, then ours
    ours = [line for line in lines if line.startswith("prefopt ")]
    assert len(ours) <= 1 and (not ours or ours[0] == lines[-1]), lines
    return code, ours[0] if ours else ""


def _train_argv(task: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(task["paired"]),
        "--model",
        str(task["model"]),
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--max-steps",
        "3",
        "--preset",
        "synthetic",
        "--lr",
        "1e-3",
        "--quiet",
        *extra,
    ]


class _Stop(Exception):
    """Raised from on_step: a run ended part-way (as by a kill) with no cleanup of the folder."""


def _stop_at(step: int):
    def on_step(done: int, record: dict[str, float]) -> None:
        if done == step:
            raise _Stop

    return on_step


# --- no pickle ------------------------------------------------------------------------------------------------


def test_rng_state_round_trips_exactly_as_json(tmp_path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # cached second normals are part of the state
    save_rng_state(tmp_path / "rng-0.json")
    json.loads((tmp_path / "rng-0.json").read_text())  # plain JSON
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    load_rng_state(tmp_path / "rng-0.json")
    assert (
        random.random(),
        random.gauss(0, 1),
        np.random.standard_normal(3).tolist(),
        torch.rand(3).tolist(),
    ) == expected


def test_cuda_rng_states_are_saved_and_restored(tmp_path, monkeypatch) -> None:
    """The CUDA branch without a GPU: each device's uint8 state goes through base64 and back unchanged."""
    states = [torch.randint(0, 256, (16,), dtype=torch.uint8) for _ in range(2)]
    restored: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    save_rng_state(tmp_path / "rng-0.json")
    load_rng_state(tmp_path / "rng-0.json")
    assert len(restored) == 1 and all(torch.equal(a, b) for a, b in zip(restored[0], states, strict=True))


@pytest.mark.parametrize("name", ["rng-0.pt", "optimizer.pt", "scheduler.pt"])
def test_a_crafted_pickle_in_a_checkpoint_is_never_run(tiny_task, tmp_path, capsys, name) -> None:
    """The old loader read rng-N.pt with weights_only=False: this file ran `touch` on resume."""
    out, marker = tmp_path / "run", tmp_path / "PWNED"
    train(**settings(tiny_task, out, checkpoint_every=1))
    checkpoint = latest_checkpoint(out)
    if name == "rng-0.pt":  # an old-format checkpoint, or a planted one: the .pt is never read
        (checkpoint / "rng-0.json").unlink()
    _plant(checkpoint / name, marker)
    code, err = _cli(_train_argv(tiny_task, out, "--resume"), capsys)
    assert code == 2 and not marker.exists()
    assert str(checkpoint) in err, err
    assert "never loaded" in err if name == "rng-0.pt" else "posix.system" in err, err


def test_a_pickle_planted_beside_the_rng_json_is_ignored(tiny_task, tmp_path, capsys) -> None:
    out, marker = tmp_path / "run", tmp_path / "PWNED"
    train(**settings(tiny_task, out))
    _plant(latest_checkpoint(out) / "rng-0.pt", marker)
    code, err = _cli(_train_argv(tiny_task, out, "--resume"), capsys)
    assert code == 0 and not err and not marker.exists()


def test_a_damaged_rng_file_is_a_one_line_error(tiny_task, tmp_path) -> None:
    out = tmp_path / "run"
    train(**settings(tiny_task, out))
    (latest_checkpoint(out) / "rng-0.json").write_text('{"format": 1, "python": [3, [1, 2], null]}')
    with pytest.raises(RunFolderError, match=r"rng-0.json is not one prefopt wrote"):
        train(**settings(tiny_task, out, resume=True))


def test_a_crafted_online_optimizer_file_is_never_run(tmp_path) -> None:
    from prefopt.online.checkpoint import load_online_checkpoint, save_online_checkpoint

    model = torch.nn.Linear(2, 2)
    optimizers = {"policy": torch.optim.Adam(model.parameters())}
    path = save_online_checkpoint(tmp_path, 1, policy=model, critic=None, optimizers=optimizers, state={}, keep=2)
    marker = tmp_path / "PWNED"
    _plant(path / "optimizers.pt", marker)
    with pytest.raises(RunFolderError, match="optimizers.pt is not one prefopt wrote"):
        load_online_checkpoint(path, policy=model, critic=None, optimizers=optimizers)
    assert not marker.exists()


# --- nothing written outside the folder -------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["metrics.jsonl", ".lock", "checkpoints"])
def test_a_symlink_in_the_run_folder_is_refused(tiny_task, tmp_path, capsys, entry) -> None:
    outside = tmp_path / "outside"
    outside.mkdir() if entry == "checkpoints" else outside.write_text("precious\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / entry).symlink_to(outside)
    code, err = _cli(_train_argv(tiny_task, out), capsys)
    assert code == 2 and "symbolic link" in err, err
    assert (outside.read_text() == "precious\n") if outside.is_file() else not any(outside.iterdir())
    assert sorted(p.name for p in out.iterdir()) == [entry]


def test_metrics_are_never_written_through_a_link(tmp_path) -> None:
    from prefopt.train.logs import MetricsLog, truncate_metrics

    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    (tmp_path / "metrics.jsonl").symlink_to(outside)
    with pytest.raises(RunFolderError, match="symbolic link"):
        MetricsLog(tmp_path, enabled=True)
    with pytest.raises(RunFolderError, match="symbolic link"):
        truncate_metrics(tmp_path / "metrics.jsonl", 0)
    assert outside.read_text() == "precious\n"


# --- one step per line ---------------------------------------------------------------------------------------------


def test_offline_restart_before_a_checkpoint_does_not_repeat_steps(tiny_task, tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(_Stop):
        train(on_step=_stop_at(2), **settings(tiny_task, out))
    assert _steps(out) == [1, 2] and latest_checkpoint(out) is None
    train(**settings(tiny_task, out))  # fresh: the earlier attempt's lines go
    assert _steps(out) == [1, 2, 3]
    with pytest.raises(_Stop):
        train(on_step=_stop_at(2), **settings(tiny_task, tmp_path / "again"))
    train(**settings(tiny_task, tmp_path / "again", resume=True))  # resume with no checkpoint: from step 0
    assert _steps(tmp_path / "again") == [1, 2, 3]


def test_offline_resume_truncates_to_the_checkpoint(tiny_task, tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(_Stop):
        train(on_step=_stop_at(3), **settings(tiny_task, out, max_steps=4, checkpoint_every=2))
    assert _steps(out) == [1, 2, 3]
    train(**settings(tiny_task, out, max_steps=4, checkpoint_every=2, resume=True))
    assert _steps(out) == [1, 2, 3, 4]


def _online(task: dict[str, Path], out: Path, **changes: Any) -> dict[str, Any]:
    prompts = [json.loads(line)["prompt"] for line in task["paired"].read_text().splitlines()]
    return {
        "model": str(task["model"]),
        "prompts": prompts,
        "output_dir": str(out),
        "steps": 3,
        "prompts_per_step": 2,
        "max_new_tokens": 8,
        "lr": 1e-3,
        "checkpoint_every": 0,
        "progress": False,
        "num_threads": 1,
        **changes,
    }


def test_online_restart_before_a_checkpoint_does_not_repeat_steps(tiny_task, tmp_path) -> None:
    from prefopt.online.trainer import train_online

    for resume in (False, True):
        out = tmp_path / f"resume-{resume}"
        with pytest.raises(_Stop):
            train_online(on_step=_stop_at(2), **_online(tiny_task, out))
        train_online(**_online(tiny_task, out, resume=resume))
        assert _steps(out) == [1, 2, 3], resume


def _rm(task: dict[str, Path], out: Path, **changes: Any) -> dict[str, Any]:
    return {
        "model": str(task["model"]),
        "data": str(task["paired"]),
        "output_dir": str(out),
        "epochs": 1,
        "batch_size": 8,
        "lr": 1e-3,
        "eval_split": "none",
        "progress": False,
        "num_threads": 1,
        **changes,
    }


def test_reward_model_restart_before_a_checkpoint_does_not_repeat_steps(tiny_task, tmp_path, monkeypatch) -> None:
    import prefopt.online.reward_model as rm

    original, calls = rm._step, {"n": 0}

    def stop_at_step_3(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Stop
        return original(*args, **kwargs)

    for resume in (False, True):
        out, calls["n"] = tmp_path / f"resume-{resume}", 0
        monkeypatch.setattr(rm, "_step", stop_at_step_3)
        with pytest.raises(_Stop):
            rm.train_reward_model(**_rm(tiny_task, out))
        assert _steps(out) == [1, 2]
        monkeypatch.setattr(rm, "_step", original)
        rm.train_reward_model(**_rm(tiny_task, out, resume=resume))
        assert _steps(out) == [1, 2, 3, 4], resume


# --- one run per folder ----------------------------------------------------------------------------------------------


def _argv_of(command: str, task: dict[str, Path], out: Path) -> list[str]:
    if command == "train":
        return _train_argv(task, out)
    if command == "train-online":
        return ["train-online", "--model", str(task["model"]), "--out", str(out), "--quiet"]
    if command == "train-rm":
        return ["train-rm", "--model", str(task["model"]), "--data", str(task["paired"]), "--out", str(out), "--quiet"]
    return ["compare", "--losses", "dpo", "--tiny", "--out", str(out), "--quiet"]


@pytest.mark.parametrize("command", ["train", "train-online", "train-rm", "compare"])
def test_a_second_run_on_a_held_folder_refuses_and_writes_nothing(tiny_task, tmp_path, capsys, command) -> None:
    out = tmp_path / "run"
    with claim_run_folder(out):  # a run in progress
        before = _files(out)
        code, err = _cli(_argv_of(command, tiny_task, out), capsys)
        assert _files(out) == before
    assert code == 2, err
    assert err.endswith(
        f"{out} is in use by another prefopt run (pid {os.getpid()}); wait for it or pass another --out"
    ), err


def test_the_lock_lasts_the_run_and_goes_with_it(tiny_task, tmp_path) -> None:
    out = tmp_path / "run"
    seen = []

    def on_step(step: int, record: dict[str, float]) -> None:
        with pytest.raises(RunFolderError, match="in use by another prefopt run"):
            claim_run_folder(out)
        seen.append(step)

    train(on_step=on_step, **settings(tiny_task, out))
    assert seen == [1, 2, 3]
    claim_run_folder(out).release()  # free again once the run has returned
    with pytest.raises(_Stop):
        train(on_step=_stop_at(1), **settings(tiny_task, tmp_path / "failed"))
    claim_run_folder(tmp_path / "failed").release()  # and once it has raised


def test_a_run_stopped_before_writing_anything_leaves_no_folder(tiny_task, tmp_path, capsys) -> None:
    out = tmp_path / "new" / "run"
    argv = _train_argv(tiny_task, out)
    argv[argv.index("--data") + 1] = str(tiny_task["ranked"])  # DPO on ranked data: refused once data loads
    code, err = _cli(argv, capsys)
    assert code == 2 and "ranked" in err, err
    assert list(tmp_path.iterdir()) == []


def test_kill_9_releases_the_lock(tmp_path) -> None:
    code = (
        "import sys, time; from prefopt.train.run_folder import claim_run_folder; "
        f"lock = claim_run_folder({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2]
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=f"pid {holder.pid}"):
            claim_run_folder(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:
        try:
            claim_run_folder(tmp_path).release()
            break
        except RunFolderError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


# --- any spelling of the folder --------------------------------------------------------------------------------------


def test_resume_accepts_any_spelling_of_the_folder_and_a_moved_one(tiny_task, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    straight = train(**settings(tiny_task, tmp_path / "straight", max_steps=4))
    with pytest.raises(_Stop):
        train(on_step=_stop_at(3), **settings(tiny_task, Path("run"), max_steps=4, checkpoint_every=1))
    for spelling in (str(tmp_path / "run"), f"{tmp_path / 'run'}/", "./run", "run/"):
        done = train(**settings(tiny_task, Path("."), output_dir=spelling, max_steps=3, resume=True))
        assert done.steps == 3, spelling
    os.rename(tmp_path / "run", tmp_path / "moved")
    result = train(**settings(tiny_task, tmp_path / "moved", max_steps=4, resume=True))
    assert trajectory(result) == trajectory(straight)
    assert not [p for p in (tmp_path / "moved").iterdir() if ".tmp" in p.name]  # atomic writes left no temp file


def test_online_and_reward_model_resume_accept_another_spelling(tiny_task, tmp_path, monkeypatch) -> None:
    from prefopt.online.reward_model import train_reward_model
    from prefopt.online.trainer import train_online

    monkeypatch.chdir(tmp_path)
    train_online(**_online(tiny_task, Path("online"), steps=2))
    assert (
        train_online(**_online(tiny_task, Path("."), output_dir=f"{tmp_path / 'online'}/", steps=2, resume=True)).steps
        == 2
    )
    train_reward_model(**_rm(tiny_task, Path("rm")))
    assert train_reward_model(**_rm(tiny_task, Path("."), output_dir="./rm/", resume=True)).steps == 4
