"""The direct-map MODEL patch, its wiring checks and the adapter ↔ DiT checks (widths, SD3 base).

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

from ..dream_engine_core.adapter import DIT_BASE_HIDDEN, DIT_BASES, dit_base, dit_base_name
from ..dream_engine_core.errors import AdapterBaseMismatch, AdapterMismatch, WiringError

MARKER = "dream_engine_direct_map"
PATCH_KEYS = ("diffusion_model.context_embedder", "diffusion_model.y_embedder")


class DreamEngineIdentity(torch.nn.Identity):
    """Identity that marks a bypassed embedder (direct map)."""


def mmdit_of(model):
    """The MMDiT inside a ComfyUI MODEL, or an error that says what is needed."""
    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    if inner is None or not hasattr(inner, "context_embedder") or not hasattr(inner, "joint_blocks"):
        kind = type(getattr(model, "model", model)).__name__
        raise WiringError(f"Dream Engine conditions Stable Diffusion 3.5 (an MM-DiT); the MODEL given is a "
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


def _blocks_text(blocks) -> str:
    b = sorted(blocks)
    if not b:
        return "none"
    if b == list(range(b[0], b[-1] + 1)) and len(b) > 1:
        return f"{b[0]}–{b[-1]}"
    return ", ".join(map(str, b))


def dit_widths(model) -> dict:
    """The MODEL's widths and layout: ``hidden``, ``context`` and ``pooled`` (the input
    widths of its embedders, ``None`` when bypassed), ``blocks``, ``dual_attention_blocks``
    (SD3.5 Medium's MMDiT-X blocks with ``x_block.attn2``) and ``base`` (a key of
    ``dream_engine_core.adapter.DIT_BASES``)."""
    dit = mmdit_of(model)
    hidden = int(dit.x_embedder.proj.out_channels)
    # get_model_object: the object patch when there is one, the original otherwise
    # (the shared module may hold another clone's patch while that clone is loaded).
    ctx = model.get_model_object("diffusion_model.context_embedder")
    y = model.get_model_object("diffusion_model.y_embedder")
    dual = [i for i, b in enumerate(dit.joint_blocks) if getattr(b.x_block, "x_block_self_attn", False)]
    qk_norm = not isinstance(getattr(dit.joint_blocks[0].context_block.attn, "ln_q", None), torch.nn.Identity)
    return {
        "hidden": hidden,
        "context": _in_features(ctx),
        "pooled": _in_features(y) if y is not None else None,
        "patched": isinstance(ctx, DreamEngineIdentity),
        "blocks": len(dit.joint_blocks),
        "dual_attention_blocks": dual,
        "base": dit_base(dual, qk_norm),
    }


def describe_dit(w: dict) -> str:
    """E.g. ``SD3.5 Medium (24 blocks, hidden 1536, dual attention in blocks 0–12)``."""
    dual = w["dual_attention_blocks"]
    extra = f", dual attention in block{'s' if len(dual) > 1 else ''} {_blocks_text(dual)}" if dual else ""
    return f"{dit_base_name(w['base'])} ({w['blocks']} blocks, hidden {w['hidden']}{extra})"


def _made_for(spec, w: dict) -> tuple[str, str]:
    """``(base, how we know)`` of the adapter: its recorded base, or for a direct map
    without one the base whose full-size hidden width its outputs have (when that is
    not the MODEL's width)."""
    if spec.dit:
        return spec.dit, "recorded in its metadata"
    if spec.kind == "direct" and spec.token_dim == spec.pooled_dim != w["hidden"]:
        for base, hidden in DIT_BASE_HIDDEN.items():
            if hidden == spec.token_dim:
                return base, f"its outputs are {hidden}-d, {dit_base_name(base)}'s hidden width"
    return "", ""


def check_adapter_fits(spec, model, adapter_name: str) -> None:
    """Raise :class:`AdapterBaseMismatch` when the adapter was made for another SD3 base
    than the MODEL's, :class:`AdapterMismatch` when its output widths cannot feed this DiT."""
    w = dit_widths(model)
    base, how = _made_for(spec, w)
    if base and base != w["base"]:
        made = dit_base_name(base)
        raise AdapterBaseMismatch(
            f"adapter {adapter_name!r} was made for {made} ({spec.kind} map, {spec.token_dim}-d tokens; {how}), "
            f"but the MODEL connected to Load Dream Engine is {describe_dit(w)}. An adapter and its DiT LoRA work "
            f"only on the base they were trained on: load {made} ({DIT_BASES.get(base, ('', 'its file'))[1]} in "
            f"models/diffusion_models, with Load Diffusion Model) and connect it, or choose the adapter made for "
            f"{dit_base_name(w['base'])}")
    if spec.kind == "direct":
        if spec.token_dim != w["hidden"] or spec.pooled_dim != w["hidden"]:
            raise AdapterMismatch(
                f"adapter {adapter_name!r} is a direct map with {spec.token_dim}-d tokens and a {spec.pooled_dim}-d "
                f"vector, but this SD3 model's hidden width is {w['hidden']} ({describe_dit(w)}; full size: "
                f"SD3.5 Large 2432, SD3.5 Medium 1536); use the direct-map adapter made for this model (keys "
                f"input_embeds_align_mlp.2.weight [{w['hidden']}, H] and condition_embeds_align_mlp.2.weight "
                f"[{w['hidden']}, H])")
    else:
        if w["patched"]:
            raise AdapterMismatch("this MODEL already has its embedders bypassed for a direct-map adapter; "
                                  "connect the unpatched SD3.5 model for a standard-map adapter")
        if (w["context"], w["pooled"]) != (spec.token_dim, spec.pooled_dim):
            raise AdapterMismatch(
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
