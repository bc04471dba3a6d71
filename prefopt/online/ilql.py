"""ILQL training in `train_online`: offline Q-learning on reward-labelled samples of the reference policy
(Snell et al. 2022, arXiv:2206.11871; TRLX `AccelerateILQLTrainer`).

A rollout loss that takes `q_values` (`ilql`) is not trained on its own samples: `train_online` attaches a
`QLearning` to the run and each step is one of this module's, on a fixed data set.

    data       K samples of each of the run's N prompts, drawn once from π_ref (seeded) and scored by the run's
               reward; returns standardised over the data set (TRLX `make_experience`), paid at the last token
    step t     the B prompts of step t (the run's seeded prompt order, cycling) with their K samples:
                   trunk   = engine(π_θ)(batch) and its hidden states (`prefopt.online.trunk`)
                   heads   = V, Q_i, log softmax Q_i at the taken tokens, Q̂ (`prefopt.online.ilql_heads`)
                   loss    = ilql(log π, mask, rewards, V, Q_i, …)   (`prefopt.losses.ilql`)
               backward, one gradient-norm clip over the policy and its heads, Adam step; every `sync_every`
               optimiser steps the target Q heads move towards the Q heads by α (Polyak)
    final/     the language model with `q_heads.safetensors` and `q_heads.json` beside it: loaded by
               `prefopt.online.ilql_heads.load_q_decoder` as a model whose logits are ILQL's decoding scores
               log π + β·(Q̂ − V) (top-k), which is how `prefopt compare` samples and measures it

The heads are part of the policy, as in TRLX's `AutoModelForCausalLMWithILQLHeads`: their parameters join
the policy's optimiser and gradient clip, and their state (target heads included) is saved in each
checkpoint, so a resumed run continues exactly (the data set is drawn again from the same seed). Logged per
step, on the step's data: objective/scores (mean reward, raw), objective/kl (mean Σ_t k1 of π_θ against
π_ref on the reference's samples: an estimate of −KL(π_ref ‖ π_θ), not of the decoding policy's KL, which
`compare` measures), objective/entropy, gen/length, gen/finished of the samples, the loss's terms.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prefopt.online.generation import Rollout, generate
from prefopt.online.group_sampling import generation_config, rollout_scores
from prefopt.online.ilql_heads import ILQLHeads, save_q_heads
from prefopt.online.rollout_step import prompt_minibatches, prompt_rows
from prefopt.online.trunk import to_tokens, trunk_forward
from prefopt.rl import kl_k1, masked_sum

__all__ = ["QLearning"]

Update = Callable[[Any, int, Tensor], float]


class QLearning:
    """ILQL's heads and data set, attached to an `OnlineRun` of a loss that takes `q_values` (module docstring)."""

    def __init__(self, run: Any) -> None:
        config, policy = run.config, run.policy
        self.settings = config.q_learning
        hidden = getattr(policy.config, "hidden_size", None) or getattr(policy.config, "n_embd", None)
        if not isinstance(hidden, int):
            raise ValueError(f"{type(policy).__name__}: cannot read hidden_size from its config for ILQL's heads")
        with torch.random.fork_rng(devices=[]):  # the heads' initial weights: a function of the run's seed
            torch.manual_seed(config.seed * 1_000_003 + 7)
            heads = ILQLHeads(hidden, policy.config.vocab_size, two_qs=self.settings.two_qs)
        self.heads = heads.to(device=next(policy.parameters()).device, dtype=run.precision.master)  # master weights
        run.optimizers["policy"].add_param_group({"params": self.trainable()})
        self.data: tuple[Rollout, Tensor, Tensor] | None = None

    def trainable(self) -> list[nn.Parameter]:
        """The heads' trained parameters (V and Q heads; not the targets)."""
        return [p for p in self.heads.parameters() if p.requires_grad]

    def _dataset(self, run: Any) -> tuple[Rollout, Tensor, Tensor]:
        """(reference samples of every prompt of the run [K·N rows], raw scores [N, K], returns [N, K]), drawn
        once from the run's seed, whatever its number of steps (module docstring)."""
        if self.data is None:
            order, config = run.prompts, run.config
            prompts, columns = order.prompts, order.all_columns
            seed = (config.seed * 1_000_003 + 999_983) * 7
            with torch.no_grad():  # the reference in its own dtype, as the loop runs it
                rollout = generate(run.ref_engine.model, run.tokenizer, prompts, generation_config(config), seed=seed)
            scores = rollout_scores(run, rollout, columns)[0].float()  # [N, K]
            returns = scores
            if self.settings.normalize_returns and scores.numel() > 1:
                returns = (scores - scores.mean()) / (scores.std() + torch.finfo(torch.float32).eps)
            self.data = (rollout, scores, returns)
        return self.data

    def _loss(self, run: Any, batch: Any, returns: Tensor) -> Any:
        """ILQL's loss on one minibatch (with gradient) and the engine's output on it."""
        with run.precision.autocast_context(next(run.policy.parameters()).device):
            trunk = trunk_forward(run.engine, batch, return_entropy=True)
            terms = self.heads.terms(trunk.hidden, trunk.labels)
        tokens = {
            "values": terms.values,
            "q_values": terms.q_values[0],
            "q_logps": terms.q_logps[0],
            "target_q_values": terms.target_q_values,
        }
        if len(terms.q_values) > 1:
            tokens.update(q2_values=terms.q_values[1], q2_logps=terms.q_logps[1])
        policy = trunk.policy
        assert policy.tokens is not None
        inputs = {name: to_tokens(t, trunk.select) for name, t in tokens.items()}
        out = run.loss(policy.tokens, None, batch.completion_mask, rewards=returns, **inputs)
        return out, policy

    def step(self, run: Any, step: int, update: Update) -> dict[str, float]:
        """One ILQL rollout step (its passes over the step's prompts in minibatches); the step's metrics record."""
        started = time.perf_counter()
        rollout, scores, returns = self._dataset(run)
        units = torch.tensor(run.prompts.indices(step))  # [B] positions in the data set
        generator = torch.Generator().manual_seed((run.config.seed * 1_000_003 + step) * 7 + 1)
        sums: dict[str, float] = {}
        updates = 0
        per_step = run.config.passes * run.config.num_minibatches  # optimiser steps per rollout step
        for _ in range(run.config.passes):
            for part in prompt_minibatches(units.numel(), run.config.num_minibatches, generator):
                chosen = units[part]
                rows = prompt_rows(chosen, rollout.num_prompts, rollout.num_samples)  # group-major within the part
                batch = rollout.token_batch(rows)
                out, policy = self._loss(run, batch, returns[chosen])
                metrics = {**out.scalars(), **self._sample_metrics(run, batch, policy, scores[chosen], rollout, rows)}
                metrics["grad_norm"] = update(run, step, out.loss)
                if (step * per_step + updates + 1) % self.settings.sync_every == 0:  # TRLX: after the backward
                    self.heads.sync_targets(self.settings.alpha)
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                updates += 1
        record = {k: v / updates for k, v in sums.items()}
        record.update(step=step + 1, updates=updates, **{"time/step_s": time.perf_counter() - started})
        return record

    @torch.no_grad()
    def _sample_metrics(
        self, run: Any, batch: Any, policy: Any, scores: Tensor, rollout: Rollout, rows: Tensor
    ) -> dict[str, float]:
        """The online loop's objective/* and gen/* metrics, on the minibatch's reference samples."""
        ref = run.ref_engine(batch, return_tokens=True)
        kl = masked_sum(kl_k1(policy.tokens.detach(), ref.tokens), batch.completion_mask, dim=1)  # [S] Σ_t k1
        score, kl_mean = float(scores.mean()), float(kl.mean())
        return {
            "objective/scores": score,
            "objective/kl": kl_mean,
            "objective/non_score_reward": 0.0,
            "objective/rlhf_reward": score,
            "objective/entropy": float(policy.entropy.detach().mean()),
            "kl_coef": 0.0,
            "gen/length": float(rollout.lengths()[rows].float().mean()),
            "gen/finished": float(rollout.finished[rows].float().mean()),
        }

    def save(self, folder: str | Path) -> None:
        """The heads and the decoding settings, beside the language model saved in `folder`."""
        save_q_heads(folder, self.heads, beta=self.settings.beta, top_k=self.settings.top_k)
