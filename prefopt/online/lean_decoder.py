"""A lean KV-cache decoder for Llama-family causal LMs: transformers' `generate` tokens, fewer operations per token.

    generated, logps = lean_generate(policy, input_ids, attention_mask, max_new_tokens=32, num_samples=4,
                                     eos=2, pad=0, temperature=1.0, top_p=1.0, logprobs=True)
    why = lean_unsupported(policy)    # None: this model decodes here; else the one-line reason it does not

At the sizes the online loop trains on a CPU, a decode step of transformers' `generate` spends most of its time
outside the model's arithmetic: module calls, the cache object's bookkeeping, the attention mask rebuilt every
step, logits processors and stopping criteria. This decoder does the same arithmetic with plain tensor calls
(`OnlineConfig.generation_decoder`, `GenerationConfig.decoder`; `prefopt.online.hf_generation` picks it per call):

- the model's weights: read in place, or, for small models (`COPY_BYTES`), each layer's q/k/v and gate/up matrices
  concatenated and transposed for the call (one product instead of three and two);
- a preallocated key/value cache per layer and one boolean key mask, grown a column per step;
- each prompt's forward once, its cache and logits then copied for its K samples;
- rows that have drawn EOS dropped from later steps (the draws are still taken for every row, see below).

It computes what `generate(do_sample=..., temperature=T, top_p=p, top_k=0, num_return_sequences=K)` computes:

- rows: prompt-major (row j·K + k: sample k of prompt j), left-padded prompts with positions `cumsum(mask) − 1`;
- per step: the last position's logits in float32, divided by T (when T ≠ 1), transformers' own
  `TopPLogitsWarper` (when p < 1), then `softmax` and one draw per row from torch's global generator, as
  `torch.multinomial(p, 1)` draws it (argmax(p / E), E ~ Exp(1) for every row); greedy: `argmax`; a finished row
  gets `pad`; the loop ends when every row has drawn EOS or after `max_new_tokens` draws;
- the layers: RMSNorm in float32 cast back, rotary embeddings from the model's `inv_freq` and
  `attention_scaling`, grouped-query attention, SiLU-gated MLP, each as transformers' Llama, Mistral and Qwen2
  modules compute it (the linear layers' biases where they have them: Qwen2's q/k/v).

So a seed draws the same tokens as `generate` wherever the two round the same (tests/online/test_lean_decoder.py:
identical samples and greedy decodes, sampler log-probs equal to 1e-5, float32 and bfloat16, the three
architectures). What it does not run, `lean_unsupported` names, and "auto" takes `generate` instead: another
architecture, a LoRA (peft) or quantised policy, a rotary scaling that depends on the length, sliding-window
attention shorter than the call, a model `generation_config` that adds a logits processor (repetition penalty,
min length, …), a caller's logits processor (NLPO's mask) or an FSDP-sharded policy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prefopt.online.sampler_logprobs import SampledLogprobs

__all__ = [
    "DECODERS",
    "ARCHITECTURES",
    "COPY_BYTES",
    "LeanWeights",
    "lean_unsupported",
    "lean_generate",
    "decodes_here",
]

DECODERS = ("auto", "hf", "lean")
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
_STATIC_ROPE = ("default", "linear", "llama3", "yarn")  # inv_freq fixed at load: read once from the model
# generation_config fields with which `generate` adds a logits processor, a stopping rule or another search, and
# the value that adds nothing (None always adds nothing; older transformers write these neutral values)
_NEUTRAL: dict[str, Any] = {
    "num_beams": 1,
    "num_beam_groups": 1,
    "penalty_alpha": 0.0,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "min_length": 0,
    "min_new_tokens": 0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "min_p": 0.0,
    "top_h": 0.0,
    "diversity_penalty": 0.0,
    "guidance_scale": 1.0,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    "bad_words_ids": [],
    "sequence_bias": {},
    "suppress_tokens": [],
    "begin_suppress_tokens": [],
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "watermarking_config": None,
    "stop_strings": [],
    "max_time": None,
    "dola_layers": None,
    "prompt_lookup_num_tokens": None,
}


def _sliding_window(config: Any) -> int | None:
    """The attention window of any layer (None: every layer attends to the whole prefix)."""
    window = getattr(config, "sliding_window", None)
    if window is None:
        return None
    if getattr(config, "model_type", "") == "mistral":
        return int(window)
    sliding = getattr(config, "use_sliding_window", False) or "sliding_attention" in (
        getattr(config, "layer_types", None) or ()
    )
    return int(window) if sliding else None


def lean_unsupported(model: Any, length: int | None = None) -> str | None:
    """Why `model` cannot be decoded here exactly as `generate` decodes it (None: it can); `length`: the longest
    prompt plus new tokens of the call (a sliding window shorter than that is not implemented)."""
    name = type(model).__name__
    if name not in ARCHITECTURES:
        what = "a LoRA (peft) policy" if "Peft" in name else name
        return f"{what} is not one of the lean decoder's architectures {ARCHITECTURES}"
    config = model.config
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        return f"{name} with hidden_act={config.hidden_act!r}, pretraining_tp={getattr(config, 'pretraining_tp', 1)}"
    rope = getattr(model.model.rotary_emb, "rope_type", "default")
    if rope not in _STATIC_ROPE:
        return f"rotary scaling {rope!r} changes with the length; the lean decoder reads it once ({_STATIC_ROPE})"
    window = _sliding_window(config)
    if window is not None and (length is None or length > window):
        return f"sliding-window attention ({window} tokens) over a longer call is not implemented"
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and type(module) is not nn.Linear:
            return f"{module_name} is a {type(module).__name__} (a quantised or adapted layer), not a plain Linear"
    if any(not p.dtype.is_floating_point for p in model.parameters()):
        return "the weights are quantised"
    generation = getattr(model, "generation_config", None)
    for key, neutral in _NEUTRAL.items():
        value = getattr(generation, key, None)
        if value is not None and value != neutral:
            return f"the model's generation_config sets {key}={value!r}, which `generate` applies"
    return None


def _rms_norm(x: Tensor, norm: nn.Module) -> Tensor:
    """transformers' Llama RMSNorm: in float32, cast back, times the weight (in float32 torch's own op, which
    computes the same)."""
    dtype = x.dtype
    if dtype == torch.float32 and norm.weight.dtype == torch.float32:
        return F.rms_norm(x, x.shape[-1:], norm.weight, norm.variance_epsilon)
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


# At most this many bytes of layer weights, a call copies each layer's matrices for itself: q/k/v and gate/up
# concatenated (one product instead of three and two) and every matrix transposed to [in, out] (`torch.mm` reads it
# as stored). At the sizes where it applies a product costs its call more than its arithmetic; above, the call reads
# the modules' weights in place (a copy would hold a second set of weights for the call).
COPY_BYTES = 64 * 2**20


class _Linear:
    """x @ Wᵀ + b on the last dimension: `weight_t` [in, out] contiguous (`torch.mm`, the same sums as `F.linear`)."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        self.weight_t = torch.cat([layer.weight.detach() for layer in layers]).t().contiguous()
        biases = [layer.bias for layer in layers]
        self.bias = None
        if any(b is not None for b in biases):
            self.bias = torch.cat(
                [b if b is not None else m.weight.new_zeros(m.out_features) for m, b in zip(layers, biases)]
            )

    def __call__(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = torch.mm(flat, self.weight_t) if self.bias is None else torch.addmm(self.bias, flat, self.weight_t)
        return out.view(*x.shape[:-1], out.shape[-1])


class _Layer:
    """One decoder layer's weights for the call: copied (`_Linear`, small models) or the modules themselves."""

    def __init__(self, layer: nn.Module, copy: bool) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.norms = (layer.input_layernorm, layer.post_attention_layernorm)
        self.scale = attn.scaling
        if copy:
            self.qkv = _Linear([attn.q_proj, attn.k_proj, attn.v_proj])
            self.gate_up = _Linear([mlp.gate_proj, mlp.up_proj])
            self.out, self.down = _Linear([attn.o_proj]), _Linear([mlp.down_proj])
        else:
            self.qkv = lambda h: torch.cat([attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)], dim=-1)
            self.gate_up = lambda h: torch.cat([mlp.gate_proj(h), mlp.up_proj(h)], dim=-1)
            self.out, self.down = attn.o_proj, mlp.down_proj


class LeanWeights:
    """A model's weights as the decoder reads them (`_Layer`: copied for small models), built once for every call of
    one `generate` (the weights do not change between its calls)."""

    def __init__(self, model: Any) -> None:
        core, config = model.model, model.config
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.embed, self.final, self.head = core.embed_tokens.weight, core.norm, model.lm_head
        self.dtype, self.device = self.embed.dtype, self.embed.device
        size = sum(p.numel() * p.element_size() for p in core.layers.parameters())
        self.layers = [_Layer(layer, copy=size <= COPY_BYTES) for layer in core.layers]
        rotary = core.rotary_emb
        self.inv_freq = rotary.inv_freq.to(device=self.device, dtype=torch.float32)
        self.rope_scale = rotary.attention_scaling


class _Decoder:
    """The forward of one call: the weights (`LeanWeights`), a [rows, kv heads, length, head dim] key/value cache per
    layer, filled by the prompt's forward and one column per step."""

    def __init__(self, weights: LeanWeights, rows: int, length: int) -> None:
        self.w = weights
        shape = (rows, weights.kv_heads, length, weights.dim)
        self.cache = [
            (
                torch.empty(shape, dtype=weights.dtype, device=weights.device),
                torch.empty(shape, dtype=weights.dtype, device=weights.device),
            )
            for _ in weights.layers
        ]

    def _rotary(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        freqs = positions[..., None].float() * self.w.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * self.w.rope_scale, emb.sin() * self.w.rope_scale
        return cos.to(self.w.dtype)[:, None], sin.to(self.w.dtype)[:, None]

    def keep(self, rows: Tensor) -> None:
        """Drop the finished rows: keep the cache of `rows` (a bool mask or indices) only."""
        self.cache = [(keys[rows], values[rows]) for keys, values in self.cache]

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, blocked: Tensor, scale: float) -> Tensor:
        """Attention of q [A, H, S, d] over the cached k, v [A, Hkv, t, d]; `mask` [A, 1, S or 1, t] bool: the keys
        each query sees (`blocked`: its negation)."""
        rows, _, steps, _ = q.shape
        group = self.w.heads // self.w.kv_heads
        if steps > 1:  # the prompt: every key/value head repeated for its query heads, as transformers' `repeat_kv`
            if group > 1:
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        q = q.reshape(rows, self.w.kv_heads, group, self.w.dim)  # one query: heads grouped by key/value head
        if q.dtype != torch.float32:  # half precision: SDPA's float32 accumulation, as transformers (`pack_gqa`)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        weights = torch.matmul(q, k.transpose(-1, -2)).mul_(scale).masked_fill_(blocked, float("-inf"))
        return torch.matmul(torch.softmax(weights, dim=-1), v)

    def forward(self, tokens: Tensor, positions: Tensor, start: int, mask: Tensor) -> Tensor:
        """float32 logits [rows, V] of the last of `tokens` [rows, S], written to the cache at start … start+S−1;
        `mask` [rows, 1, S or 1, start+S] bool: which cached keys each query sees."""
        rows, steps = tokens.shape
        heads, kv_heads, dim = self.w.heads, self.w.kv_heads, self.w.dim
        x = F.embedding(tokens, self.w.embed)
        cos, sin = self._rotary(positions)
        blocked = ~mask
        end = start + steps
        for layer, (keys, values) in zip(self.w.layers, self.cache):
            qkv = layer.qkv(_rms_norm(x, layer.norms[0])).view(rows, steps, heads + 2 * kv_heads, dim).transpose(1, 2)
            qk = _rotate(qkv[:, : heads + kv_heads], cos, sin)  # q and k rotated together
            keys[:, :, start:end] = qk[:, heads:]
            values[:, :, start:end] = qkv[:, heads + kv_heads :]
            out = self._attend(qk[:, :heads], keys[:, :, :end], values[:, :, :end], mask, blocked, layer.scale)
            x = x + layer.out(out.reshape(rows, heads, steps, dim).transpose(1, 2).reshape(rows, steps, heads * dim))
            gate, up = layer.gate_up(_rms_norm(x, layer.norms[1])).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        return self.w.head(_rms_norm(x[:, -1], self.w.final)).float()

    def repeat(self, times: int) -> None:
        """Each row's cache `times` times in a row (a prompt's prefix, computed once, for its K samples)."""
        self.cache = [(k.repeat_interleave(times, dim=0), v.repeat_interleave(times, dim=0)) for k, v in self.cache]


@torch.no_grad()
def lean_generate(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    max_new_tokens: int,
    num_samples: int,
    eos: int,
    pad: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    do_sample: bool = True,
    logprobs: bool = False,
    weights: LeanWeights | None = None,
) -> tuple[Tensor, Tensor | None]:
    """`generate`'s output [N·K, P + steps] for left-padded prompts `input_ids` [N, P] (row j·K + k: sample k of
    prompt j), and with `logprobs` the sampler's log-prob of each drawn token [N·K, steps] (float32, CPU; after the
    temperature and top-p, as `prefopt.online.sampler_logprobs` records them), else None. Draws from torch's
    global generator; the model must be in eval mode. `weights`: `LeanWeights(model)` built by the caller for several
    calls with the same weights (else built here).

    A row that has drawn EOS leaves the batch (its cache rows dropped), so later steps compute the unfinished rows
    only. The draws stay `generate`'s: `torch.multinomial(p, 1)` is argmax(p / E) with E ~ Exp(1) drawn for every row
    (torch's one-sample path), so the noise is still drawn for all rows, finished or not, and read at the live ones."""
    warpers = SampledLogprobs(temperature, top_p, do_sample).warpers  # generate's own, in its order
    prompts, width = input_ids.shape
    rows, device = prompts * num_samples, input_ids.device
    decoder = _Decoder(weights or LeanWeights(model), prompts, width + max_new_tokens)
    real = attention_mask.bool()
    positions = (real.long().cumsum(-1) - 1).masked_fill(~real, 1)  # generate's position ids
    causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
    eye = torch.eye(width, dtype=torch.bool, device=device)  # a padding query sees itself: no all-masked row
    # each prompt's forward once; its cache and logits then copied for its K samples (row j·K + k)
    logits = decoder.forward(input_ids, positions, 0, (causal & real[:, None, :]).unsqueeze(1) | eye)
    decoder.repeat(num_samples)
    logits, positions = logits.repeat_interleave(num_samples, dim=0), positions.repeat_interleave(num_samples, dim=0)
    ids = input_ids.repeat_interleave(num_samples, dim=0)
    seen = torch.zeros((rows, width + max_new_tokens), dtype=torch.bool, device=device)
    seen[:, :width] = real.repeat_interleave(num_samples, dim=0)
    position = positions[:, -1:]
    live = torch.arange(rows, device=device)  # the rows still decoding
    drawn = torch.full((rows, max_new_tokens), pad, dtype=torch.long, device=device)
    logps = torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device)
    steps = 0
    for step in range(max_new_tokens):
        scores = logits
        for warper in warpers:
            scores = warper(ids, scores)
        if do_sample:
            noise = torch.empty((rows, scores.shape[-1]), dtype=scores.dtype, device=device).exponential_(1)
            token = (torch.softmax(scores, dim=-1) / noise[live]).argmax(-1)
        else:
            token = torch.argmax(scores, dim=-1)
        drawn[live, step] = token
        if logprobs:
            logps[live, step] = torch.log_softmax(scores, dim=-1).gather(1, token[:, None]).squeeze(1)
        steps = step + 1
        going = token != eos
        if step == max_new_tokens - 1 or not bool(going.any()):
            break
        if not bool(going.all()):
            live, token, position, seen = live[going], token[going], position[going], seen[going]
            decoder.keep(going)
        seen[:, width + step] = True
        position = position + 1
        logits = decoder.forward(token[:, None], position, width + step, seen[:, None, None, : width + step + 1])
    generated = torch.cat([ids, drawn[:, :steps]], dim=1)
    return generated, (logps[:, :steps].cpu() if logprobs else None)


def decodes_here(decoder: str, model: Any, length: int, *, processor: bool = False, sharded: bool = False) -> bool:
    """Whether a `generate` call of `length` tokens (longest prompt + new tokens) runs on this decoder: `decoder`
    "hf" never, "auto" where it can, "lean" always (ValueError naming why it cannot). `processor`: the call has a
    caller's logits processor (NLPO's mask); `sharded`: the policy is FSDP-sharded (every process steps together)."""
    if decoder not in DECODERS:
        raise ValueError(f"GenerationConfig.decoder={decoder!r}: use one of {DECODERS}")
    if decoder == "hf":
        return False
    why = "a caller's logits processor (NLPO's action mask)" if processor else None
    why = why or ("an FSDP-sharded policy (generate's synced steps)" if sharded else lean_unsupported(model, length))
    if why is not None and decoder == "lean":
        raise ValueError(
            f"decoder='lean' cannot decode this call: {why}; use decoder 'auto' (generate where it cannot) or 'hf'"
        )
    return why is None
