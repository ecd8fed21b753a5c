"""The direct-map MODEL patch (DESIGN.md §2) and the adapter ↔ DiT width checks.

ComfyUI's MMDiT computes ``c = t_embedder(t) + y_embedder(y)`` and
``context = context_embedder(context)``. A direct-map adapter already outputs the
DiT's hidden width, so on a *clone* of the MODEL both embedders are replaced by
identity through ``ModelPatcher`` object patches (never an in-place edit of the
shared model): the adapter's tokens enter the joint blocks as they are and its
vector is added to the timestep embedding, as in the released model.
"""
from __future__ import annotations

import torch

PATCH_KEYS = ("diffusion_model.context_embedder", "diffusion_model.y_embedder")


class DreamEngineIdentity(torch.nn.Identity):
    """Identity that marks a bypassed embedder (direct map)."""


def mmdit_of(model):
    """The MMDiT inside a ComfyUI MODEL, or an error that says what is needed."""
    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    if inner is None or not hasattr(inner, "context_embedder") or not hasattr(inner, "joint_blocks"):
        kind = type(getattr(model, "model", model)).__name__
        raise ValueError(f"Dream Engine conditions Stable Diffusion 3.5 (an MM-DiT); the MODEL given is a "
                         f"{kind}. Load the SD3.5 diffusion model (e.g. with 'Load Diffusion Model') and connect it.")
    return inner


def _in_features(mod):
    if isinstance(mod, torch.nn.Identity):
        return None
    if hasattr(mod, "in_features"):
        return int(mod.in_features)
    mlp = getattr(mod, "mlp", None)  # VectorEmbedder: mlp[0] is the first Linear
    if mlp is not None and hasattr(mlp[0], "in_features"):
        return int(mlp[0].in_features)
    return None


def dit_widths(model) -> dict:
    dit = mmdit_of(model)
    hidden = int(dit.x_embedder.proj.out_channels)
    # get_model_object: the object patch when there is one, the original otherwise
    # (the shared module may hold another clone's patch while that clone is loaded).
    ctx = model.get_model_object("diffusion_model.context_embedder")
    y = model.get_model_object("diffusion_model.y_embedder")
    return {
        "hidden": hidden,
        "context": _in_features(ctx),
        "pooled": _in_features(y) if y is not None else None,
        "patched": isinstance(ctx, DreamEngineIdentity),
    }


def check_adapter_fits(spec, model, adapter_name: str) -> None:
    """Raise when the adapter's output widths cannot feed this DiT."""
    w = dit_widths(model)
    if spec.kind == "direct":
        if spec.token_dim != w["hidden"] or spec.pooled_dim != w["hidden"]:
            raise ValueError(
                f"adapter {adapter_name!r} is a direct map with {spec.token_dim}-d tokens and a {spec.pooled_dim}-d "
                f"vector, but this SD3 model's hidden width is {w['hidden']} (SD3.5 Large: 2432); "
                f"use the direct-map adapter made for this model (keys input_embeds_align_mlp.2.weight "
                f"[{w['hidden']}, H] and condition_embeds_align_mlp.2.weight [{w['hidden']}, H])")
    else:
        if w["patched"]:
            raise ValueError("this MODEL already has its embedders bypassed for a direct-map adapter; "
                             "connect the unpatched SD3.5 model for a standard-map adapter")
        if (w["context"], w["pooled"]) != (spec.token_dim, spec.pooled_dim):
            raise ValueError(
                f"adapter {adapter_name!r} is a standard map with {spec.token_dim}-d tokens and a "
                f"{spec.pooled_dim}-d pooled vector, but this SD3 model takes {w['context']}-d context and "
                f"{w['pooled']}-d pooled conditioning (SD3.5: 4096 and 2048); use the adapter made for this model")


def patch_direct_map(model):
    """A clone of ``model`` whose context and pooled embedders are identity."""
    m = model.clone()
    for key in PATCH_KEYS:
        m.add_object_patch(key, DreamEngineIdentity())
    return m
