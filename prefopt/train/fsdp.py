"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for the offline trainer: `TrainConfig(fsdp=True)`, `--fsdp`.

    units      each decoder layer (the body's `layers`) is its own unit; the `ScoringModule` is the root and holds
               the rest (embeddings, final norm, the head whose weight the fused log-prob kernel reads). Every pass
               with gradients goes through the ScoringModule's forward, so the root's all-gather has put the full
               head weight in place before the kernel reads it.
    gradients  reduce-scattered and averaged over processes, as DDP's all-reduce averages them: the loop's loss
               scaling is unchanged. Each micro-batch reduce-scatters (no `no_sync` in FSDP2), the same sum.
    saving     `full_parameters(model)`: inside it every process has all-gathered every sharded parameter
               (a collective: every process enters), so checkpoints and `final/` hold the full weights in the
               format of an unsharded run; `optimizer_state` is the optimiser's state_dict in the unsharded format
               (gathered from the shards), so a checkpoint resumes without FSDP (or under DDP) as any other.

Why not Accelerate's FSDP plugin: accelerate (1.16) selects FSDP only for GPU-like distributed types
(`accelerate/state.py`, `AcceleratorState.__init__`: the `ACCELERATE_USE_FSDP` branch sits under
`elif self.distributed_type in [MULTI_GPU, MULTI_MLU, ..., MULTI_NEURON]`), so on CPU (`MULTI_CPU`, gloo) an
FSDP config silently trains DDP. `fully_shard` itself runs on gloo.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from prefopt.errors import DistributedSetupError, SettingsError

__all__ = [
    "shard_scoring_module",
    "full_parameters",
    "optimizer_state",
    "is_sharded",
    "check_launch_plugin",
    "decoder_layers",
]


def check_launch_plugin(accelerator: Any) -> None:
    """Refuse a launch whose FSDP or DeepSpeed config Accelerate ignored (on CPU it trains DDP instead: see the
    module docstring for FSDP; DeepSpeed is skipped under `cpu=True`, `accelerate/state.py` `if not cpu`)."""
    for variable, kind in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")):
        running = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
        if os.environ.get(variable, "").lower() == "true" and running != kind:
            raise DistributedSetupError(
                f"the launch config asks for {kind} ({variable}=true) but Accelerate runs {running}: it uses FSDP and "
                "DeepSpeed on GPUs only; on CPU use prefopt's own FSDP2 (--fsdp / TrainConfig.fsdp) without the config"
            )


def decoder_layers(model: nn.Module, field: str = "TrainConfig.fsdp") -> nn.ModuleList:
    """The body's list of decoder layers (`model.model.layers` for Llama-like models, `transformer.h` for GPT-2);
    `field` names the setting that asked for sharding in the error when there is none."""
    body = getattr(model, "base_model", model)
    for path in ("layers", "h", "model.layers", "decoder.layers", "transformer.h"):
        found: Any = body
        for part in path.split("."):
            found = getattr(found, part, None)
        if isinstance(found, nn.ModuleList) and len(found):
            return found
    raise SettingsError(
        f"{field}: found no list of decoder layers in {type(model).__name__} to shard "
        "(looked for layers, h, decoder.layers); train it without fsdp"
    )


def shard_scoring_module(scoring: nn.Module, device: torch.device) -> nn.Module:
    """Move `scoring` (a `prefopt.train.model.ScoringModule`) to this process's `device` and shard it in place over
    the launch's processes: one FSDP unit per decoder layer of its model, the ScoringModule the root. Build the
    optimiser afterwards (on the sharded parameters). Returns `scoring`, now an `FSDPModule` too."""
    if not torch.distributed.is_initialized():
        raise DistributedSetupError(
            "TrainConfig.fsdp=True shards over the processes of a launch; start it with torchrun or accelerate "
            "launch (on CPU: ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N -m prefopt.train --cpu --fsdp ...), "
            "or drop fsdp"
        )
    scoring.to(device)
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))  # gloo on CPU, NCCL on GPUs
    for layer in decoder_layers(scoring.model):
        fully_shard(layer, mesh=mesh)
    fully_shard(scoring, mesh=mesh)
    return scoring


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of `model` is an FSDP shard (a DTensor)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


@contextmanager
def full_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Within: each sharded parameter of `model` replaced by its full tensor (all-gathered; tied weights once), the
    shards put back on exit. A collective when `model` is sharded: every process enters; a no-op otherwise."""
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    full: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if isinstance(param, DTensor):
                if id(param) not in full:
                    full[id(param)] = nn.Parameter(param.full_tensor().detach(), requires_grad=param.requires_grad)
                module._parameters[name] = full[id(param)]
                swapped.append((module, name, param))
    try:
        yield model
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` as an unsharded run holds it (parameters numbered in the optimiser's order).

    Sharded: gathered from every process's shards (a collective: every process calls it); the full tensors are on
    every process. `model` holds the optimiser's parameters."""
    if not is_sharded(model):
        return optimizer.state_dict()
    gathered = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    numbers: dict[str, int] = {}
    groups = []
    for group in gathered["param_groups"]:
        names = list(group["params"])
        numbers.update({name: len(numbers) + i for i, name in enumerate(names)})
        groups.append({**group, "params": [numbers[name] for name in names]})
    state = {numbers[name]: dict(value) for name, value in gathered["state"].items()}
    return {"state": state, "param_groups": groups}
