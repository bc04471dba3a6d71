"""The online loop under torchrun (CPU, gloo): 2 processes equal 1 process for PPO (with its critic), GRPO and RLOO,
and a 2-process run resumed from its checkpoint equals the uninterrupted one.

Both sides are launched (`torchrun --nproc_per_node 1` and `2`): a launched run samples each prompt from its own
seed (`prefopt.online.distributed`), so the union of what 2 processes sample is what 1 process samples. Two
launches on the tiny random Llama of tests/train/tiny_task.py (≈40 s together on the shared 2-core machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from prefopt.online.distributed import Processes, check_supported, local_prompts, prompt_seeds, sync_sampler
from prefopt.online.rollout_step import recipe_for
from prefopt.registry import list_losses, loss_spec
from prefopt.settings import SettingsError

from ..train.tiny_task import write_tiny_task

SCRIPT = Path(__file__).with_name("online_script.py")
RUNS = {"ppo": {}, "grpo": {"num_samples": 2}, "rloo": {"num_samples": 2}}
COMPARED = ("loss", "grad_norm", "objective/scores", "objective/kl", "objective/entropy", "loss/value", "val/clipfrac")


def _settings(model: Path, out: Path, algorithm: str, **overrides: Any) -> dict[str, Any]:
    return {
        "algorithm": algorithm,
        "model": str(model),
        "steps": 2,
        "prompts_per_step": 4,
        "max_new_tokens": 6,
        "lr": 1e-3,
        "checkpoint_every": 1,
        "output_dir": str(out),
        "progress": False,
        "num_threads": 1,
        **RUNS[algorithm],
        **overrides,
    }


def _launch(processes: int, runs: list[dict[str, Any]], tmp_path: Path) -> None:
    settings = tmp_path / f"runs-{processes}.json"
    settings.write_text(json.dumps(runs))
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    done = subprocess.run([*command, str(SCRIPT), str(settings)], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len([line for line in done.stdout.splitlines() if line.startswith("{")]) == len(runs)  # rank 0 only


def _metrics(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights_close(a: Path, b: Path, name: str = "final/model.safetensors") -> float:
    first, second = load_file(str(a / name)), load_file(str(b / name))
    assert first.keys() == second.keys()
    return max(float((first[k] - second[k]).abs().max()) for k in first)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_match_one_and_resume(tmp_path) -> None:
    model = write_tiny_task(tmp_path / "task")["model"]
    _launch(1, [_settings(model, tmp_path / f"one-{a}", a) for a in RUNS], tmp_path)
    resumed = tmp_path / "two-rloo-resumed"
    _launch(
        2,
        [
            *(_settings(model, tmp_path / f"two-{a}", a) for a in RUNS),
            _settings(model, resumed, "rloo", steps=1),  # stopped after step 1 ...
            _settings(model, resumed, "rloo", resume=True),  # ... and resumed from its checkpoint to step 2
        ],
        tmp_path,
    )
    for algorithm in RUNS:
        one, two = tmp_path / f"one-{algorithm}", tmp_path / f"two-{algorithm}"
        for a, b in zip(_metrics(one), _metrics(two), strict=True):
            for key in COMPARED:
                if key in a:
                    assert b[key] == pytest.approx(a[key], abs=1e-5), (algorithm, a["step"], key)
        assert _weights_close(one, two) < 1e-5, algorithm
        if algorithm == "ppo":  # the critic trained alike
            assert _weights_close(one, two, "checkpoints/step-000002/critic.safetensors") < 1e-5
    assert [r["loss"] for r in _metrics(resumed)] == pytest.approx([r["loss"] for r in _metrics(tmp_path / "two-rloo")])
    assert _weights_close(resumed, tmp_path / "two-rloo") < 1e-6


def test_prompts_split_into_blocks_whose_union_is_the_step() -> None:
    """Process r of P holds prompts [r·B/P, (r+1)·B/P); a minibatch's prompts map to each holder's local indices;
    seeds depend on the prompt's position only."""
    part = torch.tensor([5, 0, 3, 6])  # a minibatch of a step of 8 prompts
    blocks = [Processes(rank, 2).shard(8) for rank in range(2)]
    assert [list(b) for b in blocks] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert local_prompts(Processes(0, 2), part, 4).tolist() == [0, 3]
    assert local_prompts(Processes(1, 2), part, 4).tolist() == [1, 2]
    assert local_prompts(Processes(), part, 8).tolist() == part.tolist()
    assert prompt_seeds(7, blocks[1]) == prompt_seeds(7, range(8))[4:]
    with pytest.raises(SettingsError, match="prompts_per_step=6 does not split over 4 processes"):
        Processes(0, 4).shard(6)


def test_token_mean_losses_are_declared() -> None:
    assert {name for name in list_losses("rollout") if recipe_for(loss_spec(name)).token_mean} == {
        "ppo",
        "nlpo",
        "dapo",
        "cispo",
        "reinforce_pp",
    }


def test_what_runs_in_one_process_only_is_refused() -> None:
    check_supported(Processes(), dynamic_sampling=True, pair_loss=True, q_learning=True)  # one process: all fine
    with pytest.raises(SettingsError, match="OnlineConfig.dynamic_sampling runs in one process only, not 2"):
        check_supported(Processes(1, 2), dynamic_sampling=True, pair_loss=False, q_learning=False)


class _Sampler:
    def __init__(self, backend: str) -> None:
        self.backend, self.stale, self.updates, self.synced_at, self.pushed = backend, True, 3, 0, 0

    def sync_weights(self, policy: Any, step: int) -> None:
        self.pushed, self.synced_at, self.stale = self.pushed + 1, step, False


def test_only_the_main_process_pushes_to_a_vllm_server(monkeypatch) -> None:
    waits = []
    monkeypatch.setattr(Processes, "wait", lambda self: waits.append(self.rank))
    pushes = {}
    for backend in ("vllm_server", "vllm"):
        for rank in range(2):
            sampler = _Sampler(backend)
            sync_sampler(Processes(rank, 2), sampler, policy=None)
            pushes[backend, rank] = sampler.pushed
            assert sampler.synced_at == 3
    assert pushes == {("vllm_server", 0): 1, ("vllm_server", 1): 0, ("vllm", 0): 1, ("vllm", 1): 1}
    assert waits == [0, 1, 0, 1]  # nobody samples before the push
