"""The loss-fused head equals the unfused path for every separable registered loss.

`LossCall(name, fused=True)` (the head forms dH, dW while it computes the log-probs; `prefopt.loss_call.fused`)
against `LossCall(name, fused=False)` (engine forward, loss, autograd backward) on the same batch: the loss, the
per-example losses, every metric and the gradient of every parameter. float32: equal to 1e-5 of each tensor's
scale. bfloat16: against a float64 copy of the model, the fused path is no less accurate than the unfused one
plus the kernels' bf16 tolerance (tests/fused_kernels/_accuracy.TOLERANCE). Padded and packed batches of every
kind (an unpaired loss also on a paired batch, each pair one group); prompt-shared batches, several chunks with
a recomputed group, tied embeddings, LoRA on the head, temperature and a soft-capped Gemma-2 for DPO. Models:
random-init 2-layer Llamas, vocabulary 64; the reference's log-probs are computed once per batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

import prefopt
import prefopt.kernels.fused_head as fused_head
from prefopt import LossCall
from prefopt.data.collate import collate_preferences
from prefopt.engine import LogProbEngine
from prefopt.loss_call.fused import fused_head_reason
from prefopt.threads import torch_threads

PAIRS = [
    {"prompt_ids": [1, 5, 6, 7], "completion_ids": [[8, 9], [10, 11, 12]], "margin": 2.0},
    {"prompt_ids": [1, 20], "completion_ids": [[21, 22, 23], [24]], "margin": 0.5},
    {"prompt_ids": [1, 30, 31], "completion_ids": [[32], [33, 34, 35, 36]], "margin": 1.5},
]
ROWS = [
    {"prompt_ids": p["prompt_ids"], "completion_ids": [c], "label": k == 0}
    for p in PAIRS
    for k, c in enumerate(p["completion_ids"])
]
RANKED = [
    {"prompt_ids": [1, 40, 41], "completion_ids": [[42, 43], [44], [45, 46, 47]]},
    {"prompt_ids": [1, 50], "completion_ids": [[51], [52, 53], [54, 55]]},
]
DATA = {"paired": PAIRS, "unpaired": ROWS, "ranked": RANKED}
FUSED = [
    (kind, name)
    for kind in DATA
    for name in prefopt.list_losses(kind)
    if prefopt.loss_spec(name).scores == "logps" and fused_head_reason(prefopt.loss_spec(name)) is None
]
FP32, BF16 = 1e-5, 2e-3  # BF16: tests/fused_kernels/_accuracy.TOLERANCE[torch.bfloat16]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    with torch_threads(1):  # tiny models: extra OpenMP threads only spin on a busy machine
        yield


def tiny_llama(seed: int, **config) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    sizes = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return LlamaForCausalLM(LlamaConfig(**sizes, num_key_value_heads=2, **config))


@pytest.fixture(scope="module")
def policies() -> dict[torch.dtype, LlamaForCausalLM]:
    policy = tiny_llama(0)
    bf16 = tiny_llama(0).to(torch.bfloat16)
    return {torch.float32: policy, torch.bfloat16: bf16, torch.float64: tiny_llama(0).to(torch.bfloat16).double()}


@pytest.fixture(scope="module")
def references() -> dict:
    """(kind, layout) → the reference model's log-probs of that batch (a fixed input of both paths)."""
    engine = LogProbEngine(tiny_llama(2))
    with torch.no_grad():
        return {(kind, layout): engine(batch_of(kind, layout)) for kind in DATA for layout in ("padded", "packed")}


def batch_of(kind: str, layout: str):
    return collate_preferences(DATA[kind], pad_token_id=0, packed=layout == "packed", share_prompt=layout == "shared")


def run(model, loss: str, batch, reference, *, fused: bool, **engine_kwargs) -> tuple:
    """(LossOutput, {parameter: grad}) of one LossCall and backward on `model`."""
    model.zero_grad(set_to_none=True)
    step = LossCall(loss, engine=LogProbEngine(model, **engine_kwargs), reference=reference, fused=fused)
    assert (step.fused_reason is None) == fused, step.fused_reason
    out = step(batch)
    out.loss.backward()
    grads = {n: p.grad.detach().double().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _values(out) -> dict[str, torch.Tensor]:
    return {"loss": out.loss, "per_example": out.per_example, **{f"metric {k}": v for k, v in out.metrics.items()}}


def assert_same(fused, unfused, tol: float = FP32) -> None:
    (out_f, grads_f), (out_u, grads_u) = fused, unfused
    values_f, values_u = _values(out_f), _values(out_u)
    assert values_f.keys() == values_u.keys() and grads_f.keys() == grads_u.keys()
    for key in (*values_u, *grads_u):
        a = values_u[key] if key in values_u else grads_u[key]
        b = values_f[key] if key in values_f else grads_f[key]
        a, b = a.detach().double(), b.detach().double()
        scale = max(1.0, a.abs().max().item())
        assert (a - b).abs().max().item() <= tol * scale, f"{key}: {(a - b).abs().max().item():.3g}"


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("kind,name", FUSED, ids=[f"{k}-{n}" for k, n in FUSED])
def test_fp32_equals_unfused(kind: str, name: str, layout: str, policies, references) -> None:
    batch, model = batch_of(kind, layout), policies[torch.float32]
    reference = references[kind, layout]
    assert_same(run(model, name, batch, reference, fused=True), run(model, name, batch, reference, fused=False))


def bf16_case(model_by_dtype, name: str, batch, reference, **engine_kwargs) -> None:
    """In bf16 the fused path's error against a float64 copy is at most the unfused path's + the bf16 tolerance."""
    truth = run(model_by_dtype[torch.float64], name, batch, reference, fused=False, **engine_kwargs)
    unfused = run(model_by_dtype[torch.bfloat16], name, batch, reference, fused=False, **engine_kwargs)
    fused = run(model_by_dtype[torch.bfloat16], name, batch, reference, fused=True, **engine_kwargs)
    for key, true in {**_values(truth[0]), **truth[1]}.items():
        pick = lambda res: _values(res[0])[key] if key in _values(res[0]) else res[1][key]  # noqa: E731
        true = true.detach().double()
        err_u = (pick(unfused).detach().double() - true).abs().max().item()
        err_f = (pick(fused).detach().double() - true).abs().max().item()
        allowed = err_u + BF16 * (1.0 + true.abs().max().item())
        assert err_f <= allowed, f"{name} {key}: {err_f:.3g} > {allowed:.3g}"


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("kind,name", FUSED, ids=[f"{k}-{n}" for k, n in FUSED])
def test_bf16_no_less_accurate(kind: str, name: str, layout: str, policies, references) -> None:
    bf16_case(policies, name, batch_of(kind, layout), references[kind, layout])


def test_every_separable_offline_loss_is_covered() -> None:
    """The parametrisation is the registry's: KTO, BCO, AOT (batch-coupled) and TDPO (a differentiable engine
    statistic) are the losses left on the unfused path, with a reason."""
    names = {name for _, name in FUSED}
    assert {"dpo", "ipo", "simpo", "orpo", "wpo", "odpo", "apo_zero_unpaired", "plackett_luce"} <= names
    for name in ("kto", "bco", "aot", "tdpo"):
        assert name not in names and fused_head_reason(prefopt.loss_spec(name))


def test_unpaired_loss_on_pairs(policies, references) -> None:
    """A paired batch read as unpaired rows: each pair is one group of two rows."""
    for layout in ("padded", "packed"):
        batch, model = batch_of("paired", layout), policies[torch.float32]
        reference = references["paired", layout]
        fused = run(model, "apo_zero_unpaired", batch, reference, fused=True)
        assert_same(fused, run(model, "apo_zero_unpaired", batch, reference, fused=False))


@pytest.mark.parametrize("name,kind", [("dpo", "paired"), ("plackett_luce", "ranked")])
def test_prompt_shared_batches(name: str, kind: str, policies) -> None:
    """[prompt | y_1 | y_2 | …] rows behind the block mask: the first completion token of each completion is
    read from the prompt's last row, so one head row feeds K tokens."""
    batch, model = batch_of(kind, "shared"), policies[torch.float32]
    assert batch.shared_prefix
    with torch.no_grad():
        reference = LogProbEngine(tiny_llama(2))(batch_of(kind, "padded"))
    assert_same(run(model, name, batch, reference, fused=True), run(model, name, batch, reference, fused=False))


@pytest.mark.parametrize("rows", [1, 6], ids=["every-group-recomputed", "kept-and-recomputed"])
def test_several_chunks(rows: int, policies, references, monkeypatch) -> None:
    """A budget of `rows` kept rows: pair 2 (7 tokens) is recomputed; with 6 rows pairs 0 (5 tokens) and 1 (4)
    are kept, one chunk each."""
    monkeypatch.setattr(fused_head, "CHUNK_BYTES", rows * 64 * 4)
    for layout in ("padded", "packed"):
        batch, model = batch_of("paired", layout), policies[torch.float32]
        reference = references["paired", layout]
        assert_same(run(model, "dpo", batch, reference, fused=True), run(model, "dpo", batch, reference, fused=False))


def test_tied_embeddings_and_temperature(references) -> None:
    """The head's weight is the input embedding: its gradient sums the head's dW and the embedding's rows."""
    model = tiny_llama(3, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    batch, reference = batch_of("paired", "packed"), references["paired", "packed"]
    for temperature in (1.0, 0.7):
        fused = run(model, "ipo", batch, reference, fused=True, temperature=temperature)
        assert_same(fused, run(model, "ipo", batch, reference, fused=False, temperature=temperature))


def test_lora_on_the_head(references) -> None:
    """PEFT LoRA on q_proj and lm_head: the fold [h, s·A h]·[W, B]ᵀ carries dW into B and dH into A and the body."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_llama(4), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"]))
    with torch.no_grad():  # B starts at 0: make the adapter's output non-zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    batch, reference = batch_of("paired", "padded"), references["paired", "padded"]
    fused = run(model, "dpo", batch, reference, fused=True)
    assert any("lm_head.lora_B" in n for n in fused[1])
    assert_same(fused, run(model, "dpo", batch, reference, fused=False))


def test_softcapped_gemma2(references) -> None:
    """Gemma-2's final_logit_softcapping: the fused head's capped path (the cap's slope in the gradient)."""
    torch.manual_seed(5)
    config = Gemma2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, final_logit_softcapping=3.0, attn_implementation="eager",
    )  # fmt: skip
    model = Gemma2ForCausalLM(config)
    batch, reference = batch_of("paired", "padded"), references["paired", "padded"]
    assert_same(run(model, "simpo", batch, reference, fused=True), run(model, "simpo", batch, reference, fused=False))
    assert_same(run(model, "dpo", batch, reference, fused=True), run(model, "dpo", batch, reference, fused=False))


def test_not_taken_where_it_cannot_run(policies, references) -> None:
    """The unfused path, with the reason: a batch-coupled loss, the reference backend, no gradient recorded."""
    model = policies[torch.float32]
    assert "whole batch" in LossCall("kto", engine=LogProbEngine(model)).fused_reason
    assert "reference" in LossCall("dpo", engine=LogProbEngine(model, backend="reference")).fused_reason
    step = LossCall("dpo", engine=LogProbEngine(model), reference=references["paired", "padded"])
    assert step.fused_reason is None
    with torch.no_grad():  # evaluation: the plain forward, no gradients formed
        out = step(batch_of("paired", "padded"))
    fused = run(model, "dpo", batch_of("paired", "padded"), references["paired", "padded"], fused=True)[0]
    torch.testing.assert_close(out.loss, fused.loss.detach(), rtol=1e-6, atol=1e-6)


def test_backward_once(policies, references) -> None:
    step = LossCall("dpo", engine=LogProbEngine(policies[torch.float32]), reference=references["paired", "padded"])
    out = step(batch_of("paired", "padded"))
    assert out.per_example.grad_fn is None  # the gradient travels with out.loss only
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backpropagated twice"):
        out.loss.backward()
