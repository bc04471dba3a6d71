"""The online loop on several processes (`torchrun`, `accelerate launch`): one process per device, DDP-style.

    processes = launched_processes()        # rank, size; Processes() outside a distributed launcher

What each process does with a step of B prompts (B divisible by the number of processes P):

    prompts    its contiguous block of B/P of the step's prompts (`shard`); a prompt's K samples stay on it
    sampling   each prompt from its own seed, a function of (run seed, step, prompt index in the step)
               (`prompt_seeds`): the union of what P processes sample is what one process samples
    statistics per group (GRPO, RLOO baselines): local; over the batch (PPO's advantage whitening, the
               adaptive KL controller's mean KL, a loss's `rollout_inputs` such as REINFORCE++'s advantages,
               the logged metrics): all-reduced here (`whiten`, `global_mean`, `gather_rollout`,
               `average_metrics`; the loss's metrics and the step's tokens: `pooled_means`, numerators and
               denominators summed over processes before dividing, so that P processes log what one process logs)
    gradients  each process back-propagates its share w_p·L_p of the minibatch loss, w_p = its rows (or, for a
               token-mean loss, its completion tokens) over the whole minibatch's; the gradients are summed
               over processes (`sum_gradients`), so every process steps with the gradient of the global
               minibatch's loss, as DDP's averaged gradients do for equal shares

A run launched this way (WORLD_SIZE set, one process included) samples per prompt; a plain single-process run
keeps the batched, step-seeded sampling of `prefopt.online.generation` (its results unchanged, bit for bit).
The process group is the one `accelerate.PartialState` starts (gloo on CPU with ACCELERATE_USE_CPU=1, NCCL on
GPUs); only the main process writes the run folder (`prefopt.online.trainer`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from prefopt.errors import DistributedSetupError
from prefopt.online.rollout_step import PreparedRollout, prompt_rows
from prefopt.registry import loss_spec
from prefopt.settings import SettingsError

__all__ = [
    "Processes",
    "launched_processes",
    "prompt_seeds",
    "local_prompts",
    "TOKEN_MEAN_METRICS",
    "MinibatchMetrics",
    "pooled_means",
    "loss_share",
    "minibatch_metrics",
    "check_supported",
    "check_launch",
    "sync_sampler",
]


def prompt_seeds(step_seed: int, positions: Iterable[int]) -> list[int]:
    """The sampling seed of each prompt of a step: a function of the step's seed and the prompt's position in the
    step's B prompts, never of the process that samples it."""
    return [step_seed * 1_000_003 + int(i) for i in positions]


@dataclass(frozen=True)
class Processes:
    """This process's place among the run's processes.

    Attributes:
        rank: this process's index; size: the number of processes; launched: started by a distributed
            launcher (then prompts are sampled one by one from `prompt_seeds`, whatever the size).
        device: the device this process trains on (its GPU under a launcher, else None: the model's own).
    """

    rank: int = 0
    size: int = 1
    launched: bool = False
    device: torch.device | None = None

    @property
    def main(self) -> bool:
        """Whether this process writes the run folder."""
        return self.rank == 0

    def shard(self, count: int) -> range:
        """This process's contiguous block of `count` prompts."""
        if count % self.size:
            raise SettingsError(
                f"OnlineConfig.prompts_per_step={count} does not split over {self.size} processes; "
                f"use a multiple of {self.size}"
            )
        per = count // self.size
        return range(self.rank * per, (self.rank + 1) * per)

    def sum(self, x: Tensor) -> Tensor:
        """Σ over processes of `x` (float64, on x's device)."""
        total = x.detach().to(torch.float64).clone()
        if self.size > 1:
            dist.all_reduce(total)
        return total

    def global_mean(self, values: Tensor) -> tuple[float, int]:
        """(mean, count) of the 1-D `values` of every process."""
        if self.size == 1:
            return float(values.mean()), values.numel()
        total, count = self.sum(torch.stack([values.double().sum(), values.new_tensor(values.numel()).double()]))
        return float(total / count), int(count)

    def whiten(self, x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
        """`prefopt.rl.masked_whiten` over the valid entries of every process (two passes, float64 sums)."""
        valid = x.double()[mask]
        total, count = self.sum(torch.stack([valid.sum(), valid.new_tensor(valid.numel())]))
        mean = total / count
        var = self.sum(((valid - mean) ** 2).sum()) / (count - 1)  # unbiased, as masked_whiten
        whitened = ((x.double() - mean) * torch.rsqrt(var + eps)).to(x.dtype)
        return torch.where(mask, whitened, torch.zeros((), dtype=x.dtype, device=x.device))

    def sum_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Sum every parameter's gradient over processes (a missing gradient counts as zeros), in one all-reduce;
        FSDP shards (DTensors) are skipped: their gradients are reduce-scattered already (`prefopt.online.fsdp`)."""
        if self.size == 1:
            return
        params = [p for p in params if not isinstance(p, DTensor)]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        for p, part in zip(params, flat.split([g.numel() for g in grads])):
            p.grad = part.view_as(p).clone()

    def wait(self) -> None:
        """Wait for every process (a barrier)."""
        if self.size > 1:
            dist.barrier()

    def broadcast(self, modules: Iterable[nn.Module]) -> None:
        """Every process starts from the main process's weights (and buffers)."""
        if self.size == 1:
            return
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def average_metrics(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Each metric over processes: its maximum for `*max*` names, minimum for `*min*`, else the mean (the
        mean of per-process means: exact for row means, as every process holds as many rows)."""
        if self.size == 1 or not metrics:
            return dict(metrics)
        names = sorted(metrics)
        out: dict[str, float] = {}
        for op, keep in ((dist.ReduceOp.MAX, "max"), (dist.ReduceOp.MIN, "min"), (dist.ReduceOp.SUM, "")):
            chosen = [n for n in names if n not in out and (keep in n.rsplit("/", 1)[-1] if keep else True)]
            if chosen:
                values = torch.tensor([float(metrics[n]) for n in chosen], dtype=torch.float64, device=self.device)
                dist.all_reduce(values, op=op)
                values = values / self.size if op == dist.ReduceOp.SUM else values
                out.update(zip(chosen, values.tolist()))
        return {n: out[n] for n in metrics}

    def gather_rows(self, x: Tensor, num_samples: int) -> Tensor:
        """The group-major rows of every process's rollout as one global rollout's: x [K·B_p, …] (row k·B_p + b)
        → [K·B, …] (row k·B + rank·B_p + b), per-token tensors right-padded with zeros to the widest."""
        if self.size == 1:
            return x
        width = torch.tensor([x.shape[1] if x.dim() > 1 else 0], device=x.device)
        dist.all_reduce(width, op=dist.ReduceOp.MAX)
        if x.dim() > 1:
            x = torch.nn.functional.pad(x, (0, int(width) - x.shape[1]))
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous())
        blocks = [p.reshape(num_samples, -1, *p.shape[1:]) for p in parts]  # [K, B_p, …] each
        return torch.cat(blocks, dim=1).reshape(-1, *x.shape[1:])

    def local_rows(self, x: Tensor, num_samples: int, rows_per_sample: int, width: int) -> Tensor:
        """Inverse of `gather_rows`: this process's rows of a global [K·B, T] tensor, cut to `width` columns."""
        if self.size == 1:
            return x
        blocks = x.reshape(num_samples, -1, *x.shape[1:])
        start = self.rank * rows_per_sample
        return blocks[:, start : start + rows_per_sample, :width].reshape(-1, width)


def launched_processes() -> Processes:
    """The run's processes: `Processes()` unless started by `torchrun` / `accelerate launch` (WORLD_SIZE set),
    then the process group `accelerate.PartialState` starts (gloo on CPU, NCCL on GPUs)."""
    if "WORLD_SIZE" not in os.environ:
        return Processes()
    from accelerate import PartialState  # heavy: loaded on first use

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    state = PartialState(cpu=cpu)  # cpu: one gloo process group over the launcher's processes
    launched = int(os.environ["WORLD_SIZE"])
    if state.num_processes != launched:
        raise DistributedSetupError(
            f"the launcher started {launched} processes (WORLD_SIZE={launched}) but Accelerate runs "
            f"{state.num_processes}: they would train unsynchronised copies; on CPU set ACCELERATE_USE_CPU=1"
        )
    device = state.device if state.device.type == "cuda" else None
    return Processes(state.process_index, state.num_processes, launched=True, device=device)


def local_prompts(processes: Processes, part: Tensor, num_local: int) -> Tensor:
    """This process's prompts (local indices) of a minibatch `part` of the step's global prompt indices."""
    start = processes.rank * num_local
    mine = part[(part >= start) & (part < start + num_local)]
    return mine - start


# Loss metrics that `prefopt.losses` computes as masked means over a minibatch's completion tokens; the others
# (`rewards/*`, `objective/*`, `policy/sequence_ratio`, ...) are means over its prompts or sequences, and `loss` is
# a token mean for a loss that declares `token_mean` (`Recipe.token_mean`), else a mean over sequences.
TOKEN_MEAN_METRICS = frozenset(
    {
        "kl",
        "entropy",
        "loss/policy",
        "loss/value",
        "mask/mass",
        "policy/approxkl",
        "policy/clipfrac",
        "policy/dual_clipfrac",
        "policy/ratio",
        "val/clipfrac",
    }
)


@dataclass(frozen=True)
class MinibatchMetrics:
    """One minibatch's loss metrics on this process, with what they are means over: its rows and its completion
    tokens (0 and {} on a process with no prompts in the minibatch)."""

    scalars: Mapping[str, float]
    rows: float
    tokens: float


def minibatch_metrics(prepared: PreparedRollout, prompts: Tensor, out: Any) -> MinibatchMetrics:
    """This process's metrics of a minibatch of `prompts` (`out`: the loss's output, None for none), with the rows
    and completion tokens they are means over."""
    rows = prompt_rows(prompts, prepared.num_prompts, prepared.num_samples)
    scalars = {} if out is None else out.scalars()
    return MinibatchMetrics(scalars, float(rows.numel()), float(prepared.completion_mask[rows].sum()))


def loss_share(processes: Processes, mine: MinibatchMetrics, *, token_mean: bool) -> float:
    """w_p: this process's part of a minibatch's loss normaliser, its rows (or completion tokens, for a loss that
    averages over the minibatch's tokens: `Recipe.token_mean`) over every process's; 1 in one process."""
    if processes.size == 1:
        return 1.0
    count = mine.tokens if token_mean else mine.rows
    total = float(processes.sum(torch.tensor(count, device=processes.device)))
    return count / total if total else 0.0


def pooled_means(
    processes: Processes, minibatches: list[MinibatchMetrics], *, token_mean_loss: bool, tokens: float
) -> tuple[dict[str, float], float]:
    """The step's loss metrics, each the mean over minibatches of its value on the global minibatch, and the step's
    rollout tokens summed over processes.

    A metric's global value on a minibatch is Σ_p m_p·n_p / Σ_p n_p, n_p the process's tokens for a token mean
    (`TOKEN_MEAN_METRICS`, and `loss` when `token_mean_loss`), else its rows: numerators and denominators are
    summed over processes before dividing, in one all-reduce per step, so that P processes log what one does.
    Every process reports the same metric names (the same loss and settings)."""
    names = sorted({name for m in minibatches for name in m.scalars})
    if processes.size == 1:
        means = {n: sum(m.scalars[n] for m in minibatches if n in m.scalars) / len(minibatches) for n in names}
        return means, tokens
    by_tokens = [n in TOKEN_MEAN_METRICS or (n == "loss" and token_mean_loss) for n in names]
    table = torch.tensor(
        [
            [*(m.scalars.get(n, 0.0) * (m.tokens if t else m.rows) for n, t in zip(names, by_tokens)), m.rows, m.tokens]
            for m in minibatches
        ],
        dtype=torch.float64,
    ).reshape(len(minibatches), len(names) + 2)
    summed = processes.sum(torch.cat([table.reshape(-1), table.new_tensor([tokens])]).to(processes.device)).cpu()
    table = summed[:-1].reshape(table.shape)
    numerators, rows, counts = table[:, :-2], table[:, -2:-1], table[:, -1:]
    denominators = torch.where(torch.tensor(by_tokens), counts, rows)
    per_minibatch = torch.where(denominators > 0, numerators / denominators.clamp(min=1e-300), 0.0)
    return dict(zip(names, per_minibatch.mean(0).tolist())), float(summed[-1])


def check_launch(processes: Processes, config: Any) -> None:
    """Refuse, in one line, what this launch of `config` (an `OnlineConfig`) cannot run: FSDP without a distributed
    launcher (`prefopt.online.fsdp`), and what the loop does not yet split over several processes."""
    if config.fsdp and not processes.launched:
        raise SettingsError(
            "OnlineConfig.fsdp=True shards over the processes of a launch; start it with torchrun or accelerate "
            "launch (on CPU: ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N -m prefopt train-online --fsdp ...), "
            "or drop fsdp"
        )
    check_supported(
        processes,
        dynamic_sampling=config.filters_groups,
        pair_loss=config.pair_loss is not None,
        q_learning="q_values" in loss_spec(config.algorithm).extra_inputs,
    )


def check_supported(processes: Processes, *, dynamic_sampling: bool, pair_loss: bool, q_learning: bool) -> None:
    """Refuse, in one line, what the online loop does not yet split over several processes."""
    if processes.size == 1:
        return
    for on, name, fix in (
        (dynamic_sampling, "dynamic_sampling", "set dynamic_sampling=False"),
        (pair_loss, "pair_loss", "leave pair_loss unset"),
        (q_learning, "algorithm (ILQL)", "run ILQL in one process"),
    ):
        if on:
            raise SettingsError(f"OnlineConfig.{name} runs in one process only, not {processes.size}; {fix}")


def sync_sampler(processes: Processes, sampler: Any, policy: nn.Module) -> None:
    """Several processes: a sampler behind on the policy's updates gets the weights before any process samples.
    A vLLM server is one engine for every process: only the main process pushes to it (the others hold the same
    weights); an engine per process (the policy's own, a colocated vLLM) is brought up to date by its process."""
    if processes.size == 1 or not getattr(sampler, "stale", False):
        return
    if processes.main or getattr(sampler, "backend", "") != "vllm_server":
        sampler.sync_weights(policy, sampler.updates)
    else:
        sampler.synced_at = sampler.updates  # the main process pushes these weights
    processes.wait()  # nobody samples from the server before the push is done
