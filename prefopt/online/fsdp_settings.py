"""The FSDP setting of an online run, `TrainConfig.fsdp`'s name and meaning; `OnlineConfig` inherits it.

    fsdp   shard the policy's decoder layers over the launch's processes with FSDP2 (`fully_shard`), the rest
           replicated (`prefopt.online.fsdp`); needs `torchrun` / `accelerate launch`

What it does not run is refused here, one line each, naming the field and the fix: LoRA (π_ref, the adapter-disabled
base, would be scored through the sharded layers outside the loop's passes, and PPO's critic would ride on the
sharded trunk), vLLM samplers (their weights would have to be gathered before each push), a greedy decode (ReMax:
batched by prompt length, a different number of forwards per process), NLPO's action mask (its masking policy is
copied from the policy's weights), ILQL, online DPO's pair loss, dynamic sampling, and resuming sharded (checkpoints
hold full weights: resume without fsdp, as offline). PPO's critic, a separate copy without LoRA, stays replicated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefopt.settings import Settings, SettingsError

__all__ = ["ShardingSettings"]


@dataclass(frozen=True)
class ShardingSettings(Settings):
    """FSDP of an online run (`prefopt.online.fsdp`).

    Attributes:
        fsdp: shard the policy's decoder layers with FSDP2 over the launch's processes (embeddings, final norm and
            head replicated, their gradients all-reduced as without it).
    """

    fsdp: bool = False

    def check_sharding_settings(self, recipe: Any) -> None:
        """Refuse fsdp with what it does not run (module docstring), one line naming the setting and the fix;
        `recipe`: the algorithm's `prefopt.online.rollout_step.Recipe`. Reads OnlineConfig's other fields."""
        if not self.fsdp:
            return
        config: Any = self  # the OnlineConfig this is part of: its other fields
        lora_r, backend, pair_loss = config.lora_r, config.generation_backend, config.pair_loss
        unsupported = {
            f"lora_r={lora_r}": (lora_r, "set lora_r=0 (a LoRA run's trainable weights are small)"),
            f"generation_backend={backend!r}": (
                str(backend).startswith("vllm"),
                "set generation_backend='hf' (the policy samples itself, in step on every process)",
            ),
            f"algorithm={config.algorithm!r} (a greedy decode, an action mask or Q-learning)": (
                recipe.greedy_baseline or recipe.action_mask or recipe.q_learning,
                "drop fsdp for this algorithm (PPO, GRPO, RLOO, DAPO without dynamic sampling, ... run sharded)",
            ),
            f"pair_loss={pair_loss!r}": (pair_loss is not None, "leave pair_loss unset"),
            "dynamic_sampling": (config.filters_groups, "set dynamic_sampling=False"),
            "resume=True": (config.resume, "resume a sharded run's checkpoint (full weights) with fsdp=False"),
        }
        for setting, (on, fix) in unsupported.items():
            if on:
                raise SettingsError(f"OnlineConfig.fsdp=True with {setting}: not run sharded; {fix}")
