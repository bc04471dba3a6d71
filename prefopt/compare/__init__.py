"""`prefopt compare`: train several losses on the same data, model and seeds, evaluate each, report side by side.

    from prefopt.compare import CompareConfig, compare
    result = compare(CompareConfig(losses=("dpo", "ipo"), seeds=(0, 1), output_dir="runs/compare"))

    config    CompareConfig, RunPlan, run_settings, tiny_task: what to compare and each run's settings
    task      SharedTask: the model, data, reward and evaluation set every run shares
    online    the online algorithms' runs and the inference-time best-of-N policy
    run       compare: train (or resume) and evaluate every run, then write the report
    report    CompareResult, the table (aggregated over seeds), ratings and plots
    reuse     each run's settings fingerprint: what a re-run may load or resume, what it refuses
    samples   samples.jsonl of every run, the same prompts side by side (samples.md)
    pages     samples.md and report.html (html: the self-contained page; provenance: versions, machine)
    folder    report_folder: the report again from a finished or partial output folder (`prefopt report`)

See docs/compare.md.
"""

from prefopt.compare.config import DEFAULT_LOSSES, CompareConfig, RunPlan, run_settings, tiny_task
from prefopt.compare.folder import report_folder
from prefopt.compare.report import CompareResult
from prefopt.compare.run import compare

__all__ = [
    "DEFAULT_LOSSES",
    "CompareConfig",
    "CompareResult",
    "RunPlan",
    "compare",
    "report_folder",
    "run_settings",
    "tiny_task",
]
