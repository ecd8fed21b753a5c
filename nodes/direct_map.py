"""The direct-map MODEL patch, its wiring checks and the adapter ↔ DiT width checks.

ComfyUI's MMDiT computes ``c = t_embedder(t) + y_embedder(y)`` and
``context = context_embedder(context)``. A direct-map adapter already outputs the
DiT's hidden width, so on a *clone* of the MODEL both embedders are replaced by
identity through ``ModelPatcher`` object patches (never an in-place edit of the
shared model): the adapter's tokens enter the joint blocks as they are and its
vector is added to the timestep embedding, as in the released model.

Wiring checks, inside ComfyUI's own sampling path (ComfyUI is not patched):

* direct-map CONDITIONING carries a marker in its ``model_conds``
  (:data:`MARKER`: a ``CONDConstant``). ComfyUI hands every ``model_conds`` entry to
  the model's ``apply_model`` as a keyword argument;
* the patched clone has an ``APPLY_MODEL`` wrapper (:func:`_direct_map_wrapper`)
  that removes the marker before the model runs, and refuses conditioning without
  it (ordinary SD3.5 conditioning, e.g. from CLIPTextEncode) with a clear error;
* an unpatched SD3 MODEL has no such wrapper, so the marker reaches
  ComfyUI's ``BaseModel._apply_model``, which asks every extra value for
  its ``dtype``: the marker's answer is the error "connect Load Dream Engine's MODEL
  output to the sampler", raised before the DiT sees a token of the wrong width.
"""
from __future__ import annotations

import comfy.conds
import comfy.patcher_extension
import torch

from ..dream_engine_core.errors import DreamEngineError

MARKER = "dream_engine_direct_map"
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
    """A clone of ``model`` whose context and pooled embedders are identity, with the
    wrapper that checks the conditioning it samples (see the module docstring)."""
    m = model.clone()
    for key in PATCH_KEYS:
        m.add_object_patch(key, DreamEngineIdentity())
    m.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, MARKER)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, MARKER, _direct_map_wrapper)
    return m


class WiringError(DreamEngineError, ValueError):
    """A sampler was wired with a MODEL and CONDITIONING that do not belong together."""


UNPATCHED_MODEL = ("Dream Engine direct-map conditioning reached an SD3.5 MODEL whose text embedders are not "
                   "bypassed: connect Load Dream Engine's MODEL output to the sampler (not the MODEL that goes "
                   "into Load Dream Engine)")


class _DirectMapTag:
    """The marker's value. An unpatched model asks it for its ``dtype`` (see the module
    docstring); the answer is the wiring error."""

    @property
    def dtype(self):
        raise WiringError(UNPATCHED_MODEL)

    def __eq__(self, other):
        return isinstance(other, _DirectMapTag)

    def __hash__(self):
        return hash(_DirectMapTag)

    def __repr__(self):
        return "DreamEngineDirectMap"


class DirectMapMarker(comfy.conds.CONDConstant):
    """The ``model_conds`` entry that marks direct-map conditioning."""

    def __init__(self, cond=None):
        super().__init__(cond if isinstance(cond, _DirectMapTag) else _DirectMapTag())


def mark_direct_map(cond: dict) -> dict:
    """The conditioning dict with the direct-map marker added to its ``model_conds``."""
    out = dict(cond)
    out["model_conds"] = dict(out.get("model_conds") or {}, **{MARKER: DirectMapMarker()})
    return out


def _direct_map_wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                        **kwargs):
    """``APPLY_MODEL`` wrapper of the patched clone: takes the marker off, or refuses
    conditioning that has none."""
    if kwargs.pop(MARKER, None) is None:
        width = None if c_crossattn is None else int(c_crossattn.shape[-1])
        raise WiringError(
            f"this MODEL is Load Dream Engine's MODEL output, patched for a direct-map adapter, and samples only "
            f"conditioning from Dream Engine Interleaved Conditioning; it received other conditioning "
            f"({width}-d tokens, e.g. from CLIPTextEncode). Connect Dream Engine Interleaved Conditioning's "
            f"positive and negative to the sampler, or sample ordinary SD3.5 conditioning with the MODEL that "
            f"goes into Load Dream Engine")
    return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
