"""The built-in synthetic preference task: a toy review language, a gold reward, a tiny reference policy
trained from scratch on CPU, and preference data labelled from the gold reward with controllable noise.

    from prefopt.data import synthetic
    task = synthetic.synthetic_task(seed=0)            # ≈2 min the first time, cached afterwards
    paired = task.preferences.dataset("paired")        # prompt / chosen / rejected
    synthetic.gold_reward(prompts, completions)        # float32 [B]
    synthetic.evaluate_against_reference(policy, task.policy.model, task.policy.tokenizer,
                                         task.preferences.heldout_prompts)

See docs/synthetic.md for the language, the reward's formula and the default sizes.
"""

from __future__ import annotations

from prefopt.data.synthetic.ground_truth import evaluate_against_reference, mean_gold_reward, mean_length, win_rate
from prefopt.data.synthetic.language import Review, accepts, sample_prompt, sample_review, vocabulary
from prefopt.data.synthetic.policy import (
    ReferencePolicy,
    SFTConfig,
    cache_root,
    load_reference_policy,
    reference_policy,
    train_reference_policy,
)
from prefopt.data.synthetic.preferences import PreferenceConfig, SyntheticPreferences, build_preferences
from prefopt.data.synthetic.reward import GoldReward, gold_reward, gold_reward_components
from prefopt.data.synthetic.task import SyntheticTask, synthetic_task, write_synthetic_task
from prefopt.data.synthetic.tokenizer import build_tokenizer
from prefopt.reward_function import RewardFunction
from prefopt.sampling import Samples, sample, sequence_kl

__all__ = [
    "GoldReward",
    "PreferenceConfig",
    "ReferencePolicy",
    "Review",
    "RewardFunction",
    "SFTConfig",
    "Samples",
    "SyntheticPreferences",
    "SyntheticTask",
    "accepts",
    "build_preferences",
    "build_tokenizer",
    "cache_root",
    "evaluate_against_reference",
    "gold_reward",
    "gold_reward_components",
    "load_reference_policy",
    "mean_gold_reward",
    "mean_length",
    "reference_policy",
    "sample",
    "sample_prompt",
    "sample_review",
    "sequence_kl",
    "synthetic_task",
    "train_reference_policy",
    "vocabulary",
    "win_rate",
    "write_synthetic_task",
]
