"""Ground-truth evaluation on the synthetic task: gold reward, win rate, length, and the exact KL to the
reference (`prefopt.sampling.sequence_kl`: the full-vocabulary KL at every completion position of a sampled
sequence, whose expectation is the sequence-level KL(π ‖ π_ref) of the KL-regularised RLHF objective).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from prefopt.data.synthetic.language import accepts
from prefopt.data.synthetic.reward import GoldReward
from prefopt.reward_function import RewardFunction
from prefopt.sampling import sample, sequence_kl
from prefopt.threads import torch_threads

__all__ = ["mean_gold_reward", "win_rate", "mean_length", "evaluate_against_reference"]


def mean_gold_reward(prompts: Sequence[str], completions: Sequence[str], reward: RewardFunction | None = None) -> float:
    """Mean of r*(x_i, y_i) over B rows (reward: default `GoldReward()`)."""
    return float((reward or GoldReward()).score(prompts, completions).double().mean())


def win_rate(
    prompts: Sequence[str],
    completions: Sequence[str],
    reference_completions: Sequence[str],
    reward: RewardFunction | None = None,
) -> float:
    """Share of prompts where `completions[i]` beats `reference_completions[i]` under the reward, ties
    counting 1/2: mean(1[r_i > r_ref,i] + ½·1[r_i = r_ref,i]) (the win rate of the DPO paper, Sec. 6)."""
    if not (len(prompts) == len(completions) == len(reference_completions)):
        raise ValueError(
            f"win_rate: {len(prompts)} prompts, {len(completions)} completions and "
            f"{len(reference_completions)} reference completions must be equally many"
        )
    scorer = reward or GoldReward()
    mine, theirs = scorer.score(prompts, completions), scorer.score(prompts, reference_completions)
    return float(((mine > theirs).double() + 0.5 * (mine == theirs).double()).mean())


def mean_length(completions: Sequence[str]) -> float:
    """Mean completion length in words (= tokens of the word-level tokenizer, EOS not counted)."""
    if not completions:
        raise ValueError("mean_length: no completions")
    return sum(len(c.split()) for c in completions) / len(completions)


def evaluate_against_reference(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    reward: RewardFunction | None = None,
    max_new_tokens: int = 64,
    num_threads: int | None = 1,
) -> dict[str, float]:
    """Sample one completion per prompt from `policy` and from `reference` and report the ground truth:
    gold_reward, reference_gold_reward, win_rate (policy vs reference), kl (mean exact sequence KL on the
    policy's samples), mean_words, reference_mean_words and acceptance_rate (policy samples).
    `num_threads` torch threads are used meanwhile (None: unchanged; see `prefopt.threads.torch_threads`)."""
    was_training = policy.training
    policy.eval()
    try:
        with torch_threads(num_threads):
            mine = sample(
                policy, tokenizer, prompts, generator=torch.Generator().manual_seed(seed), max_new_tokens=max_new_tokens
            )
            ref = sample(
                reference,
                tokenizer,
                prompts,
                generator=torch.Generator().manual_seed(seed + 1),
                max_new_tokens=max_new_tokens,
            )
            kl = sequence_kl(policy, reference, mine.input_ids, mine.attention_mask, mine.completion_mask)
    finally:
        policy.train(was_training)
    return {
        "gold_reward": mean_gold_reward(prompts, mine.completions, reward),
        "reference_gold_reward": mean_gold_reward(prompts, ref.completions, reward),
        "win_rate": win_rate(prompts, mine.completions, ref.completions, reward),
        "kl": float(kl.double().mean()),
        "mean_words": mean_length(mine.completions),
        "reference_mean_words": mean_length(ref.completions),
        "acceptance_rate": sum(accepts(p, c) for p, c in zip(prompts, mine.completions)) / len(prompts),
    }
