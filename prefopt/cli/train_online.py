"""`prefopt train-online`: one online run (`prefopt.online.train_online`): generate → score → rollout loss.

Settings, later winning: `OnlineConfig`'s defaults ← the `--config` YAML file ← the flags given ← `--set`.
`--loss` sets OnlineConfig.algorithm; `--set HPARAM=V` goes to its loss, `--set PAIR_LOSS.HPARAM=V` to
`--pair-loss`'s.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

from prefopt.cli.choices import (
    BACKENDS,
    GENERATION_BACKENDS,
    IMPORTANCE_SAMPLING,
    KL_ESTIMATORS,
    MASTER_WEIGHTS,
    MIXED_PRECISION,
    ONLINE,
    PAIRED,
    QUANTIZATION,
    SAVE_DTYPES,
    SHARE_PROMPT,
)
from prefopt.cli.command import ConfigCommand, FlagAction, Option, Switch, print_result
from prefopt.cli.settings import join_rewards, merge_pairs, parse_assignments
from prefopt.cli.train import MASTER_WEIGHTS_HELP, MIXED_PRECISION_HELP, SAVE_DTYPE_HELP
from prefopt.online.config import OnlineConfig
from prefopt.online.generation_batching import BATCHING
from prefopt.online.lean_decoder import DECODERS
from prefopt.online.reward_spec import check_reward_columns
from prefopt.online.setup import load_prompt_rows
from prefopt.online.trainer import train_online

__all__ = ["COMMAND", "TrainOnlineCommand", "config_from_args", "main"]


class TrainOnlineCommand(ConfigCommand):
    name = "train-online"
    help = "train a policy online: generate → score → rollout loss"
    description = (
        "Train a policy online: each step samples completions for a batch of prompts, scores them (the synthetic "
        "task's gold reward, a reward model from `prefopt train-rm`, or Python functions) and takes a rollout "
        "loss. With no model it trains the synthetic task's policy. Settings, later winning: the defaults, the "
        "--config file, the flags. Prints the result as JSON."
    )
    examples = """\
examples:
  prefopt train-online                                  # RLOO on the built-in synthetic task, gold reward
  prefopt train-online --loss ppo --steps 60 --kl-coef 0.05 --out runs/ppo
  prefopt train-online --loss online_dpo --pair-loss ipo --set ipo.beta=0.5
  prefopt train-online --model path/to/sft --reward runs/rm/final --prompts prompts.jsonl --lr 1e-6
  prefopt train-online --loss grpo --reward my_rewards:format_reward,my_rewards:accuracy --reward-weights 0.2,1
  prefopt train-online --loss dapo --overlong-buffer 16 --no-dynamic-sampling
  prefopt train-online --loss grpo --importance-sampling token --importance-sampling-cap 2
  prefopt train-online --loss reinforce_pp --set baseline=group --num-minibatches 4
  prefopt train-online --loss grpo --model path/to/sft --generation-backend vllm     # a CUDA machine with vLLM
  prefopt train-online --loss ppo --model path/to/sft --lora-r 16 --quantization 4bit # π_ref: the adapter off
  prefopt train-online --config online.yaml --set beta=0.0 --resume"""
    config = OnlineConfig
    config_name = "OnlineConfig"
    loss_field = "algorithm"
    flags = {
        "--loss": Option(
            "algorithm",
            str,
            "the rollout loss to train (default rloo; `prefopt losses NAME` describes one)",
            choices=ONLINE.names,
            explain=ONLINE.explain,
            metavar="LOSS",
        ),
        "--pair-loss": Option(
            "pair_loss",
            str,
            "with --loss online_dpo: the paired loss of each prompt's best/worst pair (default: DPO)",
            choices=PAIRED.names,
            explain=lambda where: PAIRED.explain(where, suggest=False),
            metavar="LOSS",
        ),
        "--model": Option("model", str, "policy: causal LM path or Hub name (default: the synthetic task's policy)"),
        "--tokenizer": Option("tokenizer", str, "tokenizer path (default: the model's)"),
        "--model-revision": Option(
            "model_revision", str, "hub revision (branch, tag or commit) of --model and its tokenizer"
        ),
        "--reward": Option(
            "reward",
            str,
            "'gold' (the synthetic task's gold reward), a saved reward model's folder, or a Python function "
            "module:function (TRL's reward-function convention); several: comma-separated or the flag repeated",
            repeat=True,
        ),
        "--reward-weights": Option(
            "reward_weights", str, "one weight per --reward function, e.g. 1.0,0.5 (default 1 each)", metavar="W,W,..."
        ),
        "--value-model": Option("value_model", str, "PPO: reward model folder to initialise the critic from"),
        "--lora-r": Option("lora_r", int, "LoRA rank (0: full fine-tuning; else π_ref is the adapter-disabled base)"),
        "--lora-alpha": Option("lora_alpha", float, "LoRA α (default 2r)"),
        "--lora-dropout": Option("lora_dropout", float, "LoRA dropout"),
        "--quantization": Option(
            "quantization", str, "bitsandbytes loading of the base model (needs --lora-r)", choices=QUANTIZATION
        ),
        "--prompts": Option("prompts", str, "prompt file: .txt one per line, or .jsonl with a `prompt` column"),
        "--out": Option("output_dir", str, "run folder (default runs/online)", metavar="DIR"),
        "--steps": Option("steps", int, "rollout steps"),
        "--prompts-per-step": Option("prompts_per_step", int, "B prompts per rollout"),
        "--num-samples": Option("num_samples", int, "K completions per prompt (default: the loss's)"),
        "--max-new-tokens": Option("max_new_tokens", int, "completion length cap"),
        "--temperature": Option("temperature", float, "sampling temperature"),
        "--top-p": Option("top_p", float, "nucleus sampling mass"),
        "--generation-batch-size": Option("generation_batch_size", int, "prompts per generate call"),
        "--generation-batching": Option(
            "generation_batching",
            str,
            "hf: which prompts share a generate call: auto (default), padded (left-padded chunks) or length",
            choices=BATCHING,
        ),
        "--generation-decoder": Option(
            "generation_decoder",
            str,
            "hf: what decodes: auto (default: the lean decoder on Llama, Mistral and Qwen2 policies, the same draws "
            "as generate; generate elsewhere), hf (generate) or lean",
            choices=DECODERS,
        ),
        "--generation-backend": Option(
            "generation_backend",
            str,
            "what samples the rollouts: hf (the policy's generate, default), vllm (a vLLM engine in this process, "
            "the weights loaded into it after each update) or vllm_server (a `trl vllm-serve` server at "
            "--vllm-server-url); vLLM needs a CUDA device",
            choices=GENERATION_BACKENDS,
        ),
        "--vllm-gpu-memory-utilization": Option(
            "vllm_gpu_memory_utilization",
            float,
            "vllm: share of the GPU memory vLLM may take (default 0.3)",
            metavar="SHARE",
        ),
        "--vllm-server-url": Option(
            "vllm_server_url", str, "vllm_server: the server's URL (default http://localhost:8000)", metavar="URL"
        ),
        "--vllm-server-timeout": Option(
            "vllm_server_timeout", float, "vllm_server: seconds to wait for the server (default 240)", metavar="S"
        ),
        "--vllm-group-port": Option(
            "vllm_group_port",
            int,
            "vllm_server: port of the NCCL group the weights go through (default 51216)",
            metavar="PORT",
        ),
        "--lr": Option("lr", float, "policy learning rate (default: 2e-4 synthetic, 1e-6 otherwise)"),
        "--value-lr": Option("value_lr", float, "critic learning rate (default: --lr)"),
        "--weight-decay": Option("weight_decay", float, "Adam weight decay"),
        "--max-grad-norm": Option("max_grad_norm", float, "gradient clipping norm"),
        "--epochs": Option("epochs", int, "optimisation passes per rollout (default: ppo 4, else 1)"),
        "--num-minibatches": Option("num_minibatches", int, "minibatches per pass (split by prompt)"),
        "--kl-coef": Option("kl_coef", float, "PPO: β of the KL-shaped reward"),
        "--kl-estimator": Option(
            "kl_estimator", str, "PPO: per-token KL estimator of the shaped reward", choices=KL_ESTIMATORS
        ),
        "--kl-target": Option("kl_target", float, "PPO: adaptive KL controller target (nats)"),
        "--kl-horizon": Option("kl_horizon", float, "PPO: adaptive KL controller horizon"),
        "--gamma": Option("gamma", float, "PPO: GAE discount γ"),
        "--lam": Option("lam", float, "PPO: GAE λ"),
        "--missing-eos-penalty": Option(
            "missing_eos_penalty", float, "subtract from the score of unfinished completions"
        ),
        "--dynamic-sampling": Switch(
            "dynamic_sampling", True, "drop prompts whose samples all score the same; sample more to refill (DAPO)"
        ),
        "--no-dynamic-sampling": Switch("dynamic_sampling", False, "keep every prompt (default but for dapo)"),
        "--max-sampling-rounds": Option(
            "max_sampling_rounds", int, "dynamic sampling: most generation rounds per step (default 10)"
        ),
        "--overlong-shaping": Switch(
            "overlong_shaping", True, "add DAPO's soft overlong penalty to the scores (on by default for dapo)"
        ),
        "--no-overlong-shaping": Switch("overlong_shaping", False, "no overlong penalty"),
        "--overlong-buffer": Option(
            "overlong_buffer", int, "overlong penalty: the last N tokens before --max-new-tokens (default: a fifth)"
        ),
        "--overlong-factor": Option("overlong_factor", float, "overlong penalty at the limit (default 1)"),
        "--importance-sampling": Option(
            "importance_sampling",
            str,
            "truncated importance sampling: weight each token's gradient by min(π_old/π_sampler, cap), per token "
            "or per sequence, correcting a sampler whose log-probs differ from the learner's (default off)",
            choices=IMPORTANCE_SAMPLING,
        ),
        "--importance-sampling-cap": Option(
            "importance_sampling_cap", float, "the cap C of the importance ratio (default 2, TRL's)", metavar="C"
        ),
        "--seed": Option("seed", int, "seed of prompt order, sampling and the critic head"),
        "--checkpoint-every": Option("checkpoint_every", int, "checkpoint every N steps (default 20; 0: final only)"),
        "--num-threads": Option("num_threads", int, "torch threads (default: 1 on the synthetic task)"),
        "--engine-backend": Option(
            "engine_backend", str, "output-head kernel (auto: Triton on CUDA, else chunked)", choices=BACKENDS
        ),
        "--reference-kl": Option(
            "reference_kl",
            str,
            "auto (default): score the reference only where the run reads it, so β = 0 logs no objective/kl, as "
            "TRL; always: every step, for objective/kl",
            choices=("auto", "always"),
        ),
        "--share-prompt": Option(
            "share_prompt",
            str,
            "read each prompt once for its K samples when scoring a rollout, behind a block mask "
            "(auto: where it saves a fifth of the positions, on models that take the mask)",
            choices=SHARE_PROMPT,
        ),
        "--mixed-precision": Option("mixed_precision", str, MIXED_PRECISION_HELP, choices=MIXED_PRECISION),
        "--master-weights": Option("master_weights", str, MASTER_WEIGHTS_HELP, choices=MASTER_WEIGHTS),
        "--save-dtype": Option("save_dtype", str, SAVE_DTYPE_HELP, choices=SAVE_DTYPES),
        "--no-whiten-advantages": Switch("whiten_advantages", False, "PPO: keep the raw GAE advantages"),
        "--fsdp": Switch(
            "fsdp", True, "shard the policy's decoder layers over the launch's processes with FSDP2 (fully_shard)"
        ),
        "--resume": Switch("resume", True, "continue from the newest checkpoint in --out"),
        "--quiet": Switch("progress", False, "no progress bar"),
    }
    deprecated = {
        "--algorithm": "--loss",
        "--no-progress": "--quiet",
        "--hparam": "--set",
        "--pair-hparam": "--set PAIR_LOSS.HPARAM=VALUE",
    }

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--pair-hparam",
            dest="pair_hparams",
            action=FlagAction,
            repeat=True,
            default=[],
            replaced_by=self.deprecated["--pair-hparam"],
            help=argparse.SUPPRESS,
        )

    def hparam_fields(self, values: Mapping[str, Any]) -> dict[str, str]:
        fields = super().hparam_fields(values)
        if values.get("pair_loss") is not None:
            fields.setdefault(str(values["pair_loss"]), "pair_loss_hparams")
        return fields

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        values = super().values(args)
        merge_pairs(values, "pair_loss_hparams", parse_assignments(args.pair_hparams, "--pair-hparam"))
        return join_rewards(values)

    def validate(self, config: Any) -> None:
        super().validate(config)
        columns = load_prompt_rows(config.prompts)[1] if config.prompts is not None else {}
        source = config.prompts if config.prompts is not None else "the synthetic task's prompts"
        check_reward_columns(config.reward, columns, "OnlineConfig.reward", source)

    def execute(self, config: Any, args: argparse.Namespace) -> int:
        result = train_online(config)
        print_result(json.dumps(result.to_dict(), indent=2))
        return 0


COMMAND = TrainOnlineCommand()


def config_from_args(args: argparse.Namespace) -> OnlineConfig:
    """The `OnlineConfig` of parsed `prefopt train-online` arguments (defaults ← YAML ← flags ← --set)."""
    return COMMAND.settings(args)


def main(argv: Sequence[str] | None = None) -> int:
    """`prefopt train-online` with `argv` (the arguments after `train-online`)."""
    return COMMAND.main(argv)
