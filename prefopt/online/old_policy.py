"""π_old from the learner's own forward, when that is what it is: the no-gradient pass over the rollout skipped.

The loss's `old_logps` are π_θ's log-probs of the rollout with the weights that sampled it. The annotation step
(`prefopt.online.annotation`) scores them in a no-gradient forward before the minibatches. When the rollout gets
exactly one optimiser step (one pass, one minibatch) and nothing reads π_old before that step's forward, the
weights of that forward are still the sampling ones, so π_old is its log-probs, detached (TRL's GRPOTrainer takes
the same shortcut when one generation serves one step: `old_per_token_logps = per_token_logps.detach()`). The loop
then skips the no-gradient pass: `PreparedRollout.old_from_learner`, the learner's minibatch fills in
`old_logps` and the per-sequence entropy (`PreparedRollout.fill_old`, from `loss_inputs`), and the rollout's
`objective/*` metrics are made after it (`objective_metrics`, the same function as on the annotated path). The
loss, its gradients and the logged metrics equal the annotated path's to float rounding
(tests/online/test_old_policy.py: 1e-6).

Not taken (π_old is read before, or after, the first update): several passes or minibatches, PPO's critic targets
(GAE over the KL-shaped rewards), a loss's declared `rollout_inputs`, importance-sampling correction, NLPO's
action mask, online DPO with another paired loss, ILQL, and several processes (whose rollout metrics are averaged
over processes in the annotation step).
"""

from __future__ import annotations

from typing import Any

from prefopt.online.rollout_step import PreparedRollout
from prefopt.rl import kl_k1, masked_sum

__all__ = ["reuses_learner_forward", "pending", "objective_metrics"]


def reuses_learner_forward(run: Any) -> bool:
    """Whether π_old is the learner's detached forward for `run` (an `OnlineRun`; module docstring)."""
    config = run.config
    return (
        config.passes == 1
        and config.num_minibatches == 1
        and config.importance_sampling == "off"
        and run.critic is None
        and run.action_mask is None
        and run.pair_loss is None
        and not run.spec.rollout_inputs
        and not run.recipe.q_learning
        and run.processes.size == 1
    )


def objective_metrics(prepared: PreparedRollout, beta: float) -> dict[str, float]:
    """The rollout's `objective/*` metrics (TRL's names): mean reward, mean Σ_t k1(π_old, π_ref), −β·KL, reward
    − β·KL, mean Σ_t entropy of π_old. Without a π_ref pass (`annotation.scores_reference`: β = 0) no
    objective/kl, and −β·KL is 0."""
    assert prepared.old_entropy is not None
    score_mean = float(prepared.scores.mean())
    out = {"objective/scores": score_mean, "objective/entropy": float(prepared.old_entropy.mean())}
    if prepared.ref_logps is None:
        return {**out, "objective/non_score_reward": 0.0, "objective/rlhf_reward": score_mean}
    sequence_kl = masked_sum(kl_k1(prepared.old_logps, prepared.ref_logps), prepared.completion_mask, dim=1)  # [S]
    kl_mean = float(sequence_kl.mean())
    return {
        **out,
        "objective/kl": kl_mean,
        "objective/non_score_reward": -beta * kl_mean,
        "objective/rlhf_reward": score_mean - beta * kl_mean,
    }


def pending(prepared: PreparedRollout) -> PreparedRollout:
    """`prepared` (its old_logps a zero [S, W] placeholder) with π_old and its entropy to be filled in by the learner
    (`PreparedRollout.fill_old`)."""
    prepared.old_from_learner, prepared.old_entropy = True, None
    return prepared
