"""FLOPs and weight bytes of one Dream Engine encode, counted from the shapes.

One encode = the vision tower once over every distinct image, the language model once
for the conditional and once for the unconditional input, and the adapter on each.
Only matmul work is counted (2 FLOPs per multiply-add): linear layers, the patch
embedding, attention scores and values (causal in the language model: half of the
L×L products; full within each image in the vision tower). Norms, activations and
rotary embeddings are elementwise and left out — the floor is the least work any
implementation must do.

Weight bytes are the bytes of every weight matrix each forward reads once (the
language model's layers twice, once per side; the embedding table only for the rows
gathered); the vocabulary head is never computed.

:func:`encode_cost` counts every pass one encode could run; :func:`required_cost` counts
the work an encode actually *requires*: when the unconditional input is text only it is
the same for every prompt of the task (a constant negative, remembered by the encoder's
text cache), so only the conditional side needs the language model and the adapter.
Figure 2's floor is the required one; :func:`lm_only_cost` is the floor of plain
transformers' ``language_model`` forward over the same tokens (the peer of figure 2).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Cost:
    flops: float = 0.0
    weight_bytes: float = 0.0

    def __iadd__(self, o: "Cost"):
        self.flops += o.flops
        self.weight_bytes += o.weight_bytes
        return self

    def as_dict(self) -> dict:
        return {"flops": self.flops, "weight_bytes": self.weight_bytes}


def lm_layer_params(tc) -> int:
    h, i = tc.hidden_size, tc.intermediate_size
    kv = tc.num_key_value_heads * (h // tc.num_attention_heads)
    return h * h * 2 + h * kv * 2 + 3 * h * i


def lm_forward(tc, n_tokens: int, esize: int = 2) -> Cost:
    """Language model over ``n_tokens`` (causal self-attention)."""
    p = lm_layer_params(tc)
    h = tc.hidden_size
    per_layer = 2 * n_tokens * p + 2 * n_tokens * n_tokens * h  # causal: QKᵀ and PV, half each
    return Cost(tc.num_hidden_layers * per_layer,
                tc.num_hidden_layers * p * esize + n_tokens * h * esize)


def vision_params(vc) -> int:
    e = vc.embed_dim
    m = int(e * vc.mlp_ratio)
    merged = e * vc.spatial_merge_size ** 2
    patch = vc.in_chans * vc.temporal_patch_size * vc.patch_size ** 2 * e
    return patch + vc.depth * (4 * e * e + 2 * e * m) + merged * merged + merged * vc.hidden_size


def vision_forward(vc, patches_per_image: list, esize: int = 2) -> Cost:
    if not patches_per_image:
        return Cost()
    e = vc.embed_dim
    m = int(e * vc.mlp_ratio)
    merge = vc.spatial_merge_size ** 2
    merged = e * merge
    n = sum(patches_per_image)
    patch_in = vc.in_chans * vc.temporal_patch_size * vc.patch_size ** 2
    fl = 2 * n * patch_in * e
    fl += vc.depth * (2 * n * (4 * e * e + 2 * e * m) + sum(4 * p * p * e for p in patches_per_image))
    fl += 2 * (n // merge) * (merged * merged + merged * vc.hidden_size)
    return Cost(fl, vision_params(vc) * esize)


def adapter_forward(spec, n_tokens: int, esize: int = 2) -> Cost:
    tok = spec.lmm_dim * spec.hidden_dim + spec.hidden_dim * spec.token_dim
    pool = spec.lmm_dim * spec.hidden_dim + spec.hidden_dim * spec.pooled_dim
    return Cost(2 * n_tokens * tok + 2 * pool, (tok + pool) * esize)


def encode_cost(config, spec, cond_tokens: int, uncond_tokens: int, patches_per_image: list,
                esize: int = 2) -> dict:
    """Per-part and total cost of one ``DreamEngine.encode`` (cond + uncond)."""
    parts = {
        "vision": vision_forward(config.vision_config, patches_per_image, esize),
        "lm_cond": lm_forward(config.text_config, cond_tokens, esize),
        "lm_uncond": lm_forward(config.text_config, uncond_tokens, esize),
        "adapter": adapter_forward(spec, cond_tokens, esize),
    }
    parts["adapter"] += adapter_forward(spec, uncond_tokens, esize)
    return _totals(parts)


def required_cost(config, spec, cond_tokens: int, uncond_tokens: int, patches_per_image: list,
                  uncond_constant: bool, esize: int = 2) -> dict:
    """Cost of the work one encode requires: vision tower once, language model and adapter
    on the conditional input, and on the unconditional one only when it is not constant
    (``uncond_constant``: text only, hence the same for every prompt)."""
    parts = {
        "vision": vision_forward(config.vision_config, patches_per_image, esize),
        "lm_cond": lm_forward(config.text_config, cond_tokens, esize),
        "adapter": adapter_forward(spec, cond_tokens, esize),
    }
    if not uncond_constant:
        parts["lm_uncond"] = lm_forward(config.text_config, uncond_tokens, esize)
        parts["adapter"] += adapter_forward(spec, uncond_tokens, esize)
    return _totals(parts)


def lm_only_cost(config, n_tokens: int, esize: int = 2) -> dict:
    """One language-model forward over ``n_tokens`` (plain transformers' peer)."""
    return _totals({"lm_cond": lm_forward(config.text_config, n_tokens, esize)})


def _totals(parts: dict) -> dict:
    total = Cost()
    for c in parts.values():
        total += c
    return {"total": total.as_dict(), "parts": {k: v.as_dict() for k, v in parts.items()}}


def floor_seconds(cost: dict, peak_flops: float, bandwidth: float) -> dict:
    """The roofline floor ``max(FLOPs / peak, weight bytes / bandwidth)`` of the whole
    encode, and the tighter sum of per-part floors (each part is either compute- or
    memory-bound on its own)."""
    t = cost["total"]
    floor = max(t["flops"] / peak_flops, t["weight_bytes"] / bandwidth)
    per_part = sum(max(p["flops"] / peak_flops, p["weight_bytes"] / bandwidth) for p in cost["parts"].values())
    return {"floor_s": floor, "floor_per_part_s": per_part,
            "compute_s": t["flops"] / peak_flops, "memory_s": t["weight_bytes"] / bandwidth}
