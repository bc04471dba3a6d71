"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for the online loop: `OnlineConfig.fsdp`, `prefopt train-online
--fsdp`, under `torchrun` / `accelerate launch` (gloo on CPU, NCCL on GPUs).

    units      each decoder layer of the policy (`prefopt.train.fsdp`'s layer finder) is its own FSDP unit; the
               embeddings, the final norm and the head stay replicated: the engine runs the model's body (whose
               layers all-gather their weights in their forward hooks) and reads the head's weight directly,
               with no root module around the loop's passes, so the head is never a shard
    gradients  a layer's are reduce-scattered with the divide factor 1 (summed: each process back-propagates its
               share w_p·L_p of the minibatch loss, `prefopt.online.distributed`); the replicated parameters'
               are all-reduced as without FSDP (`Processes.sum_gradients` skips the shards); the norm for
               clipping adds the shards' squares over processes to the replicated ones' (`clip_gradients`)
    forwards   every process runs the same forwards and backwards, as FSDP's collectives require: sampling calls
               HF `generate` with `synced_gpus=True` (a process done early keeps stepping until every one is;
               `prefopt.online.generation`), and a process with no prompt in a minibatch runs one with weight 0
               (`prefopt.online.trainer`)
    saving     checkpoints and final/ hold full weights (`prefopt.train.fsdp.full_parameters`, every process
               enters) and the policy's Adam state gathered to the unsharded format, so a sharded run resumes
               without fsdp, as offline; the reference (a frozen copy), PPO's critic (a separate copy: no LoRA)
               and the reward stay replicated

What is not run sharded is refused in one line (`prefopt.online.fsdp_settings`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from prefopt.errors import DistributedSetupError
from prefopt.train.fsdp import decoder_layers, is_sharded

__all__ = ["shard_policy", "clip_gradients", "saved_optimizers"]


def shard_policy(policy: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Shard `policy`'s decoder layers in place over the launch's processes (module docstring) and point
    `optimizer` (no step taken yet) at the sharded parameters. Call after every process holds the same weights."""
    if not dist.is_initialized():
        raise DistributedSetupError(
            "OnlineConfig.fsdp=True shards over the processes of a launch; start it with torchrun or accelerate "
            "launch (on CPU: ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N -m prefopt train-online --fsdp ...), "
            "or drop fsdp"
        )
    names = {id(p): name for name, p in policy.named_parameters()}
    device = next(policy.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in decoder_layers(policy, "OnlineConfig.fsdp"):
        fully_shard(layer, mesh=mesh)
        layer.set_gradient_divide_factor(1.0)  # a sum: the loop's shares w_p already make the global loss
        layer.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
    sharded = dict(policy.named_parameters())
    for group in optimizer.param_groups:
        group["params"] = [sharded[names[id(p)]] for p in group["params"]]


def clip_gradients(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """`torch.nn.utils.clip_grad_norm_` over replicated parameters and FSDP shards together: the global norm
    (shards' squares summed over processes), every gradient scaled by min(1, max_norm / (norm + 1e-6))."""
    params = [p for p in params if p.grad is not None]
    if not any(isinstance(p.grad, DTensor) for p in params):
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    shards = [p.grad.to_local() for p in params if isinstance(p.grad, DTensor)]
    full = [p.grad for p in params if not isinstance(p.grad, DTensor)]
    sharded_sq = torch.stack([g.detach().double().pow(2).sum() for g in shards]).sum()
    dist.all_reduce(sharded_sq)
    plain_sq = torch.stack([g.detach().double().pow(2).sum() for g in full]).sum() if full else 0.0
    norm = float(torch.sqrt(sharded_sq + plain_sq))
    coefficient = min(1.0, max_norm / (norm + 1e-6)) if math.isfinite(norm) else 1.0
    if coefficient < 1.0:
        for grad in [*shards, *full]:
            grad.mul_(coefficient)
    return norm


class _Saved:
    """An optimiser's state_dict, gathered before saving (a collective) and handed to the checkpoint writer."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state


def saved_optimizers(policy: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
    """The optimisers as a checkpoint saves them: with the policy sharded, its Adam state with every shard gathered
    to the full tensor (a collective: every process calls this, in the same order), numbered as an unsharded run's
    (the optimiser's own order); the others as they are."""
    if not is_sharded(policy):
        return optimizers
    state = optimizers["policy"].state_dict()
    full = {
        index: {key: value.full_tensor() if isinstance(value, DTensor) else value for key, value in entry.items()}
        for index, entry in state["state"].items()
    }
    return {**optimizers, "policy": _Saved({"state": full, "param_groups": state["param_groups"]})}
