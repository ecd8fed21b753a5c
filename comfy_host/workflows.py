"""The shipped workflows and one way to change their widget values.

UI-format workflows live in ``example_workflows/*.json`` (ComfyUI's template
folder) and their API-format twins in ``example_workflows/api/``. :func:`configure` returns a copy of an API workflow with only
widget values changed (model files, size, steps, prompt, images, segment names,
blend ratios, seed); the profiles below are named sets of such values:

* :data:`SMALL` — the small random-weight model set (``comfy_host.base_dir``);
* a miniature profile (``miniature/profile.json``): file names, size, image short
  side, steps, CFG and the demo prompt, applied by :func:`apply_profile`.
"""
from __future__ import annotations

import copy
import json
import os

from .base_dir import ROOT

WORKFLOWS = os.path.join(ROOT, "example_workflows")

# File names the small model set uses (model_builders.comfy_formats.build_demo_models).
SMALL = {
    "unet_name": "dream_engine_tiny_sd35.safetensors",
    "lora_name": "dream_engine_tiny_lora.safetensors",
    "vae_name": "dream_engine_tiny_taesd3.safetensors",
    "lmm": "tiny-Qwen2-VL",
    "adapter": "tiny_direct_map.safetensors",
    "adapter_standard": "tiny_standard_map.safetensors",
    "size": 256,  # the small DiT's position embedding covers up to 768 px
}


def workflow_files() -> list[str]:
    """The shipped UI-format workflows (``example_workflows/*.json``)."""
    return sorted(os.path.join(WORKFLOWS, f) for f in os.listdir(WORKFLOWS) if f.endswith(".json"))


def api_twin(ui_path: str) -> str:
    return os.path.join(WORKFLOWS, "api", os.path.basename(ui_path))


def load_api(name_or_path: str) -> dict:
    p = name_or_path if os.path.isabs(name_or_path) else os.path.join(WORKFLOWS, "api", name_or_path)
    with open(p) as f:
        return json.load(f)


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == class_type]


def configure(prompt: dict, *, unet_name=None, lora_name=None, lora_strength=None, vae_name=None, lmm=None, adapter=None, size=None, steps=None,
              cfg=None, seed=None, sampler_name=None, scheduler=None, text=None, generate_text=None, image_short_side=None, dtype=None,
              images=None, segment_names=None, ratios=None) -> dict:
    """A copy of an API workflow with these widget values; ``None`` leaves a value as
    shipped. ``text`` sets the prompt of every conditioning node, ``generate_text`` only
    of those whose task is ``generate``. ``images``, ``segment_names`` and ``ratios`` go
    to the ``LoadImage``, ``DreamEngineImageSegment`` and ``DreamEngineBlendRatio``
    nodes in node-id order (segments beyond the list get no name, ratios 0)."""
    p = copy.deepcopy(prompt)
    li = si = bi = 0
    for nid in sorted(p, key=int):
        ct, inp = p[nid]["class_type"], p[nid]["inputs"]
        if ct == "UNETLoader" and unet_name is not None:
            inp["unet_name"] = unet_name
        elif ct == "LoraLoaderModelOnly":
            if lora_name is not None:
                inp["lora_name"] = lora_name
            if lora_strength is not None:
                inp["strength_model"] = lora_strength
        elif ct == "VAELoader" and vae_name is not None:
            inp["vae_name"] = vae_name
        elif ct == "LoadDreamEngine":
            if lmm is not None:
                inp["lmm"] = lmm
            if adapter is not None:
                inp["adapter"] = adapter
            if dtype is not None:
                inp["dtype"] = dtype
        elif ct in ("EmptySD3LatentImage", "EmptyLatentImage") and size is not None:
            inp["width"] = inp["height"] = size
        elif ct == "DreamEngineInterleavedConditioning":
            if image_short_side is not None:
                inp["image_short_side"] = image_short_side
            if text is not None:
                inp["prompt"] = text
            elif generate_text is not None and inp.get("task") == "generate":
                inp["prompt"] = generate_text
        elif ct == "KSampler":
            if steps is not None:
                inp["steps"] = steps
            if cfg is not None:
                inp["cfg"] = cfg
            if seed is not None:
                inp["seed"] = seed
            if sampler_name is not None:
                inp["sampler_name"] = sampler_name
            if scheduler is not None:
                inp["scheduler"] = scheduler
        elif ct == "LoadImage" and images is not None:
            inp["image"] = images[li]
            li += 1
        elif ct == "DreamEngineImageSegment" and segment_names is not None:
            inp["name"] = segment_names[si] if si < len(segment_names) else ""
            si += 1
        elif ct == "DreamEngineBlendRatio" and ratios is not None:
            inp["ratio"] = ratios[bi] if bi < len(ratios) else 0.0
            bi += 1
    return p


def small_model_profile(prompt: dict, adapter: str | None = None, size: int | None = None) -> dict:
    """An API workflow set up for the small models: their file names and a resolution
    their position embedding covers. Nothing else changes."""
    return configure(prompt, unet_name=SMALL["unet_name"], lora_name=SMALL["lora_name"], vae_name=SMALL["vae_name"],
                     lmm=SMALL["lmm"],
                     adapter=adapter or SMALL["adapter"], size=size or SMALL["size"])


def apply_profile(prompt: dict, prof: dict, **overrides) -> dict:
    """An API workflow set up for the model set ``prof`` describes (the miniature's
    ``profile.json``: file names (DiT, its LoRA, VAE, LMM, adapter), size, image_short_side, steps, cfg, sampler and
    scheduler (the settings the model set was evaluated with) and the prompt of ``generate`` nodes); ``overrides`` are
    further :func:`configure` values."""
    values = dict(unet_name=prof["unet_name"], lora_name=prof["lora"], vae_name=prof["vae_name"], lmm=prof["lmm"], adapter=prof["adapter"],
                  size=prof["size"], image_short_side=prof["image_short_side"], steps=prof["steps"],
                  cfg=prof["cfg"], sampler_name=prof.get("sampler"), scheduler=prof.get("scheduler"),
                  generate_text=prof.get("prompt"))
    values.update(overrides)
    return configure(prompt, **values)
