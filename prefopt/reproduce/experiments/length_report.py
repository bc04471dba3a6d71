"""`length-exploitation`'s checks, tables, notes and figure from its runs' curves (see `length_exploitation`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.reproduce.base import Check, Outcome, Table, fmt, mean_ci
from prefopt.reproduce.experiments.length_runs import Replicate, drift_at_kl, final_drift, label_rows, slopes
from prefopt.reproduce.synthetic_runs import Curve, stack_curves

__all__ = ["LengthResults", "build_outcome", "checks_from_results", "protocol_table"]

PAPER_CLAIMS = {
    "dpo": "DPO exploits a length bias of the data: its answers grow with the bias (Park et al., abstract, Table 1)",
    "rdpo": "R-DPO's length regularisation prevents the growth (Park et al., abstract)",
    "simpo": 'SimPO beats DPO "without substantially increasing response length" (Meng et al., abstract)',
    "matched": "the same claim, compared at equal KL(π_θ‖π_ref)",
    "ln": "without LN the reward margin follows the length difference: length exploitation (Meng et al., §4.4)",
}


def protocol_table(config: Any) -> Table:
    """The distance from the papers' protocols: | dimension | paper | ours | why |."""
    policy = "1.2M-parameter" if config.model_size == "default" else "110k-parameter (quick)"
    ratios = ", ".join(f"{g:g}" for g in config.gamma_ratios)
    return Table(
        "Distance from the papers' protocols",
        ["dimension", "paper", "ours", "why"],
        [
            [
                "policy",
                "Mistral-7B / Llama-3-8B (SimPO), Pythia-2.8B (R-DPO) SFT models",
                f"{policy} Llama on the synthetic review language",
                "fits 2 CPU cores; gold reward and length exact",
            ],
            [
                "data",
                "UltraFeedback, HH-RLHF, TL;DR: human / GPT-4 labels with an implicit length bias",
                "pairs sampled from π_ref, labelled by r* + b·|y| (Bradley–Terry)",
                "the bias is explicit and varied (b = 0 control), so drift per word of bias is measurable",
            ],
            [
                "length measure",
                "response length, GPT-4-judged win rates",
                "mean words of one sample per held-out prompt (fixed seed)",
                "no judge; r* and KL reported beside it",
            ],
            [
                "SimPO β, γ/β",
                "β 2.0–2.5, γ/β ≈ 0.5–0.55 (Llama-3 / Mistral settings)",
                f"β {config.simpo_beta:g}, γ/β {config.simpo_gamma_beta_ratio:g}; sweep {{{ratios}}}",
                "the paper's ratio, plus a sweep",
            ],
            ["R-DPO α", "swept per dataset", "α = b/T", "the labeller's length coefficient: the tuned value"],
            [
                "optimiser, schedule",
                "Adam(W), lr 3e-7–1e-6, cosine, warm-up 10%, 1 epoch (SimPO)",
                f"AdamW lr {config.lr:g} constant, batch {config.batch_size}, {config.steps} steps (≈ "
                f"{config.steps * config.batch_size / (2 * config.train_prompts):.1f} epochs)",
                "the synthetic preset, shared by every loss; KL reported and drift compared at matched KL",
            ],
            [
                "replicates",
                "one run per setting",
                f"{config.seeds} (data draw and training seed), 95% t-CIs",
                "verdicts need CIs",
            ],
            [
                "SimPO w/o LN",
                "summed log-probs (§4.4 ablation)",
                "summed log-probs, β′ = β / mean tokens, γ = 0",
                "same reward scale on an average-length answer; only the normalisation differs",
            ],
        ],
    )


@dataclass
class LengthResults:
    """What the runs produced: the config, (label, b) → [replicates] curves, and the replicates' data."""

    config: Any
    curves: dict[tuple[str, float], list[Curve]]
    replicates: list[Replicate]

    def final(self, label: str) -> dict[float, Tensor]:
        """b → [replicates] final drift of `label`."""
        return {b: final_drift(self.curves[(label, b)]) for b in self.config.biases}

    def slope(self, label: str) -> Tensor:
        """[replicates] drift per word of bias of `label`."""
        return slopes(self.final(label))

    def final_kl(self, label: str, b: float) -> Tensor:
        """[replicates] KL at the last probe."""
        return stack_curves(self.curves[(label, b)], "kl")[:, -1]

    def at_dpo_kl(self, label: str, b: float) -> tuple[Tensor, int]:
        """([replicates] drift of `label` at DPO's final KL of the same replicate and b, how many reached it)."""
        if all(c is d for c, d in zip(self.curves[(label, b)], self.curves[("DPO", b)])):  # DPO's own runs
            return self.final("DPO")[b], len(self.curves[("DPO", b)])
        targets = self.final_kl("DPO", b).tolist()
        read = [drift_at_kl(c, t) for c, t in zip(self.curves[(label, b)], targets)]
        return torch.tensor([d for d, _ in read], dtype=torch.float64), sum(ok for _, ok in read)

    def matched_slope(self, label: str) -> Tensor:
        """[replicates] drift per word of bias with each run read at DPO's final KL (same replicate and b)."""
        return slopes({b: self.at_dpo_kl(label, b)[0] for b in self.config.biases})

    def data_gap(self, b: float) -> float:
        """Mean chosen − rejected length (words) of the training pairs at b, over replicates."""
        gaps = []
        for rep in self.replicates:
            rows = label_rows(rep, b, self.config.label_temperature)
            gaps.append(sum(len(r["chosen"].split()) - len(r["rejected"].split()) for r in rows) / len(rows))
        return sum(gaps) / len(gaps)


def _ci(x: Tensor, digits: int = 3) -> tuple[str, float, float]:
    """'mean ± half-width' and the CI's ends."""
    mean, half = mean_ci(x)
    return f"{fmt(float(mean), digits)} ± {fmt(float(half), 2)}", float(mean - half), float(mean + half)


def _below(claim: str, paper: str, diff: Tensor) -> Check:
    cell, _, high = _ci(diff)
    return Check(claim, paper, cell, "CI upper end < 0", high < 0, float(diff.mean()))


def checks_from_results(res: LengthResults) -> list[Check]:
    """The five checks of `length_exploitation`'s docstring."""
    config = res.config
    paper_simpo = f"SimPO γ/β = {config.simpo_gamma_beta_ratio:g}"
    dpo = res.slope("DPO")
    cell, low, _ = _ci(dpo)
    checks = [
        Check(
            "DPO: drift per word of bias (words per unit b, mean ± 95% CI)",
            PAPER_CLAIMS["dpo"],
            cell,
            "CI lower end > 0",
            low > 0,
            float(dpo.mean()),
        ),
        _below(
            "R-DPO − DPO: drift per word of bias (paired by replicate)", PAPER_CLAIMS["rdpo"], res.slope("R-DPO") - dpo
        ),
        _below(
            f"{paper_simpo} − DPO: drift per word of bias (paired)", PAPER_CLAIMS["simpo"], res.slope(paper_simpo) - dpo
        ),
    ]
    b = config.biases[-1]
    matched, _ = res.at_dpo_kl(paper_simpo, b)
    checks.append(
        _below(
            f"{paper_simpo} − DPO: drift at DPO's KL, b = {b:g} (paired)",
            PAPER_CLAIMS["matched"],
            matched - res.final("DPO")[b],
        )
    )
    if config.no_ln_ablation:
        checks.append(
            _below(
                "SimPO − SimPO w/o LN (γ = 0): drift per word of bias (paired)",
                PAPER_CLAIMS["ln"],
                res.slope("SimPO γ/β = 0") - res.slope("SimPO w/o LN, γ = 0"),
            )
        )
    return checks


def _tables(res: LengthResults) -> list[Table]:
    config = res.config
    rows = []
    for label in config.labels():
        for b in config.biases:
            curves = res.curves[(label, b)]
            matched, reached = res.at_dpo_kl(label, b)
            rows.append(
                [
                    label,
                    f"{b:g}",
                    _ci(res.final(label)[b])[0],
                    _ci(res.final_kl(label, b))[0],
                    _ci(stack_curves(curves, "gold_reward")[:, -1])[0],
                    f"{_ci(matched)[0]} ({reached}/{len(curves)})",
                ]
            )
    per_b = Table(
        "Per loss and bias level, at the end (mean ± 95% CI over replicates): drift (words), KL(π_θ‖π_ref) (nats, "
        "exact, on the probe's samples), gold reward r* of the samples, and drift read at DPO's final KL (how many "
        "replicates reached that KL; one that did not gives its final drift)",
        ["loss", "b", "drift", "KL", "r*", "drift at DPO's KL"],
        rows,
    )
    dpo = res.slope("DPO")
    slope_rows = []
    for label in config.labels():
        s, m = res.slope(label), res.matched_slope(label)
        other = label != "DPO"
        slope_rows.append(
            [
                label,
                _ci(s)[0],
                _ci(s - dpo)[0] if other else "—",
                _ci(m)[0],
                _ci(m - res.matched_slope("DPO"))[0] if other else "—",
                _ci(res.final_kl(label, config.biases[-1]))[0],
            ]
        )
    slope = Table(
        "Drift per word of bias: least-squares slope of drift against b, per replicate (words per unit b; multiply "
        "by b for the drift caused by the bias), from the final drift and from the drift read at DPO's final KL of "
        "the same replicate and b (the ablation that removes the difference in distance travelled)",
        [
            "loss",
            "slope",
            "− DPO's (paired)",
            "slope at DPO's KL",
            "− DPO's (paired)",
            f"KL at b = {config.biases[-1]:g}",
        ],
        slope_rows,
    )
    return [slope, per_b, protocol_table(config)]


def _notes(res: LengthResults) -> list[str]:
    config = res.config
    levels = ", ".join(f"{b:g}" for b in config.biases)
    gaps = ", ".join(f"b = {b:g}: {fmt(res.data_gap(b), 3)}" for b in config.biases)
    tokens = sum(r.mean_tokens for r in res.replicates) / len(res.replicates)
    n_pairs = sum(len(r.pairs) for r in res.replicates) / len(res.replicates)
    return [
        f"Synthetic task, {config.model_size} reference policy (task seed {config.task_seed}). Labeller utility "
        f"r* + b·|y| (words), Bradley–Terry at T = {config.label_temperature}, b ∈ {{{levels}}}; "
        f"the same pairs and coins at every b. {config.seeds} replicates of {config.train_prompts} prompts × 2 pairs "
        f"(≈ {n_pairs:.0f} pairs after dropping identical ones); chosen − rejected length (words): {gaps}.",
        f"DPO β = {config.dpo_beta}; R-DPO β = {config.dpo_beta}, α = b/T (0 at b = 0, where R-DPO is DPO and its run "
        f"is reused); SimPO β = {config.simpo_beta}, γ/β ∈ {{{', '.join(f'{g:g}' for g in config.gamma_ratios)}}} "
        f"(paper {config.simpo_gamma_beta_ratio:g}); SimPO w/o LN = cpo(α = 0), β′ = β / {fmt(tokens, 3)} mean "
        f"completion tokens. All: AdamW lr {config.lr}, batch {config.batch_size}, {config.steps} steps; probe every "
        f"{config.probe_every} steps on {config.heldout_prompts} held-out prompts (≤ {config.max_new_tokens} tokens).",
        "Drift per word of bias separates exploiting the bias from drifting for other reasons: a loss whose samples "
        "grow at b = 0 too (no length preference beyond r*'s own λ·log(1+|y|)) is not exploiting the labeller's bias "
        "by that growth. KL is reported beside drift, and check 4 reads each run at DPO's final KL, so a loss that "
        "moves less does not drift less trivially.",
    ]


def build_outcome(res: LengthResults) -> Outcome:
    """Checks, tables, notes, figure and raw data of a finished run."""
    config = res.config
    labels = config.labels()
    data = {
        "config": dataclasses.asdict(config),
        "biases": list(config.biases),
        "labels": labels,
        "steps": res.curves[("DPO", config.biases[0])][0].steps,
        "mean_tokens": [r.mean_tokens for r in res.replicates],
        "data_length_gap": {f"{b:g}": res.data_gap(b) for b in config.biases},
        "slopes": {label: res.slope(label).tolist() for label in labels},
        "slopes_at_dpo_kl": {label: res.matched_slope(label).tolist() for label in labels},
        "curves": {
            f"{label} | b={b:g}": {k: stack_curves(cs, k).tolist() for k in ("length", "kl", "gold_reward")}
            for (label, b), cs in res.curves.items()
        },
    }

    def draw(fig: Any) -> None:
        left, right = fig.subplots(1, 2)
        b = config.biases[-1]
        for label in labels:
            curves = res.curves[(label, b)]
            kl, length = stack_curves(curves, "kl").mean(0), stack_curves(curves, "length")
            left.plot(kl, (length - length[:, :1]).mean(0), marker="o", ms=3, label=label)
        left.axhline(0, color="k", lw=0.8)
        left.set_xlabel("KL(π_θ‖π_ref) (nats, mean over replicates)")
        left.set_ylabel("drift: mean length − π_ref's (words)")
        left.set_title(f"Drift against KL over training, b = {b:g}", fontsize=9)
        left.legend(fontsize=7)
        means, halves = zip(*(mean_ci(res.slope(label)) for label in labels))
        right.barh(range(len(labels)), [float(m) for m in means], xerr=[float(h) for h in halves], color="tab:gray")
        right.set_yticks(range(len(labels)), labels, fontsize=7)
        right.axvline(0, color="k", lw=0.8)
        right.set_xlabel("drift per word of bias (words per unit b), 95% CI")
        right.set_title("Slope of final drift against b", fontsize=9)

    return Outcome(checks_from_results(res), _tables(res), draw, (11.0, 4.5), _notes(res), data)
