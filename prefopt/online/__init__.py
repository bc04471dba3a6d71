"""Online algorithms: generation, reward functions and reward models, and the online loop (generate → score → loss).

    generation    GenerationConfig, Rollout, generate (HF `generate`, K samples per prompt; vLLM optional)
    rewards       RewardFunction, CallableReward, as_reward_function, score_rollout
"""

from prefopt.online.generation import GenerationConfig, Rollout, generate, vllm_available
from prefopt.online.rewards import CallableReward, RewardFunction, as_reward_function, check_scores, score_rollout

__all__ = [
    "CallableReward",
    "GenerationConfig",
    "RewardFunction",
    "Rollout",
    "as_reward_function",
    "check_scores",
    "generate",
    "score_rollout",
    "vllm_available",
]
