"""Online algorithms: generation, reward functions and reward models, and the online loop (generate → score → loss).

generation    GenerationConfig, Rollout, generate (HF `generate`, K samples per prompt; vLLM optional)
rewards       RewardFunction, CallableReward, CombinedReward, as_reward_function, combine_rewards, score_rollout
              (Python functions: TRL's GRPO convention, `reward_functions`; `module:function` strings, `reward_spec`)
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
from prefopt.online.rewards import (
    CallableReward,
    CombinedReward,
    RewardFunction,
    as_reward_function,
    check_scores,
    combine_rewards,
    rollout_rewards,
    score_rollout,
)
from prefopt.online.trainer import OnlineResult, train_online

__all__ = [
    "CallableReward",
    "CombinedReward",
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
    "combine_rewards",
    "generate",
    "load_reward_model",
    "train_reward_model",
    "rollout_rewards",
    "score_rollout",
    "train_online",
    "vllm_available",
]
