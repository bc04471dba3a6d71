"""The reference (SFT) policy of the synthetic task: a tiny Llama trained from scratch on grammar samples.

    policy = reference_policy(seed=0)        # trains once (≈2 min on 2 CPU cores), then loads from cache
    policy.model, policy.tokenizer, policy.report["acceptance_rate"]

Training is plain next-token cross-entropy on `<s> prompt completion </s>` sequences drawn afresh
from the grammar every step (mixed moods), AdamW with linear warm-up and cosine decay, no dropout.
Everything random flows from `seed` (weights from a forked, seeded torch RNG, data from `random.Random`,
samples from a `torch.Generator`), so the same seed, configuration and machine give the same weights
bit for bit.

Cache: `$PREFOPT_CACHE/synthetic/sft-v{VERSION}-seed{seed}-{config hash}` (default root
`~/.cache/prefopt`). A build writes into a temporary sibling folder and renames it into place, so a
crash or a concurrent build never leaves a half-written model that a later run would load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from prefopt.data.synthetic.language import accepts, sample_review
from prefopt.data.synthetic.tokenizer import build_tokenizer
from prefopt.sampling import sample
from prefopt.threads import torch_threads

__all__ = [
    "VERSION",
    "SFTConfig",
    "ReferencePolicy",
    "cache_root",
    "build_model",
    "train_reference_policy",
    "reference_policy",
    "load_reference_policy",
    "evaluate_policy_language",
]

VERSION = 1  # bump when the language, tokenizer or training recipe changes: old caches are then ignored


@dataclass(frozen=True)
class SFTConfig:
    """Model size and training recipe of the reference policy (defaults: 1.2M parameters, ≈2 min on
    2 CPU cores). `SFTConfig.tiny()` is the test-size configuration.

    Attributes:
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: Llama shape (tied embeddings).
        steps: optimiser steps; batch_size: reviews per step; learning_rate: peak AdamW lr;
        warmup_steps: linear warm-up; weight_decay: AdamW decay on matrices.
        eval_reviews: held-out reviews for perplexity; eval_samples: completions sampled to measure
        grammar acceptance; max_new_tokens: sampling cap.
    """

    hidden_size: int = 160
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 448
    steps: int = 400
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    eval_reviews: int = 256
    eval_samples: int = 256
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("learning_rate", "weight_decay"):
                ok = value > 0 if f.name == "learning_rate" else value >= 0
            else:
                ok = isinstance(value, int) and value >= (0 if f.name == "warmup_steps" else 1)
            if not ok:
                raise ValueError(f"SFTConfig.{f.name}={value!r} is out of range (positive integers; lr > 0)")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"SFTConfig: hidden_size={self.hidden_size} must divide by num_heads={self.num_heads}, "
                f"and num_heads by num_kv_heads={self.num_kv_heads}"
            )

    @classmethod
    def tiny(cls) -> "SFTConfig":
        """A test-size model (≈110k parameters, 300 steps of 32 reviews: ≈11 s of one CPU core)."""
        return cls(
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=192,
            steps=300,
            batch_size=32,
            learning_rate=1e-2,
            warmup_steps=10,
            eval_reviews=64,
            eval_samples=64,
        )

    def fingerprint(self) -> str:
        """12-hex hash of every field (part of the cache key)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class ReferencePolicy:
    """A trained reference policy: `model` (LlamaForCausalLM, eval mode), `tokenizer`, the folder it was
    saved in (None if not cached) and `report` (perplexity, acceptance_rate, distinct_rate, …)."""

    model: Any
    tokenizer: Any
    path: Path | None
    report: dict[str, Any]


def cache_root() -> Path:
    """`$PREFOPT_CACHE` if set, else `~/.cache/prefopt`."""
    env = os.environ.get("PREFOPT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prefopt"


def build_model(config: SFTConfig, vocab_size: int, tokenizer: Any) -> Any:
    """A freshly initialised tiny `LlamaForCausalLM` (uses the global torch RNG; seed it first)."""
    from transformers import LlamaConfig, LlamaForCausalLM  # heavy: loaded on first use

    llama = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
    )
    return LlamaForCausalLM(llama)


def _review_batches(
    tokenizer: Any, rng: random.Random, batch_size: int, buckets: int = 8
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`buckets` batches of `batch_size` fresh reviews, grouped by length to cut padding (reviews vary from
    ≈8 to ≈60 tokens), in random order. Each batch: input_ids [n, T] (right-padded `<s> prompt completion
    </s>`) and labels (−100 on padding)."""
    rows = []
    for _ in range(batch_size * buckets):
        review = sample_review(rng)
        rows.append(tokenizer(review.prompt + review.completion)["input_ids"] + [tokenizer.eos_token_id])
    rows.sort(key=len)
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = len(chunk[-1])
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        for i, row in enumerate(chunk):
            ids[i, : len(row)] = labels[i, : len(row)] = torch.tensor(row)
        batches.append((ids, labels))
    rng.shuffle(batches)
    return batches


def _lr_factor(step: int, config: SFTConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_reference_policy(
    config: SFTConfig, seed: int, *, progress: bool = True, num_threads: int = 1
) -> ReferencePolicy:
    """Train the reference policy from scratch (no cache). Deterministic for (config, seed, machine).

    `num_threads` torch threads are used while training and evaluating (restored afterwards). One
    thread is the default: matrices this small gain little from more, a busy shared machine makes
    OpenMP threads spin-wait (≈15× slower measured on a loaded 2-core box), and the floating-point
    reduction order, hence the weights, then do not depend on the machine's core count.
    """
    with torch_threads(num_threads):
        return _train(config, seed, progress)


def _train(config: SFTConfig, seed: int, progress: bool) -> ReferencePolicy:
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG state
        torch.manual_seed(seed)
        model = build_model(config, len(tokenizer), tokenizer)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    rng = random.Random(seed)
    model.train()
    bar = tqdm(range(config.steps), desc="training synthetic reference policy", disable=not progress)
    queue: list[tuple[torch.Tensor, torch.Tensor]] = []
    for _ in bar:
        queue = queue or _review_batches(tokenizer, rng, config.batch_size)
        ids, labels = queue.pop()
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    report = evaluate_policy_language(model, tokenizer, config, seed)
    report.update(
        seed=seed,
        version=VERSION,
        config=dataclasses.asdict(config),
        final_train_loss=float(loss.detach()),
        parameters=sum(p.numel() for p in model.parameters()),
    )
    return ReferencePolicy(model, tokenizer, None, report)


@torch.no_grad()
def evaluate_policy_language(model: Any, tokenizer: Any, config: SFTConfig, seed: int) -> dict[str, Any]:
    """Perplexity of held-out grammar reviews (completion tokens + EOS), and on sampled completions of
    held-out prompts: the share the grammar accepts, the share of distinct completions, mean words."""
    rng = random.Random(f"eval-{seed}")  # a stream independent of the training data
    reviews = [sample_review(rng) for _ in range(config.eval_reviews)]
    nll, tokens = 0.0, 0
    for review in reviews:
        prompt = tokenizer(review.prompt)["input_ids"]
        ids = torch.tensor(
            [prompt + tokenizer(review.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]
        )
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)  # (T-1, V)
        target = ids[0, 1:]
        picked = logp.gather(-1, target[:, None]).squeeze(-1)[len(prompt) - 1 :]
        nll, tokens = nll - float(picked.sum()), tokens + picked.numel()
    prompts = [sample_review(rng).prompt for _ in range(config.eval_samples)]
    generator = torch.Generator().manual_seed(seed)
    drawn = sample(model, tokenizer, prompts, generator=generator, max_new_tokens=config.max_new_tokens)
    accepted = [accepts(p, c) for p, c in zip(prompts, drawn.completions)]
    return {
        "perplexity": math.exp(nll / tokens),
        "acceptance_rate": sum(accepted) / len(accepted),
        "distinct_rate": len(set(zip(prompts, drawn.completions))) / len(prompts),
        "mean_words": sum(len(c.split()) for c in drawn.completions) / len(prompts),
        "examples": [p + c for p, c in zip(prompts[:5], drawn.completions[:5])],
    }


def _cache_dir(config: SFTConfig, seed: int, root: Path | None) -> Path:
    return (root or cache_root()) / "synthetic" / f"sft-v{VERSION}-seed{seed}-{config.fingerprint()}"


def save_reference_policy(policy: ReferencePolicy, path: Path) -> None:
    """Write model (safetensors), tokenizer and report.json to `path` atomically (temp folder + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        policy.model.save_pretrained(tmp)
        policy.tokenizer.save_pretrained(tmp)
        (tmp / "report.json").write_text(json.dumps(policy.report, indent=2))
        if path.exists():  # another process finished first; theirs is identical by determinism
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    policy.path = path


def load_reference_policy(path: str | Path) -> ReferencePolicy:
    """Load a policy saved by `save_reference_policy` (or `prefopt data synth`) from `path`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: loaded on first use

    path = Path(path)
    if not (path / "report.json").exists():
        raise FileNotFoundError(
            f"{path} holds no synthetic reference policy (no report.json); build one with "
            "prefopt.data.synthetic.reference_policy() or `prefopt data synth --out DIR`"
        )
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return ReferencePolicy(model, tokenizer, path, json.loads((path / "report.json").read_text()))


def reference_policy(
    seed: int = 0,
    config: SFTConfig | None = None,
    *,
    cache_dir: str | Path | None = None,
    rebuild: bool = False,
    progress: bool = True,
) -> ReferencePolicy:
    """The reference policy for `seed`: loaded from the cache, or trained (with a progress bar) and cached.

    Args:
        seed: selects the weights (and the training data stream).
        config: model size and recipe (default `SFTConfig()`); part of the cache key.
        cache_dir: cache root instead of `$PREFOPT_CACHE` / `~/.cache/prefopt`.
        rebuild: train again and replace the cached copy.
        progress: show a tqdm bar while training.
    """
    config = config or SFTConfig()
    path = _cache_dir(config, seed, Path(cache_dir) if cache_dir is not None else None)
    if path.exists() and not rebuild:
        return load_reference_policy(path)
    if rebuild and path.exists():
        shutil.rmtree(path)
    policy = train_reference_policy(config, seed, progress=progress)
    save_reference_policy(policy, path)
    return policy
