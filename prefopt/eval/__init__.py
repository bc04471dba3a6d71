"""Evaluation: held-out preference metrics, generation metrics, win rates, ratings and plots, all with CIs.

    from prefopt import eval as pe
    pref = pe.evaluate_preferences(engine, heldout_batches, reference=ref, loss=get_loss("dpo"))
    gen = pe.evaluate_generations(policy, ref_model, tokenizer, prompts, reward=GoldReward())
    ratings = pe.bradley_terry_ratings({"dpo": gen_dpo.rewards, "ipo": gen_ipo.rewards,
                                        "reference": gen_dpo.reference_rewards}, anchor="reference")
    pe.plot_reward_kl_frontier([pe.FrontierPoint("dpo", gen.kl, gen.reward)], "frontier.png")

Every result is a frozen dataclass with `to_dict()` for JSON; means are `MeanCI`s (bootstrap over
prompts, or Student's t over seeds). See docs/evaluation.md. scipy and matplotlib load on first use.
"""

from prefopt.eval.generation import (
    EXACT_KL_MAX_VOCAB,
    GenerationMetrics,
    completion_lengths,
    evaluate_generations,
    generation_metrics,
    kl_estimates,
)
from prefopt.eval.plots import (
    DEFAULT_CURVE_METRICS,
    FrontierPoint,
    plot_length_drift,
    plot_reward_kl_frontier,
    plot_training_curves,
    read_metrics_jsonl,
)
from prefopt.eval.preference import PreferenceMetrics, evaluate_preferences, preference_metrics, resolve_beta
from prefopt.eval.ratings import (
    Rating,
    Ratings,
    bradley_terry_ratings,
    fit_bradley_terry,
    prompt_outcomes,
    rate_generations,
)
from prefopt.eval.stats import (
    MeanCI,
    aggregate_records,
    aggregate_seeds,
    bootstrap_mean,
    bootstrap_statistic,
    hierarchical_bootstrap_mean,
)
from prefopt.eval.winrate import (
    LengthControlledFit,
    LengthControlledWinRate,
    fit_length_controlled,
    length_controlled_win_rate,
    pairwise_outcomes,
    win_rate,
)
from prefopt.sampling import decode_completion, sample_texts

__all__ = [
    "DEFAULT_CURVE_METRICS",
    "EXACT_KL_MAX_VOCAB",
    "FrontierPoint",
    "GenerationMetrics",
    "LengthControlledFit",
    "LengthControlledWinRate",
    "MeanCI",
    "PreferenceMetrics",
    "Rating",
    "Ratings",
    "aggregate_records",
    "aggregate_seeds",
    "bootstrap_mean",
    "bootstrap_statistic",
    "bradley_terry_ratings",
    "completion_lengths",
    "decode_completion",
    "evaluate_generations",
    "evaluate_preferences",
    "fit_bradley_terry",
    "fit_length_controlled",
    "generation_metrics",
    "hierarchical_bootstrap_mean",
    "kl_estimates",
    "length_controlled_win_rate",
    "pairwise_outcomes",
    "plot_length_drift",
    "plot_reward_kl_frontier",
    "plot_training_curves",
    "preference_metrics",
    "prompt_outcomes",
    "rate_generations",
    "read_metrics_jsonl",
    "resolve_beta",
    "sample_texts",
    "win_rate",
]
