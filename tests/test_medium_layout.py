"""The whole path on an SD3.5-Medium-layout DiT (MMDiT-X: dual attention ``x_block.attn2``
in its first blocks), built small with ComfyUI's own ``MMDiT`` class: the layout ComfyUI
detects, stage 1 → stage 2 training, the export (adapter + LoRA with the ``attn2`` keys),
every exported LoRA key applied by ComfyUI's ``LoraLoaderModelOnly``, Load Dream Engine on
a Medium MODEL sampling like a hand-merged reference, the shipped workflows on the real
server, and the error when an adapter made for one SD3.5 base meets the other."""
from __future__ import annotations

import logging
import math
import os
import shutil

import pytest
import torch

import comfy_host as host
from conftest import comfy_nodes_module, load_pack, pack_module, shared_server
from test_export import _hand_sample

LMM_NAME = "tiny-Qwen2-VL-medium-run"


def _frozen(stage, **kw):
    return dict(stage=stage, adapter_hidden=64, resolution=32, lmm_short_side=56, batch=4, micro_batch=4,
                lora_rank=4, lora_alpha=8, ckpt_every=0, progress=False, val_n=8, warmup=0.0, random_crop=False,
                cache=True, cfg_dropout={t: 0.0 for t in ("generate", "reconstruct", "edit", "fuse")}, **kw)


@pytest.fixture(scope="module")
def medium(tmp_path_factory, comfy):
    """A tiny Medium-layout training set, trained through stage 1 and stage 2 (the stage-1
    adapter as stage 2's start), the fixed-set losses before and after each stage."""
    from model_builders.comfy_formats import TINY_MEDIUM
    from miniature.training_set import build_tiny_training_set
    from training.train import TrainConfig, Trainer

    d = tmp_path_factory.mktemp("medium")
    tiny = build_tiny_training_set(str(d / "src"), n_records=8, **TINY_MEDIUM)
    paths = dict(manifest=tiny["manifest"], lmm=tiny["lmm"], dit=tiny["dit"], vae=tiny["vae"])
    out = {"tiny": tiny, "dir": str(d), "loss": {}}
    s1 = Trainer(TrainConfig(**paths, out=str(d / "s1"), **_frozen(1, steps=10, lr=3e-3))).setup()
    before = s1.eval_loss()
    s1.train()
    out["loss"][1] = (before, s1.eval_loss())
    s2 = Trainer(TrainConfig(**paths, out=str(d / "s2"), adapter_init=str(d / "s1" / "adapter.safetensors"),
                             **_frozen(2, steps=10, lr=3e-3))).setup()
    before = s2.eval_loss()
    s2.train()
    out["loss"][2] = (before, s2.eval_loss())
    out["s1"], out["s2"] = s1, s2
    return out


@pytest.fixture(scope="module")
def installed(medium):
    """The stage-2 files in a ComfyUI models layout, registered with the in-process host."""
    import folder_paths

    models = os.path.join(medium["dir"], "models")
    for sub in ("dream_engine", "loras", "LLM", "diffusion_models"):
        os.makedirs(os.path.join(models, sub), exist_ok=True)
    s2 = os.path.join(medium["dir"], "s2")
    files = {"adapter": os.path.join(models, "dream_engine", "medium_trained.safetensors"),
             "lora": os.path.join(models, "loras", "medium_trained_lora.safetensors"),
             "dit": os.path.join(models, "diffusion_models", "tiny_sd35_medium.safetensors")}
    shutil.copy(os.path.join(s2, "adapter.safetensors"), files["adapter"])
    shutil.copy(os.path.join(s2, "lora.safetensors"), files["lora"])
    shutil.copy(medium["tiny"]["dit"], files["dit"])
    if not os.path.lexists(os.path.join(models, "LLM", LMM_NAME)):
        os.symlink(medium["tiny"]["lmm"], os.path.join(models, "LLM", LMM_NAME))
    for sub in ("dream_engine", "loras", "LLM"):
        folder_paths.add_model_folder_path(sub, os.path.join(models, sub))
    return files


# ---------------------------------------------------------------- the layout
def test_medium_builder_is_the_layout_comfyui_detects(comfy, tmp_path):
    """ComfyUI's own key detection reads the full-size builder shapes as SD3.5 Medium's
    (24 blocks of hidden 1536, dual attention in 0–12, a 384² position table, 4096-d context,
    2048-d pooled; ~2.5 B parameters) and the small file as the same layout."""
    import comfy.model_detection
    import comfy.sd

    from model_builders.comfy_formats import SD35_MEDIUM, build_tiny_sd35_medium, mmdit_shapes
    from training.dit import base_of

    shapes = mmdit_shapes(**SD35_MEDIUM)
    with torch.device("meta"):
        sd = {k: torch.empty(v) for k, v in shapes.items()}
    cfg = comfy.model_detection.detect_unet_config(sd, "")
    assert cfg["depth"] == 24 and sorted(cfg["x_block_self_attn_layers"]) == list(range(13))
    assert cfg["pos_embed_max_size"] == 384 and cfg["adm_in_channels"] == 2048 and cfg["qk_norm"] == "rms"
    assert cfg["context_embedder_config"]["params"] == {"in_features": 4096, "out_features": 1536}
    n = sum(math.prod(v) for v in shapes.values())
    print(f"SD3.5 Medium layout: {n / 1e9:.3f} B parameters (with the position table)")
    assert 2.4e9 < n < 2.6e9

    patcher = comfy.sd.load_diffusion_model(build_tiny_sd35_medium(str(tmp_path / "m.safetensors")))
    assert type(patcher.model).__name__ == "SD3"
    assert patcher.model.model_config.unet_config["x_block_self_attn_layers"] == [0]
    assert base_of(patcher.model.diffusion_model) == "sd3.5-medium"


# ---------------------------------------------------------------- training
@pytest.mark.training  # the medium fixture trains both stages
def test_medium_stages_train_adapter_and_dual_attention_lora(medium):
    for stage in (1, 2):
        before, after = medium["loss"][stage]
        print(f"medium stage {stage}: fixed-set loss {before:.4f} -> {after:.4f}")
        assert after < 0.9 * before, (stage, before, after)
    assert all(n.startswith("adapter.") for n in medium["s1"].names)
    lora = [n for n in medium["s2"].names if "lora_" in n]
    # a LoRA on every attention projection, the dual-attention block's attn2 included
    for part in ("x_block.attn.qkv.to_q", "x_block.attn.proj", "context_block.attn.qkv.to_v",
                 "x_block.attn2.qkv.to_q", "x_block.attn2.qkv.to_k", "x_block.attn2.qkv.to_v",
                 "x_block.attn2.proj"):
        assert any(f"joint_blocks.0.{part}.lora_A" in n for n in lora), part
    assert not any("joint_blocks.1.x_block.attn2" in n for n in lora)


# ---------------------------------------------------------------- export into ComfyUI
@pytest.mark.training  # the medium fixture trains both stages
def test_medium_export_every_lora_key_applied_and_samples_like_hand_merge(medium, installed, caplog):
    import comfy.lora
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    from safetensors.torch import load_file

    from dream_engine_core.encoder import LMMEncoder
    from dream_engine_core.prompt import build_task_inputs
    from dream_engine_core.weights import load_adapter, read_metadata
    from training.dit import merge_diffusers_lora, merged_state_dict, mmdit_from_state_dict

    tr = medium["s2"]
    lora = load_file(installed["lora"])
    stems = sorted({k.rsplit(".lora_", 1)[0] for k in lora if ".lora_" in k})
    assert {f"transformer.transformer_blocks.0.attn2.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0")} <= set(stems)
    assert read_metadata(installed["lora"])["base_model"] == "sd3.5-medium"
    md = read_metadata(installed["adapter"])
    assert md["dit_base"] == "sd3.5-medium" and md["token_dim"] == "128"

    # 1. ComfyUI's LoraLoaderModelOnly applies every exported key: one patch per LoRA pair,
    #    no "lora key not loaded", and each patched weight is the hand merge
    cnodes = comfy_nodes_module()
    load_pack()
    dit = comfy.sd.load_diffusion_model(installed["dit"])
    with caplog.at_level(logging.WARNING):
        (lora_model,) = cnodes.LoraLoaderModelOnly().load_lora_model_only(dit, os.path.basename(installed["lora"]),
                                                                          1.0)
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    assert sum(len(v) for v in lora_model.patches.values()) == len(stems)
    base_sd = load_file(installed["dit"])
    hand = merge_diffusers_lora(base_sd, lora, depth=2)
    model_sd = dit.model.state_dict()
    patched = {k[len("diffusion_model."):]: comfy.lora.calculate_weight(p, model_sd[k].float().clone(), k)
               for k, p in lora_model.patches.items()}
    assert {"joint_blocks.0.x_block.attn2.qkv.weight", "joint_blocks.0.x_block.attn2.proj.weight"} <= set(patched)
    changed = {k for k in base_sd if not torch.equal(hand[k], base_sd[k].float())}
    assert changed == set(patched), changed ^ set(patched)
    worst = max(float((patched[k] - hand[k]).abs().max()) for k in patched)
    print(f"medium: {len(stems)} LoRA pairs → {len(patched)} patched weights; |ComfyUI − hand merge| = {worst:.1e}")
    assert worst < 1e-6
    # the hand merge of the file equals the trained (qkv-split, peft) DiT merged from its modules
    module_sd = merged_state_dict(tr.module.dit)
    assert max(float((hand[k] - module_sd[k]).abs().max()) for k in base_sd
               if not k.startswith(("context_embedder", "y_embedder"))) < 1e-6

    # 2. Load Dream Engine on the Medium MODEL + the LoRA sample what a hand-written loop
    #    over the hand-merged MMDiT samples
    e = pack_module("nodes.engine")
    handle, patched_model = e.LoadDreamEngine.execute(lora_model, LMM_NAME, os.path.basename(installed["adapter"]),
                                                      "fp32", "cpu").args
    prompt = "two blue circles"
    pos, neg = e.InterleavedConditioning.execute(handle, prompt, "generate").args
    adapter = load_adapter(installed["adapter"], lmm_dim=64)
    enc = LMMEncoder.from_folder(medium["tiny"]["lmm"])
    ti = build_task_inputs(prompt, [], "generate")
    with torch.inference_mode():
        ref_pos, ref_neg = (adapter(enc.encode(x, enc.prepare_images([])).hidden, None, "mean")
                            for x in (ti.cond, ti.uncond))
    latent = torch.zeros(1, 16, 8, 8)
    seed, steps, cfg = 3, 3, 3.5
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.inference_mode():
        out = comfy.sample.sample(patched_model, noise, steps, cfg, "euler", "simple", pos, neg, latent, seed=seed,
                                  disable_pbar=True)
        sigmas = comfy.samplers.calculate_sigmas(patched_model.get_model_object("model_sampling"), "simple", steps)
        ref = _hand_sample(mmdit_from_state_dict(hand), noise, latent, sigmas, ref_pos, ref_neg, cfg)
        base_out = comfy.sample.sample(e.LoadDreamEngine.execute(dit, LMM_NAME,
                                                                 os.path.basename(installed["adapter"]), "fp32",
                                                                 "cpu").args[1],
                                       noise, steps, cfg, "euler", "simple", pos, neg, latent, seed=seed,
                                       disable_pbar=True)
    d_ref, d_lora = float((out - ref).abs().max()), float((out - base_out).abs().max())
    print(f"medium: |ComfyUI sample − hand-merged reference| = {d_ref:.1e}; vs without the LoRA {d_lora:.3f}")
    assert d_ref < 1e-4 and d_lora > 1e-3


# ---------------------------------------------------------------- Large ↔ Medium
@pytest.mark.training  # the medium fixture trains both stages
def test_medium_adapter_refused_on_large_and_large_adapter_on_medium(medium, installed, pack, tmp_path):
    import comfy.sd
    import folder_paths

    from model_builders.comfy_formats import build_tiny_sd35
    from model_builders.qwen2vl import build_tiny_adapter

    e, dm = pack_module("nodes.engine"), pack_module("nodes.direct_map")
    errors = pack_module("dream_engine_core.errors")
    medium_dit = comfy.sd.load_diffusion_model(installed["dit"])
    large_dit = comfy.sd.load_diffusion_model(build_tiny_sd35(str(tmp_path / "large.safetensors")))
    adapter = os.path.basename(installed["adapter"])

    # the trained Medium adapter (same widths as the small Large DiT: only its record tells)
    with pytest.raises(dm.AdapterBaseMismatch) as ei:
        e.LoadDreamEngine.execute(large_dit, LMM_NAME, adapter, "fp32", "cpu")
    msg = str(ei.value)
    print(msg)
    assert isinstance(ei.value, errors.DreamEngineError)
    assert "was made for SD3.5 Medium" in msg and "is SD3.5 Large (2 blocks, hidden 128)" in msg
    assert "load SD3.5 Medium (sd3.5_medium.safetensors in models/diffusion_models" in msg
    assert "choose the adapter made for SD3.5 Large" in msg

    folder = os.path.dirname(installed["adapter"])
    folder_paths.add_model_folder_path("dream_engine", folder)
    # an adapter recorded for SD3.5 Large, on the Medium MODEL: direct and standard map (the
    # standard map's widths, 4096/2048 at full size, are the same for both bases)
    for kind, kw in (("direct", {"token_dim": 128}), ("standard", {"token_dim": 96, "pooled_dim": 80})):
        path = os.path.join(folder, f"large_{kind}.safetensors")
        _adapter_for(path, kind, "sd3.5-large", **kw)
        with pytest.raises(dm.AdapterBaseMismatch) as ei:
            e.LoadDreamEngine.execute(medium_dit, LMM_NAME, os.path.basename(path), "fp32", "cpu",
                                      fingerprint_check="ignore")
        msg = str(ei.value)
        assert "was made for SD3.5 Large" in msg and "sd3.5_large.safetensors" in msg, msg
        assert "is SD3.5 Medium (2 blocks, hidden 128, dual attention in block 0)" in msg, msg
    # an adapter without the record keeps loading where its widths fit ...
    build_tiny_adapter(os.path.join(folder, "unrecorded.safetensors"), lmm_dim=64, token_dim=128)
    _, model = e.LoadDreamEngine.execute(medium_dit, LMM_NAME, "unrecorded.safetensors", "fp32", "cpu",
                                         fingerprint_check="ignore").args
    assert isinstance(model.get_model_object("diffusion_model.context_embedder"), dm.DreamEngineIdentity)
    # ... and one with the release's SD3.5-Large width is named by it
    build_tiny_adapter(os.path.join(folder, "release_width.safetensors"), lmm_dim=64, token_dim=2432, hidden_dim=8)
    with pytest.raises(dm.AdapterBaseMismatch) as ei:
        e.LoadDreamEngine.execute(medium_dit, LMM_NAME, "release_width.safetensors", "fp32", "cpu",
                                  fingerprint_check="ignore")
    assert "made for SD3.5 Large" in str(ei.value) and "2432-d, SD3.5 Large's hidden width" in str(ei.value)


def _adapter_for(path, kind, base, **kw):
    from dream_engine_core.adapter import Adapter, AdapterSpec
    from dream_engine_core.weights import save_adapter

    spec = AdapterSpec(kind=kind, lmm_dim=64, hidden_dim=16, lmm="tiny", dit=base,
                       **{"pooled_dim": kw.get("token_dim"), **kw})
    save_adapter(path, Adapter(spec))


# ---------------------------------------------------------------- the shipped workflows
@pytest.mark.server
def test_medium_shipped_workflows_sample_on_the_server(medium, installed):
    """The shipped text-to-image and object-fusion API workflows (the graph of every shipped
    workflow: UNETLoader → LoraLoaderModelOnly → Load Dream Engine → KSampler), with the
    Medium DiT, its trained LoRA and adapter, through the real server: each renders, and
    ComfyUI loaded every LoRA key."""
    from PIL import Image

    server = shared_server()
    models = os.path.join(server.base_dir, "models")
    for kind in ("dit", "lora", "adapter"):
        sub = {"dit": "diffusion_models", "lora": "loras", "adapter": "dream_engine"}[kind]
        os.makedirs(os.path.join(models, sub), exist_ok=True)
        shutil.copy(installed[kind], os.path.join(models, sub, os.path.basename(installed[kind])))
    if not os.path.lexists(os.path.join(models, "LLM", LMM_NAME)):
        os.symlink(medium["tiny"]["lmm"], os.path.join(models, "LLM", LMM_NAME))
    before = server.log_text().count("lora key not loaded")
    for ui in ("1_text_to_image.json", "3_object_fusion.json"):
        p = host.configure(host.load_api(ui), unet_name=os.path.basename(installed["dit"]),
                           lora_name=os.path.basename(installed["lora"]), vae_name=host.SMALL["vae_name"],
                           lmm=LMM_NAME, adapter=os.path.basename(installed["adapter"]), size=128, steps=4)
        entry = server.run(p)
        assert entry["status"]["status_str"] == "success", (ui, host.execution_error(entry))
        images = server.output_images(entry)
        assert len(images) == 1 and Image.open(images[0]).size[0] >= 128, ui
    assert server.log_text().count("lora key not loaded") == before
