"""NLPO's action mask (`prefopt.online.action_mask`): RL4LMs' top-p mask on hand values, sampling that never
leaves the mask, and log Z_θ from the engine's forward equal (values and gradients) to the masked softmax of
the full logits."""

from __future__ import annotations

import math

import torch

from prefopt.data.synthetic import build_tokenizer
from prefopt.engine import LogProbEngine
from prefopt.online.action_mask import TopPActionMask, masked_log_mass, top_p_keep
from prefopt.online.generation import GenerationConfig, generate

from ..train.tiny_task import tiny_llama


def test_top_p_keep_hand_values() -> None:
    """p = (0.05, 0.5, 0.15, 0.3): sorted 0.5, 0.3, 0.15, 0.05 with mass above each 0, 0.5, 0.8, 0.95.
    top_p 0.7 keeps the first two (the one that crosses 0.7 included): tokens {1, 3}; min_tokens 3 adds token
    2; `always` adds token 0 whatever its rank; top_p 1 keeps everything."""
    logits = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log()
    assert top_p_keep(logits, 0.7, 1).tolist() == [[False, True, False, True]]
    assert top_p_keep(logits, 0.7, 3).tolist() == [[False, True, True, True]]
    assert top_p_keep(logits, 0.7, 1, torch.tensor([0])).tolist() == [[True, True, False, True]]
    assert top_p_keep(logits, 0.4, 1).tolist() == [[False, True, False, False]]
    assert top_p_keep(logits, 1.0, 1).all()


def _peaked_policy(seed: int = 0):
    """The tiny random Llama with its final norm scaled up (logits ×40), so each next-token distribution is
    peaked and a top-p mask of 0.9 keeps a few tokens of the 198."""
    tokenizer = build_tokenizer()
    model = tiny_llama(tokenizer, seed=seed).eval()
    with torch.no_grad():
        model.model.norm.weight.mul_(40.0)
    return model, tokenizer


def test_sampling_stays_inside_the_mask_and_z_matches_the_full_softmax() -> None:
    model, tokenizer = _peaked_policy()
    mask = TopPActionMask(model, top_p=0.9, min_tokens=1, update_every=3, special_ids=[tokenizer.eos_token_id])
    prompts = ["the pasta was", "service", "the pasta was"]
    config = GenerationConfig(max_new_tokens=6, num_samples=2, backend="hf")
    rollout = generate(model, tokenizer, prompts, config, seed=0, logits_processor=mask.processor())
    batch = rollout.token_batch()
    engine = LogProbEngine(model)
    policy, log_mass = mask.score(engine, batch)
    # Brute force from the full logits: M_t from the masking policy (a copy of π_θ here), Z over M_t.
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    keep = top_p_keep(logits.reshape(-1, logits.shape[-1]), 0.9, 1, torch.tensor([tokenizer.eos_token_id]))
    keep = keep.reshape(logits.shape)
    select = batch.completion_mask[:, 1:]
    labels = batch.input_ids[:, 1:]
    assert keep.gather(-1, labels.unsqueeze(-1)).squeeze(-1)[select].all(), "a sampled token left the mask"
    assert keep[select].sum(-1).float().mean() < 40, "the mask keeps few tokens of the peaked policy"
    expected = torch.where(keep, logits, -math.inf).logsumexp(-1) - logits.logsumexp(-1)  # [R, T−1]
    torch.testing.assert_close(log_mass[:, 1:][select], expected[select], rtol=1e-5, atol=1e-5)
    assert (log_mass[:, 1:][~select] == 0).all() and (log_mass[:, 0] == 0).all()
    assert (log_mass[:, 1:][select] < 0).any() and (log_mass <= 1e-6).all()
    # Gradient of Σ log Z into the head equals the brute force's.
    head = model.get_output_embeddings().weight
    (grad,) = torch.autograd.grad(log_mass.sum(), head)
    (want,) = torch.autograd.grad(expected[select].sum(), head)
    torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-5)
    assert policy.tokens is not None and policy.tokens.shape == log_mass.shape


def test_chunked_log_mass_equals_one_chunk() -> None:
    model, _ = _peaked_policy(seed=1)
    split = LogProbEngine(model).split
    hidden = torch.randn(7, model.config.hidden_size, requires_grad=True)
    keep = torch.rand(7, model.config.vocab_size) < 0.2
    keep[:, 0] = True
    one = masked_log_mass(split, hidden, keep, chunk_rows=1024)
    many = masked_log_mass(split, hidden, keep, chunk_rows=3)
    torch.testing.assert_close(many, one)
    (g_one,) = torch.autograd.grad(one.sum(), hidden)
    (g_many,) = torch.autograd.grad(many.sum(), hidden)
    torch.testing.assert_close(g_many, g_one)


def test_the_masking_policy_is_refreshed_every_mu_steps() -> None:
    model, _ = _peaked_policy()
    mask = TopPActionMask(model, top_p=0.9, min_tokens=1, update_every=2)
    with torch.no_grad():
        model.get_output_embeddings().weight.add_(1.0)
    head = mask.mask_model.get_output_embeddings().weight
    mask.after_step(1, model)
    assert not torch.equal(head, model.get_output_embeddings().weight)
    mask.after_step(2, model)
    assert torch.equal(mask.mask_model.get_output_embeddings().weight, model.get_output_embeddings().weight)
    assert not any(p.requires_grad for p in mask.mask_model.parameters())


def test_log_mass_in_bf16_is_as_accurate_as_torch() -> None:
    """bf16 weights and hidden states: log Z from the chunked path is no farther from the fp32 truth than the
    plain bf16 computation of the full logits is (the kernels' accuracy rule), values and gradients."""
    model, _ = _peaked_policy(seed=2)
    keep = torch.rand(9, model.config.vocab_size, generator=torch.Generator().manual_seed(0)) < 0.1
    keep[:, 3] = True
    hidden = torch.randn(9, model.config.hidden_size, generator=torch.Generator().manual_seed(1))

    def truth(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        z = (h @ weight.T).float()
        return torch.where(keep, z, -math.inf).logsumexp(-1) - z.logsumexp(-1)

    weight = model.get_output_embeddings().weight.detach()
    exact = truth(hidden.double(), weight.double())
    model_bf16 = model.to(torch.bfloat16)
    h16 = hidden.to(torch.bfloat16).requires_grad_(True)
    ours = masked_log_mass(LogProbEngine(model_bf16).split, h16, keep, chunk_rows=4)
    plain = truth(h16, model_bf16.get_output_embeddings().weight.detach())
    assert (ours.double() - exact).abs().max() <= (plain.double() - exact).abs().max() + 1e-3
    (g_ours,) = torch.autograd.grad(ours.sum(), h16)
    (g_plain,) = torch.autograd.grad(plain.sum(), h16)
    torch.testing.assert_close(g_ours.float(), g_plain.float(), rtol=2e-2, atol=2e-2)
