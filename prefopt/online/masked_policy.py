"""NLPO's trained policy as it samples: π_θ restricted to the masking policy's top-p tokens, saved and loaded.

NLPO's policy is the masked one, π_θᴹ (RL4LMs generates with the mask's logits processor at evaluation as in
training). A run with an action mask (`prefopt.online.action_mask`) therefore keeps its last masking policy and
the mask's settings beside the language model in `final/` (`mask_policy.safetensors`, `action_mask.json`), and
`load_masked_decoder(final)` returns `MaskedDecoder`, a causal LM whose logits are π_θ's with the tokens outside
M_t at the smallest float (not −∞, so that the exact KL's p·log p is 0, not NaN): `prefopt compare` samples it,
measures its exact KL and win rate like any model. Likelihood metrics of held-out completions (compare's eval
acc and margin) read the unmasked π_θ (`likelihood_model`), since under the mask most have probability 0.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prefopt.hf_compat import cache_kwarg, output_cache
from prefopt.online.action_mask import TopPActionMask, top_p_keep
from prefopt.online.saved_extras import has_extra, load_base, load_extra, save_extra
from prefopt.online.trunk import DecoderOutput

__all__ = ["MaskedDecoder", "save_action_mask", "has_action_mask", "load_masked_decoder", "MASK_FILES"]

MASK_FILES = ("mask_policy.safetensors", "action_mask.json")


class MaskedDecoder(nn.Module):
    """π_θᴹ as a causal LM (module docstring). Called as `model(input_ids=…, attention_mask=…, position_ids=…,
    past_key_values=…, use_cache=…)`; its cache holds the policy's and the masking policy's."""

    def __init__(
        self, model: nn.Module, mask_model: nn.Module, *, top_p: float, min_tokens: int, special_ids: list[int]
    ) -> None:
        super().__init__()
        self.model, self.mask_model, self.config = model, mask_model.requires_grad_(False), model.config
        self.top_p, self.min_tokens = top_p, min_tokens
        self.always = torch.tensor(sorted(special_ids), dtype=torch.long)

    def likelihood_model(self) -> nn.Module:
        """The unmasked policy π_θ, for likelihoods of completions the mask may exclude (module docstring)."""
        return self.model

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        **_: Any,
    ) -> DecoderOutput:
        own, masks = past_key_values if past_key_values is not None else (None, None)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        out = self.model(**inputs, use_cache=use_cache, **({} if own is None else cache_kwarg(self.model, own)))
        mask_out = self.mask_model(
            **inputs, use_cache=use_cache, **({} if masks is None else cache_kwarg(self.mask_model, masks))
        )
        logits, mask_logits = out.logits.float(), mask_out.logits
        keep = top_p_keep(mask_logits.reshape(-1, mask_logits.shape[-1]), self.top_p, self.min_tokens, self.always)
        logits = logits.masked_fill(~keep.reshape(logits.shape), torch.finfo(logits.dtype).min)
        return DecoderOutput(logits, (output_cache(out), output_cache(mask_out)) if use_cache else None)


def save_action_mask(folder: str | Path, action_mask: TopPActionMask) -> None:
    """Write the masking policy and the mask's settings beside the language model saved in `folder`."""
    settings = {"top_p": action_mask.top_p, "min_tokens": action_mask.min_tokens}
    save_extra(folder, MASK_FILES, action_mask.mask_model, {**settings, "special_ids": action_mask.always.tolist()})


def has_action_mask(folder: str | Path) -> bool:
    """True when `folder` holds a model saved with its masking policy (`save_action_mask`)."""
    return has_extra(folder, MASK_FILES)


def load_masked_decoder(folder: str | Path) -> MaskedDecoder:
    """The masked policy saved in `folder` (language model, masking policy, mask settings), in eval mode."""
    model, settings = load_base(folder, MASK_FILES)
    mask_model = copy.deepcopy(model)
    load_extra(mask_model, folder, MASK_FILES)
    decoder = MaskedDecoder(
        model,
        mask_model,
        top_p=settings["top_p"],
        min_tokens=settings["min_tokens"],
        special_ids=settings["special_ids"],
    )
    return decoder.eval()
