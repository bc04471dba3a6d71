"""One step's rollout: generate, score, shape the scores, and (dynamic sampling) refill dropped groups.

    rollout, scores, columns, metrics = sample_rollout(run, step, seed)

1. The step's B prompts are sampled K times each (`prefopt.online.generation`) and scored [B, K]
   (`rollout_rewards`; the prompts' extra columns go to the reward functions).
2. Shaping, per sample, in this order: TRL's missing-EOS penalty (`OnlineConfig.missing_eos_penalty`), then
   DAPO's soft overlong penalty (`OnlineConfig.overlong_shaping`; Yu et al. 2025, arXiv:2503.14476, Eq. 13,
   `prefopt.rl.overlong_penalty` with L_max = max_new_tokens, L_cache = `OnlineConfig.overlong_cache`). The
   greedy decodes of ReMax get the same shaping (`rollout_scores`), so their baseline stays comparable.
3. Dynamic sampling (`OnlineConfig.dynamic_sampling`; DAPO §3.2 and Algorithm 1): a group whose K shaped
   rewards are all equal (`prefopt.rl.groups_with_spread`) is dropped, and more prompts are sampled, B at a
   time, until B groups with a spread are kept or `max_sampling_rounds` generations have been made; the
   first B kept (in draw order) form the batch, as verl's DAPO recipe truncates to the train batch size.
   The paper keeps sampling until the batch is full; verl stops with an error after `max_num_gen_batches`
   (10); prefopt stops after `max_sampling_rounds` (10) and trains on the groups it kept (fewer than B),
   or, if it kept none, on the step's first draw (whose group-normalised advantages are all 0). The log says
   which (`dynamic_sampling/*`).

Refill prompts are a seeded draw from all the prompts, a function of (run seed, step, round), so a resumed
run draws the same ones; the step's own prompts still come from `PromptOrder`, whose order refills do not
advance. Rows stay group-major: the batch of kept groups is rebuilt so that row k·B' + b is sample k of kept
prompt b.

Under `torchrun` / `accelerate launch` each process samples its block of the B prompts, each prompt alone from
its own seed (`prefopt.online.distributed.prompt_seeds`), so the processes' rollouts together are one process's;
dynamic sampling stays single-process (refused with several).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from prefopt.online.config import OnlineConfig
from prefopt.online.distributed import prompt_seeds, sync_sampler
from prefopt.online.generation import GenerationConfig, Rollout
from prefopt.online.rewards import rollout_rewards
from prefopt.online.rollout_step import prompt_rows
from prefopt.online.setup import OnlineRun, PromptOrder
from prefopt.rl import (
    apply_eos_penalty,
    grouped_to_sequences,
    groups_with_spread,
    overlong_penalty,
    sequences_to_grouped,
)

__all__ = [
    "Drawn",
    "generation_config",
    "rollout_scores",
    "select_prompts",
    "concat_rollouts",
    "refill_prompts",
    "sample_rollout",
]

# (rollout, shaped scores [B, K], the prompts' extra columns, reward metrics) of one generation round
Drawn = tuple[Rollout, Tensor, dict[str, list[Any]], dict[str, float]]


def generation_config(config: OnlineConfig) -> GenerationConfig:
    """How the run samples its rollouts (K = `config.samples` per prompt)."""
    return GenerationConfig(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        num_samples=config.samples,
        batch_size=config.generation_batch_size,
        backend="hf",
        logprobs=config.importance_sampling != "off",  # the sampler's per-token log-probs (`prefopt.online.importance`)
        batching=config.generation_batching,  # which prompts share a generate call (`generation_batching`)
        decoder=config.generation_decoder,  # the lean decoder or `generate` (`prefopt.online.lean_decoder`)
    )


def rollout_scores(run: OnlineRun, rollout: Rollout, columns: dict[str, list[Any]]) -> tuple[Tensor, dict[str, float]]:
    """[B, K] rewards of `rollout` after the run's shaping (missing-EOS penalty, overlong penalty), and the reward
    metrics (each function's `rewards/<name>/mean`, `/std`; `overlong/penalty`, the mean penalty, when on)."""
    config = run.config
    scores, metrics = rollout_rewards(run.reward, rollout, columns)
    flat = grouped_to_sequences(scores)  # [S]
    if config.missing_eos_penalty is not None:
        flat = apply_eos_penalty(flat, rollout.finished, config.missing_eos_penalty)
    cache = config.overlong_cache
    if cache is not None:
        penalty = overlong_penalty(rollout.lengths(), config.max_new_tokens, cache, factor=config.overlong_factor)
        flat = flat + penalty.to(flat.dtype)
        metrics = {**metrics, "overlong/penalty": float(penalty.mean())}
    return sequences_to_grouped(flat, rollout.num_samples), metrics


def select_prompts(rollout: Rollout, prompts: Tensor) -> Rollout:
    """The rollout of a subset of its prompts (indices [P]), group-major: row k·P + j = sample k of prompts[j]."""
    rows = prompt_rows(prompts, rollout.num_prompts, rollout.num_samples)
    return Rollout(
        prompts=[rollout.prompts[int(i)] for i in prompts],
        completions=[rollout.completions[int(r)] for r in rows],
        input_ids=rollout.input_ids[rows],
        attention_mask=rollout.attention_mask[rows],
        completion_mask=rollout.completion_mask[rows],
        finished=rollout.finished[rows],
        num_samples=rollout.num_samples,
        sampler_logps=None if rollout.sampler_logps is None else rollout.sampler_logps[rows],
    )


def concat_rollouts(parts: Sequence[Rollout]) -> Rollout:
    """Rollouts of the same K as one, group-major over all their prompts (padded to the widest)."""
    k, width = parts[0].num_samples, max(p.input_ids.shape[1] for p in parts)

    def blocks(part: Rollout, name: str) -> list[Tensor]:
        t = getattr(part, name)
        t = torch.nn.functional.pad(t, (0, width - t.shape[1])) if t.dim() == 2 else t  # pads 0 / False
        return list(t.split(part.num_prompts))  # K blocks: block j = sample j of every prompt

    names = ["input_ids", "attention_mask", "completion_mask", "finished"]
    names += ["sampler_logps"] if all(p.sampler_logps is not None for p in parts) else []
    tensors = {name: torch.cat([blocks(p, name)[j] for j in range(k) for p in parts]) for name in names}
    completions = [
        c for j in range(k) for p in parts for c in p.completions[j * p.num_prompts : (j + 1) * p.num_prompts]
    ]
    prompts = [q for p in parts for q in p.prompts]
    return Rollout(prompts=prompts, completions=completions, num_samples=k, **tensors)


def refill_prompts(order: PromptOrder, seed: int) -> tuple[list[Any], dict[str, list[Any]]]:
    """B prompts (and their columns) drawn from all of `order`'s prompts by `seed`, without repeats while they last."""
    n, count = len(order.prompts), order.per_step
    generator = torch.Generator().manual_seed(seed)
    picks = torch.cat([torch.randperm(n, generator=generator) for _ in range(-(-count // n))])[:count].tolist()
    columns = {name: [values[i] for i in picks] for name, values in order.all_columns.items()}
    return [order.prompts[i] for i in picks], columns


def _draw(
    run: OnlineRun, prompts: list[Any], columns: dict[str, list[Any]], seed: int, seeds: list[int] | None = None
) -> Drawn:
    """Sample K completions of `prompts` with the policy and score them (shaped); with `seeds`, each prompt is
    sampled alone from its own seed (several processes: `prefopt.online.distributed`)."""
    device = next(run.policy.parameters()).device
    config = generation_config(run.config)
    started = time.perf_counter()
    with run.precision.autocast_context(device):
        processor = None if run.action_mask is None else run.action_mask.processor()  # NLPO: sample inside M_t
        sampler = run.rollout_sampler()  # a vLLM engine first gets the policy's weights if updated since
        sync_sampler(run.processes, sampler, run.policy)  # several processes: one push to a server, by the main one
        if seeds is None:
            rollout = sampler.generate(prompts, config, seed=seed, logits_processor=processor)
        else:
            parts = [sampler.generate([p], config, seed=s, logits_processor=processor) for p, s in zip(prompts, seeds)]
            rollout = concat_rollouts(parts)
    generate_s = time.perf_counter() - started  # the sampler's share of the step (`time/generate_s`)
    scores, metrics = rollout_scores(run, rollout, columns)
    return rollout, scores, columns, {**metrics, "time/generate_s": generate_s}


def _kept(drawn: Drawn, keep: Tensor) -> Drawn:
    rollout, scores, columns, metrics = drawn
    index = keep.tolist()
    return select_prompts(rollout, keep), scores[keep], {n: [v[i] for i in index] for n, v in columns.items()}, metrics


def sample_rollout(run: OnlineRun, step: int, seed: int) -> Drawn:
    """The rollout of step `step` (module docstring): its B prompts sampled and scored, with dynamic sampling
    when the run has it on. `seed` seeds the first generation; refills use seeds derived from it."""
    prompts, columns, seeds = run.prompts.batch(step), run.prompts.columns(step), None
    if run.processes.launched:  # this process's block of the prompts, each from its own seed
        mine = run.processes.shard(len(prompts))
        prompts, columns = [prompts[i] for i in mine], {n: [v[i] for i in mine] for n, v in columns.items()}
        seeds = prompt_seeds(seed, mine)
    first = _draw(run, prompts, columns, seed, seeds)
    if not run.config.filters_groups:
        return first
    wanted, kept, parts, drawn, spread = run.prompts.per_step, 0, [], first, []
    generate_s = 0.0
    for round_ in range(run.config.max_sampling_rounds):
        if round_ > 0:
            drawn = _draw(run, *refill_prompts(run.prompts, seed * 1_000_003 + round_), seed * 1_000_003 + round_)
        generate_s += drawn[3].get("time/generate_s", 0.0)
        informative = groups_with_spread(drawn[1])
        spread.append(float(informative.float().mean()))
        keep = informative.nonzero().flatten()[: wanted - kept]
        if keep.numel():
            parts.append(_kept(drawn, keep))
            kept += keep.numel()
        if kept == wanted:
            break
    metrics = {
        **first[3],
        "time/generate_s": generate_s,  # every round's
        "dynamic_sampling/rounds": float(len(spread)),
        "dynamic_sampling/kept": kept / wanted,
        "dynamic_sampling/informative": sum(spread) / len(spread),
    }
    if not parts:  # nothing to learn from in any round: train on the first draw (all advantages 0)
        return first[0], first[1], first[2], metrics
    rollout = concat_rollouts([p[0] for p in parts])
    scores = torch.cat([p[1] for p in parts])
    columns = {n: [v for p in parts for v in p[2][n]] for n in first[2]}
    return rollout, scores, columns, metrics
