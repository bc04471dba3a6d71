"""`engine(batch, score_prompt=...)`: prompt tokens scored in the same forward, exact against full logits.

The reference runs each sequence alone through `model(...).logits` (the plain full-logits path), takes the fp32
log-softmax and sums the prompt tokens 1..P−1 (the first has no earlier token) and the completion tokens apart.
Values and gradients must agree to 1e-5 in float32 in padded, packed and prefix-shared layouts; the completion
statistics must equal those of a call without `score_prompt`.
"""

from __future__ import annotations

import pytest
import torch

from prefopt import LossCall
from prefopt.data.collate import collate_preferences
from prefopt.engine import LogProbEngine
from prefopt.errors import BatchError
from prefopt.loss_call import engine_call
from prefopt.registry import loss_spec

from .test_engine import llama

PAIRS = [
    {"prompt_ids": [1, 5, 6, 7], "completion_ids": [[8, 9], [10, 11, 12]], "example_index": 0},
    {"prompt_ids": [1, 20], "completion_ids": [[21, 22, 23], [24]], "example_index": 1},
    {"prompt_ids": [1, 30, 31, 32, 33], "completion_ids": [[34], [35, 36]], "example_index": 2},
]


def _by_hand(model, scored: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(completion sums [S], prompt sums [S], prompt counts [S]) from each sequence's full logits, group-major."""
    completion, prompt, count = [], [], []
    for k in range(2):
        for b, pair in enumerate(PAIRS):
            p, c = pair["prompt_ids"], pair["completion_ids"][k]
            ids = torch.tensor([p + c])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
            completion.append(logp[len(p) - 1 :].sum())
            on = scored[k * len(PAIRS) + b]
            prompt.append(logp[: len(p) - 1].sum() if on else logp.new_zeros(()))
            count.append(len(p) - 1 if on else 0)
    return torch.stack(completion), torch.stack(prompt), torch.tensor(count)


def _grads(model, value: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(value, params, allow_unused=True))


@pytest.mark.parametrize(
    ("layout", "score_prompt"),
    [("padded", "chosen"), ("packed", True), ("shared", "chosen"), ("padded", "mask")],
)
def test_prompt_log_probs_and_gradients_match_full_logits(layout: str, score_prompt) -> None:
    model = llama()
    batch = collate_preferences(PAIRS, pad_token_id=0, packed=layout == "packed", share_prompt=layout == "shared")
    s = batch.num_sequences
    if score_prompt == "mask":
        score_prompt = torch.tensor([False, True, False, True, False, True])
    flags = {"chosen": [k < s // 2 for k in range(s)], True: [True] * s}.get(score_prompt)  # type: ignore[arg-type]
    flags = score_prompt.tolist() if isinstance(score_prompt, torch.Tensor) else flags
    engine = LogProbEngine(model)
    out = engine(batch, score_prompt=score_prompt)
    plain = engine(batch)
    completion, prompt, count = _by_hand(model, flags)
    torch.testing.assert_close(out.prompt_sum, prompt, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.prompt_count, count)
    torch.testing.assert_close(out.sum, completion, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.sum, plain.sum, atol=1e-6, rtol=0)
    assert torch.equal(out.count, plain.count)
    weights = torch.linspace(0.5, 1.5, s)
    got = _grads(model, (weights * (out.prompt_sum + 0.3 * out.sum)).sum())
    want = _grads(model, (weights * (prompt + 0.3 * completion)).sum())
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_completion_statistics_unchanged_by_prompt_scoring() -> None:
    model = llama()
    batch = collate_preferences(PAIRS, pad_token_id=0)
    engine = LogProbEngine(model)
    with torch.no_grad():
        out = engine(batch, score_prompt=True, return_tokens=True, return_entropy=True, return_stats=True)
        plain = engine(batch, return_tokens=True, return_entropy=True, return_stats=True)
    for name in ("sum", "tokens", "entropy", "token_entropy", "logit_sum", "log_sum_sq_probs"):
        torch.testing.assert_close(getattr(out, name), getattr(plain, name), atol=1e-6, rtol=0)
    assert torch.equal(out.correct, plain.correct) and torch.equal(out.token_sequence_ids, plain.token_sequence_ids)
    assert plain.prompt_sum is None and plain.prompt_count is None


def test_bad_score_prompt_is_one_clear_error() -> None:
    engine = LogProbEngine(llama())
    batch = collate_preferences(PAIRS, pad_token_id=0)
    with pytest.raises(BatchError, match=r"score_prompt must be .* shape \(6,\)"):
        engine(batch, score_prompt=torch.ones(3, dtype=torch.bool))
    unpaired = collate_preferences(
        [{"prompt_ids": [1, 2], "completion_ids": [[3]], "label": True, "example_index": 0}], pad_token_id=0
    )
    with pytest.raises(BatchError, match="score_prompt='chosen' needs a paired batch"):
        engine(unpaired, score_prompt="chosen")


def test_loss_call_serves_orpo_seq_the_chosen_prompts_from_its_declaration() -> None:
    """`LossCall("orpo_seq")` asks the engine for the chosen prompts' log-probs because the loss declares
    `chosen_prompt_sum`/`chosen_prompt_count`; its loss and gradients equal ORPO's formula with the NLL over the
    whole chosen sequence computed from full logits (λ = 0.5)."""
    model = llama()
    batch = collate_preferences(PAIRS, pad_token_id=0, packed=True)
    assert engine_call(loss_spec("orpo_seq"), None) == {"score_prompt": "chosen"}
    out = LossCall("orpo_seq", engine=LogProbEngine(model), lambda_=0.5)(batch)
    s = batch.num_sequences
    completion, prompt, count = _by_hand(model, [k < s // 2 for k in range(s)])
    lengths = torch.tensor([len(c) for k in range(2) for c in (p["completion_ids"][k] for p in PAIRS)]).float()
    b = s // 2
    nll = -(completion[:b] + prompt[:b]) / (lengths[:b] + count[:b])
    avg = completion / lengths
    log_odds = avg - torch.log(-torch.expm1(avg))
    want = (nll + 0.5 * torch.nn.functional.softplus(-(log_odds[:b] - log_odds[b:]))).mean()
    torch.testing.assert_close(out.loss, want, atol=1e-5, rtol=1e-5)
    for g, w in zip(_grads(model, out.loss), _grads(model, want)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
