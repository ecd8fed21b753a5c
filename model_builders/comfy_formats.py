"""Small same-architecture models in ComfyUI's formats (random weights).

Used by the tests, the benchmarks' host checks and `make demo` until a trained
miniature ships. Each file is written in the format ComfyUI's own loaders detect:

* an SD3.5-format MMDiT (``UNETLoader`` / "Load Diffusion Model"): ComfyUI's own
  ``MMDiT`` class with ``depth`` blocks (hidden ``64·depth``), 16 latent channels and
  RMS qk-norm — the SD3.5-Large layout, or with ``dual_attention_blocks`` the
  SD3.5-Medium layout (MMDiT-X: a second self-attention ``x_block.attn2`` in its first
  blocks, which ComfyUI's ``model_detection`` reads from the ``…x_block.attn2.qkv.weight``
  keys);
* a 16-channel TAESD-format VAE (``VAELoader``), detected by its ``taesd_*`` keys;
* a small Qwen2-VL folder and an adapter (from ``model_builders.qwen2vl``).
"""
from __future__ import annotations

import math
import os

import torch

from model_builders.qwen2vl import LMMSize, build_tiny_adapter, build_tiny_qwen2vl
from dream_engine_core.weights import atomic_save

# Widths of the small DiT's own (standard-map) text conditioning, standing in for
# SD3.5's 4096-d tokens and 2048-d pooled vector.
TINY_CONTEXT_DIM = 96
TINY_POOLED_DIM = 80


# The two SD3.5 layouts at full size, as ComfyUI's model_detection reads them from the files'
# keys (hidden = x_embedder.proj.weight.shape[0] = 64·depth, context = context_embedder's
# in_features, pooled = y_embedder.mlp.0's in_features, pos_embed_max_size = √ of pos_embed's
# rows, x_block_self_attn_layers = the blocks with x_block.attn2.qkv.weight).
# SD3.5-Large: 38 blocks (hidden 2432), T5-width context, CLIP-L+G pooled vector.
SD35_LARGE = dict(depth=38, context_dim=4096, pooled_dim=2048, pos_embed_max_size=192)
# SD3.5-Medium (MMDiT-X): 24 blocks (hidden 1536, 24 heads of 64), dual attention in blocks
# 0–12, the same conditioning widths, a 384×384 position table (2.5 B parameters).
SD35_MEDIUM = dict(depth=24, context_dim=4096, pooled_dim=2048, pos_embed_max_size=384,
                   dual_attention_blocks=tuple(range(13)))
# The small Medium-layout DiT of the tests: 2 blocks (hidden 128, as the small Large-layout
# DiT), dual attention in the first; the second is the last block (pre-only context side)
# with a plain x side, so both kinds of x block are present.
TINY_MEDIUM = dict(depth=2, dual_attention_blocks=(0,))


def new_mmdit(depth: int, context_dim: int, pooled_dim: int, pos_embed_max_size: int, device=None,
              dual_attention_blocks=()):
    """ComfyUI's own MMDiT class at SD3.5 layout (RMS qk-norm): SD3.5-Large without
    ``dual_attention_blocks``, SD3.5-Medium's MMDiT-X with them."""
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
    import comfy.ops

    return MMDiT(
        input_size=None, patch_size=2, in_channels=16, out_channels=16, depth=depth,
        adm_in_channels=pooled_dim,
        context_embedder_config={"target": "torch.nn.Linear",
                                 "params": {"in_features": context_dim, "out_features": 64 * depth}},
        pos_embed_max_size=pos_embed_max_size, num_patches=pos_embed_max_size ** 2,
        qk_norm="rms", x_block_self_attn_layers=list(dual_attention_blocks), dtype=torch.float32, device=device,
        operations=comfy.ops.disable_weight_init)


def mmdit_shapes(depth: int = 38, context_dim: int = 4096, pooled_dim: int = 2048,
                 pos_embed_max_size: int = 192, dual_attention_blocks=()) -> dict[str, tuple]:
    """Keys and shapes of ComfyUI's MMDiT (built on the meta device: no memory), e.g. to
    stream a full-size random file with ``model_builders.full_size.write_random_safetensors``
    (``mmdit_shapes(**SD35_MEDIUM)`` for SD3.5-Medium)."""
    with torch.device("meta"):
        model = new_mmdit(depth, context_dim, pooled_dim, pos_embed_max_size, device="meta",
                       dual_attention_blocks=dual_attention_blocks)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def mmdit_state_dict(depth: int = 2, context_dim: int = TINY_CONTEXT_DIM, pooled_dim: int = TINY_POOLED_DIM,
                     pos_embed_max_size: int = 48, seed: int = 0, dual_attention_blocks=()) -> dict[str, torch.Tensor]:
    """State dict of ComfyUI's MMDiT at SD3.5 layout (Large, or Medium with
    ``dual_attention_blocks``), small depth."""
    from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed

    torch.manual_seed(seed)
    model = new_mmdit(depth, context_dim, pooled_dim, pos_embed_max_size, dual_attention_blocks=dual_attention_blocks)
    sd = model.state_dict()
    # ComfyUI's init skips weight initialisation; give every tensor defined values.
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if k.endswith(("ln_q.weight", "ln_k.weight")) or ".norm" in k and k.endswith("weight"):
            out[k] = torch.ones_like(v)
        elif k == "pos_embed":  # SD3's fixed 2-D sine-cosine table, as the released checkpoints carry it
            out[k] = torch.from_numpy(get_2d_sincos_pos_embed(v.shape[-1], pos_embed_max_size)).float().view(v.shape)
        elif v.ndim >= 2:
            fan_in = v[0].numel()
            out[k] = torch.randn(v.shape, generator=g) / fan_in ** 0.5
        else:
            out[k] = torch.zeros_like(v)
    return out


def build_tiny_sd35(path: str, depth: int = 2, seed: int = 0, **kw) -> str:
    atomic_save(mmdit_state_dict(depth=depth, seed=seed, **kw), path)
    return path


def build_tiny_sd35_medium(path: str, seed: int = 0, **kw) -> str:
    """A small SD3.5-Medium-layout DiT (:data:`TINY_MEDIUM` unless ``depth`` /
    ``dual_attention_blocks`` are given)."""
    return build_tiny_sd35(path, seed=seed, **dict(TINY_MEDIUM, **kw))


def _init(module: torch.nn.Module, seed: int) -> None:
    """ComfyUI builds TAESD without weight initialisation; initialise it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.zero_()
        # each residual block starts as its skip path, so the deep stack trains stably
        from comfy.taesd.taesd import Block
        for m in module.modules():
            if isinstance(m, Block):
                m.conv[-1].weight.mul_(0.1)


def new_taesd(seed: int = 0):
    """ComfyUI's own 16-channel TAESD (``comfy.taesd.taesd.TAESD``), initialised."""
    from comfy.taesd.taesd import TAESD

    vae = TAESD(latent_channels=16)
    _init(vae, seed)
    return vae


def taesd_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """An untrained 16-channel TAESD with initialised weights (ComfyUI builds it without)."""
    return {k: v.detach().clone() for k, v in new_taesd(seed).state_dict().items()}


def build_tiny_vae(path: str, seed: int = 0) -> str:
    atomic_save(taesd_state_dict(seed=seed), path)
    return path


def build_core_models(paths: dict, depth: int = 2, seed: int = 0, dual_attention_blocks=()) -> None:
    """Write the small DiT, VAE and Qwen2-VL at ``paths["dit"|"vae"|"lmm"]`` unless present
    (``dual_attention_blocks``: the DiT in SD3.5-Medium layout)."""
    if not os.path.exists(paths["dit"]):
        build_tiny_sd35(paths["dit"], depth=depth, seed=seed, dual_attention_blocks=dual_attention_blocks)
    if not os.path.exists(paths["vae"]):
        build_tiny_vae(paths["vae"], seed=seed)
    if not os.path.exists(os.path.join(paths["lmm"], "model.safetensors")):
        build_tiny_qwen2vl(paths["lmm"], LMMSize(), seed=seed)


def build_demo_models(models_dir: str, depth: int = 2, seed: int = 0) -> dict[str, str]:
    """Write a complete small model set into a ComfyUI ``models`` folder.

    Layout: ``diffusion_models/``, ``loras/`` (a LoRA of the DiT, as the release's DiT
    difference ships), ``vae/``, ``LLM/``, ``dream_engine/``. Returns the
    file names as the loader nodes list them. Existing files are kept.
    """
    paths = {
        "dit": os.path.join(models_dir, "diffusion_models", "dream_engine_tiny_sd35.safetensors"),
        "lora": os.path.join(models_dir, "loras", "dream_engine_tiny_lora.safetensors"),
        "vae": os.path.join(models_dir, "vae", "dream_engine_tiny_taesd3.safetensors"),
        "lmm": os.path.join(models_dir, "LLM", "tiny-Qwen2-VL"),
        "adapter": os.path.join(models_dir, "dream_engine", "tiny_direct_map.safetensors"),
        "adapter_standard": os.path.join(models_dir, "dream_engine", "tiny_standard_map.safetensors"),
    }
    build_core_models(paths, depth=depth, seed=seed)
    if not os.path.exists(paths["lora"]):
        os.makedirs(os.path.dirname(paths["lora"]), exist_ok=True)
        build_tiny_dit_lora(paths["lora"], depth=depth, seed=seed)
    lmm_dim = LMMSize().hidden_size
    if not os.path.exists(paths["adapter"]):
        build_tiny_adapter(paths["adapter"], lmm_dim=lmm_dim, kind="direct", token_dim=64 * depth, seed=seed)
    if not os.path.exists(paths["adapter_standard"]):
        build_tiny_adapter(paths["adapter_standard"], lmm_dim=lmm_dim, kind="standard",
                           token_dim=TINY_CONTEXT_DIM, pooled_dim=TINY_POOLED_DIM, seed=seed + 1)
    return {k: os.path.basename(v) for k, v in paths.items()}


def build_tiny_dit_lora(path: str, depth: int = 2, rank: int = 4, scale: float = 0.5, seed: int = 0,
                        projections=("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj")) -> str:
    """A LoRA for the small DiT in diffusers/peft names
    (``transformer.transformer_blocks.N.attn.to_q.lora_A.weight`` / ``lora_B``), the form
    ComfyUI's ``LoraLoaderModelOnly`` maps for SD3. Both factors are non-zero, so
    loading it changes the model's output."""
    hidden = 64 * depth
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for n in range(depth):
        for p in projections:
            key = f"transformer.transformer_blocks.{n}.attn.{p}"
            sd[f"{key}.lora_A.weight"] = torch.randn(rank, hidden, generator=g) * scale / hidden ** 0.5
            sd[f"{key}.lora_B.weight"] = torch.randn(hidden, rank, generator=g) * scale / rank ** 0.5
    atomic_save(sd, path)
    return path

