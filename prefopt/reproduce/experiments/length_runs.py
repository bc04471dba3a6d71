"""Runs of `length-exploitation`: data with an explicit length bias, the probe, the grid of arms, drift statistics.

Data. Each replicate r samples its completions from π_ref once (`build_preferences` with seed r, two pairs
per prompt) and labels the same pairs at every bias level b with the same uniform draw per pair (common
random numbers): pair (a, b) is labelled a ≻ b when coin < σ((u_a − u_b)/T), u = r* + b·|y| (words). So
between bias levels only the labels that the length term flips differ, and a drift difference between
levels is the effect of the bias, not of a fresh sample.

Probe. Every `probe_every` steps one completion per held-out prompt is sampled (fixed seed per replicate)
and measured: mean length in words, mean gold reward r*, and the exact sequence KL(π_θ‖π_ref) on those
samples (`prefopt.sampling.sequence_kl`), so drift can be read beside, or at, a matched KL.

Statistics. Drift = mean length − π_ref's (the step-0 probe of the same replicate and prompts). Drift per
word of bias = the least-squares slope of drift against b over the bias levels, one slope per replicate.
Drift at matched KL = drift linearly interpolated along a run's (KL, drift) probes at a target KL.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.data.synthetic import GoldReward, PreferenceConfig, build_preferences, sample
from prefopt.engine.reference import eval_mode
from prefopt.progress import library_progress_bars
from prefopt.reproduce.synthetic_runs import Arm, Curve, TrainSchedule, stack_curves, train_with_probes, word_counts
from prefopt.sampling import sequence_kl

__all__ = [
    "Replicate",
    "draw_replicate",
    "label_rows",
    "length_probe",
    "run_grid",
    "drift",
    "final_drift",
    "drift_at_kl",
    "slopes",
]

Probe = Callable[[Any], Mapping[str, float]]


@dataclass
class Replicate:
    """One replicate's completions (labelled per bias level by `label_rows`) and held-out prompts.

    Attributes:
        seed: the replicate's seed; pairs: (prompt, completion a, completion b, r*_a, r*_b, |a|, |b|) per pair;
        coins: [N] float64 uniform draws, one per pair, shared by every bias level; heldout_prompts: probe prompts;
        mean_tokens: mean completion length in tokens (words + EOS) over the pairs' completions.
    """

    seed: int
    pairs: list[tuple[str, str, str, float, float, int, int]]
    coins: Tensor
    heldout_prompts: list[str]
    mean_tokens: float


def draw_replicate(
    reference: Any, seed: int, train_prompts: int, heldout_prompts: int, max_new_tokens: int
) -> Replicate:
    """Sample replicate `seed`'s completions from π_ref (K = 4 per prompt, pairs (0, 1) and (2, 3))."""
    config = PreferenceConfig(
        train_prompts=train_prompts, eval_prompts=0, heldout_prompts=heldout_prompts, max_new_tokens=max_new_tokens
    )
    prefs = build_preferences(reference.model, reference.tokenizer, seed=seed, config=config, num_threads=None)
    pairs = []
    for g in prefs.groups:
        for a in range(0, len(g.completions) - 1, 2):
            if g.completions[a] != g.completions[a + 1]:  # identical samples carry no preference
                pairs.append(
                    (g.prompt, g.completions[a], g.completions[a + 1], g.rewards[a], g.rewards[a + 1])
                    + (g.lengths[a], g.lengths[a + 1])
                )
    coins = torch.rand(len(pairs), generator=torch.Generator().manual_seed(10_007 + seed), dtype=torch.float64)
    tokens = sum(p[5] + p[6] + 2 for p in pairs) / (2 * len(pairs))
    return Replicate(seed, pairs, coins, list(prefs.heldout_prompts), tokens)


def label_rows(rep: Replicate, length_bias: float, temperature: float) -> list[dict[str, Any]]:
    """Paired rows (id, prompt, chosen, rejected) labelled by u = r* + b·|y| with Bradley–Terry at T."""
    rows = []
    for i, (prompt, a, b, ra, rb, la, lb) in enumerate(rep.pairs):
        diff = torch.tensor((ra + length_bias * la) - (rb + length_bias * lb), dtype=torch.float64)
        a_wins = bool(rep.coins[i] < torch.sigmoid(diff / temperature))
        chosen, rejected = (a, b) if a_wins else (b, a)
        rows.append({"id": f"r{rep.seed}-{i}", "prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def length_probe(reference: Any, prompts: Sequence[str], *, seed: int, max_new_tokens: int) -> Probe:
    """policy → {length (mean words), gold_reward (mean r*), kl (mean exact sequence KL to π_ref)} on `prompts`."""
    gold = GoldReward()

    def probe(policy: Any) -> dict[str, float]:
        with torch.no_grad(), eval_mode(policy):
            drawn = sample(
                policy,
                reference.tokenizer,
                list(prompts),
                generator=torch.Generator().manual_seed(seed),
                max_new_tokens=max_new_tokens,
            )
            kl = sequence_kl(policy, reference.model, drawn.input_ids, drawn.attention_mask, drawn.completion_mask)
        return {
            "length": float(word_counts(drawn.completions).mean()),
            "gold_reward": float(gold.score(list(prompts), drawn.completions).double().mean()),
            "kl": float(kl.double().mean()),
        }

    return probe


def run_grid(
    reference: Any,
    replicates: Sequence[Replicate],
    arms_for: Callable[[float, Replicate], Sequence[Arm]],
    biases: Sequence[float],
    temperature: float,
    schedule: TrainSchedule,
    probe_for: Callable[[Replicate], Probe],
    progress: Callable[[int, int, str], None],
) -> dict[tuple[str, float], list[Curve]]:
    """(arm label, b) → [replicates] curves. Every arm of a replicate trains with training seed = the replicate's
    seed on the rows labelled at b. An arm whose loss and hyper-parameters equal an earlier arm's at the same b
    and replicate (R-DPO with α = 0 is DPO) reuses that run's curve instead of training again."""
    grid = [(b, rep, arm) for rep in replicates for b in biases for arm in arms_for(b, rep)]
    out: dict[tuple[str, float], list[Curve]] = {}
    done: dict[tuple[Any, ...], Curve] = {}
    rows_cache: dict[tuple[int, float], Any] = {}
    with library_progress_bars(False):
        for i, (b, rep, arm) in enumerate(grid):
            progress(i, len(grid), f"{arm.label}, b = {b}, seed {rep.seed}")
            key = (rep.seed, b, *_canonical(arm))
            if key not in done:
                if (rep.seed, b) not in rows_cache:
                    rows_cache[(rep.seed, b)] = _dataset(label_rows(rep, b, temperature))
                done[key] = train_with_probes(
                    reference,
                    rows_cache[(rep.seed, b)],
                    loss=arm.loss,
                    hparams=dict(arm.hparams),
                    seed=rep.seed,
                    schedule=schedule,
                    probe=probe_for(rep),
                )
            out.setdefault((arm.label, b), []).append(done[key])
    progress(len(grid), len(grid), "done")
    return out


def _canonical(arm: Arm) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """(loss, sorted hyper-parameters), with R-DPO at α = 0 read as DPO (the same loss)."""
    params = tuple(sorted(arm.hparams))
    if arm.loss == "rdpo" and ("alpha", 0.0) in params:
        return "dpo", tuple(p for p in params if p[0] != "alpha")
    return arm.loss, params


def _dataset(rows: list[dict[str, Any]]) -> Any:
    import datasets  # heavy: loaded on first use

    random.Random(0).shuffle(rows)  # chosen/rejected positions carry no order; the trainer reshuffles anyway
    return datasets.Dataset.from_list(rows)


def drift(curves: Sequence[Curve]) -> Tensor:
    """[replicates, R] mean sample length minus the reference's (the step-0 probe of the same replicate)."""
    lengths = stack_curves(curves, "length")
    return lengths - lengths[:, :1]


def final_drift(curves: Sequence[Curve]) -> Tensor:
    """[replicates] drift at the last probe."""
    return drift(curves)[:, -1]


def drift_at_kl(curve: Curve, target: float) -> tuple[float, bool]:
    """(drift where the run's KL first reaches `target`, by linear interpolation between probes; reached).

    A run whose KL never reaches the target gives its final drift and False."""
    kl, length = curve.tensor("kl"), curve.tensor("length")
    kl = torch.cat([torch.zeros(1, dtype=kl.dtype), kl[1:]])  # step 0 is π_ref itself: KL 0 exactly
    d = length - length[0]
    for j in range(1, len(kl)):
        if kl[j] >= target:
            lo, hi = float(kl[j - 1]), float(kl[j])
            w = 1.0 if hi <= lo else (target - lo) / (hi - lo)
            return float(d[j - 1] + min(max(w, 0.0), 1.0) * (d[j] - d[j - 1])), True
    return float(d[-1]), False


def slopes(by_bias: Mapping[float, Tensor]) -> Tensor:
    """[replicates] least-squares slope of y against b, per replicate, from {b: [replicates] y}."""
    bs = torch.tensor(sorted(by_bias), dtype=torch.float64)
    ys = torch.stack([by_bias[float(b)].double() for b in bs], dim=1)  # [replicates, levels]
    centred = bs - bs.mean()
    return (ys - ys.mean(1, keepdim=True)) @ centred / (centred @ centred)
