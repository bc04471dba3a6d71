"""`prefopt compare`: train several losses on the same data, model and seeds, evaluate each, report side by side.

    from prefopt.compare import CompareConfig, compare
    result = compare(CompareConfig(losses=("dpo", "ipo"), hparams={"dpo": {"beta": [0.05, 0.1, 0.5]}},
                                   seeds=(0, 1), output_dir="runs/compare"))
    print(result.table_text)

Every run is one `prefopt.train.train` call (one loop for every offline loss; `prefopt.compare.online` for
the online algorithms) followed by the same evaluation: held-out preference metrics on the eval split,
and, with a reward (the synthetic task's gold reward, or a reward model on your data), generation metrics
(reward, KL, win rate and length-controlled win rate versus the reference policy, length). Each finished
run writes its samples (`samples.jsonl`) and then `<out>/<run_id>/result.json` atomically beside its exact
config; re-running with the same output folder loads finished runs instead of redoing them and resumes
interrupted ones from their last checkpoint, when they were made with the same settings
(`prefopt.compare.reuse`: others are refused, or retrained with `overwrite`). The report (table.md/csv/json,
plots, samples.md, report.html) is written by `prefopt.compare.report`. Under `torchrun` / `accelerate launch` every
run trains on all processes with its data sharded, and the main process evaluates and writes
(`prefopt.compare.launched`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from prefopt.atomic import write_json_atomic
from prefopt.compare.config import CompareConfig, RunPlan, run_settings
from prefopt.compare.heldout import write_heldout
from prefopt.compare.launched import claim_on_main, compare_processes, main_first, on_main
from prefopt.compare.online import best_of_n_reference, train_online_run
from prefopt.compare.provenance import environment
from prefopt.compare.report import CompareResult, write_report
from prefopt.compare.reuse import check_reuse, run_fingerprint
from prefopt.compare.samples import write_run_samples
from prefopt.compare.task import SharedTask, check_user_data, eval_batches
from prefopt.compare.workers import run_in_workers, worker_context
from prefopt.eval import evaluate_generations, evaluate_preferences
from prefopt.online.distributed import Processes
from prefopt.online.ilql_heads import has_q_heads, load_q_decoder
from prefopt.online.masked_policy import has_action_mask, load_masked_decoder
from prefopt.progress import library_progress_bars
from prefopt.sampling import sample, sample_texts
from prefopt.threads import torch_threads
from prefopt.train import train

__all__ = ["compare"]


def _evaluate(plan: RunPlan, policy: Any, task: SharedTask, eval_batches: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if eval_batches:
        # β = 1: margins in nats of log-ratio, comparable across losses whatever their own β.
        # a policy whose sampling cuts tokens off (ILQL's top-k) gives its likelihood metrics from its uncut model
        scorer = policy.likelihood_model() if hasattr(policy, "likelihood_model") else policy
        pref = evaluate_preferences(scorer, eval_batches, reference=task.eval_reference, beta=1.0)
        out["preference"] = pref.to_dict(per_example=True)  # per-pair values: CIs over seeds and pairs
    if task.reward is not None:
        cfg = task.config
        prompts = task.prompts("heldout")[: cfg.eval_prompts]
        sampler = sample if task.synthetic is not None else sample_texts
        gen = evaluate_generations(
            policy,
            task.model,
            task.tokenizer,
            prompts,
            reward=task.reward,
            seed=cfg.eval_seed,
            max_new_tokens=cfg.max_new_tokens,
            sampler=sampler,
            reference_samples=task.reference_samples(prompts, sampler),  # drawn once for every run
            sampled_kl=False,  # the exact KL where it applies; k1/k3 only where it does not
        )
        out["generation"] = {**gen.to_dict(per_prompt=True), "prompts": list(prompts)}  # samples.jsonl's texts
    return out


def _load_trained(path: Path) -> Any:
    """The trained policy from its saved folder: a full model, a LoRA adapter merged into its base, a model with
    ILQL heads, which samples with ILQL decoding (`prefopt.online.ilql_heads.load_q_decoder`), or one with NLPO's
    masking policy, which samples inside its action mask (`prefopt.online.masked_policy.load_masked_decoder`)."""
    if has_q_heads(path):
        return load_q_decoder(path)
    if has_action_mask(path):  # NLPO's policy samples inside its action mask
        return load_masked_decoder(path)
    if (path / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM  # heavy: loaded on first use

        return AutoPeftModelForCausalLM.from_pretrained(str(path)).merge_and_unload().eval()
    from transformers import AutoModelForCausalLM  # heavy: loaded on first use

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def _run_one(
    plan: RunPlan, task: SharedTask, eval_batches: list[Any], processes: Processes = Processes()
) -> dict[str, Any]:
    """Train and evaluate one run, or load it if its result.json exists (resuming an interrupted train). Under a
    launcher every process trains, and the main process reads, evaluates and writes (`prefopt.compare.launched`)."""
    config = task.config
    run_dir = Path(config.output_dir) / plan.run_id
    done = run_dir / "result.json"
    # made with these settings: `check_reuse` refused or removed any other
    saved = on_main(processes, lambda: json.loads(done.read_text(encoding="utf-8")) if done.exists() else None)
    if saved is not None:
        return saved
    kind, settings = run_settings(plan, config, run_dir)
    fingerprint = run_fingerprint(plan, config)
    on_main(processes, lambda: _write_run_config(run_dir, plan, kind, settings, fingerprint, config))
    started = time.perf_counter()
    if kind == "rollout":
        result = train_online_run(task, settings)
    elif task.synthetic is not None:
        result = train(
            model=copy.deepcopy(task.model).train().requires_grad_(True),
            tokenizer=task.tokenizer,
            dataset=task.train_dataset(kind, plan.loss),
            **settings,
        )
    else:  # model, model_revision and data are in the settings; the rows less any held-out prompts
        result = train(dataset=task.train_dataset(kind, plan.loss), **settings)
    return on_main(processes, lambda: _evaluated(plan, task, eval_batches, result, started, fingerprint))


def _write_run_config(
    run_dir: Path, plan: RunPlan, kind: str, settings: dict[str, Any], fingerprint: dict[str, Any], config: Any
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        run_dir / "config.json",
        {
            "plan": dataclasses.asdict(plan),
            "label": plan.label,
            ("online" if kind == "rollout" else "train"): settings,
            "compare": config.to_dict(),
            "settings": fingerprint,
        },
    )


def _evaluated(
    plan: RunPlan, task: SharedTask, eval_batches: list[Any], result: Any, started: float, fingerprint: dict[str, Any]
) -> dict[str, Any]:
    """The run's record, evaluated, with its samples.jsonl and then result.json written atomically."""
    config = task.config
    run_dir = Path(config.output_dir) / plan.run_id
    policy = _load_trained(Path(str(result.model_path)))
    record = {
        "label": plan.label,
        "loss": plan.loss,
        "hparams": dict(plan.hparams),
        "seed": plan.seed,
        "run_id": plan.run_id,
        "train": result.to_dict(),
        **_evaluate(plan, policy, task, eval_batches),
    }
    record.update(wall_time_s=time.perf_counter() - started, settings=fingerprint, environment=environment())
    write_run_samples(run_dir, record, config.reward_label)
    write_json_atomic(run_dir / "result.json", record)
    return record


_WORKER: dict[str, Any] = {}  # in a worker process of `CompareConfig.jobs`: its task and evaluation batches


def _worker_start(
    config: CompareConfig, checked: dict[str, Any] | None, shared: tuple[SharedTask, list[Any]] | None
) -> None:
    """A worker's start (`prefopt.compare.workers`): the comparison's thread count, and its shared task and
    evaluation batches: the parent's (`shared`, in a forked worker) or built again (a spawned one)."""
    threads = config.num_threads or (1 if config.synthetic else None)
    if threads is not None:
        torch.set_num_threads(threads)
    if shared is None:
        task = SharedTask(config, checked)
        rows = checked["eval_rows"] if checked and "eval_rows" in checked else task.eval_rows()
        shared = task, eval_batches(task, rows) if rows is not None and len(rows) else []
    task, batches = shared
    task.config = config  # quiet: the parent shows a bar over the runs
    _WORKER.update(task=task, batches=batches)


def _worker_run(plan: RunPlan) -> dict[str, Any]:
    """One run in a worker, quiet (the parent shows a bar over the runs)."""
    with library_progress_bars(False):
        return _run_one(plan, _WORKER["task"], _WORKER["batches"])


def compare(config: CompareConfig | None = None, **settings: Any) -> CompareResult:
    """Run (or resume) every run of `config` and write the report; see the module docstring.

    Pass a `CompareConfig`, or its fields as keyword arguments.
    """
    config = config if config is not None else CompareConfig(**settings)
    config.preflight()  # output folder, model folder, backends: before anything is built or written
    processes = compare_processes(config)  # under torchrun / accelerate launch: this process among them
    threads = config.num_threads or (1 if config.synthetic else None)
    with torch_threads(threads), library_progress_bars(config.progress and processes.main):
        checked = check_user_data(config)  # bad data stops the comparison before the output folder exists
        # one comparison per folder; each run's own train/ folder is locked again by its training
        with claim_on_main(processes, config.output_dir):
            return _compare(config, checked, processes)


def _prepare_folder(config: CompareConfig) -> None:
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_reuse(config)  # runs made with other settings: refused, or removed with config.overwrite
    write_json_atomic(out / "compare_config.json", config.to_dict())


def _compare(
    config: CompareConfig, checked: dict[str, Any] | None = None, processes: Processes = Processes()
) -> CompareResult:
    out = Path(config.output_dir)
    on_main(processes, lambda: _prepare_folder(config))
    with main_first(processes):  # the synthetic task's reference policy is trained and cached once
        task = SharedTask(config, checked)
    rows = checked["eval_rows"] if checked and "eval_rows" in checked else task.eval_rows()
    batches = eval_batches(task, rows) if rows is not None and len(rows) else []
    # the report's footer and ceiling row
    on_main(processes, lambda: write_heldout(out, task.heldout(pairs=len(rows) if batches else 0)))
    plans = config.runs()
    if config.workers > 1 and not processes.launched:  # a launched run already has every process
        context = worker_context()
        shared = (task, batches) if context == "fork" else None  # a forked worker inherits them
        records = run_in_workers(
            plans,
            jobs=config.workers,
            context=context,
            start=_worker_start,
            start_args=(dataclasses.replace(config, progress=False), checked, shared),
            work=_worker_run,
            progress=config.progress,
            describe=lambda plan, record: f"{plan.label} seed {plan.seed}: {record.get('wall_time_s', 0):.0f} s",
        )
    else:
        records = []
        for i, plan in enumerate(plans, start=1):
            if config.progress and processes.main:
                print(f"[{i}/{len(plans)}] {plan.label} seed {plan.seed}", flush=True)
            records.append(_run_one(plan, task, batches, processes))
    return on_main(processes, lambda: _report(config, task, records))


def _report(config: CompareConfig, task: SharedTask, records: list[dict[str, Any]]) -> CompareResult:
    best_of_n = None
    if "best_of_n" in config.losses and task.reward is not None:
        best_of_n = best_of_n_reference(task, Path(config.output_dir) / "best_of_n.json")
    return write_report(records, config, best_of_n=best_of_n)
