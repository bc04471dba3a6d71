"""Online algorithms: generation, reward functions and reward models, and the online loop (generate → score → loss).

generation    GenerationConfig, Rollout, generate (HF `generate`, K samples per prompt; vLLM optional)
rewards       RewardFunction, CallableReward, as_reward_function, score_rollout
reward_model  RewardModelConfig, train_reward_model, LearnedReward (`prefopt train-rm`)
trainer       OnlineConfig, train_online, OnlineResult (`prefopt train-online`): generate → score → loss
"""

from prefopt.online.config import OnlineConfig
from prefopt.online.generation import GenerationConfig, Rollout, generate, vllm_available
from prefopt.online.reward_model import (
    LearnedReward,
    RewardModelConfig,
    RewardModelResult,
    load_reward_model,
    train_reward_model,
)
from prefopt.online.rewards import CallableReward, RewardFunction, as_reward_function, check_scores, score_rollout
from prefopt.online.trainer import OnlineResult, train_online

__all__ = [
    "CallableReward",
    "LearnedReward",
    "RewardModelConfig",
    "RewardModelResult",
    "GenerationConfig",
    "OnlineConfig",
    "OnlineResult",
    "RewardFunction",
    "Rollout",
    "as_reward_function",
    "check_scores",
    "generate",
    "load_reward_model",
    "train_reward_model",
    "score_rollout",
    "train_online",
    "vllm_available",
]
