"""Export from a tiny stage-2 run into the real ComfyUI host.

The adapter is loaded with ``dream_engine_core.weights.load_adapter`` and with the
pack's ``LoadDreamEngine`` node; the LoRA with ComfyUI's own ``LoraLoaderModelOnly``.
The latent sampled with them differs from the untrained one and equals a hand-written
Euler/CFG loop over an MMDiT whose weights had the exported LoRA merged by hand.
"""
from __future__ import annotations

import os

import pytest
import torch

from conftest import comfy_nodes_module, load_pack, pack_module

pytestmark = pytest.mark.training  # runs a trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory, comfy):
    """A tiny stage-2 run exported into a ComfyUI models folder."""
    import folder_paths

    from miniature.training_set import build_tiny_training_set
    from training.train import TrainConfig, Trainer

    models = tmp_path_factory.mktemp("export_models")
    tiny = build_tiny_training_set(str(models / "src"), n_records=8)
    cfg = TrainConfig(manifest=tiny["manifest"], lmm=tiny["lmm"], dit=tiny["dit"], vae=tiny["vae"],
                      out=str(models / "run"), stage=2, adapter_hidden=64, resolution=32, lmm_short_side=56,
                      batch=4, micro_batch=4, lora_rank=4, lora_alpha=8, steps=4, lr=2e-2, warmup=0.0,
                      ckpt_every=0, progress=False)
    tr = Trainer(cfg).setup()
    untrained = str(models / "untrained_adapter.safetensors")
    from dream_engine_core.weights import save_adapter

    save_adapter(untrained, tr.module.adapter)
    tr.train()
    os.makedirs(models / "dream_engine", exist_ok=True)
    os.makedirs(models / "loras", exist_ok=True)
    os.makedirs(models / "LLM", exist_ok=True)
    os.replace(cfg.out + "/adapter.safetensors", models / "dream_engine" / "trained.safetensors")
    os.replace(cfg.out + "/lora.safetensors", models / "loras" / "trained_lora.safetensors")
    os.replace(untrained, models / "dream_engine" / "untrained.safetensors")
    os.symlink(tiny["lmm"], models / "LLM" / "tiny-Qwen2-VL")
    for name in ("dream_engine", "loras", "LLM"):
        folder_paths.add_model_folder_path(name, str(models / name))
    return {"trainer": tr, "models": str(models), "tiny": tiny}


def _hand_mmdit(sd):
    from training.dit import mmdit_from_state_dict

    return mmdit_from_state_dict(sd)


def _hand_sample(mmdit, noise, latent, sigmas, pos, neg, cfg):
    """Rectified-flow Euler with CFG; direct map: tokens into the joint blocks, vector + t-embedding."""
    scale, shift = 1.5305, 0.0609

    def velocity(x, sigma, tokens, pooled):
        hw = x.shape[-2:]
        h = mmdit.x_embedder(x) + mmdit.cropped_pos_embed(hw, device=x.device).to(x)
        vec = mmdit.t_embedder(sigma.reshape(1) * 1000, dtype=x.dtype) + pooled
        h = mmdit.forward_core_with_concat(h, vec, tokens, None, {})
        return mmdit.unpatchify(h, hw=hw)[:, :, :hw[0], :hw[1]]

    x = sigmas[0] * noise + (1 - sigmas[0]) * (latent - shift) * scale
    for i in range(len(sigmas) - 1):
        s = sigmas[i]
        d_c = x - velocity(x, s, *pos) * s
        d_u = x - velocity(x, s, *neg) * s
        den = d_u + (d_c - d_u) * cfg
        x = x + (x - den) / s * (sigmas[i + 1] - s)
    return x / scale + shift


def test_exported_files_load_and_sample_like_hand_merged_reference(run):
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    from safetensors.torch import load_file

    from dream_engine_core.encoder import LMMEncoder
    from dream_engine_core.prompt import build_task_inputs
    from dream_engine_core.weights import load_adapter, read_metadata
    from training.dit import merge_diffusers_lora, merged_state_dict

    tr, models, tiny = run["trainer"], run["models"], run["tiny"]
    adapter_path = os.path.join(models, "dream_engine", "trained.safetensors")
    lora_path = os.path.join(models, "loras", "trained_lora.safetensors")

    # 1. the adapter file: the pack's loader gives back exactly the trained weights
    adapter = load_adapter(adapter_path, lmm_dim=64)
    trained = tr.trained_params()
    for k, v in adapter.state_dict().items():
        assert torch.equal(v, trained["adapter." + k]), k
    md = read_metadata(adapter_path)
    assert md["format"] == "dream_engine.adapter" and md["map_kind"] == "direct" and md["token_dim"] == "128"

    # 2. the LoRA file: diffusers SD3 keys with alpha; merged by hand it equals the trained
    #    (qkv-split, peft) DiT merged from its modules
    lora = load_file(lora_path)
    assert all(k.startswith("transformer.transformer_blocks.") for k in lora)
    assert any(k.endswith("attn.to_q.lora_A.weight") for k in lora) and any(k.endswith(".alpha") for k in lora)
    assert float(lora["transformer.transformer_blocks.0.attn.to_q.alpha"]) == 8.0
    base_sd = load_file(tiny["dit"])
    hand_sd = merge_diffusers_lora(base_sd, lora, depth=2)
    module_sd = merged_state_dict(tr.module.dit)
    assert set(hand_sd) == set(base_sd)
    worst = max(float((hand_sd[k] - module_sd[k]).abs().max()) for k in base_sd
                if k not in ("context_embedder.weight", "context_embedder.bias") and not k.startswith("y_embedder"))
    assert worst < 1e-6, worst
    moved = max(float((hand_sd[k] - base_sd[k]).abs().max()) for k in base_sd)
    assert moved > 1e-3, "the LoRA did not change the DiT"

    # 3. in the host: adapter through LoadDreamEngine (when the pack's node exists), LoRA
    #    through ComfyUI's LoraLoaderModelOnly
    cnodes = comfy_nodes_module()
    load_pack()
    dit = comfy.sd.load_diffusion_model(tiny["dit"])
    enc = LMMEncoder.from_folder(tiny["lmm"])
    prompt = "two blue circles"

    def core_cond(ad):
        ti = build_task_inputs(prompt, [], "generate")
        prep = enc.prepare_images([])
        out = []
        for inp in (ti.cond, ti.uncond):
            with torch.inference_mode():
                out.append(ad(enc.encode(inp, prep).hidden, None, "mean"))
        return out

    pos, neg = core_cond(adapter)
    untrained_pos, untrained_neg = core_cond(load_adapter(os.path.join(models, "dream_engine",
                                                                       "untrained.safetensors")))
    e = pack_module("nodes.engine")
    handle, patched = e.LoadDreamEngine.execute(dit, "tiny-Qwen2-VL", "trained.safetensors", "fp32",
                                                "cpu").args
    npos, nneg = e.InterleavedConditioning.execute(handle, prompt, "generate").args
    assert torch.allclose(npos[0][0], pos[0], atol=1e-6) and torch.allclose(
        npos[0][1]["pooled_output"], pos[1], atol=1e-6)
    cond_pos, cond_neg = npos, nneg
    _, patched_untrained = e.LoadDreamEngine.execute(dit, "tiny-Qwen2-VL", "untrained.safetensors", "fp32",
                                                     "cpu").args
    (lora_model,) = cnodes.LoraLoaderModelOnly().load_lora_model_only(patched, "trained_lora.safetensors", 1.0)

    latent = torch.zeros(1, 16, 8, 8)
    seed, steps, cfg = 5, 3, 3.5
    noise = comfy.sample.prepare_noise(latent, seed)

    def sample(model, p, n):
        with torch.inference_mode():
            return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", p, n, latent, seed=seed,
                                       disable_pbar=True)

    out = sample(lora_model, cond_pos, cond_neg)
    mark = pack_module("nodes.direct_map").mark_direct_map  # direct-map conditioning, as the node makes it
    untrained = sample(patched_untrained, [[untrained_pos[0], mark({"pooled_output": untrained_pos[1]})]],
                       [[untrained_neg[0], mark({"pooled_output": untrained_neg[1]})]])
    without_lora = sample(patched, cond_pos, cond_neg)

    sigmas = comfy.samplers.calculate_sigmas(lora_model.get_model_object("model_sampling"), "simple", steps)
    with torch.inference_mode():
        ref = _hand_sample(_hand_mmdit(hand_sd), noise, latent, sigmas, pos, neg, cfg)
    d_ref = float((out - ref).abs().max())
    d_untrained = float((out - untrained).abs().max())
    d_lora = float((out - without_lora).abs().max())
    print(f"export: |ComfyUI LoRA sample - hand-merged reference| = {d_ref:.2e}; "
          f"vs untrained {d_untrained:.3f}; vs trained adapter without LoRA {d_lora:.3f}")
    assert d_ref < 1e-4, d_ref
    assert d_untrained > 1e-2 and d_lora > 1e-3
