"""ILQL: implicit language Q-learning (Snell et al. 2022, arXiv:2206.11871), the offline RL algorithm TRLX shipped.

Notation (one row per sampled completion, right-padded, rows group-major s = k·B + b as every rollout loss):

    a_t = y_t, s_t = (x, y_<t)                 action and state of completion token t
    log π(a_t|s_t)      policy_logps  [S, T]   the language model's own head (trained by AWAC)
    V(s_t)              values        [S, T]   the value head (differentiable)
    Q_i(s_t, a_t)       q_values, q2_values    the Q heads' value of the action taken (differentiable)
    log softmax Q_i(a_t) q_logps, q2_logps     the Q heads' outputs as logits over the vocabulary, at a_t
    Q̂(s_t, a_t)         target_q_values        min over the Polyak-averaged target Q heads (a fixed target)
    r_t                 rewards [B, K]         each completion's return, paid at its last token (0 before)
    V'(s_t)             next_values            V(s_{t+1}) at the next completion token, 0 after the last one

The loss, each term a mean over the N completion tokens of the batch (TRLX `ILQLConfig.loss`):

    L_Q    = Σ_i mean_t (Q_i − [r_t + γ·sg(V'(s_t))])²                     Bellman backup through V
    L_V    = mean_t |τ − 1[Q̂ < V]|·(Q̂ − V)²                              expectile regression, τ > ½ ⇒ V → max Q
    L_CQL  = Σ_i mean_t −log softmax(Q_i(s_t, ·))[a_t]                     conservative Q-learning (CQL)
    L_AWAC = mean_t sg(exp(β_awac·(Q̂ − V)))·(−log π(a_t|s_t))             advantage-weighted behaviour cloning
    L      = L_Q + L_V + c_cql·L_CQL + c_awac·L_AWAC

Defaults are TRLX's `default_ilql_config` (trlx/data/default_configs.py): τ = 0.7, γ = 0.99, c_cql = 0.1,
c_awac = 1, β_awac = 0 (AWAC is then plain behaviour cloning of the data), two Q heads. The Q heads' target
sync (Polyak α = 0.001 every 5 steps), the heads themselves and ILQL decoding (sample from
log π + β·(Q̂ − V), top-k) belong to the trainer, `prefopt.online.ilql`. Named `awac_beta` here because `beta` is
the KL coefficient of every other rollout loss. The AWAC weight's exponent is clamped to ±20
(`prefopt.rl.kl.clamp_log_ratio`), which only matters for β_awac > 0 and gaps beyond 20/β_awac.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefopt.losses.base import LossOutput
from prefopt.losses.kinds import rollout_loss
from prefopt.registry import NON_NEGATIVE, HParam, Interval, LossInputError
from prefopt.rl.baselines import check_grouped_rewards, grouped_to_sequences
from prefopt.rl.kl import clamp_log_ratio
from prefopt.rl.masked import masked_mean

__all__ = ["ilql"]


def _zero(x: Tensor) -> Tensor:
    return torch.zeros((), dtype=x.dtype, device=x.device)


def _continues(mask: Tensor) -> Tensor:
    """[S, T] bool: completion token t is followed by another completion token (t is not the episode's last)."""
    return torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1) & mask


def next_state_values(values: Tensor, mask: Tensor) -> Tensor:
    """V(s_{t+1}) at each completion token: the value at the next completion token, 0 at the last one (the
    episode ends there) and at padding. [S, T], no gradient (a bootstrap target)."""
    following = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    return torch.where(_continues(mask), following, _zero(values)).detach()


def terminal_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """[S, T] per-token rewards: sequence s's reward `rewards[s]` at its last completion token, 0 elsewhere."""
    return torch.where(mask & ~_continues(mask), rewards[:, None], _zero(rewards))


@rollout_loss(
    "ilql",
    needs_reference=False,
    paper=(
        "Snell et al. 2022, arXiv:2206.11871 (ILQL, Eq. 1–5); defaults τ = 0.7, γ = 0.99, c_cql = 0.1, c_awac = 1, "
        "β_awac = 0 from TRLX's default_ilql_config (ILQLConfig tau, gamma, cql_scale, awac_scale, beta)"
    ),
    formula=(
        "Σ_i mean_t (Q_i − r − γ·V')² + mean_t |τ − 1[Q̂<V]|(Q̂ − V)² + c_cql·Σ_i mean_t CE(Q_i, a) "
        "+ c_awac·mean_t e^{β_awac(Q̂−V)}·(−log π(a))"
    ),
    hparams=[
        HParam("tau", 0.7, "expectile τ of the value loss (½: mean; → 1: max over the data's actions)", Interval(0, 1)),
        HParam("gamma", 0.99, "discount γ of the Bellman target r + γ·V(s')", Interval(0, 1, True, True)),
        HParam("cql_scale", 0.1, "weight c_cql of the CQL cross-entropy of the Q heads", NON_NEGATIVE),
        HParam("awac_scale", 1.0, "weight c_awac of the advantage-weighted language-model loss", NON_NEGATIVE),
        HParam("awac_beta", 0.0, "AWAC temperature β_awac: weight e^{β(Q̂−V)} (0: behaviour cloning)", NON_NEGATIVE),
    ],
    needs_nonpositive_logps=True,
    # K = 4 reference samples per prompt in each batch of the offline data (prefopt.online.ilql); one pass.
    online_defaults={"num_samples": 4, "min_samples": 1, "epochs": 1},
)
def ilql(
    policy_logps: Tensor,
    completion_mask: Tensor,
    *,
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor | None,
    q_values: Tensor,
    q_logps: Tensor,
    target_q_values: Tensor,
    q2_values: Tensor | None,
    q2_logps: Tensor | None,
    tau: float,
    gamma: float,
    cql_scale: float,
    awac_scale: float,
    awac_beta: float,
) -> LossOutput:
    """ILQL's Q, V, CQL and AWAC losses on token-level heads (module docstring); token means over the batch.

    Args:
        policy_logps, completion_mask: [S, T] (module docstring; old_logps is not read: ILQL is off-policy).
        rewards: [B, K] returns of the S = K·B completions (TRLX normalises them over the data set first).
        values, q_values, q_logps, target_q_values: [S, T] heads' outputs at each completion token.
        next_values: [S, T] V(s_{t+1}), the bootstrap target (a fixed target, 0 after each completion's last
            token: read only before it); None: `next_state_values(values, mask)`, `values` shifted by one token.
        q2_values, q2_logps: the second Q head's (None: one Q head).
        tau, gamma, cql_scale, awac_scale, awac_beta: τ, γ, c_cql, c_awac, β_awac.
    """
    mask = completion_mask
    if (q2_values is None) != (q2_logps is None):
        raise LossInputError("ilql: pass q2_values and q2_logps together (the second Q head) or neither.")
    returns = grouped_to_sequences(check_grouped_rewards(rewards, mask.shape[0], where="ilql")).to(values.dtype)
    following = next_state_values(values, mask) if next_values is None else next_values  # V(s_{t+1}), no gradient
    target = terminal_rewards(returns, mask) + gamma * torch.where(_continues(mask), following, _zero(values))
    heads = [(q_values, q_logps)] + ([(q2_values, q2_logps)] if q2_values is not None else [])
    zero = _zero(values)
    q_token = sum(torch.where(mask, (q - target) ** 2, zero) for q, _ in heads)
    cql_token = sum(torch.where(mask, -logq, zero) for _, logq in heads)
    gap = torch.where(mask, target_q_values - values, zero)  # Q̂ − V
    v_token = torch.where(gap < 0, gap.new_tensor(1.0 - tau), gap.new_tensor(tau)) * gap**2  # |τ − 1[Q̂<V]|·(Q̂−V)²
    weight = torch.exp(clamp_log_ratio(awac_beta * gap.detach()))
    awac_token = torch.where(mask, -weight * policy_logps, zero)
    token = q_token + v_token + cql_scale * cql_token + awac_scale * awac_token  # [S, T]
    parts = {"q": q_token, "v": v_token, "cql": cql_token, "awac": awac_token}
    metrics = {f"loss/{name}": masked_mean(t.detach().float(), mask) for name, t in parts.items()}
    metrics["values/mean"] = masked_mean(values.detach().float(), mask)
    metrics["q_values/mean"] = masked_mean(q_values.detach().float(), mask)
    metrics["awac/weight"] = masked_mean(weight.float(), mask)
    return LossOutput(masked_mean(token, mask), masked_mean(token, mask, dim=1), metrics)
