"""The official-release converter on a small fake release with the real key layout
(DESIGN.md §1): ``dit.*`` in diffusers SD3 names, ``lmm.*`` in pre-4.52 Qwen2-VL
names, the two align MLPs, unused ``pooled_proj`` / ``norm_lmm_out``, peft LoRA keys
in both the DiT and the LMM, saved as pickle shards plus an index."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R = 4  # LoRA rank in the fake release (alpha = r, as the release's demo)


def _diffusers_dit(comfy_sd: dict, depth: int) -> dict:
    """ComfyUI-layout MMDiT weights → diffusers SD3 names (inverse of ComfyUI's own map)."""
    import comfy.utils

    cfg = {"depth": depth}
    out = {}
    for dk, target in comfy.utils.mmdit_to_diffusers(cfg).items():
        if isinstance(target, str):
            if target in comfy_sd:
                out[dk] = comfy_sd[target].clone()
        elif target[1] is None:  # (key, None, fn): fn is an involution (swap scale/shift)
            if target[0] in comfy_sd:
                out[dk] = target[2](comfy_sd[target[0]].clone())
        else:
            key, (dim, start, size) = target
            if key in comfy_sd:
                out[dk] = comfy_sd[key].narrow(dim, start, size).clone()
    return out


@pytest.fixture(scope="module")
def fake(tmp_path_factory, comfy):
    from dream_engine_core.adapter import Adapter, AdapterSpec
    from model_builders.qwen2vl import LMMSize, build_tiny_qwen2vl
    from safetensors.torch import load_file
    from model_builders.comfy_formats import mmdit_state_dict

    root = tmp_path_factory.mktemp("official")
    lmm_dir = build_tiny_qwen2vl(str(root / "stock-Qwen2-VL"), LMMSize(), seed=3)
    lmm_sd = load_file(os.path.join(lmm_dir, "model.safetensors"))
    comfy_dit = mmdit_state_dict(depth=2, seed=4)
    dit_sd = _diffusers_dit(comfy_dit, 2)
    # every ComfyUI key is represented (qkv by its three slices)
    assert len(dit_sd) >= len(comfy_dit)
    torch.manual_seed(5)
    adapter = Adapter(AdapterSpec.direct(128, lmm_dim=64, hidden_dim=96))
    g = torch.Generator().manual_seed(6)

    combined = {}
    lora_lmm = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "visual.blocks.0.attn.qkv"]
    lora_dit = ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_add_out", "transformer_blocks.1.attn.to_v"]
    for k, v in lmm_sd.items():
        combined["lmm." + k] = v
    for k, v in dit_sd.items():
        combined["dit." + k] = v
    loras = {}
    for prefix, mods in (("lmm.", lora_lmm), ("dit.", lora_dit)):
        for m in mods:
            w = combined.pop(f"{prefix}{m}.weight")
            combined[f"{prefix}{m}.base_layer.weight"] = w
            if f"{prefix}{m}.bias" in combined:
                combined[f"{prefix}{m}.base_layer.bias"] = combined.pop(f"{prefix}{m}.bias")
            a = torch.randn(R, w.shape[1], generator=g) * 0.1
            b = torch.randn(w.shape[0], R, generator=g) * 0.1
            combined[f"{prefix}{m}.lora_A.default.weight"] = a
            combined[f"{prefix}{m}.lora_B.default.weight"] = b
            loras[prefix + m] = (a, b)
    for k, v in adapter.state_dict().items():
        combined[k] = v.clone()
    combined["pooled_proj.0.weight"] = torch.randn(32, 64, generator=g)
    combined["pooled_proj.0.bias"] = torch.zeros(32)
    combined["norm_lmm_out.weight"] = torch.ones(64)

    rel = root / "release"
    rel.mkdir()
    keys = sorted(combined)
    n = 3
    wm = {}
    for i in range(n):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{n:05d}.bin"
        part = {k: combined[k] for k in keys[i::n]}
        torch.save(part, rel / name)
        wm.update({k: name for k in part})
    with open(rel / "diffusion_pytorch_model.bin.index.json", "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, f)
    return {"root": root, "release": str(rel), "lmm": lmm_dir, "comfy_dit": comfy_dit, "adapter": adapter,
            "loras": loras, "keys": keys}


def test_convert_gives_same_conditioning_and_dit_output(fake, tmp_path, capsys):
    import comfy.sd
    from peft import LoraConfig, inject_adapter_in_model

    from dream_engine_core.encoder import LMMEncoder
    from dream_engine_core.engine import DreamEngine
    from tools.convert_official import convert
    from training.dit import merge_diffusers_lora

    out = tmp_path / "models"
    written = convert(fake["release"], str(out), fake["lmm"], name="official", progress=False)
    printed = capsys.readouterr().out
    # every release key is in the table
    with open(written["table"]) as f:
        table = dict(line.rstrip("\n").split("\t") for line in list(f)[1:])
    assert set(table) == set(fake["keys"])
    assert table["pooled_proj.0.weight"].startswith("unused") and table["norm_lmm_out.weight"].startswith("unused")
    assert "merged into model.layers.0.self_attn.q_proj.weight" in table["lmm.model.layers.0.self_attn.q_proj.lora_A.default.weight"]
    assert "input_embeds_align_mlp.0.weight" in printed

    # conditioning: the converted LMM folder + adapter vs the fake combined model (stock LMM + peft LoRA)
    ref = LMMEncoder.from_folder(fake["lmm"])
    name_map = {"model.layers.": "model.language_model.layers.", "visual.": "model.visual."}
    targets = []
    for m in fake["loras"]:
        if m.startswith("lmm."):
            m = m[4:]
            for old, new in name_map.items():
                if m.startswith(old):
                    m = new + m[len(old):]
            targets.append(m)
    inject_adapter_in_model(LoraConfig(r=R, lora_alpha=R, target_modules=targets), ref.model)
    mods = dict(ref.model.named_modules())
    with torch.no_grad():
        for m, (a, b) in fake["loras"].items():
            if m.startswith("lmm."):
                t = targets[[x for x in fake["loras"] if x.startswith("lmm.")].index(m)]
                mods[t].lora_A["default"].weight.copy_(a)
                mods[t].lora_B["default"].weight.copy_(b)
    ref_engine = DreamEngine(ref, fake["adapter"].eval())
    conv = DreamEngine.load(written["lmm"], written["adapter"])
    from PIL import Image
    img = Image.new("RGB", (60, 44), (200, 30, 30))
    for prompt, images, task in (("a red [image 1] on grass", [img], "generate"), ("make it blue", [img], "edit")):
        p1, n1 = ref_engine.encode(prompt, images, task=task)
        p2, n2 = conv.encode(prompt, images, task=task)
        d = max(float((p1.tokens - p2.tokens).abs().max()), float((p1.pooled - p2.pooled).abs().max()),
                float((n1.tokens - n2.tokens).abs().max()))
        assert d < 1e-4, (task, d)
    # the LoRA mattered: the stock LMM gives different states
    stock = DreamEngine(LMMEncoder.from_folder(fake["lmm"]), fake["adapter"].eval())
    assert float((stock.encode("a red [image 1]", [img])[0].tokens -
                  conv.encode("a red [image 1]", [img])[0].tokens).abs().max()) > 1e-3

    # DiT: ComfyUI loads the converted file; its output equals the combined model's DiT with LoRA merged
    patcher = comfy.sd.load_diffusion_model(written["dit"])
    lora_sd = {}
    for m, (a, b) in fake["loras"].items():
        if m.startswith("dit."):
            lora_sd[f"transformer.{m[4:]}.lora_A.weight"] = a
            lora_sd[f"transformer.{m[4:]}.lora_B.weight"] = b
    merged = merge_diffusers_lora(fake["comfy_dit"], lora_sd, depth=2)
    from training.dit import mmdit_from_state_dict
    hand = mmdit_from_state_dict(merged)
    got = patcher.model.diffusion_model
    g = torch.Generator().manual_seed(0)
    x, ctx, y = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 7, 96, generator=g), torch.randn(1, 80, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        d = float((got(x, t, context=ctx, y=y) - hand(x, t, context=ctx, y=y)).abs().max())
    assert d < 1e-5, d


def test_unknown_key_fails_loudly_and_writes_nothing(fake, tmp_path):
    from tools.convert_official import ConversionError, convert

    rel = tmp_path / "release"
    rel.mkdir()
    torch.save({"input_embeds_align_mlp.0.weight": torch.zeros(2, 2), "text_encoders.clip_l.weight": torch.zeros(1)},
               rel / "diffusion_pytorch_model-00001-of-00001.bin")
    with open(rel / "diffusion_pytorch_model.bin.index.json", "w") as f:
        json.dump({"weight_map": {"input_embeds_align_mlp.0.weight": "diffusion_pytorch_model-00001-of-00001.bin",
                                  "text_encoders.clip_l.weight": "diffusion_pytorch_model-00001-of-00001.bin"}}, f)
    with pytest.raises(ConversionError, match="text_encoders.clip_l.weight"):
        convert(str(rel), str(tmp_path / "out"), fake["lmm"], progress=False, print_table=False)
    assert not (tmp_path / "out").exists()
    # the same through the command line: exit status 2, the key named, no traceback
    r = subprocess.run([sys.executable, "-m", "tools.convert_official", str(rel), "--out-dir",
                        str(tmp_path / "out2"), "--lmm-base", fake["lmm"], "--no-progress"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "text_encoders.clip_l.weight" in r.stderr and "Traceback" not in r.stderr


def test_pickles_are_opened_only_by_the_converter():
    """``torch.load`` appears only in the converter, always with weights_only=True."""
    import re

    hits = []
    for base in ("dream_engine_core", "training", "nodes", "tools", "miniature", "model_builders", "comfy_host"):
        for dp, _, files in os.walk(os.path.join(ROOT, base)):
            for fn in files:
                if fn.endswith(".py"):
                    src = open(os.path.join(dp, fn), encoding="utf-8").read()
                    for m in re.finditer(r"torch\.load\(([^)]*)\)", src):
                        hits.append((os.path.relpath(os.path.join(dp, fn), ROOT), m.group(1)))
    assert hits and all(f == os.path.join("tools", "convert_official.py") and "weights_only=True" in a
                        for f, a in hits), hits
