"""Hand-computed values and gradients of the seed systems' losses, ILQL (TRLX) and NLPO (RL4LMs), with
non-default hyper-parameters. The contract test (tests/losses/test_rollout_contract.py) covers finiteness,
shapes, padding and the float64 gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from prefopt.losses import ilql, nlpo
from prefopt.losses.ilql import next_state_values, terminal_rewards
from prefopt.registry import LossInputError, loss_spec

E = math.exp
# One prompt token (column 0), then completions of 2 and 1 tokens: the valid tokens are (0,1), (0,2), (1,1).
MASK = torch.tensor([[False, True, True], [False, True, False]])
PAD = 9.0  # garbage outside the mask


def _t(row0: list[float], row1: list[float]) -> torch.Tensor:
    """[2, 3] from the completion tokens' values (row 0: 2 tokens, row 1: 1), PAD elsewhere."""
    return torch.tensor([[PAD, *row0], [PAD, *row1, PAD]], dtype=torch.float64)


def _ilql_inputs() -> dict[str, torch.Tensor]:
    return {
        "policy_logps": _t([-1.0, -2.0], [-0.5]).requires_grad_(True),
        "completion_mask": MASK,
        "rewards": torch.tensor([[1.0, -2.0]], dtype=torch.float64),  # B = 1 prompt, K = 2: rows 0 and 1
        "values": _t([0.5, 1.0], [-1.0]).requires_grad_(True),
        "q_values": _t([0.0, 2.0], [-1.0]).requires_grad_(True),
        "q2_values": _t([1.0, 0.5], [-3.0]).requires_grad_(True),
        "q_logps": _t([-1.0, -0.5], [-2.0]).requires_grad_(True),
        "q2_logps": _t([-0.5, -1.5], [-1.0]).requires_grad_(True),
        "target_q_values": _t([1.0, 0.5], [-2.0]),
    }


HPARAMS = {"tau": 0.8, "gamma": 0.5, "cql_scale": 0.2, "awac_scale": 2.0, "awac_beta": 1.0}


def test_ilql_hand_computed() -> None:
    """τ = 0.8, γ = 0.5, c_cql = 0.2, c_awac = 2, β_awac = 1; N = 3 completion tokens (0,1), (0,2), (1,1).

    Bellman targets y = r + γ·V(s'):  (0,1) 0 + 0.5·V(0,2) = 0.5;  (0,2) 1 + 0 = 1 (last token, r = 1);
    (1,1) −2 + 0 = −2.   L_Q = [(0−0.5)² + (2−1)² + (−1+2)²  +  (1−0.5)² + (0.5−1)² + (−3+2)²]/3 = 3.75/3.
    Q̂ − V = 0.5, −0.5, −1 → expectile weights τ, 1−τ, 1−τ: L_V = (0.8·0.25 + 0.2·0.25 + 0.2·1)/3 = 0.45/3.
    L_CQL = (1 + 0.5 + 2 + 0.5 + 1.5 + 1)/3 = 6.5/3.   AWAC weights e^{Q̂−V}: e^{0.5}, e^{−0.5}, e^{−1};
    L_AWAC = (e^{0.5}·1 + e^{−0.5}·2 + e^{−1}·0.5)/3.   L = L_Q + L_V + 0.2·L_CQL + 2·L_AWAC.
    Gradients (÷3): ∂/∂Q₁ = 2(Q₁ − y) = (−1, 2, 2); ∂/∂Q₂ = (1, −1, −2); ∂/∂V = −2·w·(Q̂ − V) = (−0.8, 0.2, 0.4)
    (V(s') is a fixed target); ∂/∂log softmax Q_i = −0.2; ∂/∂log π = −2·e^{β(Q̂−V)}."""
    inputs = _ilql_inputs()
    out = ilql(**inputs, **HPARAMS)
    awac = E(0.5) * 1 + E(-0.5) * 2 + E(-1) * 0.5
    expected = (3.75 + 0.45 + 0.2 * 6.5 + 2 * awac) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    token = [  # per-token totals, for per_example (each sequence's token mean)
        0.25 + 0.25 + 0.8 * 0.25 + 0.2 * 1.5 + 2 * E(0.5) * 1,
        1 + 0.25 + 0.2 * 0.25 + 0.2 * 2.0 + 2 * E(-0.5) * 2,
        1 + 1 + 0.2 * 1 + 0.2 * 3.0 + 2 * E(-1) * 0.5,
    ]
    torch.testing.assert_close(
        out.per_example, torch.tensor([(token[0] + token[1]) / 2, token[2]], dtype=torch.float64)
    )
    for name, value in {"q": 3.75, "v": 0.45, "cql": 6.5, "awac": awac}.items():
        assert out.metrics[f"loss/{name}"].item() == pytest.approx(value / 3, rel=1e-6), name
    out.loss.backward()
    grads = {
        "q_values": [-1.0, 2.0, 2.0],
        "q2_values": [1.0, -1.0, -2.0],
        "values": [-0.8, 0.2, 0.4],
        "q_logps": [-0.2] * 3,
        "q2_logps": [-0.2] * 3,
        "policy_logps": [-2 * E(0.5), -2 * E(-0.5), -2 * E(-1)],
    }
    for name, values in grads.items():
        g = [v / 3 for v in values]
        torch.testing.assert_close(
            inputs[name].grad, torch.tensor([[0, g[0], g[1]], [0, g[2], 0]], dtype=torch.float64)
        )


def test_ilql_next_values_default_to_the_values_one_token_later() -> None:
    """V(s_{t+1}) read from `values` (0 after each completion's last token) equals passing it explicitly; a
    value passed at a last token is never read (the episode ends there)."""
    inputs = _ilql_inputs()
    following = next_state_values(inputs["values"], MASK)
    torch.testing.assert_close(following, _t([1.0, 0.0], [0.0]).where(MASK, torch.tensor(0.0, dtype=torch.float64)))
    assert not following.requires_grad
    implicit = ilql(**inputs, **HPARAMS).loss
    explicit = ilql(**inputs, next_values=_t([1.0, 123.0], [456.0]), **HPARAMS).loss
    torch.testing.assert_close(implicit, explicit)
    rewards = terminal_rewards(torch.tensor([1.0, -2.0], dtype=torch.float64), MASK)
    torch.testing.assert_close(rewards, torch.tensor([[0, 0, 1.0], [0, -2.0, 0]], dtype=torch.float64))


def test_ilql_one_q_head_and_trlx_defaults() -> None:
    """Without the second head only Q₁'s Bellman and CQL terms remain. TRLX defaults (τ 0.7, γ 0.99, CQL 0.1,
    AWAC 1, β 0): AWAC is behaviour cloning, weight 1."""
    inputs = {k: v for k, v in _ilql_inputs().items() if not k.startswith("q2")}
    out = ilql(**inputs, **HPARAMS)
    awac = E(0.5) * 1 + E(-0.5) * 2 + E(-1) * 0.5
    assert out.loss.item() == pytest.approx((2.25 + 0.45 + 0.2 * 3.5 + 2 * awac) / 3, rel=1e-12)
    assert loss_spec("ilql").defaults() == {
        "tau": 0.7,
        "gamma": 0.99,
        "cql_scale": 0.1,
        "awac_scale": 1.0,
        "awac_beta": 0,
    }
    default = ilql(**inputs)
    assert default.metrics["awac/weight"].item() == 1.0
    with pytest.raises(LossInputError, match="q2_values and q2_logps together"):
        ilql(**inputs, q2_values=_ilql_inputs()["q2_values"])
    with pytest.raises(LossInputError, match="rewards"):
        ilql(**{**inputs, "rewards": torch.zeros(1, 3)})


def _nlpo_inputs() -> dict[str, torch.Tensor]:
    log = math.log
    return {
        "policy_logps": _t([log(0.3), log(0.2)], [log(0.4)]).requires_grad_(True),
        "mask_log_mass": _t([log(0.5), log(0.8)], [0.0]).requires_grad_(True),
        "old_logps": _t([log(0.2), log(0.2)], [log(0.4)]),
        "old_mask_log_mass": _t([log(0.5), log(0.5)], [0.0]),
        "completion_mask": MASK,
        "advantages": _t([1.0, 2.0], [-1.0]),
        "values": _t([1.0, 2.0], [0.0]).requires_grad_(True),
        "old_values": _t([0.8, 1.0], [0.0]),
        "returns": _t([0.0, 3.0], [1.0]),
    }


def test_nlpo_hand_computed() -> None:
    """ε = 0.1, ε_v = 0.5, c_vf = 0.3. Masked ratios ρᴹ = (π/Z) / (π_old/Z_old):
        (0,1): (0.3/0.5)/(0.2/0.5) = 1.5,  A = 1:  max(−1.5, −1.1) = −1.1   (clipped, no gradient)
        (0,2): (0.2/0.8)/(0.2/0.5) = 0.625, A = 2: max(−1.25, −1.8) = −1.25 (∂/∂log π = −Aρ = −1.25, ∂/∂log Z = +1.25)
        (1,1): mask keeps everything (Z = 1), ρ = 1, A = −1: 1           (∂/∂log π = 1, ∂/∂log Z = −1)
    L_pg = −1.35/3 = −0.45. Values clipped to V_old ± 0.5: 1.0, 1.5 (clipped from 2), 0; squared errors to
    G = (0, 3, 1): 1, 2.25, 1 → L_vf = 4.25/3, ∂/∂V = 2(V − G)/3 = (2/3, 0, −2/3). L = −0.45 + 0.3·4.25/3 = −0.025."""
    inputs = _nlpo_inputs()
    out = nlpo(**inputs, clip_range=0.1, clip_range_value=0.5, vf_coef=0.3)
    assert out.loss.item() == pytest.approx(-0.025, abs=1e-12)
    assert out.metrics["loss/policy"].item() == pytest.approx(-0.45, rel=1e-6)
    assert out.metrics["loss/value"].item() == pytest.approx(4.25 / 3, rel=1e-6)
    assert out.metrics["policy/clipfrac"].item() == pytest.approx(1 / 3)
    assert out.metrics["mask/mass"].item() == pytest.approx(2.3 / 3, rel=1e-6)
    torch.testing.assert_close(
        out.per_example, torch.tensor([(-1.1 + 0.3 * 1 - 1.25 + 0.3 * 2.25) / 2, 1 + 0.3], dtype=torch.float64)
    )
    out.loss.backward()
    zero = torch.tensor(0.0, dtype=torch.float64)
    torch.testing.assert_close(inputs["policy_logps"].grad, _t([0, -1.25], [1.0]).where(MASK, zero) / 3)
    torch.testing.assert_close(inputs["mask_log_mass"].grad, _t([0, 1.25], [-1.0]).where(MASK, zero) / 3)
    torch.testing.assert_close(inputs["values"].grad, 0.3 * _t([2.0, 0.0], [-2.0]).where(MASK, zero) / 3)


def test_nlpo_is_rl4lms_ppo_on_the_masked_distribution() -> None:
    """RL4LMs' defaults (ε 0.2, c_vf 0.5, unclipped squared error), and with a mask that keeps every token
    (Z = 1) the loss is stable-baselines3's PPO: −min(Aρ, A·clip(ρ)) + 0.5·(V − G)², token means."""
    assert loss_spec("nlpo").defaults() == {"clip_range": 0.2, "clip_range_value": None, "vf_coef": 0.5}
    assert dict(loss_spec("nlpo").online_defaults) == {"num_samples": 1, "min_samples": 1, "epochs": 5, "token_mean": 1}
    inputs = _nlpo_inputs()
    full = {**inputs, "mask_log_mass": torch.zeros(2, 3, dtype=torch.float64), "old_mask_log_mass": None}
    out = nlpo(**full)
    ratio = (inputs["policy_logps"] - inputs["old_logps"]).exp().detach()
    adv = inputs["advantages"]
    sb3 = (
        -torch.minimum(adv * ratio, adv * ratio.clamp(0.8, 1.2))
        + 0.5 * (inputs["values"].detach() - inputs["returns"]) ** 2
    )
    assert out.loss.item() == pytest.approx(sb3[MASK].mean().item(), rel=1e-12)
    with pytest.raises(LossInputError, match="advantages"):
        nlpo(**{**inputs, "advantages": None})
    with pytest.raises(LossInputError, match="mask_log_mass is required"):
        nlpo(**{**inputs, "mask_log_mass": None})
