"""Preference data sampled from the reference policy and labelled from the gold reward with noise.

For every prompt, K completions y_1..y_K are drawn from π_ref and scored by the gold reward r*. The
labeller's utility of a completion is u = r* + α·|y| (α the length bias, |y| in words), and labels are
Bradley–Terry / Plackett–Luce draws at temperature T (Bradley & Terry 1952; Plackett 1975; the
preference model of the DPO paper, Rafailov et al. 2023, Eq. 1):

    paired   (y_1, y_2), (y_3, y_4), …:  P(y_a ≻ y_b) = σ((u_a − u_b) / T)
    ranked   all K:  order by u_k + T·g_k, g_k ~ Gumbel(0, 1) i.i.d.  (= a Plackett–Luce draw with
             utilities u/T); `scores` are those perturbed utilities
    unpaired each pair split into (chosen, label True) and (rejected, label False) sharing `pair_id`

T = 0 is the noiseless labeller (the higher utility always wins; exact ties are broken by a fair coin,
and in ranked scores by a random 1e-6 offset, so rankings are strict); T → ∞ makes labels coin flips.
Splits are by prompt: train and eval prompts are disjoint, and held-out prompts (no completions) are
kept apart for evaluating trained policies by generation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prefopt.data.synthetic.language import accepts, sample_prompt
from prefopt.data.synthetic.reward import GoldReward
from prefopt.reward_function import RewardFunction
from prefopt.sampling import sample
from prefopt.threads import torch_threads

__all__ = [
    "PreferenceConfig",
    "PromptGroup",
    "SyntheticPreferences",
    "draw_prompts",
    "label_pairs",
    "label_rankings",
    "build_preferences",
]

SPLITS = ("train", "eval")
KINDS = ("paired", "unpaired", "ranked")


@dataclass(frozen=True)
class PreferenceConfig:
    """Sizes and labelling knobs of the synthetic preference data.

    Attributes:
        train_prompts, eval_prompts, heldout_prompts: distinct prompts per split.
        completions_per_prompt: K ≥ 2 (even K uses every completion in a pair).
        label_temperature: T ≥ 0 of the Bradley–Terry draw (0 = noiseless).
        length_bias: α, the labeller's extra utility per completion word (0 = none).
        sampling_temperature: temperature of π_ref when drawing completions.
        max_new_tokens: completion length cap (tokens, EOS included).
    """

    train_prompts: int = 512
    eval_prompts: int = 64
    heldout_prompts: int = 128
    completions_per_prompt: int = 4
    label_temperature: float = 1.0
    length_bias: float = 0.0
    sampling_temperature: float = 1.0
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        for name in ("train_prompts", "eval_prompts", "heldout_prompts", "max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (1 if name in ("train_prompts", "max_new_tokens") else 0):
                raise ValueError(
                    f"PreferenceConfig.{name}={value!r} must be a non-negative integer "
                    "(train_prompts and max_new_tokens ≥ 1)"
                )
        if not isinstance(self.completions_per_prompt, int) or self.completions_per_prompt < 2:
            raise ValueError(
                f"PreferenceConfig.completions_per_prompt={self.completions_per_prompt!r} must be an "
                "integer ≥ 2 (a preference needs two completions)"
            )
        if not self.label_temperature >= 0 or not math.isfinite(self.label_temperature):
            raise ValueError(f"PreferenceConfig.label_temperature={self.label_temperature} must be finite and ≥ 0")
        if not math.isfinite(self.length_bias):
            raise ValueError(f"PreferenceConfig.length_bias={self.length_bias} must be finite")
        if not self.sampling_temperature > 0:
            raise ValueError(f"PreferenceConfig.sampling_temperature={self.sampling_temperature} must be > 0")


@dataclass
class PromptGroup:
    """One prompt's K completions with gold rewards [K], word lengths [K], acceptance [K], its split,
    the sampled pairs as (chosen index, rejected index), and the ranked draw (order best first, scores)."""

    prompt: str
    split: str
    completions: list[str]
    rewards: list[float]
    lengths: list[int]
    grammatical: list[bool]
    pairs: list[tuple[int, int]] = field(default_factory=list)
    ranking: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def _ranked_row(g: PromptGroup, ident: str, with_gold: bool) -> dict[str, Any]:
    """The group's ranked row: its completions and scores best first (and their gold rewards)."""
    row: dict[str, Any] = {
        "id": ident,
        "prompt": g.prompt,
        "completions": [g.completions[k] for k in g.ranking],
        "scores": [g.scores[k] for k in g.ranking],
    }
    if with_gold:
        row["gold_rewards"] = [g.rewards[k] for k in g.ranking]
    return row


def _paired_row(g: PromptGroup, ident: str, c: int, r: int, with_gold: bool) -> dict[str, Any]:
    """The pair (chosen index `c`, rejected index `r`) as one paired row."""
    row: dict[str, Any] = {"id": ident, "prompt": g.prompt, "chosen": g.completions[c], "rejected": g.completions[r]}
    if with_gold:
        row.update(chosen_gold=g.rewards[c], rejected_gold=g.rewards[r])
    return row


def _unpaired_rows(
    g: PromptGroup, ident: str, c: int, r: int, pair_index: int, with_gold: bool
) -> list[dict[str, Any]]:
    """The pair (chosen index `c`, rejected index `r`) as two unpaired rows, desirable first, sharing `pair_id`."""
    rows = []
    for k, label in ((c, True), (r, False)):
        row: dict[str, Any] = {
            "id": f"{ident}-{int(label)}",
            "prompt": g.prompt,
            "completion": g.completions[k],
            "label": label,
            "pair_id": pair_index,
        }
        if with_gold:
            row["gold"] = g.rewards[k]
        rows.append(row)
    return rows


def draw_prompts(n: int, rng: random.Random) -> list[str]:
    """n distinct prompts of the language in random order; ValueError if the language cannot supply n."""
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < n:
        seen.setdefault(sample_prompt(rng), None)
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could not draw {n} distinct prompts (got {len(seen)}); ask for fewer prompts")
    return list(seen)


def label_pairs(
    utility_a: torch.Tensor, utility_b: torch.Tensor, temperature: float, generator: torch.Generator
) -> torch.Tensor:
    """Bradley–Terry draws: bool [N], True where a ≻ b, with P(a ≻ b) = σ((u_a − u_b)/T).

    T = 0: the larger utility wins; exact ties are a fair coin.
    """
    coin = torch.rand(utility_a.shape, generator=generator, dtype=torch.float64)
    diff = (utility_a - utility_b).double()
    if temperature == 0:
        return torch.where(diff == 0, coin < 0.5, diff > 0)
    return coin < torch.sigmoid(diff / temperature)


def label_rankings(utilities: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Plackett–Luce draws via the Gumbel trick: perturbed scores [G, K] = u + T·Gumbel (T = 0: u plus a
    random 1e-6·rank offset breaking exact ties). Sorting a row descending gives its ranking."""
    u = utilities.double()
    uniform = torch.rand(u.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    if temperature > 0:
        return u - temperature * torch.log(-torch.log(uniform))
    jitter = uniform.argsort(dim=-1).argsort(dim=-1).double() * 1e-6  # a random permutation of 0..K−1
    ties = (u[..., :, None] == u[..., None, :]).sum(-1) > 1
    return torch.where(ties, u + jitter, u)


@dataclass
class SyntheticPreferences:
    """Sampled, scored and labelled preference data, exportable in the public formats.

    Attributes:
        groups: one `PromptGroup` per train/eval prompt.
        heldout_prompts: prompts with no completions, for generation-based evaluation.
        config: the `PreferenceConfig` used; seed: the seed used.
        dropped_prompts: prompts removed because a sampled completion was empty.
    """

    groups: list[PromptGroup]
    heldout_prompts: list[str]
    config: PreferenceConfig
    seed: int
    dropped_prompts: int = 0

    def rows(self, kind: str, split: str = "train", *, with_gold: bool = False) -> list[dict[str, Any]]:
        """Rows of `kind` ("paired" | "unpaired" | "ranked") for `split` ("train" | "eval") as dicts.

        Pairs whose two samples are the same text are left out (`summary()` counts them as identical_pairs).
        Columns: paired prompt/chosen/rejected; unpaired prompt/completion/label/pair_id; ranked
        prompt/completions/scores (best first). Every row has an `id`. `with_gold` adds the gold rewards
        (`chosen_gold`/`rejected_gold`, `gold`, `gold_rewards`), which training must not use.
        """
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: synthetic data exports one of {KINDS}")
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: use one of {SPLITS} (held-out prompts: .heldout_prompts)")
        out: list[dict[str, Any]] = []
        pair_index = 0
        for g_index, g in enumerate(self.groups):
            if g.split != split:
                continue
            if kind == "ranked":
                out.append(_ranked_row(g, f"{split}-{g_index}", with_gold))
                continue
            for c, r in g.pairs:
                if g.completions[c] == g.completions[r]:
                    continue  # two identical samples carry no preference (the data layer would warn)
                ident = f"{split}-{g_index}-{c}-{r}"
                if kind == "paired":
                    out.append(_paired_row(g, ident, c, r, with_gold))
                else:
                    out.extend(_unpaired_rows(g, ident, c, r, pair_index, with_gold))
                pair_index += 1
        return out

    def dataset(self, kind: str, split: str = "train", *, with_gold: bool = False) -> Any:
        """`rows(kind, split)` as a `datasets.Dataset`."""
        import datasets  # heavy: loaded on first use

        return datasets.Dataset.from_list(self.rows(kind, split, with_gold=with_gold))

    def dataset_dict(self, kind: str, *, with_gold: bool = False) -> Any:
        """A `datasets.DatasetDict` with "train" and "eval" splits of `kind`."""
        import datasets  # heavy: loaded on first use

        return datasets.DatasetDict({s: self.dataset(kind, s, with_gold=with_gold) for s in SPLITS})

    def summary(self) -> dict[str, Any]:
        """Sizes, mean gold reward / length / grammar acceptance of the samples, and label agreement: the
        share of pairs whose chosen completion has the strictly higher gold reward (ties excluded)."""
        rewards = [r for g in self.groups for r in g.rewards]
        wins = [g.rewards[c] > g.rewards[r] for g in self.groups for c, r in g.pairs if g.rewards[c] != g.rewards[r]]
        return {
            "seed": self.seed,
            "config": dataclasses.asdict(self.config),
            "prompts": {s: sum(g.split == s for g in self.groups) for s in SPLITS}
            | {"heldout": len(self.heldout_prompts)},
            # the pairs the exported files hold: a pair of two identical samples carries no preference
            "pairs": {s: sum(_distinct_pairs(g) for g in self.groups if g.split == s) for s in SPLITS},
            "identical_pairs": {
                s: sum(len(g.pairs) - _distinct_pairs(g) for g in self.groups if g.split == s) for s in SPLITS
            },
            "dropped_prompts": self.dropped_prompts,
            "mean_gold_reward": sum(rewards) / max(len(rewards), 1),
            "mean_words": sum(n for g in self.groups for n in g.lengths) / max(len(rewards), 1),
            "acceptance_rate": sum(a for g in self.groups for a in g.grammatical) / max(len(rewards), 1),
            "label_agreement": sum(wins) / max(len(wins), 1),
            "tied_pairs": sum(len(g.pairs) for g in self.groups) - len(wins),
        }

    def save(self, out_dir: str | Path, *, with_gold: bool = False) -> Path:
        """Write `{kind}/{split}.jsonl` for every kind and split, `heldout_prompts.jsonl`,
        `samples.jsonl` (every completion with its gold reward) and `summary.json` under `out_dir`."""
        out = Path(out_dir)
        for kind in KINDS:
            (out / kind).mkdir(parents=True, exist_ok=True)
            for split in SPLITS:
                _write_jsonl(out / kind / f"{split}.jsonl", self.rows(kind, split, with_gold=with_gold))
        _write_jsonl(out / "heldout_prompts.jsonl", [{"prompt": p} for p in self.heldout_prompts])
        _write_jsonl(out / "samples.jsonl", [dataclasses.asdict(g) for g in self.groups])
        (out / "summary.json").write_text(json.dumps(self.summary(), indent=2))
        return out


def _distinct_pairs(group: Any) -> int:
    """How many of a prompt's pairs have two different completions (the pairs `rows` exports)."""
    return sum(group.completions[c] != group.completions[r] for c, r in group.pairs)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def build_preferences(
    policy: Any,
    tokenizer: Any,
    *,
    seed: int = 0,
    config: PreferenceConfig | None = None,
    reward: RewardFunction | None = None,
    batch_size: int = 256,
    progress: bool = False,
    num_threads: int | None = 1,
) -> SyntheticPreferences:
    """Sample, score and label synthetic preference data (see the module docstring for the model).

    Args:
        policy: the reference policy's causal LM (eval mode); tokenizer: its tokenizer.
        seed: selects prompts, completions and label draws (same seed → same data).
        config: sizes and knobs (default `PreferenceConfig()`).
        reward: the scorer (default `GoldReward()`); any `RewardFunction` works.
        batch_size: prompts per sampling forward pass.
        progress: show a tqdm bar while sampling.
        num_threads: torch threads while sampling (None: unchanged; see `sampling.torch_threads`).
    """
    config = config or PreferenceConfig()
    reward = reward or GoldReward()
    n_labelled = config.train_prompts + config.eval_prompts
    prompts = draw_prompts(n_labelled + config.heldout_prompts, random.Random(f"synthetic-prompts-{seed}"))
    heldout, labelled = prompts[: config.heldout_prompts], prompts[config.heldout_prompts :]
    k = config.completions_per_prompt
    repeated = [p for p in labelled for _ in range(k)]
    generator = torch.Generator().manual_seed(seed)
    with torch_threads(num_threads):
        drawn = sample(
            policy,
            tokenizer,
            repeated,
            generator=generator,
            max_new_tokens=config.max_new_tokens,
            temperature=config.sampling_temperature,
            batch_size=batch_size,
            progress=progress,
        )
    rewards = reward.score(repeated, drawn.completions).double()  # (N·K,)
    lengths = torch.tensor([len(c.split()) for c in drawn.completions], dtype=torch.float64)
    utility = (rewards + config.length_bias * lengths).view(-1, k)  # (N, K)
    labels = torch.Generator().manual_seed(seed + 1_000_003)
    n_pairs = k // 2
    a_wins = label_pairs(
        utility[:, 0 : 2 * n_pairs : 2], utility[:, 1 : 2 * n_pairs : 2], config.label_temperature, labels
    )  # (N, K//2)
    scores = label_rankings(utility, config.label_temperature, labels)  # (N, K)
    groups, dropped = [], 0
    for i, prompt in enumerate(labelled):
        texts = drawn.completions[i * k : (i + 1) * k]
        if any(not t.strip() for t in texts):
            dropped += 1
            continue
        pairs = [(2 * j, 2 * j + 1) if a_wins[i, j] else (2 * j + 1, 2 * j) for j in range(n_pairs)]
        groups.append(
            PromptGroup(
                prompt=prompt,
                split="train" if i < config.train_prompts else "eval",
                completions=texts,
                rewards=rewards[i * k : (i + 1) * k].tolist(),
                lengths=[int(n) for n in lengths[i * k : (i + 1) * k]],
                grammatical=[accepts(prompt, t) for t in texts],
                pairs=pairs,
                ranking=scores[i].argsort(descending=True).tolist(),
                scores=scores[i].tolist(),
            )
        )
    return SyntheticPreferences(groups, heldout, config, seed, dropped)
