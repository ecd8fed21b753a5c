"""The SD3.5 DiT and VAE for training, with ComfyUI's own model code.

The DiT is loaded with ``comfy.sd.load_diffusion_model`` — the same file, the same
``MMDiT`` class and the same key detection the user's ComfyUI uses — so a trained
adapter or LoRA behaves identically in training and in ComfyUI (no diffusers ↔
ComfyUI conversion between the two, no second implementation of the blocks).

* :func:`direct_map` bypasses the DiT's ``context_embedder`` and ``y_embedder``
  (identity) on the module we own, exactly as the pack's direct-map MODEL patch does.
* LoRA: ComfyUI's attention has one fused ``qkv`` Linear. To train the release's
  parameterisation (a separate rank-r LoRA on each of ``to_q``, ``to_k``, ``to_v``,
  ``add_{q,k,v}_proj``, ``to_out.0``, ``to_add_out``) each fused ``qkv`` is split
  into three Linear layers (:class:`SplitQKV`, numerically the same forward) and
  peft injects LoRA layers into the targeted ones.
* Export writes the diffusers SD3 LoRA key form
  (``transformer.transformer_blocks.N.attn.to_q.lora_A.weight`` …, with ``.alpha``),
  which ComfyUI's ``LoraLoaderModelOnly`` maps onto the fused ``qkv`` slices for SD3
  (``comfy/lora.py`` → ``comfy.utils.mmdit_to_diffusers``) and diffusers loads too.
"""
from __future__ import annotations

import contextlib
import re

import torch
from torch import nn

from dream_engine_core.weights import check_safetensors
from tools.weights import merge_lora

# diffusers target name → (ComfyUI sub-module of a joint block, split part or None)
DIFFUSERS_TARGETS = {
    "to_q": [("x_block.attn.qkv", "to_q"), ("x_block.attn2.qkv", "to_q")],
    "to_k": [("x_block.attn.qkv", "to_k"), ("x_block.attn2.qkv", "to_k")],
    "to_v": [("x_block.attn.qkv", "to_v"), ("x_block.attn2.qkv", "to_v")],
    "to_out.0": [("x_block.attn.proj", None), ("x_block.attn2.proj", None)],
    "add_q_proj": [("context_block.attn.qkv", "to_q")],
    "add_k_proj": [("context_block.attn.qkv", "to_k")],
    "add_v_proj": [("context_block.attn.qkv", "to_v")],
    "to_add_out": [("context_block.attn.proj", None)],
}
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")

# our module path (inside joint_blocks.N) → diffusers path (inside transformer_blocks.N)
_TO_DIFFUSERS = {
    "x_block.attn.qkv.to_q": "attn.to_q", "x_block.attn.qkv.to_k": "attn.to_k",
    "x_block.attn.qkv.to_v": "attn.to_v", "x_block.attn.proj": "attn.to_out.0",
    "context_block.attn.qkv.to_q": "attn.add_q_proj", "context_block.attn.qkv.to_k": "attn.add_k_proj",
    "context_block.attn.qkv.to_v": "attn.add_v_proj", "context_block.attn.proj": "attn.to_add_out",
    "x_block.attn2.qkv.to_q": "attn2.to_q", "x_block.attn2.qkv.to_k": "attn2.to_k",
    "x_block.attn2.qkv.to_v": "attn2.to_v", "x_block.attn2.proj": "attn2.to_out.0",
}
_PARTS = ("to_q", "to_k", "to_v")


# ---------------------------------------------------------------- loading
def load_dit(path: str, dtype: torch.dtype = torch.float32):
    """``(ModelPatcher, MMDiT module)`` of an SD3/SD3.5 diffusion-model file, via ComfyUI."""
    check_safetensors(path)
    from comfy_host.importer import import_comfy

    import_comfy()
    import comfy.sd
    import comfy.model_base

    patcher = comfy.sd.load_diffusion_model(path, model_options={"dtype": dtype})
    if not isinstance(patcher.model, comfy.model_base.SD3):
        raise ValueError(f"{path} is a {type(patcher.model).__name__} model; the trainer needs Stable Diffusion "
                         f"3.5 (an SD3 MM-DiT), e.g. sd3.5_large.safetensors in models/diffusion_models")
    dit = patcher.model.diffusion_model
    for p in dit.parameters():
        p.requires_grad_(False)
    return patcher, dit


def load_vae(path: str):
    """ComfyUI's VAE (``comfy.sd.VAE``) and the SD3 latent format."""
    check_safetensors(path)
    from comfy_host.importer import import_comfy

    import_comfy()
    import comfy.sd
    import comfy.utils
    import comfy.latent_formats

    sd, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
    vae = comfy.sd.VAE(sd=sd, metadata=metadata)
    return vae, comfy.latent_formats.SD3()


@torch.no_grad()
def encode_latents(vae, latent_format, images: torch.Tensor) -> torch.Tensor:
    """``[B, H, W, 3]`` in [0, 1] → the DiT's latents (SD3 ``process_in`` applied)."""
    z = vae.encode(images)
    return latent_format.process_in(z.float()).detach().clone()


@torch.no_grad()
def decode_latents(vae, latent_format, z: torch.Tensor) -> torch.Tensor:
    return vae.decode(latent_format.process_out(z.float())).float().clamp(0, 1)


def dit_hidden(dit) -> int:
    return int(dit.x_embedder.proj.out_channels)


def dual_attention_blocks(dit) -> list[int]:
    """The blocks of SD3.5 Medium's MMDiT-X layout with a second self-attention
    (``x_block.attn2``); none in SD3.5 Large."""
    return [i for i, b in enumerate(dit.joint_blocks) if getattr(b.x_block, "x_block_self_attn", False)]


def base_of(dit) -> str:
    """The SD3 base of the DiT's layout (``dream_engine_core.adapter.dit_base``)."""
    from dream_engine_core.adapter import dit_base

    qk_norm = not isinstance(getattr(dit.joint_blocks[0].context_block.attn, "ln_q", None), nn.Identity)
    return dit_base(dual_attention_blocks(dit), qk_norm)


def timestep(sigma: torch.Tensor) -> torch.Tensor:
    """ComfyUI's SD3 model sampling: ``t = σ · 1000`` (``ModelSamplingDiscreteFlow``)."""
    return sigma * 1000.0


# ---------------------------------------------------------------- direct map
@contextlib.contextmanager
def direct_map(dit):
    """Bypass ``context_embedder`` and ``y_embedder`` (identity) while inside; restore after."""
    saved = dit.context_embedder, dit.y_embedder
    dit.context_embedder, dit.y_embedder = nn.Identity(), nn.Identity()
    try:
        yield dit
    finally:
        dit.context_embedder, dit.y_embedder = saved


# ---------------------------------------------------------------- split qkv
class SplitQKV(nn.Module):
    """A fused ``qkv`` Linear as three Linear layers (``to_q``, ``to_k``, ``to_v``)."""

    def __init__(self, fused: nn.Linear):
        super().__init__()
        d = fused.out_features // 3
        w = fused.weight.detach()
        b = fused.bias.detach() if fused.bias is not None else None
        for k, name in enumerate(_PARTS):
            lin = nn.Linear(fused.in_features, d, bias=b is not None, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w[k * d:(k + 1) * d])
                if b is not None:
                    lin.bias.copy_(b[k * d:(k + 1) * d])
            lin.requires_grad_(fused.weight.requires_grad)
            setattr(self, name, lin)
        self.in_features, self.out_features = fused.in_features, fused.out_features

    def forward(self, x):
        return torch.cat([self.to_q(x), self.to_k(x), self.to_v(x)], dim=-1)


def _attns(dit):
    for i, blk in enumerate(dit.joint_blocks):
        for side in ("x_block", "context_block"):
            b = getattr(blk, side)
            for an in ("attn", "attn2"):
                a = getattr(b, an, None)
                if a is not None and hasattr(a, "qkv"):
                    yield i, f"{side}.{an}", a


def split_qkv(dit) -> None:
    for _, _, a in _attns(dit):
        if not isinstance(a.qkv, SplitQKV):
            a.qkv = SplitQKV(a.qkv)


def lora_module_names(dit, targets=DEFAULT_LORA_TARGETS) -> list[str]:
    """Full module names (in ``dit``) that LoRA targets, for diffusers target names."""
    bad = [t for t in targets if t not in DIFFUSERS_TARGETS]
    if bad:
        raise ValueError(f"unknown LoRA target(s) {bad}; choose from {list(DIFFUSERS_TARGETS)} (diffusers names)")
    names = dict(dit.named_modules())
    out = []
    for i in range(len(dit.joint_blocks)):
        for t in targets:
            for path, part in DIFFUSERS_TARGETS[t]:
                full = f"joint_blocks.{i}.{path}" + (f".{part}" if part else "")
                if full in names and isinstance(names[full], nn.Linear):
                    out.append(full)
    return out


def add_lora(dit, rank: int = 32, alpha: float | None = None, targets=DEFAULT_LORA_TARGETS, seed: int = 0,
             dropout: float = 0.0):
    """Split the fused qkv layers and inject peft LoRA layers. Returns the targeted names."""
    from peft import LoraConfig, inject_adapter_in_model

    split_qkv(dit)
    names = lora_module_names(dit, targets)
    if not names:
        raise ValueError("no LoRA target module found in the DiT")
    cfg = LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank), lora_dropout=dropout,
                     target_modules=names, bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(cfg, dit)
    for n, p in dit.named_parameters():
        p.requires_grad_("lora_" in n)
    return names


def _lora_layers(dit):
    from peft.tuners.lora import LoraLayer

    for name, mod in dit.named_modules():
        if isinstance(mod, LoraLayer) and "default" in mod.lora_A:
            yield name, mod


def merged_state_dict(dit) -> dict[str, torch.Tensor]:
    """The DiT's weights in ComfyUI's MMDiT layout (fused qkv), LoRA merged, embedders included."""
    sd = {}
    for name, t in dit.state_dict().items():
        if "lora_" in name:
            continue
        sd[name.replace(".base_layer.", ".")] = t
    for name, mod in _lora_layers(dit):
        key = name + ".weight"
        sd[key] = merge_lora(sd[key], mod.lora_A["default"].weight, mod.lora_B["default"].weight,
                             scale=mod.scaling["default"])
    out = {}
    for name in list(sd):
        m = re.fullmatch(r"(.+\.qkv)\.(to_q|to_k|to_v)\.(weight|bias)", name)
        if m:
            continue
        out[name] = sd[name]
    fused = {}
    for name in sd:
        m = re.fullmatch(r"(.+\.qkv)\.(to_q|to_k|to_v)\.(weight|bias)", name)
        if m:
            fused.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = sd[name]
    for (base, end), parts in fused.items():
        out[f"{base}.{end}"] = torch.cat([parts[p] for p in _PARTS], 0)
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def merge_diffusers_lora(base_sd: dict, lora_sd: dict, depth: int, strength: float = 1.0) -> dict:
    """Merge a diffusers-form SD3 LoRA into a ComfyUI-layout MMDiT state dict by hand
    (the reference the export test compares ComfyUI's LoRA loader against)."""
    out = {k: v.clone().float() for k, v in base_sd.items()}
    hidden = 64 * depth
    inv = {v: k for k, v in _TO_DIFFUSERS.items()}
    for key in lora_sd:
        m = re.fullmatch(r"transformer\.transformer_blocks\.(\d+)\.(.+)\.lora_A\.weight", key)
        if not m:
            continue
        stem = key[:-len(".lora_A.weight")]
        ours = inv[m.group(2)]
        a, b = lora_sd[stem + ".lora_A.weight"].float(), lora_sd[stem + ".lora_B.weight"].float()
        alpha = float(lora_sd.get(stem + ".alpha", torch.tensor(a.shape[0])).item())
        part = ours.rsplit(".", 1)
        if part[-1] in _PARTS:
            k = f"joint_blocks.{m.group(1)}.{part[0]}.weight"
            j = _PARTS.index(part[-1])
            out[k][j * hidden:(j + 1) * hidden] = merge_lora(out[k][j * hidden:(j + 1) * hidden], a, b, alpha, strength)
        else:
            k = f"joint_blocks.{m.group(1)}.{ours}.weight"
            out[k] = merge_lora(out[k], a, b, alpha, strength)
    return out


def mmdit_from_state_dict(sd: dict):
    """A plain ComfyUI ``MMDiT`` (SD3.5 layout, RMS qk-norm; the SD3.5-Medium blocks with
    ``x_block.attn2`` where the keys have them) built from a ComfyUI-layout state dict,
    outside any model wrapper — the hand reference of the tests."""
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
    import comfy.ops

    attn2 = (re.fullmatch(r"joint_blocks\.(\d+)\.x_block\.attn2\.qkv\.weight", k) for k in sd)
    dual = sorted(int(m.group(1)) for m in attn2 if m)
    hidden, ctx = sd["context_embedder.weight"].shape
    m = MMDiT(input_size=None, patch_size=2, in_channels=16, out_channels=16, depth=hidden // 64,
              adm_in_channels=sd["y_embedder.mlp.0.weight"].shape[1],
              context_embedder_config={"target": "torch.nn.Linear",
                                       "params": {"in_features": ctx, "out_features": hidden}},
              pos_embed_max_size=int(sd["pos_embed"].shape[1] ** 0.5), num_patches=sd["pos_embed"].shape[1],
              qk_norm="rms", x_block_self_attn_layers=dual, dtype=torch.float32,
              operations=comfy.ops.disable_weight_init)
    m.load_state_dict(sd)
    return m.eval()
