"""The online loop under torchrun (CPU, gloo): 2 processes equal 1 process for PPO (with its critic), GRPO and RLOO
(every logged metric, wall times aside, and the final weights), a 2-process run resumed from its checkpoint equals
the uninterrupted one, and 2-process GRPO and PPO runs with FSDP (`prefopt.online.fsdp`) equal them unsharded.

Both sides are launched (`torchrun --nproc_per_node 1` and `2`): a launched run samples each prompt from its own
seed (`prefopt.online.distributed`), so the union of what 2 processes sample is what 1 process samples. Two
launches on the tiny random Llama of tests/train/tiny_task.py (≈40 s together on the shared 2-core machine).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from prefopt.online.config import OnlineConfig
from prefopt.online.distributed import (
    MinibatchMetrics,
    Processes,
    check_supported,
    local_prompts,
    pooled_means,
    prompt_seeds,
    sync_sampler,
)
from prefopt.online.rollout_step import recipe_for
from prefopt.registry import list_losses, loss_spec
from prefopt.settings import SettingsError
from tests.launch import launch_env, torchrun

from ..train.tiny_task import write_tiny_task

SCRIPT = Path(__file__).with_name("online_script.py")
RUNS = {"ppo": {}, "grpo": {"num_samples": 2}, "rloo": {"num_samples": 2}}
SHARDING = ("ddp", "fsdp")
NOT_COMPARED = ("time/",)  # wall times; every other logged metric (tokens, token means) equals 1 process's


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


def _launch(
    processes: int, runs: list[dict[str, Any]], tmp_path: Path, *, kill_at: int | None = None
) -> subprocess.CompletedProcess:
    """Train `runs` in one launch of `processes` processes; with `kill_at`, each process SIGKILLs itself after that
    step of the last run (returns the launcher's result, failed); else every run must finish."""
    settings = tmp_path / f"runs-{processes}.json"
    settings.write_text(json.dumps(runs))
    env = launch_env()
    command = torchrun(processes)
    kill = ["--kill-at", str(kill_at)] if kill_at is not None else []
    done = subprocess.run(
        [*command, str(SCRIPT), str(settings), *kill], capture_output=True, text=True, env=env, timeout=240
    )
    if kill_at is not None:
        return done
    assert done.returncode == 0, done.stderr[-3000:]
    assert len([line for line in done.stdout.splitlines() if line.startswith("{")]) == len(runs)  # rank 0 only
    return done


def _metrics(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights_close(a: Path, b: Path, name: str = "final/model.safetensors") -> float:
    first, second = load_file(str(a / name)), load_file(str(b / name))
    assert first.keys() == second.keys()
    return max(float((first[k] - second[k]).abs().max()) for k in first)


def _check_sharded(tmp_path: Path) -> None:
    """FSDP's runs against the same launch's unsharded ones: GRPO with dummy passes, PPO with its critic."""
    plain, sharded = (tmp_path / f"two-grpo-{s}" for s in SHARDING)
    for a, b in zip(_metrics(plain), _metrics(sharded), strict=True):
        assert sorted(a) == sorted(b) and a["updates"] == 4
        for key in (k for k in a if not k.startswith(NOT_COMPARED)):
            assert b[key] == pytest.approx(a[key], abs=1e-5), ("fsdp", a["step"], key)
    assert _weights_close(plain, sharded) < 1e-5
    assert _weights_close(plain, sharded, "checkpoints/step-000002/policy.safetensors") < 1e-5
    states = [torch.load(out / "checkpoints/step-000002/optimizers.pt")["policy"] for out in (plain, sharded)]
    assert states[0]["param_groups"] == states[1]["param_groups"]  # Adam's state gathered to the unsharded format
    for index, entry in states[0]["state"].items():
        for key, value in entry.items():
            assert type(states[1]["state"][index][key]) is torch.Tensor
            torch.testing.assert_close(states[1]["state"][index][key], value, atol=1e-6, rtol=0)
    for a, b in zip(_metrics(tmp_path / "two-ppo"), _metrics(tmp_path / "two-ppo-fsdp"), strict=True):
        for key in (k for k in a if not k.startswith(NOT_COMPARED)):
            assert b[key] == pytest.approx(a[key], abs=1e-5), ("ppo fsdp", a["step"], key)
    for name in ("final/model.safetensors", "checkpoints/step-000002/critic.safetensors"):
        assert _weights_close(tmp_path / "two-ppo", tmp_path / "two-ppo-fsdp", name) < 1e-5, name


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
            # FSDP (`prefopt.online.fsdp`) against the same 2 processes unsharded, with minibatches of one prompt: a
            # process with none runs a dummy forward and backward of weight 0
            *(
                _settings(model, tmp_path / f"two-grpo-{s}", "grpo", num_minibatches=4, fsdp=s == "fsdp")
                for s in SHARDING
            ),
            _settings(model, tmp_path / "two-ppo-fsdp", "ppo", fsdp=True),  # its critic replicated
        ],
        tmp_path,
    )
    for algorithm in RUNS:
        one, two = tmp_path / f"one-{algorithm}", tmp_path / f"two-{algorithm}"
        for a, b in zip(_metrics(one), _metrics(two), strict=True):
            assert sorted(a) == sorted(b), algorithm
            for key in (k for k in a if not k.startswith(NOT_COMPARED)):
                assert b[key] == pytest.approx(a[key], abs=1e-5), (algorithm, a["step"], key)
        assert _weights_close(one, two) < 1e-5, algorithm
        if algorithm == "ppo":  # the critic trained alike
            assert _weights_close(one, two, "checkpoints/step-000002/critic.safetensors") < 1e-5
    assert [r["loss"] for r in _metrics(resumed)] == pytest.approx([r["loss"] for r in _metrics(tmp_path / "two-rloo")])
    assert _weights_close(resumed, tmp_path / "two-rloo") < 1e-6
    _check_sharded(tmp_path)


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


class _Pair(Processes):
    """Process 0 of 2 whose all-reduce adds what process 1 sends (`other`), with no process group."""

    def __init__(self, other: list[MinibatchMetrics], other_tokens: float) -> None:
        super().__init__(0, 2)
        object.__setattr__(self, "other", (other, other_tokens))
        object.__setattr__(self, "calls", [])

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.numel())
        other, tokens = self.other
        names = sorted({n for m in other for n in m.scalars})
        rows = [[m.scalars.get(n, 0.0) * (m.tokens if n in ("kl", "loss") else m.rows) for n in names] for m in other]
        table = torch.tensor([[*r, m.rows, m.tokens] for r, m in zip(rows, other)], dtype=torch.float64)
        return x.double() + torch.cat([table.reshape(-1), table.new_tensor([tokens])])


def test_logged_means_pool_numerators_and_denominators_over_processes() -> None:
    """Token means are weighted by tokens, row means by rows, summed over processes before dividing, in one
    all-reduce per step; a process with no prompts in a minibatch sends zeros; `tokens` is the step's sum."""
    # minibatch 1: process 0 has 2 rows of 10 tokens, process 1 2 rows of 2 tokens; minibatch 2: process 1 only
    mine = [MinibatchMetrics({"kl": 0.5, "loss": 1.0, "rewards/mean": 2.0}, 2, 10), MinibatchMetrics({}, 0, 0)]
    theirs = [
        MinibatchMetrics({"kl": 2.0, "loss": 3.0, "rewards/mean": 4.0}, 2, 2),
        MinibatchMetrics({"kl": 1.0, "loss": 5.0, "rewards/mean": 6.0}, 2, 3),
    ]
    pair = _Pair(theirs, other_tokens=30.0)
    means, tokens = pooled_means(pair, mine, token_mean_loss=True, tokens=50.0)
    first = {"kl": (0.5 * 10 + 2.0 * 2) / 12, "loss": (1.0 * 10 + 3.0 * 2) / 12, "rewards/mean": 3.0}
    second = {"kl": 1.0, "loss": 5.0, "rewards/mean": 6.0}
    assert means == pytest.approx({k: (first[k] + second[k]) / 2 for k in first})
    assert tokens == 80.0 and pair.calls == [2 * 5 + 1]  # one all-reduce: 2 minibatches × (3 metrics + 2 counts) + 1
    alone = pooled_means(Processes(), theirs, token_mean_loss=True, tokens=30.0)  # one process: the plain average
    assert alone == ({"kl": 1.5, "loss": 4.0, "rewards/mean": 5.0}, 30.0)


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


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"lora_r": 4}, "lora_r=4"),
        ({"generation_backend": "vllm"}, "generation_backend='vllm'"),
        ({"algorithm": "nlpo"}, "algorithm='nlpo'"),
        ({"algorithm": "remax"}, "algorithm='remax'"),
        ({"algorithm": "dapo"}, "dynamic_sampling"),
        ({"resume": True}, "resume=True"),
    ],
)
def test_what_fsdp_does_not_run_is_refused(settings: dict[str, Any], words: str) -> None:
    with pytest.raises(SettingsError, match=f"OnlineConfig.fsdp=True with {re.escape(words)}"):
        OnlineConfig(**{"algorithm": "grpo", "fsdp": True, **settings})
    assert OnlineConfig(algorithm="grpo", fsdp=True, dynamic_sampling=False).fsdp


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
