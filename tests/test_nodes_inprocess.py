"""The pack's nodes called in-process on the real ComfyUI host (no server).

Parity: conditioning through the nodes equals the core's output, and sampling
through the patched MODEL equals a hand-written Euler/CFG loop over the same small
MMDiT with the adapter's tokens and vector injected as DESIGN.md §2 describes.
"""
from __future__ import annotations

import os

import pytest
import torch

from conftest import pack_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LMM, DIRECT, STANDARD = "tiny-Qwen2-VL", "tiny_direct_map.safetensors", "tiny_standard_map.safetensors"


def nodes(pack):
    e = pack_module("nodes.engine")
    s = pack_module("nodes.segments")
    return e.LoadDreamEngine, e.InterleavedConditioning, s.ImageSegment, s.BlendRatio


def image(seed, h=48, w=64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, h, w, 3, generator=g)


def test_entrypoint_registers_v3_nodes_only(pack):
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")
    import asyncio

    ext = pack.comfy_entrypoint()
    ids = [n.GET_SCHEMA().node_id for n in asyncio.run(ext.get_node_list())]
    assert ids == ["LoadDreamEngine", "DreamEngineInterleavedConditioning", "DreamEngineImageSegment",
                   "DreamEngineBlendRatio"]


def test_conditioning_equals_core(pack, models, dit):
    from dream_engine_core.engine import DreamEngine
    from dream_engine_core.prompt import ImageRef

    Load, Cond, Seg, Blend = nodes(pack)
    handle, patched = Load.execute(dit, LMM, DIRECT, "fp32", "cpu").args
    a, b = image(1), image(2, 40, 40)
    s = Seg.execute(a, "hat", 0).args[0]
    s = Blend.execute(s, 0.3, "last").args[0]
    s = Seg.execute(b, "cat", 0, segments=s).args[0]
    s = Blend.execute(s, 0.8, "last").args[0]
    pos, neg = Cond.execute(handle, "a [cat] wearing the [hat]", "fuse", "natural", "mean", "mrope", s).args

    core = DreamEngine.load(os.path.join(models, "LLM", LMM), os.path.join(models, "dream_engine", DIRECT))
    cp, cn = core.encode("a [cat] wearing the [hat]", [a[0], b[0]], [ImageRef("hat", 0.3), ImageRef("cat", 0.8)],
                         "fuse")
    assert torch.equal(pos[0][0], cp.tokens) and torch.equal(pos[0][1]["pooled_output"], cp.pooled)
    assert torch.equal(neg[0][0], cn.tokens) and torch.equal(neg[0][1]["pooled_output"], cn.pooled)
    assert pos[0][0].shape[-1] == 128  # direct map: the DiT's hidden width


def test_direct_map_patches_a_clone_only(pack, models, dit):
    Load = nodes(pack)[0]
    _, patched = Load.execute(dit, LMM, DIRECT, "fp32", "cpu").args
    assert patched is not dit and patched.model is dit.model
    assert set(patched.object_patches) == {"diffusion_model.context_embedder", "diffusion_model.y_embedder"}
    assert not dit.object_patches
    assert isinstance(dit.model.diffusion_model.context_embedder, torch.nn.Linear)


def test_standard_map_passes_model_through(pack, models, dit):
    Load, Cond = nodes(pack)[:2]
    handle, out = Load.execute(dit, LMM, STANDARD, "fp32", "cpu").args
    assert out is dit
    pos, neg = Cond.execute(handle, "a red square", "generate").args
    assert pos[0][0].shape[-1] == 96 and pos[0][1]["pooled_output"].shape[-1] == 80


def _hand_mmdit(path):
    """The same small MMDiT, built afresh from its file (no ComfyUI model wrapper)."""
    from safetensors.torch import load_file

    from training.dit import mmdit_from_state_dict

    return mmdit_from_state_dict(load_file(path))


def test_sampling_through_patched_model_equals_hand_forward(pack, models, dit):
    import comfy.sample
    import comfy.samplers

    Load, Cond = nodes(pack)[:2]
    handle, patched = Load.execute(dit, LMM, DIRECT, "fp32", "cpu").args
    pos, neg = Cond.execute(handle, "two blue circles", "generate").args
    latent = torch.zeros(1, 16, 16, 16)
    seed, steps, cfg = 7, 3, 3.5
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.inference_mode():
        out = comfy.sample.sample(patched, noise, steps, cfg, "euler", "simple", pos, neg, latent, seed=seed,
                                  disable_pbar=True)

    # By hand: SD3 latent format, rectified-flow Euler with CFG, tokens straight into the
    # joint blocks, vector added to the timestep embedding.
    mmdit = _hand_mmdit(os.path.join(models, "diffusion_models", "dream_engine_tiny_sd35.safetensors"))
    sigmas = comfy.samplers.calculate_sigmas(patched.get_model_object("model_sampling"), "simple", steps)
    scale, shift = 1.5305, 0.0609

    def velocity(x, sigma, c):
        tokens, pooled = c[0][0], c[0][1]["pooled_output"]
        hw = x.shape[-2:]
        h = mmdit.x_embedder(x) + mmdit.cropped_pos_embed(hw, device=x.device).to(x)
        vec = mmdit.t_embedder(sigma.reshape(1) * 1000, dtype=x.dtype) + pooled
        h = mmdit.forward_core_with_concat(h, vec, tokens, None, {})
        return mmdit.unpatchify(h, hw=hw)[:, :, :hw[0], :hw[1]]

    with torch.inference_mode():
        lat_in = (latent - shift) * scale
        x = sigmas[0] * noise + (1 - sigmas[0]) * lat_in
        for i in range(steps):
            s = sigmas[i]
            d_c = x - velocity(x, s, pos) * s
            d_u = x - velocity(x, s, neg) * s
            denoised = d_u + (d_c - d_u) * cfg
            x = x + (x - denoised) / s * (sigmas[i + 1] - s)
        ref = x / scale + shift
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (out - ref).abs().max()


def test_segment_mask_crops_and_fills(pack):
    Seg, Blend = nodes(pack)[2:]
    img = torch.rand(2, 10, 12, 3)
    mask = torch.zeros(1, 10, 12)
    mask[0, 2:6, 3:9] = 1.0
    mask[0, 2, 3] = 0.0  # a hole inside the box → neutral grey
    seg = Seg.execute(img, "x", 1, mask=mask).args[0]
    out = seg[-1].image
    assert out.shape == (4, 6, 3)
    assert torch.equal(out[1:, 1:], img[1, 3:6, 4:9])
    assert torch.all(out[0, 0] == 0.5)
    # chains are never modified in place
    two = Blend.execute(seg, 0.4, "all").args[0]
    assert seg[-1].ratio == 0.0 and two[-1].ratio == 0.4
    with pytest.raises(ValueError, match="frame 2 does not exist"):
        Seg.execute(img, "", 2)
    with pytest.raises(ValueError, match="selects no pixel"):
        Seg.execute(img, "", 0, mask=torch.zeros(1, 10, 12))
    with pytest.raises(ValueError, match="blend ratio"):
        Blend.execute(seg, 1.5, "last")


def test_progress_and_interrupt(pack, models, dit):
    import comfy.model_management as mm
    import comfy.utils

    Load, Cond = nodes(pack)[:2]
    handle, _ = Load.execute(dit, LMM, DIRECT, "fp32", "cpu").args
    seen = []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda v, t, preview, node_id=None: seen.append((v, t)))
    try:
        Cond.execute(handle, "a green triangle", "generate")
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
    assert seen[-1] == (5, 5) and len(seen) == 5
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            Cond.execute(handle, "a green triangle", "generate")
    finally:
        mm.interrupt_current_processing(False)


def test_lmm_is_managed_by_comfy(pack, models, dit):
    import comfy.model_management as mm

    Load, Cond = nodes(pack)[:2]
    handle, _ = Load.execute(dit, LMM, DIRECT, "fp32", "default").args
    Cond.execute(handle, "a blue square", "generate")
    loaded = [m.model for m in mm.current_loaded_models]
    assert handle.patcher in loaded
    assert handle.patcher.load_device == mm.text_encoder_device()


def test_image_size_inputs_reach_the_encoder(pack, models, dit):
    Load, Cond, Seg, _ = nodes(pack)
    handle, _ = Load.execute(dit, LMM, DIRECT, "fp32", "cpu").args
    s = Seg.execute(image(3, 64, 64), "a", 0).args[0]
    big, _ = Cond.execute(handle, "see [a]", "generate", "natural", "mean", "mrope", s).args
    small, _ = Cond.execute(handle, "see [a]", "generate", "natural", "mean", "mrope", s,
                            image_short_side=56, min_pixels=56 * 56, max_pixels=56 * 56).args
    assert small[0][0].shape[1] < big[0][0].shape[1]
    with pytest.raises(ValueError, match="max_pixels"):
        Cond.execute(handle, "see [a]", "generate", "natural", "mean", "mrope", s, min_pixels=5000, max_pixels=4000)
