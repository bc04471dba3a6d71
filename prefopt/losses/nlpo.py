"""NLPO: PPO on an action space masked to the top-p tokens of a masking policy (Ramamurthy et al. 2022,
arXiv:2210.01241, Algorithm 1; RL4LMs).

Notation as `prefopt.losses.policy_gradient` (per-token [S, T], right-padded), plus the mask:

    M_t ⊆ V                         the tokens kept at state s_t: the smallest set of the masking policy's most
                                    likely tokens whose probability reaches top_p (RL4LMs' "learned_top_p"),
                                    with at least min_tokens of them, and the special tokens always
    log Z_θ(s_t) = log Σ_{v ∈ M_t} π_θ(v|s_t)     mask_log_mass [S, T]  (differentiable, ≤ 0)
    log π_θ^M(a_t|s_t) = log π_θ(a_t|s_t) − log Z_θ(s_t)   the policy renormalised over the mask

    nlpo   L = mean_t max(−A·ρ^M, −A·clip(ρ^M, 1−ε, 1+ε)) + c_vf·mean_t (V − G)²,
           ρ^M = π_θ^M(a_t|s_t) / π_old^M(a_t|s_t) = exp((log π_θ − log Z_θ) − (log π_old − log Z_old))

RL4LMs samples each rollout from the masked policy (a logits processor sets the logits outside M_t to −∞),
stores the masked, renormalised log-probs as π_old and the masks, and evaluates the policy's masked
distribution on them in every PPO pass (`MaskableCategoricalDistribution.apply_masking`): this is PPO on
π^M. The masking policy is a copy of π_θ refreshed every μ rollouts (`target_update_iterations`); the KL
penalty of the reward uses the unmasked log-probs (RL4LMs `kl_div = raw_log_probs − ref_log_probs`). Those
are the online loop's part (`prefopt.online.action_mask`); the loss is the formula above.

Defaults are RL4LMs' (stable-baselines3 PPO): ε = 0.2, no value clipping (`clip_range_vf=None`), c_vf = 0.5
on the plain squared error (sb3's `F.mse_loss`, no ½), 5 epochs per rollout; the mask's top_p = 0.9,
μ = 20, min_tokens = 100 are the online loop's (`OnlineConfig.mask_top_p`, `mask_update_every`,
`mask_min_tokens`), from RL4LMs' task configs (`top_mask`, `target_update_iterations`, `min_tokens_to_keep`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefopt.losses.base import LossOutput
from prefopt.losses.kinds import rollout_loss
from prefopt.losses.policy_clip import CLIP_RANGE, _policy_metrics, _require, _zero, clipped_surrogate
from prefopt.registry import NON_NEGATIVE, POSITIVE, HParam
from prefopt.rl.masked import masked_mean

__all__ = ["nlpo"]


@rollout_loss(
    "nlpo",
    needs_reference=False,
    paper=(
        "Ramamurthy et al. 2022, arXiv:2210.01241 (NLPO, Algorithm 1); RL4LMs' defaults: ε = 0.2, no value clip, "
        "c_vf = 0.5 (stable-baselines3 PPO), 5 epochs, mask top_p = 0.9 refreshed every 20 rollouts"
    ),
    formula="mean_t max(−A·ρᴹ, −A·clip(ρᴹ,1±ε)) + c_vf·mean_t (V−G)², ρᴹ = π_θ(a)/Z_θ ÷ π_old(a)/Z_old",
    hparams=[
        CLIP_RANGE,
        HParam("clip_range_value", None, "value clip ε_v: V kept within V_old ± ε_v (None: no clip)", POSITIVE),
        HParam("vf_coef", 0.5, "weight c_vf of the squared-error value loss", NON_NEGATIVE),
    ],
    online_defaults={"num_samples": 1, "min_samples": 1, "epochs": 5, "token_mean": 1},
)
def nlpo(
    policy_logps: Tensor,
    old_logps: Tensor,
    completion_mask: Tensor,
    *,
    mask_log_mass: Tensor,
    old_mask_log_mass: Tensor | None,
    advantages: Tensor | None,
    values: Tensor | None,
    old_values: Tensor | None,
    returns: Tensor | None,
    token_entropy: Tensor | None,
    clip_range: float,
    clip_range_value: float | None,
    vf_coef: float,
) -> LossOutput:
    """PPO on the policy renormalised over the masking policy's top-p tokens (module docstring).

    Args:
        policy_logps, old_logps, completion_mask: [S, T] unmasked log-probs of the sampled tokens under π_θ and
            π_old (old_logps=None: on-policy).
        mask_log_mass: [S, T] log Σ_{v ∈ M_t} π_θ(v|s_t), differentiable; old_mask_log_mass: the same under π_old
            (None: mask_log_mass, detached, as for old_logps=None).
        advantages: [S, T] (GAE over the KL-shaped rewards); values, old_values, returns: the critic's V, V_old
            and the GAE targets G (values None: no value loss); token_entropy: logged when given.
        clip_range, clip_range_value, vf_coef: ε, ε_v (None: unclipped), c_vf.
    """
    mask = completion_mask
    advantages = _require("nlpo", advantages, "advantages [S, T] are required (GAE over the rollout, prefopt.rl.gae).")
    old_mass = mask_log_mass.detach() if old_mask_log_mass is None else old_mask_log_mass
    masked_logps = policy_logps - mask_log_mass  # log π_θᴹ(a_t|s_t)
    masked_old = old_logps - old_mass
    pg_token, log_ratio, clipped = clipped_surrogate(masked_logps, masked_old, advantages, mask, clip_range)
    pg_loss = masked_mean(pg_token, mask)
    metrics = _policy_metrics(log_ratio, clipped, mask, pg_loss)
    kept = torch.where(mask, mask_log_mass.detach().float(), 0.0).exp()  # Z_θ: π_θ's mass inside the mask
    metrics["mask/mass"] = masked_mean(kept, mask)
    token_loss, loss = pg_token, pg_loss
    if values is not None:
        returns = _require("nlpo", returns, "values were given, so returns [S, T] (GAE targets) are required too.")
        predicted = values
        if clip_range_value is not None:
            old_values = _require("nlpo", old_values, "clip_range_value is set, so old_values [S, T] are required.")
            predicted = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
        vf_token = torch.where(mask, (predicted - returns) ** 2, _zero(values))
        vf_loss = masked_mean(vf_token, mask)
        token_loss, loss = pg_token + vf_coef * vf_token, pg_loss + vf_coef * vf_loss
        metrics["loss/value"] = vf_loss.detach().float()
    if token_entropy is not None:
        metrics["entropy"] = masked_mean(token_entropy.detach().float(), mask)
    return LossOutput(loss, masked_mean(token_loss, mask, dim=1), metrics)
