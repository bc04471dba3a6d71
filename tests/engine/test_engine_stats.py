"""`engine(batch, return_stats=True)`: the logit statistics TRL logs, from the fused kernel's tiles.

The reference is the plain logits path: `model(...).logits` (the model's own logits: soft-capped, scaled),
the mean over the vocabulary at each completion position summed per sequence in float64, how many
completion tokens are the argmax, and Σ_t log Σ_v p_v² of the engine's distribution softmax(logits / T)
(WPO's alignment). Tolerance 1e-5 in float32.
"""

from __future__ import annotations

import pytest
import torch

from prefopt.batch import TokenBatch
from prefopt.engine import LogProbEngine

from ._engine_batches import make_batch, ragged_examples
from .test_engine import cohere, gemma2, llama, phi


def _logits_reference(
    model: torch.nn.Module, batch: TokenBatch, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logit_sum [S] float64, correct [S] long, Σ_t log Σ_v p_v² [S] float64 with p = softmax(logits / T))
    from the full logits of a padded batch."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].double()
    mask = batch.completion_mask[:, 1:]
    seq = batch.sequence_ids[:, 1:][mask]
    right = (logits.argmax(-1) == batch.input_ids[:, 1:])[mask]
    logit_sum = torch.zeros(batch.num_sequences, dtype=torch.float64).index_add(0, seq, logits.mean(-1)[mask])
    sq = torch.logsumexp(2.0 * torch.log_softmax(logits / temperature, dim=-1), dim=-1)[mask]
    log_sum_sq = torch.zeros(batch.num_sequences, dtype=torch.float64).index_add(0, seq, sq)
    return logit_sum, torch.bincount(seq[right], minlength=batch.num_sequences), log_sum_sq


def _examples_with_argmax_tokens(model: torch.nn.Module, count: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Ragged examples whose completions are greedy continuations half of the time, so that `correct` is
    neither all zero nor all the tokens."""
    examples = []
    for i, (prompt, completion) in enumerate(ragged_examples(count, seed=seed)):
        if i % 2:
            ids = torch.tensor([prompt])
            for _ in range(len(completion)):
                ids = torch.cat([ids, model(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
            completion = ids[0, len(prompt) :].tolist()
        examples.append((prompt, completion))
    return examples


@pytest.mark.parametrize(
    ("build", "temperature", "split", "packed"),
    [
        (llama, 1.0, "auto", True),
        (gemma2, 0.5, "auto", False),  # soft-capped logits, and the engine's temperature undone
        (cohere, 1.0, "auto", True),  # logit_scale
        (phi, 1.0, "auto", False),  # a head bias
        (gemma2, 0.5, "never", False),  # the logits path
    ],
    ids=["llama-packed", "gemma2-T0.5", "cohere-packed", "phi-bias", "logits-path"],
)
def test_stats_equal_the_logits_reference(build, temperature: float, split: str, packed: bool) -> None:
    model = build()
    with torch.no_grad():
        examples = _examples_with_argmax_tokens(model, 6, seed=21)
        logit_sum, correct, log_sum_sq = _logits_reference(model, make_batch(examples), temperature)
    batch = make_batch(examples, packed=packed, row_capacity=24)
    out = LogProbEngine(model, temperature=temperature, split=split)(batch, return_stats=True)
    assert out.logit_sum is not None and out.correct is not None
    assert out.logit_sum.dtype == torch.float32 and not out.logit_sum.requires_grad
    torch.testing.assert_close(out.logit_sum.double(), logit_sum, atol=1e-5, rtol=1e-6)
    assert out.correct.tolist() == correct.tolist()
    assert 0 < int(correct.sum()) < int(out.count.sum())  # the test can tell a wrong flag
    assert out.log_sum_sq_probs is not None and not out.log_sum_sq_probs.requires_grad
    torch.testing.assert_close(out.log_sum_sq_probs.double(), log_sum_sq, atol=1e-5, rtol=1e-6)
    assert (log_sum_sq < -0.1).all()  # far from the one-hot 0: the test can tell a missing term
    assert out.detach().correct is out.correct and LogProbEngine(model)(batch).logit_sum is None


def test_bf16_stats_match_the_bf16_logits_path() -> None:
    """A bf16 model: the kernel's float32 logits against the bf16 logits path, per token; the argmax flag
    agrees wherever the top two bf16 logits are not within bf16 rounding of each other."""
    model = llama().to(torch.bfloat16)
    with torch.no_grad():
        examples = _examples_with_argmax_tokens(model, 6, seed=22)
        batch = make_batch(examples)
        fused = LogProbEngine(model).token_logprobs(batch, return_stats=True).stats
        plain = LogProbEngine(model, split="never").token_logprobs(batch, return_stats=True).stats
        logits = model(input_ids=batch.input_ids).logits[:, :-1][batch.completion_mask[:, 1:]].float()
    assert fused is not None and plain is not None
    scale = logits.abs().amax(-1)
    torch.testing.assert_close(fused.mean, plain.mean, atol=float(scale.max()) * 2**-8, rtol=0)
    top2 = logits.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > scale * 2**-6
    assert clear.sum() > len(clear) // 2 and 0 < int(plain.correct[clear].sum()) < int(clear.sum())
    assert torch.equal(fused.correct[clear], plain.correct[clear])
    # log Σ p² from bf16 logits: the kernel's float32 tiles against the bf16 logits' log-softmax, within the
    # bf16 rounding of the logits (2^-8 relative) that both sides start from
    truth = torch.logsumexp(2.0 * torch.log_softmax(logits.double(), -1), -1)
    assert fused.log_sum_sq_probs is not None and plain.log_sum_sq_probs is not None
    err_fused = (fused.log_sum_sq_probs.double() - truth).abs().max()
    err_plain = (plain.log_sum_sq_probs.double() - truth).abs().max()
    assert err_fused <= err_plain + float(scale.max()) * 2**-7, (err_fused, err_plain)


def test_stats_change_neither_values_nor_gradients() -> None:
    """return_stats reads the tiles the kernel computes anyway: sums and gradients are bit-identical."""
    batch = make_batch(ragged_examples(6, seed=23), packed=True)
    results = []
    for stats in (False, True):
        model = llama()
        out = LogProbEngine(model, backend="chunked", chunk_size=4)(batch, return_stats=stats)
        (out.sum * torch.linspace(-1, 1, 6)).sum().backward()
        results.append([out.sum.detach()] + [p.grad for p in model.parameters()])
    for without, with_stats in zip(*results):
        assert torch.equal(without, with_stats)
