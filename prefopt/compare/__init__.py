"""`prefopt compare`: train several losses on the same data, model and seeds, evaluate each, report side by side.

    from prefopt.compare import CompareConfig, compare
    result = compare(CompareConfig(losses=("dpo", "ipo"), seeds=(0, 1), output_dir="runs/compare"))

    config    CompareConfig, RunPlan, run_settings, tiny_task: what to compare and each run's settings
    task      SharedTask: the model, data, reward and evaluation set every run shares
    online    the online algorithms' runs and the inference-time best-of-N policy
    run       compare: train (or resume) and evaluate every run, then write the report
    report    CompareResult, the table (aggregated over seeds), ratings and plots

See docs/compare.md.
"""

from prefopt.compare.config import DEFAULT_LOSSES, CompareConfig, RunPlan, run_settings, tiny_task
from prefopt.compare.report import CompareResult
from prefopt.compare.run import compare

__all__ = ["DEFAULT_LOSSES", "CompareConfig", "CompareResult", "RunPlan", "compare", "run_settings", "tiny_task"]
