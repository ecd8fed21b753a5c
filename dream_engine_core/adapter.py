"""Adapters from the LMM's hidden states to SD3.5's conditioning.

Two maps share one module layout (the release's key names):

* ``input_embeds_align_mlp``: every token ``[B, L, lmm_dim]`` → ``[B, L, token_dim]``
* ``condition_embeds_align_mlp``: the mean over tokens ``[B, lmm_dim]`` → ``[B, pooled_dim]``

each ``Linear(lmm_dim, hidden_dim) → SiLU → Linear(hidden_dim, out)`` with no norm.

* **direct** map (the released model): ``token_dim = pooled_dim = 2432`` (the DiT's
  hidden width). The tokens go straight into the joint blocks and the vector is added
  to the timestep embedding; the DiT's ``context_embedder`` and ``y_embedder`` are
  bypassed (the nodes patch them to identity).
* **standard** map: ``token_dim = 4096``, ``pooled_dim = 2048`` — the widths of
  SD3.5's own text conditioning, so an unmodified SD3.5 consumes the output.

``AdapterSpec.dit`` names the SD3 base the adapter was made for (:data:`DIT_BASES`,
from the DiT's layout by :func:`dit_base`; empty when unknown, e.g. in files written
before it was recorded). A standard-map adapter has the same widths for every SD3.5
base, so only this record tells an SD3.5 Large adapter from an SD3.5 Medium one.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict

import torch
from torch import nn

from .errors import OptionError

MAP_KINDS = ("direct", "standard")
POOLINGS = ("mean", "masked_mean")


# SD3 bases by the layout of ComfyUI's MMDiT: id → (name, the file users load).
DIT_BASES = {
    "sd3.5-large": ("SD3.5 Large", "sd3.5_large.safetensors"),
    "sd3.5-medium": ("SD3.5 Medium", "sd3.5_medium.safetensors"),
    "sd3-medium": ("SD3 Medium", "sd3_medium.safetensors"),
}
# The hidden width of each base at full size (ComfyUI's MMDiT: 64 × blocks).
DIT_BASE_HIDDEN = {"sd3.5-large": 2432, "sd3.5-medium": 1536, "sd3-medium": 1536}


def dit_base(dual_attention_blocks, qk_norm: bool = True) -> str:
    """The SD3 base of a DiT layout: SD3.5 Medium's MMDiT-X has blocks with a second
    self-attention (``x_block.attn2``); SD3.5 Large has none and normalises q and k; SD3
    Medium does neither. At small sizes the layout, not the width, names the base."""
    if len(tuple(dual_attention_blocks)):
        return "sd3.5-medium"
    return "sd3.5-large" if qk_norm else "sd3-medium"


def dit_base_name(base: str) -> str:
    return DIT_BASES.get(base, (base or "an unknown SD3 model",))[0]


@dataclass(frozen=True)
class AdapterSpec:
    kind: str = "direct"
    lmm_dim: int = 1536
    hidden_dim: int = 4096
    token_dim: int = 2432
    pooled_dim: int = 2432
    lmm: str = "Qwen2-VL-2B-Instruct"
    dit: str = ""                       # the SD3 base it was made for (a DIT_BASES key), "" = unknown

    def __post_init__(self):
        if self.kind not in MAP_KINDS:
            raise OptionError(f"adapter kind must be one of {MAP_KINDS}, got {self.kind!r}")
        for name in ("lmm_dim", "hidden_dim", "token_dim", "pooled_dim"):
            if int(getattr(self, name)) <= 0:
                raise OptionError(f"adapter {name} must be a positive width, got {getattr(self, name)!r} (from a "
                                  f"file: its metadata is damaged; export the adapter again)")

    @classmethod
    def direct(cls, dit_hidden: int = 2432, lmm_dim: int = 1536, hidden_dim: int = 4096, **kw):
        return cls("direct", lmm_dim, hidden_dim, dit_hidden, dit_hidden, **kw)

    @classmethod
    def standard(cls, lmm_dim: int = 1536, hidden_dim: int = 4096, token_dim: int = 4096,
                 pooled_dim: int = 2048, **kw):
        return cls("standard", lmm_dim, hidden_dim, token_dim, pooled_dim, **kw)

    def as_dict(self) -> dict:
        return asdict(self)

    def expected_shapes(self) -> dict[str, tuple]:
        """Every key of the state dict with its shape."""
        out = {}
        for name, o in (("input_embeds_align_mlp", self.token_dim), ("condition_embeds_align_mlp", self.pooled_dim)):
            out[f"{name}.0.weight"] = (self.hidden_dim, self.lmm_dim)
            out[f"{name}.0.bias"] = (self.hidden_dim,)
            out[f"{name}.2.weight"] = (o, self.hidden_dim)
            out[f"{name}.2.bias"] = (o,)
        return out


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.SiLU(), nn.Linear(h, o))


def pool_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str = "mean") -> torch.Tensor:
    """Mean over the token axis: ``mean`` over every position (the release, pads
    included) or ``masked_mean`` over the positions the mask keeps."""
    if pooling == "mean" or attention_mask is None:
        if pooling not in POOLINGS:
            raise OptionError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        return hidden.mean(dim=1)
    if pooling != "masked_mean":
        raise OptionError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)


class Adapter(nn.Module):
    def __init__(self, spec: AdapterSpec):
        super().__init__()
        self.spec = spec
        self.input_embeds_align_mlp = _mlp(spec.lmm_dim, spec.hidden_dim, spec.token_dim)
        self.condition_embeds_align_mlp = _mlp(spec.lmm_dim, spec.hidden_dim, spec.pooled_dim)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pooling: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden [B, L, lmm_dim]`` → ``(tokens [B, L, token_dim], pooled [B, pooled_dim])``."""
        tokens = self.input_embeds_align_mlp(hidden)
        pooled = self.condition_embeds_align_mlp(pool_tokens(hidden, attention_mask, pooling))
        return tokens, pooled
