"""The rollout-annotation step of the online loop: sample and score a rollout, then annotate it with everything its
loss may ask for, once per rollout step and without gradient.

    rollout   = generate + score (+ dynamic sampling's refills)           `prefopt.online.group_sampling`
    greedy    = a greedy decode of every prompt, scored                    losses that take greedy_rewards (ReMax)
    old, ref  = engine(π_θ), engine(π_ref) per token, no grad    [S, T]    each prompt once per group when shared
                (π_old from the learner's forward instead, when one step uses the rollout: `prefopt.online.old_policy`;
                π_ref only where the run reads it: `scores_reference`)
    critic    : old values, KL-shaped rewards, GAE targets                 losses that take values (PPO)
    declared  : the loss's `rollout_inputs` over the whole rollout         `rollout_wide_inputs`
    TIS       : weights min(π_old/π_sampler, C) and the mismatch metrics   `OnlineConfig.importance_sampling`

The metrics of the rollout (`objective/*`, `gen/*`, `kl_coef`, the reward functions', `is/*`) are returned with it;
`prefopt.online.trainer` then runs the loss over its minibatches (and, when its forward gives π_old, adds the
`objective/*` metrics after it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from prefopt.online.distributed import Processes
from prefopt.online.generation import generate
from prefopt.online.group_sampling import generation_config, rollout_scores, sample_rollout
from prefopt.online.importance import importance_weights, mismatch_metrics
from prefopt.online.old_policy import objective_metrics, pending, reuses_learner_forward
from prefopt.online.rollout_step import PreparedRollout, critic_targets, rollout_wide_inputs, sequence_scores
from prefopt.online.setup import OnlineRun
from prefopt.online.shared_groups import critic_values, rollout_rows, score_rows
from prefopt.settings import SettingsError

__all__ = ["annotate_rollout", "compute_context", "importance_sampling", "scores_reference"]


def compute_context(run: OnlineRun) -> Any:
    """The context of the policy's and the critic's forwards: bf16 autocast where bf16 compute applies
    (`prefopt.train.precision`); the reference and the reward model run in their own dtype, outside it."""
    return run.precision.autocast_context(next(run.policy.parameters()).device)


def importance_sampling(
    run: OnlineRun, sampler_logps: Tensor | None, old_logps: Tensor, mask: Tensor, old_mass: Tensor | None
) -> tuple[Tensor | None, dict[str, float]]:
    """The TIS weights [S, T] of a rollout and its `is/*` metrics (`prefopt.online.importance`), or (None, {}) when
    `OnlineConfig.importance_sampling` is off. π_old is the learner's no-gradient score; with NLPO's action mask,
    the policy renormalised inside the mask (log π_old − log Z_old), the distribution the sampler draws from."""
    mode, cap = run.config.importance_sampling, run.config.importance_sampling_cap
    if mode == "off":
        return None, {}
    if sampler_logps is None:
        raise SettingsError(
            f"OnlineConfig.importance_sampling={mode!r}: the sampler recorded no per-token log-probs for this "
            "rollout; use a sampler that reports them or set importance_sampling='off'"
        )
    behaviour = old_logps if old_mass is None else old_logps - old_mass
    sampler = sampler_logps[:, : mask.shape[1]].to(behaviour.device)
    weights = importance_weights(behaviour, sampler, mask, mode=mode, cap=cap)
    return weights, mismatch_metrics(behaviour, sampler, mask, mode=mode, cap=cap)


def scores_reference(run: OnlineRun) -> bool:
    """Whether a rollout's π_ref pass runs: always, except where the loss's KL coefficient β is set to 0 and nothing
    else reads π_ref (PPO's critic, online DPO's pair loss, the loss's rollout-wide inputs) and
    `OnlineConfig.reference_kl` is "auto". At β = 0 a rollout loss takes no reference (the registry's rule,
    `prefopt.loss_inputs`), so a β = 0 GRPO, RLOO, Dr. GRPO, … run scores none and logs no objective/kl, as TRL
    loads no reference model at β = 0."""
    if run.config.reference_kl == "always" or run.critic is not None or run.pair_loss is not None:
        return True
    if run.spec.rollout_inputs or run.q_learning is not None:
        return True
    beta = {**run.spec.defaults(), **run.loss.hparams}.get("beta")
    return beta is None or beta > 0  # a loss without β (best_of_n, …): scored for objective/kl, as before


@torch.no_grad()
def annotate_rollout(run: OnlineRun, step: int, seed: int) -> tuple[Any, PreparedRollout, dict[str, float]]:
    """Sample step `step`'s rollout (from `seed`), score and annotate it (module docstring); returns it with its
    metrics."""
    config = run.config
    # generate and score (shaped), with dynamic sampling's refills when on (`prefopt.online.group_sampling`)
    rollout, scores, columns, reward_metrics = sample_rollout(run, step, seed)
    greedy = None
    if run.recipe.greedy_baseline:
        decode = dataclasses.replace(generation_config(config), num_samples=1, do_sample=False, logprobs=False)
        with compute_context(run):
            decoded = generate(run.policy, run.tokenizer, rollout.prompts, decode)
        greedy = rollout_scores(run, decoded, columns)[0][:, 0]
    batch = rollout.token_batch()
    rows = rollout_rows(batch, rollout.num_samples, run.share_prompt)  # each prompt once per group, when on
    mask = batch.completion_mask
    ref_logps = score_rows(run.ref_engine, None, rows)[0].tokens if scores_reference(run) else None
    if reuses_learner_forward(run):  # π_old: the learner's forward, detached (`prefopt.online.old_policy`)
        prepared, old_mass = pending(PreparedRollout(scores, torch.zeros(mask.shape), ref_logps, mask, greedy)), None
    else:
        with compute_context(run):
            old, old_mass = score_rows(run.engine, run.action_mask, rows, return_entropy=True)  # log Z: NLPO
        assert old.tokens is not None and old.entropy is not None
        prepared = PreparedRollout(scores, old.tokens, ref_logps, mask, greedy, old_entropy=old.entropy)
    beta = float({**run.spec.defaults(), **run.loss.hparams}.get("beta") or 0.0)
    if run.critic is not None:
        beta = run.kl_controller.value
        with compute_context(run):
            old_values = critic_values(run.critic, rows)
        prepared.token_inputs, kl = critic_targets(
            sequence_scores(prepared),
            prepared.old_logps,
            ref_logps,
            mask,
            old_values,
            kl_coef=beta,
            estimator=config.kl_estimator,
            gamma=config.gamma,
            lam=config.lam,
            whiten=config.whiten_advantages and run.processes.size == 1,
        )
        if config.whiten_advantages and run.processes.size > 1:  # over every process's tokens
            prepared.token_inputs["advantages"] = run.processes.whiten(prepared.token_inputs["advantages"], mask)
        kl_mean, rows = run.processes.global_mean(kl.sum(1))  # the whole batch's mean KL
        run.kl_controller.update(kl_mean, n_steps=rows)
    if old_mass is not None:
        prepared.token_inputs["old_mask_log_mass"] = old_mass
    # statistics of the whole rollout the loss declares (`LossSpec.rollout_inputs`), before the minibatches
    prepared.token_inputs.update(_rollout_wide_inputs(run, prepared))
    prepared.is_weights, is_metrics = importance_sampling(
        run, rollout.sampler_logps, prepared.old_logps, mask, old_mass
    )
    metrics = {
        **({} if prepared.old_from_learner else objective_metrics(prepared, beta)),  # else after the learner's
        "kl_coef": beta,
        "gen/length": float(rollout.lengths().float().mean()),
        "gen/finished": float(rollout.finished.float().mean()),
        **reward_metrics,
        **is_metrics,
    }
    if greedy is not None:
        metrics["objective/greedy_scores"] = float(greedy.mean())
    return rollout, prepared, run.processes.average_metrics(metrics)  # over processes: the global batch's


def _rollout_wide_inputs(run: OnlineRun, prepared: PreparedRollout) -> dict[str, Tensor]:
    """`rollout_wide_inputs` of the global rollout: with several processes, computed on every process's rows
    gathered in global order (`Processes.gather_rows`), then cut back to this process's rows."""
    processes: Processes = run.processes
    if processes.size == 1 or not run.spec.rollout_inputs:
        return rollout_wide_inputs(run.spec, prepared, run.loss.hparams)
    k, width = prepared.num_samples, prepared.completion_mask.shape[1]
    gathered = PreparedRollout(
        processes.gather_rows(prepared.scores, 1),
        processes.gather_rows(prepared.old_logps, k),
        processes.gather_rows(prepared.ref_logps, k),
        processes.gather_rows(prepared.completion_mask.long(), k).bool(),
    )
    made = rollout_wide_inputs(run.spec, gathered, run.loss.hparams)
    return {name: processes.local_rows(t, k, prepared.num_prompts, width) for name, t in made.items()}
