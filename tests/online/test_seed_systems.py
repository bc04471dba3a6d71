"""The seed systems in the online loop: ILQL's heads, decoding and offline training (`prefopt.online.ilql`,
`prefopt.online.ilql_heads`), and resumed NLPO and ILQL runs that match uninterrupted ones (the masking policy
and the heads with their targets come back from the checkpoint)."""

from __future__ import annotations

import pytest
import torch

from prefopt.data.synthetic import build_tokenizer
from prefopt.hf_compat import cache_kwarg, output_cache
from prefopt.online.ilql_heads import ILQLDecoder, ILQLHeads, has_q_heads, load_q_decoder
from prefopt.online.masked_policy import load_masked_decoder
from prefopt.online.trainer import train_online
from prefopt.sampling import sample, sequence_kl

from ..train.tiny_task import tiny_llama
from .tiny_online import online_settings


def _decoder(beta: float = 2.0, top_k: int = 5) -> tuple[ILQLDecoder, torch.nn.Module, ILQLHeads]:
    tokenizer = build_tokenizer()
    model = tiny_llama(tokenizer, seed=0).eval()
    torch.manual_seed(1)
    heads = ILQLHeads(model.config.hidden_size, model.config.vocab_size, two_qs=True)
    with torch.no_grad():
        heads.target_q_heads[1][2].bias.add_(0.5)  # the two target heads differ: Q̂ is their minimum
    return ILQLDecoder(model, heads, beta=beta, top_k=top_k).eval(), model, heads


@torch.no_grad()
def test_decoder_scores_are_log_pi_plus_beta_advantage_top_k() -> None:
    """scores = log_softmax(logits) + β·(min_i Q̂_i − V), the top 5 kept (others at the float minimum); the KV-cached
    step equals the full forward; `sample` and the exact KL read the decoder like any causal LM."""
    decoder, model, heads = _decoder()
    ids = torch.tensor([[1, 10, 20, 30, 40]])
    scores = decoder(input_ids=ids).logits  # (1, 5, V)
    out = model(input_ids=ids, output_hidden_states=True)
    hidden = model.model(input_ids=ids).last_hidden_state
    q = torch.minimum(heads.target_q_heads[0](hidden), heads.target_q_heads[1](hidden))
    want = torch.log_softmax(out.logits, -1) + 2.0 * (q - heads.v_head(hidden))
    kept = scores > torch.finfo(torch.float32).min
    assert (kept.sum(-1) == 5).all()
    torch.testing.assert_close(scores[kept], want[kept], rtol=1e-5, atol=1e-5)
    assert torch.equal(kept, want >= want.topk(5, dim=-1).values[..., -1:])
    first = decoder(input_ids=ids[:, :4], use_cache=True)
    step = decoder(
        input_ids=ids[:, 4:],
        position_ids=torch.tensor([[4]]),
        **cache_kwarg(decoder, output_cache(first)),
        use_cache=True,
    )
    torch.testing.assert_close(step.logits[:, -1], scores[:, -1], rtol=1e-5, atol=1e-5)
    tokenizer = build_tokenizer()
    drawn = sample(
        decoder, tokenizer, ["the pasta was", "service"], generator=torch.Generator().manual_seed(0), max_new_tokens=5
    )
    kl = sequence_kl(decoder, model, drawn.input_ids, drawn.attention_mask, drawn.completion_mask)
    assert torch.isfinite(kl).all() and (kl >= -1e-6).all() and (kl > 0).any()


def test_polyak_sync_moves_the_targets_by_alpha() -> None:
    heads = ILQLHeads(4, 7, two_qs=False)
    with torch.no_grad():
        heads.q_heads[0][2].weight.fill_(1.0)
        heads.target_q_heads[0][2].weight.fill_(0.0)
    heads.sync_targets(0.25)
    assert torch.allclose(heads.target_q_heads[0][2].weight, torch.full((7, 8), 0.25))
    assert not any(p.requires_grad for p in heads.target_q_heads.parameters())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("algorithm", "extra"),
    [
        ("nlpo", {"action_mask": {"top_p": 0.8, "min_tokens": 1, "update_every": 2}, "epochs": 2}),
        ("ilql", {"q_learning": {"sync_every": 1, "alpha": 0.5, "beta": 3.0, "top_k": 7}, "num_samples": 2}),
    ],
)
def test_resume_matches_an_uninterrupted_run(algorithm, extra, tmp_path) -> None:
    """2 steps straight vs 1 step, checkpoint, resume: the same final metrics. NLPO's masking policy is still
    the initial policy at step 2 (μ = 2), which only the checkpoint knows; ILQL's target heads moved (α = 0.5)."""
    common = {"algorithm": algorithm, "prompts_per_step": 2, "max_new_tokens": 8, **extra}
    full = train_online(**online_settings(tmp_path / "full", steps=2, **common))
    train_online(**online_settings(tmp_path / "cut", steps=1, checkpoint_every=1, **common))
    resumed = train_online(**online_settings(tmp_path / "cut", steps=2, resume=True, **common))
    drop = {k for k in full.final_metrics if k.startswith("time/")}  # wall times
    expected = {k: v for k, v in full.final_metrics.items() if k not in drop}
    assert {k: v for k, v in resumed.final_metrics.items() if k not in drop} == pytest.approx(
        expected, rel=1e-5, abs=1e-7
    )
    if algorithm == "ilql":
        assert has_q_heads(full.model_path)
        decoder = load_q_decoder(full.model_path)
        assert (decoder.beta, decoder.top_k) == (3.0, 7)
        assert {"loss/q", "loss/v", "loss/cql", "loss/awac", "objective/kl"} <= set(full.final_metrics)
    else:
        assert 0 < full.final_metrics["mask/mass"] <= 1
        decoder = load_masked_decoder(full.model_path)  # π_θᴹ: final/ keeps the masking policy beside π_θ
        assert (decoder.top_p, decoder.min_tokens) == (0.8, 1)
        with torch.no_grad():
            logits = decoder(input_ids=torch.tensor([[1, 5, 9]])).logits
        cut = logits <= torch.finfo(torch.float32).min
        assert cut.any() and not cut.all(-1).any()  # tokens outside M_t cut, never all of them
        assert decoder.likelihood_model() is decoder.model
