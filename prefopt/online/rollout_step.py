"""Rollout recipes: what the online loop computes between scoring a rollout and calling the loss.

The loop never tests an algorithm's name. What a rollout loss needs is read from its declaration
(`LossSpec.extra_inputs`), and each input has one way of being made:

    input            made from                                                      for
    rewards          the reward function's scores [B, K] (after the missing-EOS penalty)   group losses
    greedy_rewards   the scores [B] of a greedy decode of every prompt                    remax
    ref_logps        per-token log-probs of the frozen reference                          rloo, grpo, …
    values           the critic on the minibatch (with gradient)                          ppo
    old_values       the critic on the rollout (no gradient)                              ppo
    advantages,      GAE(γ, λ) over r_t = −β·k_t + 1[t = last]·score (KL-shaped rewards,  ppo
    returns          Ziegler et al. 2019), advantages whitened over valid tokens
    token_entropy    the engine's per-token entropy of π_θ on the minibatch               ppo (metric)
    mask_log_mass,   log Z_θ, π_θ's mass inside the masking policy's top-p tokens, on the  nlpo
    old_mask_log_mass  minibatch (with gradient) and on the rollout (`prefopt.online.action_mask`)
    (declared)       `LossSpec.rollout_inputs`: provider(RolloutBatch of the whole rollout)  reinforce_pp's
                     → [S, T], once per rollout, cut to each minibatch's rows (`rollout_wide_inputs`)  advantages

The rest is in the declaration too: `LossSpec.online_defaults` holds how many samples per prompt and how
many optimisation passes over a rollout the algorithm uses by default (the papers' settings), the
smallest K it accepts, and the trainer options it turns on (dynamic sampling, overlong shaping), where they
differ from `Recipe`'s generic defaults. Minibatches split the rollout by prompt, so a group's K samples
stay together.

Which statistics are global (the whole rollout of a step, after dynamic sampling) and which are local (the
rows of one loss call, i.e. one minibatch = one optimiser step; the whole rollout when num_minibatches = 1):

    statistic                                         over                  why it is the same in any split
    group baselines (mean, std of a prompt's K        one prompt's group    minibatches keep groups whole
      rewards: rloo, grpo, dr_grpo, dapo, gspo,
      cispo, reinforce_pp's baseline="group")
    dynamic-sampling filter, overlong penalty         one group / sample    made before the minibatches
    PPO's whitened GAE advantages                     the whole rollout     `critic_targets`, once per rollout
    reinforce_pp's advantage mean and std             the whole rollout     its `rollout_inputs` provider
    dr_grpo's L_max                                   constant              max_new_tokens (`hparams_with_defaults`)
    token-level mean 1/Σ|o_i| (dapo, cispo), token    the minibatch         local: the batch of one optimiser
      mean (ppo, reinforce_pp), 1/S (the rest)                              step, as in the papers

With several processes (`prefopt.online.distributed`) "the whole rollout" and "the minibatch" are every process's
rows together: the whole-rollout statistics are all-reduced (or, for `rollout_inputs`, computed on the gathered
rollout) and each process weighs its share of a minibatch's loss by its rows, or by its tokens for a loss that
declares `token_mean` (`online_defaults`).

Online DPO with another paired loss (`OnlineConfig.pair_loss`, for a loss that declares `accepts_pair_loss`):
each prompt's best and worst samples (`best_worst_pairs`, ties dropped) become a (chosen, rejected) pair,
and the paired loss gets the pairs' summed log-probs exactly as the offline trainer would
(`prefopt.loss_call.loss_arguments`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from prefopt.batch import TokenBatch
from prefopt.engine import SequenceLogProbs
from prefopt.loss_state import RolloutBatch
from prefopt.losses.best_of_n import best_worst_pairs
from prefopt.registry import LossSpec
from prefopt.rl import gae, grouped_to_sequences, kl_penalized_rewards, masked_sum, masked_whiten

__all__ = [
    "Recipe",
    "recipe_for",
    "PreparedRollout",
    "prompt_rows",
    "prompt_minibatches",
    "critic_targets",
    "loss_inputs",
    "pair_batch",
    "sequence_scores",
    "hparams_with_defaults",
    "rollout_wide_inputs",
    "completion_layout",
    "to_completion_layout",
    "from_completion_layout",
    "FEEDABLE_INPUTS",
]


@dataclass(frozen=True)
class Recipe:
    """Defaults of one rollout algorithm, plus what its declaration asks of the loop.

    Attributes:
        num_samples: default K, completions per prompt (4 suits the group methods; TRL's RLOO/GRPO
            examples use 2–8).
        min_samples: the smallest K the loss accepts (2 for leave-one-out, group normalisation, pairs).
        epochs: default optimisation passes over each rollout (PPO: 4, TRL; one update per rollout
            for the REINFORCE-style methods, as the GRPO and ReMax papers).
        critic: the loss takes `values` (a value model and GAE are needed).
        greedy_baseline: the loss takes `greedy_rewards` (a greedy decode is scored).
        dynamic_sampling, overlong_shaping: the trainer options on by default for this algorithm (DAPO's;
            `OnlineConfig.dynamic_sampling`, `OnlineConfig.overlong_shaping`).
        action_mask: the loss takes `mask_log_mass` (NLPO): rollouts are sampled from, and scored under, the
            policy masked to a masking policy's top-p tokens (`prefopt.online.action_mask`).
        q_learning: the loss takes `q_values` (ILQL): `train_online` runs the offline Q-learning trainer
            (`prefopt.online.ilql`), which makes the Q-head inputs, on reference samples instead of this loop.
        token_mean: the loss averages over every completion token of its minibatch (declared), so that several
            processes weigh their shares of a minibatch by tokens, not rows (`prefopt.online.distributed`).
    """

    num_samples: int = 4
    min_samples: int = 2
    epochs: int = 1
    critic: bool = False
    greedy_baseline: bool = False
    dynamic_sampling: bool = False
    overlong_shaping: bool = False
    action_mask: bool = False
    q_learning: bool = False
    token_mean: bool = False


# Loss inputs the online loop knows how to make (module table).
FEEDABLE_INPUTS = (
    "rewards",
    "greedy_rewards",
    "ref_logps",
    "values",
    "old_values",
    "advantages",
    "returns",
    "token_entropy",
    "mask_log_mass",
    "old_mask_log_mass",
)
# Inputs of a Q-learning loss, made by its own trainer (`prefopt.online.ilql`) from reward-labelled samples.
Q_LEARNING_INPUTS = (
    "rewards",
    "values",
    "next_values",
    "q_values",
    "q2_values",
    "q_logps",
    "q2_logps",
    "target_q_values",
)


def recipe_for(spec: LossSpec) -> Recipe:
    """The recipe of rollout loss `spec`: `Recipe`'s defaults overridden by the loss's declared `online_defaults`,
    `critic`/`greedy_baseline` from its inputs.

    Raises:
        ValueError: the loss takes an input the online loop cannot make.
    """
    q_learning = "q_values" in spec.extra_inputs
    made = Q_LEARNING_INPUTS if q_learning else (*FEEDABLE_INPUTS, *spec.rollout_inputs)
    missing = [n for n in spec.extra_inputs if n not in made]
    if missing:
        raise ValueError(
            f"rollout loss {spec.name!r} takes input(s) {missing} that the online loop cannot make "
            f"(it makes {list(FEEDABLE_INPUTS)}); call the loss from your own loop"
        )
    flags = ("dynamic_sampling", "overlong_shaping", "token_mean")
    switches = {k: bool(v) for k, v in spec.online_defaults.items() if k in flags}
    return dataclasses.replace(
        Recipe(),
        **{**spec.online_defaults, **switches},
        critic="values" in spec.extra_inputs and not q_learning,  # ILQL's V head is not a critic
        greedy_baseline="greedy_rewards" in spec.extra_inputs,
        action_mask="mask_log_mass" in spec.extra_inputs,
        q_learning=q_learning,
    )


@dataclass
class PreparedRollout:
    """A scored rollout with everything the loss may ask for (row s = k·B + b, width W of the full rollout).

    Attributes:
        scores: [B, K] float32 rewards (after the missing-EOS penalty).
        old_logps, ref_logps: [S, W] per-token log-probs of the behaviour policy and the reference (None: the run
            reads no π_ref, `annotation.scores_reference`).
        completion_mask: [S, W] bool.
        greedy_scores: [B] rewards of the greedy decodes, or None.
        token_inputs: per-token [S, W] targets (old_values, advantages, returns) when the loss has a critic.
        is_weights: [S, W] truncated importance-sampling weights min(π_old/π_sampler, C), detached, multiplying
            each token's gradient (`prefopt.online.importance`), or None (`OnlineConfig.importance_sampling` off).
        old_entropy: [S] Σ_t entropy of π_old per row (`objective/entropy`).
        old_from_learner: old_logps and old_entropy are filled in by the learner's forward
            (`prefopt.online.old_policy`), not by a no-gradient pass.
    """

    scores: Tensor
    old_logps: Tensor
    ref_logps: Tensor | None
    completion_mask: Tensor
    greedy_scores: Tensor | None = None
    token_inputs: dict[str, Tensor] = field(default_factory=dict)
    is_weights: Tensor | None = None
    old_entropy: Tensor | None = None
    old_from_learner: bool = False

    @property
    def num_prompts(self) -> int:
        """B."""
        return int(self.scores.shape[0])

    def fill_old(self, policy: SequenceLogProbs, rows: Tensor, width: int) -> None:
        """Take the learner's forward on rollout rows `rows` (`tokens`, `entropy`), detached, as π_old."""
        assert policy.tokens is not None and policy.entropy is not None
        if self.old_entropy is None:
            self.old_entropy = policy.entropy.new_zeros(self.old_logps.shape[0])
        self.old_logps[rows, :width] = policy.tokens.detach().to(self.old_logps.dtype)
        self.old_entropy[rows] = policy.entropy.detach()

    @property
    def num_samples(self) -> int:
        """K."""
        return int(self.scores.shape[1])


def prompt_rows(prompts: Tensor, num_prompts: int, num_samples: int) -> Tensor:
    """Group-major rollout rows of a subset of prompts: [K·P], entry k·P + j = row k·B + prompts[j]."""
    samples = torch.arange(num_samples, device=prompts.device)
    return (samples[:, None] * num_prompts + prompts[None, :]).reshape(-1)


def prompt_minibatches(num_prompts: int, num_minibatches: int, generator: torch.Generator) -> list[Tensor]:
    """A seeded shuffle of the B prompts split into `num_minibatches` near-equal parts (prompt indices)."""
    order = torch.randperm(num_prompts, generator=generator)
    return [part for part in torch.tensor_split(order, num_minibatches) if part.numel()]


def critic_targets(
    scores: Tensor,
    old_logps: Tensor,
    ref_logps: Tensor,
    mask: Tensor,
    old_values: Tensor,
    *,
    kl_coef: float,
    estimator: str,
    gamma: float,
    lam: float,
    whiten: bool,
) -> tuple[dict[str, Tensor], Tensor]:
    """PPO's per-token targets from a scored rollout (Ziegler et al. 2019; TRL PPO).

        r_t = −β·k_t + 1[t = last]·score      (`kl_penalized_rewards`, k = k1 or k3 of π_old vs π_ref)
        A, G = GAE(γ, λ)(r, V_old)            (`gae`); A whitened over valid tokens when `whiten`

    Args:
        scores: [S] sequence rewards; old_logps, ref_logps, old_values: [S, T]; mask: [S, T] bool.
    Returns:
        ({"advantages", "returns", "old_values"} each [S, T]), and the per-token KL estimates [S, T], all in
        the rollout's layout (0 outside `mask`).
    """
    # prefopt.rl wants each row's valid tokens as a prefix ([S, L] completion layout); the rollout has the
    # prompt first ([S, T] input layout). Move there and back: only the completion tokens are copied.
    shifted = completion_layout(mask)
    old, ref, values = (to_completion_layout(x, mask, shifted) for x in (old_logps, ref_logps, old_values))
    rewards, kl = kl_penalized_rewards(scores, old, ref, shifted, beta=kl_coef, estimator=estimator)
    advantages, returns = gae(rewards, values, shifted, gamma=gamma, lam=lam)
    if whiten:
        advantages = masked_whiten(advantages, shifted)
    targets = {
        "advantages": from_completion_layout(advantages, mask, shifted),
        "returns": from_completion_layout(returns, mask, shifted),
        "old_values": old_values,
    }
    return targets, from_completion_layout(kl, mask, shifted)


def completion_layout(mask: Tensor) -> Tensor:
    """The bool mask [S, L] of the completion layout of `mask` [S, T] (one contiguous completion per row):
    row s has its |y_s| completion tokens at positions 0..|y_s|−1, L = max |y_s|."""
    lengths = mask.sum(1)
    width = max(int(lengths.max()) if lengths.numel() else 0, 1)
    return torch.arange(width, device=mask.device)[None, :] < lengths[:, None]


def to_completion_layout(x: Tensor, mask: Tensor, shifted: Tensor) -> Tensor:
    """[S, T] values at the completion tokens of `mask` → [S, L] left-aligned (0 after each completion)."""
    out = torch.zeros(shifted.shape, dtype=x.dtype, device=x.device)
    out[shifted] = x[mask]  # both row-major, same count per row: token order is kept
    return out


def from_completion_layout(x: Tensor, mask: Tensor, shifted: Tensor) -> Tensor:
    """Inverse of `to_completion_layout`: [S, L] → [S, T] at the completion tokens of `mask`, 0 elsewhere."""
    out = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
    out[mask] = x[shifted]
    return out


def loss_inputs(
    spec: LossSpec,
    prepared: PreparedRollout,
    prompts: Tensor,
    rows: Tensor,
    width: int,
    *,
    policy: SequenceLogProbs,
    values: Tensor | None,
    mask_log_mass: Tensor | None = None,
) -> tuple[list[Tensor], dict[str, Any]]:
    """(positional, keyword) arguments of rollout loss `spec` for the minibatch of `prompts` (rows `rows`).

    Args:
        prompts: [P] prompt indices; rows: [K·P] their rollout rows (`prompt_rows`); width: the
            minibatch batch's T (≤ W), to which per-token tensors are cut.
        policy: the engine's output on the minibatch with `tokens` (and `token_entropy` when the loss
            takes it), with gradient.
        values: the critic's values [K·P, T] on the minibatch (with gradient), when the loss takes them.
        mask_log_mass: log Z_θ [K·P, T] of NLPO's action mask on the minibatch (with gradient), when taken.
    """
    assert policy.tokens is not None
    if prepared.old_from_learner:  # π_old is this forward, detached (`prefopt.online.old_policy`)
        prepared.fill_old(policy, rows, width)
    mask = prepared.completion_mask[rows, :width]
    made: dict[str, Any] = {
        "rewards": prepared.scores[prompts],
        "greedy_rewards": None if prepared.greedy_scores is None else prepared.greedy_scores[prompts],
        "ref_logps": None if prepared.ref_logps is None else prepared.ref_logps[rows, :width],
        "values": values,
        "mask_log_mass": mask_log_mass,
        "token_entropy": policy.token_entropy,
        **{name: t[rows, :width] for name, t in prepared.token_inputs.items()},
    }
    kwargs = {name: made[name] for name in spec.extra_inputs if made.get(name) is not None}
    return [policy.tokens, prepared.old_logps[rows, :width], mask], kwargs


def pair_batch(rollout: Any, prepared: PreparedRollout, prompts: Tensor) -> tuple[TokenBatch, SequenceLogProbs] | None:
    """The best/worst pairs of `prompts` as a paired `TokenBatch` (chosen block, then rejected block) and the
    reference's `SequenceLogProbs` of it; None when every pair of the minibatch is a tie."""
    chosen, rejected, valid = best_worst_pairs(prepared.scores[prompts])  # indices into the minibatch's rows
    if not bool(valid.any()):
        return None
    local = prompt_rows(prompts, prepared.num_prompts, prepared.num_samples)  # minibatch row → rollout row
    rows = torch.cat([local[chosen[valid]], local[rejected[valid]]])  # [2n]
    batch = dataclasses.replace(rollout.token_batch(rows), group_size=2)
    width = batch.input_ids.shape[1]
    mask = prepared.completion_mask[rows, :width]
    ref_sum = masked_sum(prepared.ref_logps[rows, :width], mask, dim=1)  # accumulated in float64, as the engine's
    reference = SequenceLogProbs(ref_sum, mask.sum(1), group_size=2)
    return batch, reference


def sequence_scores(prepared: PreparedRollout) -> Tensor:
    """[S] the scores in rollout row order (group-major)."""
    return grouped_to_sequences(prepared.scores)


def rollout_wide_inputs(spec: LossSpec, prepared: PreparedRollout, hparams: Mapping[str, Any]) -> dict[str, Tensor]:
    """The loss's declared `rollout_inputs`, each computed once over the whole rollout (the step's global batch,
    after dynamic sampling) before the minibatches: {name: [S, W]}, to be cut to each minibatch's rows like the
    critic's targets (`PreparedRollout.token_inputs`)."""
    if not spec.rollout_inputs:
        return {}
    batch = RolloutBatch(
        rewards=prepared.scores,
        old_logps=prepared.old_logps,
        ref_logps=prepared.ref_logps,
        completion_mask=prepared.completion_mask,
        hparams={**spec.defaults(), **hparams},
    )
    return {name: provide(batch) for name, provide in spec.rollout_inputs.items()}


def hparams_with_defaults(spec: LossSpec, hparams: Mapping[str, Any], max_new_tokens: int) -> dict[str, Any]:
    """The loss's hyper-parameters, with `max_length` (Dr. GRPO's constant normaliser L_max) set to the
    generation limit when the loss has it and the user left it unset, so it is the same in every batch."""
    out = dict(hparams)
    if any(h.name == "max_length" for h in spec.hparams) and out.get("max_length") is None:
        out["max_length"] = max_new_tokens
    return out
