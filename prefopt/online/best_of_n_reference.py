"""The inference-time best-of-N policy measured on a model: sample M completions of each prompt from the
reference (`prefopt.online.generation.generate`), score them (`as_reward_function`), and compute best-of-N's
expected reward, measured KL and win rate at each N (`prefopt.eval.bon_baseline.best_of_n_points`, exact
over the samples' empirical distribution, beside the bound log N − (N−1)/N).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefopt.eval.bon_baseline import DEFAULT_BON_N, BestOfNPoint, best_of_n_points
from prefopt.online.generation import GenerationConfig, generate
from prefopt.online.rewards import as_reward_function, score_rollout

__all__ = ["evaluate_best_of_n"]


def evaluate_best_of_n(
    reference: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    reward: Any,
    *,
    ns: Sequence[int] = DEFAULT_BON_N,
    samples: int = 64,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> list[BestOfNPoint]:
    """Sample `samples` completions of each prompt from `reference`, score them, and evaluate best-of-N.

    Args:
        reference: the reference policy (a causal LM); tokenizer: its tokenizer.
        prompts: held-out prompt strings; reward: anything `prefopt.online.as_reward_function` accepts.
        ns: N values (≤ samples/4); samples: M per prompt.
        max_new_tokens, temperature, seed, progress: sampling settings (`prefopt.online.generate`).
    """
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, num_samples=samples)
    rollout = generate(reference, tokenizer, list(prompts), config, seed=seed, progress=progress)
    return best_of_n_points(score_rollout(as_reward_function(reward), rollout), ns, seed=seed)
