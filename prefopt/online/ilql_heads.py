"""ILQL's heads on the policy's trunk and ILQL decoding (Snell et al. 2022, arXiv:2206.11871; TRLX
`ILQLHeads`, `AutoModelForCausalLMWithILQLHeads.generate`).

    h                      the trunk's hidden state at s_t (`prefopt.online.trunk`), (N, D)
    V(s_t)     = v(h)      MLP D → 2D → 1
    Q_i(s_t,·) = q_i(h)    MLP D → 2D → |V|, i = 1, 2; target copies q̂_i, Polyak-averaged, never trained
    Q̂(s_t,·)   = min_i q̂_i(h)

Each MLP is TRLX's `make_head`: Linear(D, 2D), ReLU, Linear(2D, out). Training reads only the taken token's
Q_i(s_t, a_t) and log softmax(Q_i(s_t, ·))[a_t] (the CQL cross-entropy), the latter from the fused
`prefopt.kernels.linear_logprobs` on the last layer, so the (N, |V|) Q tables are never held, as the engine
never holds the policy's logits. Decoding needs one position's full row per step, as sampling does:

    scores(s_t, ·) = log_softmax(logits(s_t, ·)) + β·(Q̂(s_t, ·) − V(s_t)),  the top_k best kept

and `ILQLDecoder` is a causal LM whose `logits` are those scores, so every sampler and the exact KL of
`prefopt.eval` evaluate the ILQL policy as they evaluate any model (tokens outside the top k get the
smallest float instead of −∞, so that the exact KL's p·log p is 0, not NaN). `save_q_heads` / `load_q_decoder` keep
the heads beside the language model in its HF folder (`q_heads.safetensors`, `q_heads.json`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prefopt.engine.head import ModelSplit, split_model
from prefopt.hf_compat import cache_kwarg, output_cache
from prefopt.kernels import linear_logprobs
from prefopt.online.saved_extras import has_extra, load_base, load_extra, save_extra
from prefopt.online.trunk import DecoderOutput

__all__ = ["ILQLHeads", "ILQLDecoder", "HeadTerms", "save_q_heads", "load_q_decoder", "has_q_heads", "Q_HEAD_FILES"]

Q_HEAD_FILES = ("q_heads.safetensors", "q_heads.json")


def _mlp(hidden: int, out: int) -> nn.Sequential:
    """TRLX's `make_head`: Linear(D, 2D), ReLU, Linear(2D, out)."""
    return nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, out))


@dataclass(frozen=True)
class HeadTerms:
    """The heads at N completion tokens: V, each Q head's Q(s, a) and log softmax Q(s, ·)[a], and Q̂(s, a)."""

    values: Tensor
    q_values: list[Tensor]
    q_logps: list[Tensor]
    target_q_values: Tensor


class ILQLHeads(nn.Module):
    """V head, one or two Q heads and their frozen target copies (module docstring)."""

    def __init__(self, hidden_size: int, vocab_size: int, *, two_qs: bool = True) -> None:
        super().__init__()
        self.hidden_size, self.vocab_size, self.two_qs = hidden_size, vocab_size, two_qs
        self.v_head = _mlp(hidden_size, 1)
        self.q_heads = nn.ModuleList(_mlp(hidden_size, vocab_size) for _ in range(2 if two_qs else 1))
        self.target_q_heads = copy.deepcopy(self.q_heads).requires_grad_(False)

    @staticmethod
    def _taken(head: nn.Sequential, hidden: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """(Q(s, a) [N], log softmax Q(s, ·)[a] [N]) without the (N, |V|) table."""
        z = head[1](head[0](hidden))  # (N, 2D)
        last: nn.Linear = head[2]
        q = (z * last.weight[actions]).sum(-1) + last.bias[actions]
        return q.float(), linear_logprobs(z, last.weight, actions, bias=last.bias)

    def terms(self, hidden: Tensor, actions: Tensor) -> HeadTerms:
        """The heads at the N states `hidden` [N, D] for the taken tokens `actions` [N] (float32 outputs)."""
        hidden = hidden.to(self.v_head[0].weight.dtype)
        values = self.v_head(hidden).squeeze(-1).float()
        taken = [self._taken(head, hidden, actions) for head in self.q_heads]
        with torch.no_grad():
            targets = [self._taken(head, hidden.detach(), actions)[0] for head in self.target_q_heads]
        return HeadTerms(values, [q for q, _ in taken], [lp for _, lp in taken], torch.stack(targets).amin(0))

    @torch.no_grad()
    def sync_targets(self, alpha: float) -> None:
        """Polyak-average the target Q heads towards the Q heads: θ̂ ← α·θ + (1 − α)·θ̂ (TRLX `sync_target_q_heads`)."""
        for target, head in zip(self.target_q_heads.parameters(), self.q_heads.parameters()):
            target.mul_(1.0 - alpha).add_(head.detach(), alpha=alpha)

    def advantages(self, hidden: Tensor) -> Tensor:
        """Q̂(s, ·) − V(s) for every token, [..., |V|] (decoding: one position per row at a time)."""
        hidden = hidden.to(self.v_head[0].weight.dtype)
        targets = torch.stack([head(hidden) for head in self.target_q_heads]).amin(0)
        return (targets - self.v_head(hidden)).float()


def _logits(split: ModelSplit, hidden: Tensor) -> Tensor:
    """The language model's logits from its body's hidden states (head, LoRA and logit transform folded in)."""
    head = split.head_inputs(hidden)
    x = nn.functional.linear(head.hidden.to(head.weight.dtype), head.weight, head.bias).float()
    scale, cap = split.transform.kernel_args(1.0)
    z = x / scale
    return z if cap is None else cap * torch.tanh(z / cap)


class ILQLDecoder(nn.Module):
    """A causal LM whose logits are ILQL's decoding scores log π + β·(Q̂ − V), the top_k best kept (module
    docstring); its `config` is the language model's. Called as `model(input_ids=…, attention_mask=…,
    position_ids=…, past_key_values=…, use_cache=…)`."""

    def __init__(self, model: nn.Module, heads: ILQLHeads, *, beta: float, top_k: int) -> None:
        super().__init__()
        self.model, self.heads, self.beta, self.top_k = model, heads, float(beta), int(top_k)
        self.config = model.config
        self.split = split_model(model)

    def likelihood_model(self) -> ILQLDecoder:
        """The same policy without the top-k cut, softmax(log π + β·(Q̂ − V)) over every token: what likelihood
        metrics of held-out completions read (`prefopt compare`'s eval acc and margin), since under the cut
        most of them have probability 0. Shares this decoder's weights."""
        return ILQLDecoder(self.model, self.heads, beta=self.beta, top_k=self.heads.vocab_size)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        **_: Any,
    ) -> DecoderOutput:
        body = self.split.body
        out = body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **({} if past_key_values is None else cache_kwarg(body, past_key_values)),
        )
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, T, D)
        scores = torch.log_softmax(_logits(self.split, hidden), -1) + self.beta * self.heads.advantages(hidden)
        if self.top_k < scores.shape[-1]:
            floor = scores.topk(self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < floor, torch.finfo(scores.dtype).min)
        return DecoderOutput(scores, output_cache(out) if use_cache else None)


def save_q_heads(folder: str | Path, heads: ILQLHeads, *, beta: float, top_k: int) -> None:
    """Write the heads and the decoding settings into the language model's saved folder."""
    settings = {"hidden_size": heads.hidden_size, "vocab_size": heads.vocab_size, "two_qs": heads.two_qs}
    save_extra(folder, Q_HEAD_FILES, heads, {**settings, "beta": beta, "top_k": top_k})


def has_q_heads(folder: str | Path) -> bool:
    """True when `folder` holds a model saved with ILQL heads (`save_q_heads`)."""
    return has_extra(folder, Q_HEAD_FILES)


def load_q_decoder(folder: str | Path) -> ILQLDecoder:
    """The ILQL policy saved in `folder` (language model, heads, decoding settings), in eval mode."""
    model, settings = load_base(folder, Q_HEAD_FILES)
    heads = ILQLHeads(settings["hidden_size"], settings["vocab_size"], two_qs=settings["two_qs"])
    load_extra(heads, folder, Q_HEAD_FILES)
    heads.to(next(model.parameters()).dtype)
    return ILQLDecoder(model, heads, beta=settings["beta"], top_k=settings["top_k"]).eval()
