"""Every command-line mistake ends the command with one line on stderr and exit code 2, before anything is
built, and leaves nothing behind.

Each case runs `prefopt.cli.main(argv)` in-process from an empty working folder, with the expensive
builders (synthetic task, reference policy, `from_pretrained`, the run's set-up, a reproduction) replaced
by a failure: a mistake found only after one of them started is a failing test. The case then checks
exit code 2, exactly one stderr line `prefopt <command>: ...` holding the key words (the flag, field or
file), no traceback, and an unchanged working folder (no run folder, no config.json, no lock).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import prefopt.preflight
from prefopt.cli import main
from prefopt.cli.settings import read_settings_file
from prefopt.settings import SettingsError

from .train.tiny_task import write_tiny_task

YAML = {
    "syntax.yaml": "lr: [1, 2\nloss: dpo\n",
    "pyobj.yaml": "lr: !!python/object:os.system {}\n",
    "resume_no.yaml": 'resume: "no"\n',
    "unknown.yaml": "learning_rate: 1.0e-5\n",
    "list.yaml": "- dpo\n- ipo\n",
    "hparams_int.yaml": "loss_hparams: 3\n",
    "targets_int.yaml": "lora_targets: 5\n",
    "batch_float.yaml": "batch_size: 2.5\n",
    "out_null.yaml": "output_dir: ~\n",
    "betas_short.yaml": "adam_betas: [0.9]\n",
    "steps_text.yaml": "steps: ten\n",
    "seeds_text.yaml": "seeds: [0, x]\n",
    "losses_typo.yaml": "losss: [dpo]\n",
    "losses_empty.yaml": "losses: []\n",
    "hparams_not_mapping.yaml": "hparams: {dpo: 3}\n",
    "train_not_mapping.yaml": "train: 5\n",
}

# (command and arguments with {placeholders}, words the one line must hold)
CASES: list[tuple[str, tuple[str, ...]]] = [
    # model, tokenizer and reference paths
    ("train --model /nonexistent/model --data {data}", ("TrainConfig.model", "neither a folder", "hub name")),
    ("train --model {notmodel} --data {data}", ("TrainConfig.model", "not a model folder", "config.json")),
    ("train --model {trunc} --data {data}", ("TrainConfig.model", "model.safetensors", "truncated")),
    ("train --model {notok} --data {data}", ("TrainConfig.model", "no tokenizer", "--tokenizer")),
    ("train --model {nomodelweights} --data {data}", ("TrainConfig.model", "no weights")),
    ("train --model {file} --data {data}", ("TrainConfig.model", "is a file")),
    ("train --model {model} --data {data} --tokenizer /nonexistent/tok", ("TrainConfig.tokenizer",)),
    ("train --model {model} --data {data} --tokenizer {notmodel}", ("TrainConfig.tokenizer", "no tokenizer")),
    ("train --model {model} --data {data} --reference /nonexistent/ref", ("TrainConfig.reference",)),
    ("train --model {model} --data {data} --reference {trunc}", ("TrainConfig.reference", "truncated")),
    ("train --model ~/prefopt-no-such-model --data {data}", ("TrainConfig.model", "neither a folder")),
    ("train --model org/prefopt-never-cached --data {data}", ("TrainConfig.model", "HF_HUB_OFFLINE", "cache")),
    ("train --model-revision v1", ("model_revision", "model")),
    ("train --model {model} --data {data} --reference-revision v1", ("reference_revision", "reference")),
    ("train --tokenizer {model}", ("TrainConfig.tokenizer", "model is None")),
    ("train-online --model /nonexistent/model", ("OnlineConfig.model", "neither a folder")),
    ("train-online --model {trunc}", ("OnlineConfig.model", "truncated")),
    ("train-online --model {notok}", ("OnlineConfig.model", "no tokenizer")),
    ("train-online --model {model} --value-model {notmodel}", ("OnlineConfig.value_model", "not a model folder")),
    ("train-rm --model /nonexistent/model", ("RewardModelConfig.model", "neither a folder")),
    ("train-rm --model {trunc}", ("RewardModelConfig.model", "truncated")),
    ("compare --data {data} --model /nonexistent/model", ("CompareConfig.model", "neither a folder")),
    ("compare --data {data} --model {trunc}", ("CompareConfig.model", "truncated")),
    ("compare --data {data} --model {model} --reward /nonexistent/rm --losses dpo", ("reward",)),
    # output folders
    ("train --out {file}", ("output_dir", "--out", "is a file")),
    ("train --out {ro}/x", ("output_dir", "--out", "not writable")),
    ("train --ref-cache-dir {file}", ("ref_cache_dir", "is a file")),
    ("train-online --out {file}", ("output_dir", "--out", "is a file")),
    ("train-online --out {ro}/x", ("output_dir", "not writable")),
    ("train-rm --out {file}", ("output_dir", "--out", "is a file")),
    ("train-rm --out {ro}/x", ("output_dir", "not writable")),
    ("compare --out {file}", ("output_dir", "--out", "is a file")),
    ("compare --out {ro}/x", ("output_dir", "not writable")),
    ("reproduce single-pair --out {file}", ("--out", "is a file")),
    ("reproduce single-pair --out {ro}/x", ("--out", "not writable")),
    ("data synth --out {file}", ("--out", "is a file")),
    ("data synth --out {ro}/x", ("--out", "not writable")),
    ("data synth --out x --cache-dir {file}", ("--cache-dir", "is a file")),
    ("train --resume --out runs/never-ran", ("--resume", "runs/never-ran", "no run to resume")),
    ("train-online --resume --out runs/never-ran", ("--resume", "no run to resume")),
    ("train-rm --resume --out runs/never-ran", ("--resume", "no run to resume")),
    # config files
    ("train --config {dir}/missing.yaml", ("--config", "missing.yaml", "no such file")),
    ("train --config {dir}", ("--config", "is a folder")),
    ("train --config {dir}/syntax.yaml", ("--config", "syntax.yaml", "not valid YAML", "line 2")),
    ("train --config {dir}/pyobj.yaml", ("pyobj.yaml", "!!python/object", "not allowed")),
    ("train --config {dir}/resume_no.yaml", ("TrainConfig.resume", "true or false")),
    ("train --config {dir}/unknown.yaml", ("learning_rate", "unknown.yaml", "did you mean lr")),
    ("train --config {dir}/list.yaml", ("list.yaml", "expected a mapping")),
    ("train --config {dir}/hparams_int.yaml", ("TrainConfig.loss_hparams", "mapping")),
    ("train --config {dir}/targets_int.yaml", ("TrainConfig.lora_targets",)),
    ("train --config {dir}/batch_float.yaml", ("TrainConfig.batch_size", "integer")),
    ("train --config {dir}/out_null.yaml", ("TrainConfig.output_dir", "null")),
    ("train-online --config {dir}/pyobj.yaml", ("pyobj.yaml", "!!python/object")),
    ("train-online --config {dir}/betas_short.yaml", ("OnlineConfig.adam_betas", "2 values")),
    ("train-online --config {dir}/steps_text.yaml", ("OnlineConfig.steps", "integer")),
    ("train-online --config {dir}/resume_no.yaml", ("OnlineConfig.resume", "true or false")),
    ("train-rm --config {dir}/missing.yaml", ("--config", "no such file")),
    ("train-rm --config {dir}/unknown.yaml", ("RewardModelConfig", "learning_rate")),
    ("train-rm --config {dir}/resume_no.yaml", ("RewardModelConfig.resume",)),
    ("compare --config {dir}/pyobj.yaml", ("pyobj.yaml", "!!python/object")),
    ("compare --config {dir}/seeds_text.yaml", ("CompareConfig.seeds[1]", "integer")),
    ("compare --config {dir}/losses_typo.yaml", ("losss", "did you mean losses")),
    ("compare --config {dir}/losses_empty.yaml", ("CompareConfig.losses", "empty")),
    ("compare --config {dir}/hparams_not_mapping.yaml", ("CompareConfig.hparams['dpo']", "mapping")),
    ("compare --config {dir}/train_not_mapping.yaml", ("CompareConfig.train", "mapping")),
    # numbers: negative, zero, nan, inf, text
    ("train --lr nan", ("--lr", "finite")),
    ("train --lr inf", ("--lr", "finite")),
    ("train --lr abc", ("--lr", "number")),
    ("train --lr -1", ("lr", "positive")),
    ("train --epochs 0", ("epochs",)),
    ("train --batch-size 0", ("batch_size",)),
    ("train --batch-size abc", ("--batch-size", "invalid int")),
    ("train --max-length 1", ("max_length", "max_prompt_length")),
    ("train --max-prompt-length 600", ("max_prompt_length", "max_length")),
    ("train --micro-batch-size 3", ("micro_batch_size",)),
    ("train --warmup-ratio 2", ("warmup_ratio",)),
    ("train --weight-decay -1", ("weight_decay",)),
    ("train --max-grad-norm 0", ("max_grad_norm",)),
    ("train --lora-dropout 1.5", ("lora_dropout",)),
    ("train --lora-alpha 0", ("lora_alpha",)),
    ("train --lora-r -2", ("lora_r",)),
    ("train --fsdp --lora-r 4", ("TrainConfig.fsdp", "lora_r=0")),
    ("train --fsdp --resume", ("TrainConfig.fsdp", "fsdp=False")),
    ("train --seed -1", ("seed",)),
    ("train --log-every 0", ("log_every",)),
    ("train --set beta=abc", ("beta", "number")),
    ("train --set beta=-1", ("beta", "domain")),
    ("train --set beta=nan", ("beta",)),
    ("train --set bogus=1", ("bogus",)),
    ("train --set beta", ("--set", "NAME=VALUE")),
    ("train --set ipo.beta=0.1", ("--set", "ipo", "not a loss of this run")),
    ("train --loss dpo:1+sft:1 --set gamma=1", ("dpo:1+sft:1", "no part takes", "gamma", "dpo: beta")),
    ("train --loss dpo:1+sft:1 --set ipo.beta=1", ("--set", "ipo", "not a loss of this run", "parts are dpo, sft")),
    ("train --loss dpo:1+sft:1 --set dpo.beta=-2", ("dpo.beta=-2", "domain")),
    ("train-online --steps -3", ("OnlineConfig.steps",)),
    ("train-online --steps 0", ("OnlineConfig.steps",)),
    ("train-online --temperature nan", ("--temperature", "finite")),
    ("train-online --top-p 0", ("top_p",)),
    ("train-online --gamma 2", ("gamma",)),
    ("train-online --lr -1e-3", ("lr",)),
    ("train-online --num-minibatches 100", ("num_minibatches", "prompts_per_step")),
    ("train-online --num-samples 1", ("num_samples",)),
    ("train-online --loss grpo --fsdp --lora-r 4", ("OnlineConfig.fsdp", "lora_r=0")),
    ("train-online --loss remax --fsdp", ("OnlineConfig.fsdp", "algorithm='remax'", "drop fsdp")),
    ("train-online --loss grpo --fsdp --resume", ("OnlineConfig.fsdp", "resume", "fsdp=False")),
    ("train-online --loss grpo --fsdp", ("OnlineConfig.fsdp", "torchrun", "drop fsdp")),
    ("train-online --set beta=x", ("beta",)),
    ("train-online --importance-sampling tokens", ("--importance-sampling", "token")),
    ("train-online --importance-sampling-cap 0.5", ("OnlineConfig.importance_sampling_cap", "≥ 1")),
    ("train-online --loss online_dpo --pair-loss ipo --importance-sampling token", ("importance_sampling", "off")),
    (  # a quantised base trains fp32 LoRA adapters only, offline and online alike
        "train-online --model {model} --lora-r 4 --quantization 8bit --master-weights bf16",
        ("OnlineConfig", "master_weights='bf16'", "quantization='8bit'", "master_weights='fp32'"),
    ),
    (
        "train --model {model} --data {data} --lora-r 4 --quantization 8bit --master-weights bf16",
        ("TrainConfig", "master_weights='bf16'", "quantization='8bit'", "master_weights='fp32'"),
    ),
    ("train-rm --lr nan", ("--lr", "finite")),
    ("train-rm --epochs inf", ("--epochs", "finite")),
    ("train-rm --hidden-size 0", ("hidden_size",)),
    ("train-rm --eval-batch-size 0", ("eval_batch_size",)),
    ("train-rm --max-prompt-length 600", ("max_prompt_length",)),
    ("compare --seeds 0,x", ("CompareConfig.seeds[1]", "'x'", "integer")),
    ("compare --seeds ,", ("CompareConfig.seeds", "non-empty")),
    ("compare --bon-n 1,two", ("CompareConfig.bon_n[1]", "'two'")),
    ("compare --lr nan", ("--lr", "finite")),
    ("compare --epochs -1", ("epochs",)),
    ("compare --set dpo.beta", ("--set", "LOSS.HPARAM=VALUE")),
    ("compare --set beta=0.1", ("--set", "LOSS.HPARAM=VALUE")),
    ("compare --set dpo.beta=abc", ("beta", "number")),
    ("compare --set dpo.beta=nan", ("beta",)),
    ("compare --train lr=nan", ("CompareConfig.train.lr", "finite")),
    ("compare --train lr=fast", ("CompareConfig.train.lr", "number")),
    ("compare --train max_length=1", ("max_length",)),
    ("compare --train resume=no", ("resume",)),
    ("compare --train lr", ("--train", "NAME=VALUE")),
    ("compare --online steps=-3", ("CompareConfig.online", "steps")),
    ("compare --online steps=x", ("CompareConfig.online.steps", "integer")),
    ('compare --losses nlpo --online action_mask={{"top":1}}', ("OnlineConfig.action_mask", "top_p")),
    ('compare --losses ilql --online q_learning={{"alpha":2}}', ("OnlineConfig.q_learning.alpha", "(0, 1]")),
    ("compare --losses nlpo --online action_mask=5", ("OnlineConfig.action_mask", "mapping", "JSON")),
    ("compare --losses dpo,rloo --online steps=-3", ("steps",)),
    ("compare --eval-prompts 0", ("eval_prompts",)),
    ("compare --max-new-tokens -1", ("max_new_tokens",)),
    ("compare --losses dpo,best_of_n --bon-n 32", ("bon_n",)),
    ("compare --losses dpo,best_of_n --bon-samples 0", ("bon_samples",)),
    ("reproduce single-pair --seeds 0", ("--seeds",)),
    ("reproduce single-pair --seeds x", ("--seeds", "integers")),
    ("reproduce single-pair --seeds 1,2", ("--seeds", "0,1")),
    ("data synth --out x --train-prompts -1", ("train_prompts",)),
    ("data synth --out x --label-temperature nan", ("--label-temperature", "finite")),
    ("data synth --out x --label-temperature -1", ("label_temperature",)),
    ("data synth --out x -k 1", ("completions_per_prompt",)),
    ("data synth --out x --seed -1", ("--seed",)),
    # names, choices, unknown keys and flags, conflicts
    ("train --loss bogus", ("unknown loss", "bogus")),
    ("train --loss ppo", ("TrainConfig.loss", "online", "prefopt train-online --loss ppo")),
    ("train --loss dpo:0.8+kto:1", ("TrainConfig.loss", "different data kinds", "dpo: paired", "kto: unpaired")),
    ("train --loss dpoo:0.8+sft:1", ("TrainConfig.loss", "unknown loss", "'dpoo'", "Did you mean 'dpo'")),
    ("train --loss dpo:-1+sft:1", ("TrainConfig.loss", "weight of dpo is -1", "≥ 0")),
    ("train --loss dpo:x+sft:1", ("TrainConfig.loss", "weight of dpo is 'x'", "not a number")),
    ("train --loss dpo:1+dpo:2", ("TrainConfig.loss", "listed twice")),
    ("train --loss ppo:1+grpo:1", ("TrainConfig.loss", "rollout", "offline log-prob")),
    ("train --engine-backend bogus", ("engine_backend",)),
    ("train --share-prompt yes", ("share_prompt", "'auto', 'on', 'off'")),
    ("compare --train share_prompt=yes", ("TrainConfig.share_prompt", "'auto', 'on', 'off'")),
    ("train --mixed-precision fp16", ("mixed_precision",)),
    ("train --quantization 4bit", ("quantization", "lora_r")),
    ("train --optimizer bogus", ("optimizer",)),
    ("train --schedule bogus", ("schedule",)),
    ("train --preset bogus", ("preset", "bogus")),
    ("train --recipe bogus", ("recipe", "bogus")),
    ("train --smoke", ("--smoke", "--recipe")),
    ("train --report-to bogus", ("--report-to",)),
    ("train --bogus-flag", ("unrecognized", "--bogus-flag")),
    ("train-online --loss dpo", ("OnlineConfig.algorithm", "prefopt train --loss dpo")),
    ("train-online --pair-loss ppo", ("OnlineConfig.pair_loss", "rollout")),
    ("train-online --kl-estimator k2", ("kl_estimator",)),
    ("train-online --quantization 8bit", ("quantization", "lora_r")),
    ("train-online --lora-r 4 --quantization 4bit", ("OnlineConfig.quantization", "OnlineConfig.model")),
    ("train-online --lora-r -1", ("OnlineConfig.lora_r",)),
    ("train-online --lora-r 4 --lora-dropout 1", ("OnlineConfig.lora_dropout", "[0, 1)")),
    ("train-online --lora-r 4 --loss nlpo", ("OnlineConfig.lora_r", "lora_r=0")),
    ("train-online --pair-loss ipo", ("pair_loss", "online_dpo")),
    ("train-online --reward /nonexistent/rm", ("OnlineConfig.reward",)),
    ("train-online --prompts /nonexistent/p.txt", ("OnlineConfig.prompts",)),
    # --reward module:function (tests.online.reward_callables holds the functions named here)
    ("train-online --reward no_such_module_xyz:f", ("OnlineConfig.reward", "no module named 'no_such_module_xyz'")),
    (
        "train-online --reward tests.online.reward_callables:lenght_reward",
        ("no attribute", "did you mean length_reward"),
    ),
    ("train-online --reward tests.online.reward_callables:NOT_CALLABLE", ("NOT_CALLABLE", "not callable")),
    ("train-online --reward prefopt.online.lexical_rewards:rouge_l", ("rouge_l", "needs the column 'references'")),
    ("train-online --reward tests.online.reward_callables:LengthReward", ("LengthReward", "is a class")),
    ("train-online --reward tests.online.reward_callables:takes_one", ("takes_one(completion)", "takes neither")),
    ("train-online --reward mod:", ("OnlineConfig.reward='mod:'", "module:function")),
    ("train-online --reward tests.online.reward_callables:topic_reward", ("topic_reward", "needs the column 'topic'")),
    ("train-online --reward gold --reward-weights 1,2", ("reward_weights has 2", "one weight per function")),
    ("train-online --reward-weights 1,x", ("OnlineConfig.reward_weights[1]", "number")),
    ("compare --reward no_such_module_xyz:f --losses rloo", ("CompareConfig.reward", "no module named")),
    ("compare --reward tests.online.reward_callables:topic_reward", ("CompareConfig.reward", "needs the column")),
    ("compare --online reward_weights=1", ("CompareConfig.online", "reward_weights")),
    ("train-online --tokenizer {model}", ("OnlineConfig.tokenizer", "model is None")),
    ("train-online --loss ppo --dynamic-sampling", ("OnlineConfig.dynamic_sampling", "num_samples ≥ 2")),
    (
        "train-online --loss dapo --max-new-tokens 8 --overlong-buffer 9",
        ("OnlineConfig.overlong_buffer", "max_new_tokens"),
    ),
    ("train-online --overlong-factor -1", ("OnlineConfig.overlong_factor", "≥ 0")),
    ("train-online --max-sampling-rounds 0", ("OnlineConfig.max_sampling_rounds",)),
    ("train-online --loss dapo --set epsilon_high=0.3", ("epsilon_high", "clip_high")),
    ("train-online --loss reinforce_pp --set baseline=mean", ("baseline", "none", "group")),
    ("train-rm --loss dpo", ("RewardModelConfig.loss",)),
    ("train-rm --init bogus", ("RewardModelConfig.init",)),
    ("train-rm --device tpu", ("RewardModelConfig.device", "tpu")),
    ("train-rm --model {model} --hidden-size 32", ("hidden_size", "model")),
    ("compare --losses ,", ("CompareConfig.losses", "empty")),
    ("compare --losses dpo,bogus", ("unknown loss", "bogus")),
    ("compare --losses dpo,dpo", ("repeats",)),
    ("compare --losses dpo,dpo:1+kto:1", ("dpo:1+kto:1", "different data kinds")),
    ("compare --losses dpo:1+sft:1 --set dpo:1+sft:1.gamma=1", ("no part takes", "gamma")),
    ("compare --losses dpo:1+sft:1 --set dpo:1+sft:1.ipo.beta=1", ("unknown part", "'ipo'")),
    ("compare --losses bradley_terry", ("bradley_terry", "train-rm")),
    ("compare --data {data}", ("data and model",)),
    ("compare --train bogus=1", ("CompareConfig.train", "bogus")),
    ("compare --train loss=ipo", ("CompareConfig.train", "loss")),
    ("compare --online bogus=1", ("CompareConfig.online", "bogus")),
    ("compare --set ipo.beta=1 --losses dpo", ("hparams", "ipo")),
    ("compare --model-revision v1", ("model_revision",)),
    ("compare --losses dpo --out {stale}", ("made with other settings", "dpo-seed0", "--out", "--overwrite")),
    ("report {dir}/no-such-run", ("no such folder", "--out")),
    ("report {dir}", ("no compare_config.json", "prefopt compare")),
    ("report", ("RUN_DIR",)),
    ("reproduce bogus", ("unknown reproduction", "bogus")),
    ("data synth", ("--out", "required")),
    ("losses bogus", ("unknown loss", "bogus")),
    ("losses --kind bogus", ("--kind",)),
    ("losses --format yaml", ("--format",)),
    ("bogus-command", ("bogus-command",)),
]
# Mistakes only on a machine without CUDA/Triton (elsewhere they are valid settings).
NO_CUDA_CASES = [
    ("train --engine-backend triton", ("TrainConfig.engine_backend", "triton", "CUDA")),
    ("train --engine-backend triton --cpu", ("TrainConfig.engine_backend", "cpu")),
    ("train-online --engine-backend triton", ("OnlineConfig.engine_backend", "triton")),
    ("compare --train engine_backend=triton", ("CompareConfig.train.engine_backend", "triton")),
]


class BuiltTooSoon(BaseException):
    """Raised by the guarded builders: the command got past validation (not an `Exception`, so no
    `except` on the way can turn it into an error message)."""


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli-mistakes")
    tiny = write_tiny_task(root / "tiny", pairs=8)
    model = tiny["model"]
    notmodel = root / "notmodel"
    notmodel.mkdir()
    (notmodel / "notes.txt").write_text("not a model\n")
    trunc = root / "trunc"
    shutil.copytree(model, trunc)
    weights = trunc / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # a copy cut short: the header still parses
    notok = root / "notok"
    notok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model / name, notok / name)
    nomodelweights = root / "noweights"
    nomodelweights.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model / name, nomodelweights / name)
    afile = root / "afile.txt"
    afile.write_text("keep me\n")
    ro = root / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    for name, text in YAML.items():
        (root / name).write_text(text)
    stale = root / "stale"  # a comparison folder whose dpo run recorded other settings
    (stale / "dpo-seed0").mkdir(parents=True)
    (stale / "dpo-seed0" / "result.json").write_text('{"settings": {"format": 1, "loss": "dpo"}}')
    return {
        "dir": str(root),
        "model": str(model),
        "data": str(tiny["paired"]),
        "notmodel": str(notmodel),
        "trunc": str(trunc),
        "notok": str(notok),
        "nomodelweights": str(nomodelweights),
        "file": str(afile),
        "ro": str(ro),
        "stale": str(stale),
    }


@pytest.fixture(autouse=True)
def nothing_is_built(monkeypatch: pytest.MonkeyPatch, paths: dict[str, str]) -> None:
    """Fail the test if a command gets as far as building a task, loading a model or setting up a run;
    and, for root (who writes anywhere), make the read-only folder read-only to `os.access` too."""
    import transformers

    import prefopt.data.synthetic as synthetic
    import prefopt.data.synthetic.task as synthetic_task
    import prefopt.online.trainer as online_trainer
    import prefopt.reproduce as reproduce
    import prefopt.train.loop as loop

    def built(*args: Any, **kwargs: Any) -> Any:
        raise BuiltTooSoon(f"built something before the mistake was reported: args={args!r:.200}")

    for module in (synthetic, synthetic_task):
        monkeypatch.setattr(module, "synthetic_task", built)
        monkeypatch.setattr(module, "reference_policy", built)
    monkeypatch.setattr(loop, "setup_run", built)
    monkeypatch.setattr(online_trainer, "setup_online_run", built)
    for name in ("AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoTokenizer"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", built)
    real = reproduce.get_reproduction
    monkeypatch.setattr(reproduce, "get_reproduction", lambda name: dataclasses.replace(real(name), run=built))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    if os.geteuid() == 0:
        access = os.access

        def no_write_in_ro(path: Any, mode: int, **kwargs: Any) -> bool:
            if str(path).startswith(paths["ro"]) and mode & os.W_OK:
                return False
            return access(path, mode, **kwargs)

        monkeypatch.setattr(prefopt.preflight.os, "access", no_write_in_ro)


def _snapshot(paths: dict[str, str]) -> dict[str, Any]:
    return {"file": Path(paths["file"]).read_text(), "ro": sorted(os.listdir(paths["ro"]))}


def _run(
    argv_text: str,
    paths: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, list[str]]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # `~` expands somewhere that does not exist
    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path / "cache"))
    before = _snapshot(paths)
    code = main(argv_text.format(**paths).split())
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == [], f"left behind: {os.listdir(tmp_path)}"
    assert _snapshot(paths) == before
    return code, [line for line in err.splitlines() if line.strip()]


def _check(
    case: tuple[str, tuple[str, ...]],
    paths: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv_text, words = case
    code, lines = _run(argv_text, paths, tmp_path, monkeypatch, capsys)
    assert code == 2, lines
    assert len(lines) == 1, lines
    command = argv_text.split()[0]
    prefix = (
        "prefopt data synth: "
        if command == "data"
        else ("prefopt: " if command == "bogus-command" else f"prefopt {command}: ")
    )
    assert lines[0].startswith(prefix), lines[0]
    missing = [w for w in words if w.lower() not in lines[0].lower()]
    assert not missing, f"{missing} not in: {lines[0]}"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mistake_is_one_line_and_exit_code_2(case, paths, tmp_path, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    _check(case, paths, tmp_path, monkeypatch, capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="triton is a valid backend on a CUDA machine")
@pytest.mark.parametrize("case", NO_CUDA_CASES, ids=[c[0] for c in NO_CUDA_CASES])
def test_triton_backend_without_cuda(case, paths, tmp_path, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    _check(case, paths, tmp_path, monkeypatch, capsys)


def test_help_and_valid_settings_reach_the_build(paths, tmp_path, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    """The guards are not what stops the cases above: valid settings get past validation to the build."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--help"]) == 0
    assert "--model-revision" in capsys.readouterr().out
    yaml = tmp_path.parent / f"{tmp_path.name}-valid.yaml"
    yaml.write_text("lr: 1e-5\nresume: false\nloss_hparams: {beta: 1e-2}\n")
    with pytest.raises(BuiltTooSoon):
        main(["train", "--config", str(yaml), "--model", paths["model"], "--data", paths["data"]])
    with pytest.raises(BuiltTooSoon):
        main(["compare", "--seeds", "0,1", "--train", "lr=1e-5", "--set", "dpo.beta=1e-2,0.5", "--losses", "dpo"])


def test_yaml_values_are_read_as_their_field_types(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """YAML 1.1 reads `1e-5` (no dot) as text and `"no"` stays text: the config reads each by its field's type."""
    from prefopt.compare import CompareConfig
    from prefopt.online.config import OnlineConfig
    from prefopt.train.config import TrainConfig

    path = tmp_path / "run.yaml"
    path.write_text(
        "lr: 1e-5\nepochs: 2\nbatch_size: '8'\nresume: 'true'\nprogress: no\nmax_steps: null\n"
        "lora_targets: q_proj,v_proj\nloss_hparams: {beta: 5e-2}\n"
    )
    config = TrainConfig.from_dict(read_settings_file(path, "TrainConfig"))
    assert (config.lr, config.epochs, config.batch_size) == (1e-5, 2.0, 8)
    assert isinstance(config.epochs, float) and config.resume is True and config.progress is False
    assert config.max_steps is None and config.lora_targets == ("q_proj", "v_proj")
    assert config.loss_hparams == {"beta": 0.05}
    online = OnlineConfig.from_dict({"adam_betas": "0.9,0.99", "steps": "3", "kl_target": "none"})
    assert online.adam_betas == (0.9, 0.99) and online.steps == 3 and online.kl_target is None
    compare = CompareConfig.from_dict({"losses": "dpo, ipo", "seeds": "0,1", "train": {"lr": "1e-5"}})
    assert compare.losses == ("dpo", "ipo") and compare.seeds == (0, 1) and compare.train == {"lr": 1e-5}
    with pytest.raises(SettingsError, match=r"TrainConfig\.resume='no' must be true or false"):
        TrainConfig.from_dict({"resume": "no"})
    with pytest.raises(SettingsError, match=r"TrainConfig\.lr='nan' must be a finite number"):
        TrainConfig.from_dict({"lr": "nan"})
    with pytest.raises(SettingsError, match=r"TrainConfig\.batch_size=True must be an integer"):
        TrainConfig.from_dict({"batch_size": True})


def test_hub_revisions_reach_from_pretrained(paths, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """--model-revision / --reference-revision pin the hub revision of the policy (and its tokenizer) and of
    the reference; a separate --tokenizer is loaded at its own default."""
    import transformers

    from prefopt.online.config import OnlineConfig
    from prefopt.online.setup import _policy
    from prefopt.train.config import TrainConfig
    from prefopt.train.model import load_model_and_tokenizer

    calls: list[tuple[str, str, dict[str, Any]]] = []

    def recorder(kind: str) -> Any:
        def from_pretrained(name: str, **kwargs: Any) -> Any:
            calls.append((kind, name, kwargs))
            return object()

        return from_pretrained

    for kind in ("AutoModelForCausalLM", "AutoTokenizer"):
        monkeypatch.setattr(getattr(transformers, kind), "from_pretrained", recorder(kind))
    load_model_and_tokenizer(TrainConfig(model="org/policy", model_revision="v1.2"))
    load_model_and_tokenizer(TrainConfig(model="org/policy", model_revision="abc123", tokenizer="org/tok"))
    _policy(OnlineConfig(model="org/policy", model_revision="v3"), None, None)
    assert [(k, n, kw.get("revision")) for k, n, kw in calls] == [
        ("AutoModelForCausalLM", "org/policy", "v1.2"),
        ("AutoTokenizer", "org/policy", "v1.2"),
        ("AutoModelForCausalLM", "org/policy", "abc123"),
        ("AutoTokenizer", "org/tok", None),
        ("AutoModelForCausalLM", "org/policy", "v3"),
        ("AutoTokenizer", "org/policy", "v3"),
    ]
    config = TrainConfig(model="org/policy", reference="org/ref", reference_revision="r7")
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_reference_revision_reaches_the_reference_load(paths, monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    """End to end through `prefopt train`: hub names pass the offline cache check, the policy loads (the tiny
    model stands in), and the reference is loaded at --reference-revision."""
    import transformers

    import prefopt.train.loop as loop
    import prefopt.train.setup as setup

    monkeypatch.setattr(loop, "setup_run", setup.setup_run)  # undo the guard: this run must reach the loads
    monkeypatch.setattr("prefopt.preflight._check_hub_name", lambda *args, **kwargs: None)
    tiny = {
        "AutoModelForCausalLM": transformers.LlamaForCausalLM,
        "AutoTokenizer": transformers.PreTrainedTokenizerFast,
    }
    calls: list[tuple[str, dict[str, Any]]] = []

    def recorder(kind: str) -> Any:
        def from_pretrained(name: str, **kwargs: Any) -> Any:
            calls.append((name, kwargs))
            if name == "org/ref":
                raise BuiltTooSoon("reference loaded")
            return tiny[kind].from_pretrained(paths["model"])

        return from_pretrained

    for kind in tiny:
        monkeypatch.setattr(getattr(transformers, kind), "from_pretrained", recorder(kind))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BuiltTooSoon, match="reference loaded"):
        main(
            [
                "train",
                "--model",
                "org/policy",
                "--model-revision",
                "v1",
                "--reference",
                "org/ref",
                "--reference-revision",
                "v2",
                "--data",
                paths["data"],
                "--batch-size",
                "4",
                "--max-steps",
                "1",
                "--quiet",
            ]
        )
    assert [(name, kw.get("revision")) for name, kw in calls] == [
        ("org/policy", "v1"),
        ("org/policy", "v1"),
        ("org/ref", "v2"),
    ]
