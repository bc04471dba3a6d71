"""The online training loop: one explicit generate → score → loss → step for every rollout algorithm.

Per rollout step (B prompts, K samples each, S = K·B rows, group-major):

    prompts   = B prompts of a seeded shuffle (cycling)                    `PromptOrder`
    rollout   = generate(π_θ, prompts, K samples)                          `prefopt.online.generation`
    scores    = reward(prompts, completions)          [B, K]  − missing-EOS penalty
    old, ref  = engine(π_θ), engine(π_ref) on the rollout, per token, no grad       [S, T]
                (each prompt read once for its K samples: `prefopt.online.shared_groups`)
    recipe    : greedy decode scored (ReMax) · critic values, KL-shaped rewards, GAE (PPO)
    TIS       : w = min(π_old/π_sampler, C) per token or sequence, when on (`prefopt.online.importance`)
                (sampling to here: `prefopt.online.annotation`)
    for epoch in 1..E:  for minibatch of prompts (groups kept whole):
        loss = get_loss(algorithm)(engine(π_θ)(minibatch), old, mask, **inputs the loss declares)
               (with TIS on, each token's gradient through log π_θ multiplied by its w)
        backward, clip, Adam step (policy; critic for PPO)

Every registered rollout loss (`prefopt losses --kind rollout`) runs through this one loop; what differs
is read from the loss's declaration (its inputs, `online_defaults`, `accepts_pair_loss`;
`prefopt.online.rollout_step`), never its name. Logged per step (TRL's
names): objective/scores (mean reward), objective/kl (mean Σ_t k1 of the rollout against π_ref; not at β = 0),
objective/non_score_reward (−β·objective/kl, β the KL coefficient the algorithm uses, 0 if none),
objective/rlhf_reward, objective/entropy (mean Σ_t entropy), rewards/<name>/mean and /std of each Python
reward function (TRL's), the loss's own metrics (policy/clipfrac,
policy/approxkl, val/clipfrac, loss/policy, loss/value, …, averaged over minibatches), kl_coef,
gen/length, gen/finished, grad_norm, tokens (the rollout's real tokens, prompts and completions), time/step_s and
its split time/generate_s, time/score_s, time/learn_s; with importance sampling on, the sampler's mismatch
is/logp_diff_mean, is/logp_diff_max, is/ratio_max, is/ratio_min, is/capped_frac, is/weight_mean
(`prefopt.online.importance`).

Under `torchrun` / `accelerate launch` every process runs this loop on its block of each step's prompts, the
batch statistics and the gradients summed over processes (`prefopt.online.distributed`); only the main process
writes the run folder (metrics, checkpoints, final/, result.json), and every process resumes from its checkpoints.
With `OnlineConfig.fsdp` the policy's decoder layers are sharded over the processes (`prefopt.online.fsdp`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from prefopt.atomic import write_json_atomic
from prefopt.errors import OnlineDivergedError
from prefopt.loss_call import engine_call, loss_arguments
from prefopt.memory import peak_memory, reset_peak_memory
from prefopt.online.annotation import annotate_rollout, compute_context
from prefopt.online.checkpoint import latest_checkpoint, load_online_checkpoint, save_online_checkpoint
from prefopt.online.config import RESUMABLE, OnlineConfig
from prefopt.online.distributed import (
    MinibatchMetrics,
    check_launch,
    launched_processes,
    local_prompts,
    loss_share,
    minibatch_metrics,
    pooled_means,
)
from prefopt.online.fsdp import clip_gradients, saved_optimizers, shard_policy
from prefopt.online.ilql import QLearning
from prefopt.online.importance import reweight_gradient
from prefopt.online.old_policy import objective_metrics
from prefopt.online.rollout_step import PreparedRollout, loss_inputs, pair_batch, prompt_minibatches, prompt_rows
from prefopt.online.setup import OnlineRun, setup_online_run
from prefopt.online.shared_groups import critic_values, rollout_rows, score_rows
from prefopt.progress import library_progress_bars
from prefopt.threads import torch_threads
from prefopt.train.checkpoint import CHECKPOINT_DIR, check_no_earlier_run, check_same_settings
from prefopt.train.fsdp import full_parameters
from prefopt.train.inputs import input_fingerprints
from prefopt.train.logs import MetricsLog, truncate_metrics
from prefopt.train.run_folder import claim_run_folder

__all__ = ["OnlineResult", "OnlineDivergedError", "train_online", "rollout_step"]

StepCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class OnlineResult:
    """What `train_online` returns (also written to `<output_dir>/result.json`).

    Attributes:
        final_metrics: the last step's record; metrics_path: metrics.jsonl; model_path: the final policy
            (HF format, with its tokenizer); checkpoint_path: the last checkpoint; steps: rollout steps
            done in all; wall_time_s: this call's wall time (setup included); precision: dtypes of the
            checkpoint, the master weights, the compute and final/ (`prefopt.train.precision`);
            peak_memory_bytes: this run's peak memory (CUDA allocator, or CPU resident set size: kind in
            peak_memory_kind, `prefopt.memory`), sampling, scoring and learning included.
    """

    final_metrics: dict[str, float]
    metrics_path: Path
    model_path: Path
    checkpoint_path: Path | None
    steps: int
    wall_time_s: float
    precision: dict[str, str] = dataclasses.field(default_factory=dict)
    peak_memory_bytes: int = 0
    peak_memory_kind: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def _seed(config: OnlineConfig, step: int, stream: int) -> int:
    """A distinct seed per (run seed, step, stream): every draw of the loop is a function of the step."""
    return (config.seed * 1_000_003 + step) * 7 + stream


def _prepare(run: OnlineRun, step: int) -> tuple[Any, PreparedRollout, dict[str, float]]:
    """Sample, score and annotate step `step`'s rollout (`prefopt.online.annotation`), with its metrics."""
    return annotate_rollout(run, step, _seed(run.config, step, 0))


def _minibatch_loss(run: OnlineRun, rollout: Any, prepared: PreparedRollout, prompts: torch.Tensor) -> Any:
    """The loss output of one minibatch of prompts (with gradient), or None when it has nothing to learn
    from (online DPO with another paired loss and every pair tied)."""
    if run.pair_loss is not None:
        pairs = pair_batch(rollout, prepared, prompts)
        if pairs is None:
            return None
        batch, reference = pairs
        with compute_context(run):
            policy_logps = run.engine(batch, **engine_call(run.pair_loss.spec, None))  # + log Σ_v p² if it takes it
        args, kwargs = loss_arguments(run.pair_loss.spec, policy_logps, reference, batch)
        return run.pair_loss(*args, **kwargs)
    rows = prompt_rows(prompts, prepared.num_prompts, prepared.num_samples)
    batch = rollout.token_batch(rows)
    groups = rollout_rows(batch, prepared.num_samples, run.share_prompt)  # each prompt once per group, when on
    entropy = "token_entropy" in run.spec.extra_inputs or prepared.old_from_learner  # π_old's: `old_policy`
    with compute_context(run):
        policy, mass = score_rows(run.engine, run.action_mask, groups, return_entropy=entropy)
        values = critic_values(run.critic, groups) if run.critic is not None else None
    width = batch.input_ids.shape[1]
    args, kwargs = loss_inputs(
        run.spec, prepared, prompts, rows, width, policy=policy, values=values, mask_log_mass=mass
    )
    if prepared.is_weights is not None:  # TIS: each token's gradient × min(π_old/π_sampler, C) (`importance`)
        args[0] = reweight_gradient(args[0], prepared.is_weights[rows, :width])
    return run.loss(*args, **kwargs)


def _update(run: OnlineRun, step: int, loss: torch.Tensor | None) -> float:
    """Backward, sum the gradients over processes (`prefopt.online.distributed`; `loss` is None on a process with no
    rows in this minibatch), clip each model's gradient, Adam step; returns the policy's gradient norm."""
    if loss is not None:
        loss.backward()
    for params in run.parameters().values():
        run.processes.sum_gradients(params)
    max_norm = run.config.max_grad_norm if run.config.max_grad_norm is not None else math.inf
    norms = {name: clip_gradients(params, max_norm) for name, params in run.parameters().items()}  # FSDP shards too
    if not all(math.isfinite(n) for n in norms.values()):
        raise OnlineDivergedError(
            f"non-finite gradient norm {norms} at step {step + 1}; lower lr or max_grad_norm, "
            "or check the reward for extreme values"
        )
    for optimizer in run.optimizers.values():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return norms["policy"]


def rollout_step(run: OnlineRun, step: int) -> dict[str, float]:
    """One rollout and its optimisation passes (module docstring); returns the step's metrics record."""
    if run.q_learning is not None:  # ILQL: a step on its offline data instead (`prefopt.online.ilql`)
        return run.q_learning.step(run, step, _update)
    started = time.perf_counter()
    rollout, prepared, record = _prepare(run, step)
    prepared_at = time.perf_counter()
    generator = torch.Generator().manual_seed(_seed(run.config, step, 1))
    minibatches: list[MinibatchMetrics] = []
    updates, grad_norms, processes = 0, 0.0, run.processes
    total = prepared.num_prompts * processes.size  # minibatches split the step's global prompts
    for _ in range(run.config.passes):
        for part in prompt_minibatches(total, run.config.num_minibatches, generator):
            prompts = local_prompts(processes, part, prepared.num_prompts)  # this process's share of them
            dummy = run.config.fsdp and not prompts.numel()  # FSDP: every process runs each forward (weight 0)
            mine = prompts.new_zeros(1) if dummy else prompts  # a dummy: prompt 0, its loss and metrics weighed 0
            out = _minibatch_loss(run, rollout, prepared, mine) if mine.numel() else None
            if out is None and processes.size == 1:
                continue
            if out is not None and not torch.isfinite(out.loss):
                raise OnlineDivergedError(f"non-finite loss at step {step + 1}; lower lr or check the reward")
            minibatches.append(minibatch_metrics(prepared, prompts, None if dummy else out))
            weight = loss_share(processes, minibatches[-1], token_mean=run.recipe.token_mean)
            grad_norms += _update(
                run, step, None if out is None else (out.loss if weight == 1.0 else weight * out.loss)
            )
            updates += 1
    if run.action_mask is not None:  # NLPO: every μ steps the masking policy becomes a copy of π_θ
        run.action_mask.after_step(step + 1, run.policy)
    # the loss's metrics and the step's tokens over every process, in one all-reduce (`pooled_means`)
    means, tokens = pooled_means(
        processes, minibatches, token_mean_loss=run.recipe.token_mean, tokens=float(rollout.attention_mask.sum())
    )
    record.update(means, **({"grad_norm": grad_norms / updates} if updates else {}))
    if prepared.old_from_learner:  # the rollout's objective/* from π_old, the learner's forward (`old_policy`)
        record.update(objective_metrics(prepared, record["kl_coef"]))
    ended, generate_s = time.perf_counter(), record.get("time/generate_s", 0.0)  # the sampler's (`group_sampling`)
    # the step's wall time split: generate, score (the rest of the annotation), learn (the minibatches' updates)
    split = {"time/score_s": prepared_at - started - generate_s, "time/learn_s": ended - prepared_at}
    record.update(step=step + 1, updates=updates, tokens=tokens, **{"time/step_s": ended - started, **split})
    return record


def _resume(run: OnlineRun, inputs: dict[str, Any]) -> int:
    """Restore the newest checkpoint (if any) and return the step to continue from; refuse other settings or
    other inputs (`prefopt.train.inputs`: the prompts and a model given in memory)."""
    config = run.config
    path = latest_checkpoint(config.output_dir)
    main = run.processes.main
    if path is None:  # killed before its first checkpoint: start over, with an empty log
        if main:
            truncate_metrics(Path(config.output_dir) / "metrics.jsonl", 0)
        return 0
    check_same_settings(config.output_dir, {**config.to_dict(), **inputs}, RESUMABLE, type(config))
    state = load_online_checkpoint(
        path, policy=run.policy, critic=run.critic, optimizers=run.optimizers, frozen=run.frozen_models()
    )
    run.kl_controller.value = float(state["kl_coef"])
    if main:
        truncate_metrics(Path(config.output_dir) / "metrics.jsonl", int(state["step"]))
    return int(state["step"])


def _fresh(out: Path) -> int:
    """Start a run from step 0 in `out`, refusing a folder with an earlier run's checkpoints (its work would
    be lost); the metrics log starts empty so that it reads as this run only."""
    check_no_earlier_run(out)
    out.mkdir(parents=True, exist_ok=True)
    truncate_metrics(out / "metrics.jsonl", 0)
    return 0


def _checkpoint(run: OnlineRun, step: int) -> Path:
    """Save the run after `step` rollouts: the main process writes (with FSDP every process gathers the weights)."""
    optimizers = saved_optimizers(run.policy, run.optimizers)  # FSDP: Adam's shards gathered (before the swap)
    with full_parameters(run.policy):
        if not run.processes.main:
            return Path(run.config.output_dir) / CHECKPOINT_DIR / f"step-{step:06d}"
        return _save_checkpoint(run, step, optimizers)


def _save_checkpoint(run: OnlineRun, step: int, optimizers: dict[str, Any]) -> Path:
    return save_online_checkpoint(
        run.config.output_dir,
        step,
        policy=run.policy,
        critic=run.critic,
        optimizers=optimizers,
        state={"kl_coef": run.kl_controller.value},
        keep=run.config.keep_checkpoints,
        frozen=run.frozen_models(),
    )


def train_online(
    config: OnlineConfig | None = None,
    *,
    model: Any = None,
    tokenizer: Any = None,
    reward: Any = None,
    prompts: Any = None,
    reference_model: Any = None,
    on_step: StepCallback | None = None,
    **settings: Any,
) -> OnlineResult:
    """Train a policy online with any registered rollout loss (module docstring).

    Args:
        config: an `OnlineConfig`; or pass its fields as keyword `settings`
            (`train_online(algorithm="grpo", steps=50)`); with both, settings override it.
        model, tokenizer: an in-memory causal LM and its tokenizer (a path here means `config.model`).
        reward: a `RewardFunction`, a callable fn(prompts, completions) -> [B], "gold" or a saved reward
            model's folder (default: `config.reward`).
        prompts: a list of prompt strings (default: `config.prompts`, or the synthetic task's train prompts).
        reference_model: π_ref (default: a frozen copy of the initial policy).
        on_step: called after each rollout step as `on_step(step, record)`.
    Returns:
        `OnlineResult`; the run folder holds config.json, metrics.jsonl, checkpoints/, final/, result.json.
    """
    if isinstance(model, (str, os.PathLike)):
        settings["model"], model = str(model), None
    if config is None:
        config = OnlineConfig(**settings)
    elif settings:
        config = dataclasses.replace(config, **settings)
    config.preflight()  # output folder, model folders, backend: before anything is built or written
    processes = launched_processes()  # under torchrun / accelerate launch: this process among them
    check_launch(processes, config)  # FSDP needs a launcher; what runs in one process only (one line each)
    processes.shard(config.prompts_per_step)  # a step's prompts split evenly over the processes, or one line
    # one run per folder (`prefopt.train.run_folder`): a second run on output_dir stops at once; the main process
    # holds it for all
    claim = claim_run_folder(config.output_dir) if processes.main else nullcontext()
    with torch_threads(config.threads), library_progress_bars(config.progress and processes.main), claim:
        started = time.perf_counter()
        reset_peak_memory()  # the result's peak is this run's (`prefopt.memory`)
        inputs = input_fingerprints(model=model, rows=prompts)  # before setup wraps the model
        run = setup_online_run(
            config,
            model=model,
            tokenizer=tokenizer,
            reward=reward,
            prompts=prompts,
            reference_model=reference_model,
            processes=processes,
        )
        processes.broadcast([run.policy, *([run.critic] if run.critic is not None else [])])  # the same start
        if config.fsdp:  # shard the policy's decoder layers (`prefopt.online.fsdp`)
            shard_policy(run.policy, run.optimizers["policy"])
        return _train(run, inputs, on_step, started)


def _train(run: OnlineRun, inputs: dict[str, Any], on_step: StepCallback | None, started: float) -> OnlineResult:
    config, main = run.config, run.processes.main
    if run.recipe.q_learning:  # ILQL: heads on the trunk, trained offline on reference samples
        run.q_learning = QLearning(run)
    out = Path(config.output_dir)
    start = _resume(run, inputs) if config.resume else (_fresh(out) if main else 0)
    if main:
        write_json_atomic(out / "config.json", {**config.to_dict(), **inputs})
    if config.progress and main:
        print(f"prefopt train-online: {run.precision.summary(run.policy)}", file=sys.stderr, flush=True)
    log = MetricsLog(out, enabled=main)
    bar = tqdm(
        total=config.steps,
        initial=start,
        desc=f"online {config.algorithm}",
        dynamic_ncols=True,
        disable=not (config.progress and main),
    )
    record: dict[str, float] = {}
    checkpoint = None
    try:
        for step in range(start, config.steps):
            record = rollout_step(run, step)
            log.log(record)
            kl = format(record["objective/kl"], ".3g") if "objective/kl" in record else "-"  # β = 0: no π_ref pass
            bar.set_postfix({"reward": f"{record['objective/scores']:.3g}", "kl": kl}, refresh=False)
            bar.update(1)
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
                checkpoint = _checkpoint(run, step + 1)
            if on_step is not None:
                on_step(step + 1, record)
    finally:
        bar.close()
        log.close()
    run.processes.wait()  # the main process's log is complete
    if not record:  # resumed a finished run: the last logged record is the final one
        lines = (out / "metrics.jsonl").read_text().splitlines()
        record = json.loads(lines[-1]) if lines else {}
    if checkpoint is None or not checkpoint.name.endswith(f"{config.steps:06d}"):
        checkpoint = _checkpoint(run, config.steps)
    with full_parameters(run.policy):  # FSDP: every process gathers the full weights (a no-op unsharded)
        model_path = _save_final(run, out) if main else out / "final"
    result = OnlineResult(
        record,
        out / "metrics.jsonl",
        model_path,
        checkpoint,
        config.steps,
        time.perf_counter() - started,
        run.precision.describe(run.policy),
        *peak_memory(next(run.policy.parameters()).device),
    )
    if main:
        write_json_atomic(out / "result.json", result.to_dict())
    run.processes.wait()  # every process returns once the run folder is complete
    return result


def _save_final(run: OnlineRun, out: Path) -> Path:
    """The trained policy with its tokenizer in HF format at `<out>/final`, replaced atomically."""
    final = out / "final"
    tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=out))
    run.precision.save_pretrained(run.policy, tmp)  # in the dtype of `save_dtype`
    run.tokenizer.save_pretrained(tmp)
    run.save_beside(tmp)  # NLPO's masking policy, ILQL's heads: what samples with the policy
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final
