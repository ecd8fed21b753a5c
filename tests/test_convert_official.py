"""The official-release converter on small fake releases in the release's exact layout.

The fake release is written as the release's demo loads it (``src/scripts/eval/demo.py``
of the official repository; DESIGN.md §1): ``transformer/config.json`` +
``transformer/diffusion_pytorch_model.bin.index.json`` + pickle shards written with
``torch.save``, holding the combined model's state dict — ``dit.`` + diffusers SD3 names
with peft-wrapped attention projections (``…base_layer.weight``,
``…lora_A.default.weight``, ``…lora_B.default.weight``), ``lmm.`` + pre-4.52 Qwen2-VL
names with the same wrapping on ``self_attn.{q,k,v,o}_proj``, the two align MLPs and
the unused ``pooled_proj.*`` / ``norm_lmm_out.weight``. Variants drop the LoRA of
either model or add trained extras (``dit.context_embedder`` differing from stock; a
``dit.pos_embed`` differing from stock is refused by the LoRA form, since ComfyUI's
LoRA loader does not patch that buffer)."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch

from conftest import comfy_nodes_module

pytestmark = pytest.mark.heavy  # fake releases built, converted in both forms and sampled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R = 4  # LoRA rank in the fake release (alpha = r, as the release's demo)
LMM_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
DIT_TARGETS = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k",
               "attn.to_out.0", "attn.to_q", "attn.to_v")
EXTRAS = ("context_embedder.weight", "context_embedder.bias")
VARIANTS = {"demo": dict(lmm_lora=True, dit_lora=True, extras=False),
            "no_lmm_lora": dict(lmm_lora=False, dit_lora=True, extras=False),
            "no_dit_lora": dict(lmm_lora=True, dit_lora=False, extras=False),
            "trained_extras": dict(lmm_lora=True, dit_lora=True, extras=True)}


def _diffusers_dit(comfy_sd: dict, depth: int) -> dict:
    """ComfyUI-layout MMDiT weights → diffusers SD3 names (inverse of ComfyUI's own map)."""
    import comfy.utils

    out = {}
    for dk, target in comfy.utils.mmdit_to_diffusers({"depth": depth}).items():
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


def _peft_wrap(combined: dict, prefix: str, targets, g, loras: dict) -> None:
    """Wrap every module of ``combined`` (``prefix`` + name) whose name ends with a
    target as peft's ``add_adapter`` does in the demo."""
    mods = sorted({k[:-len(".weight")] for k in combined if k.startswith(prefix) and k.endswith(".weight")
                   and any(k[:-len(".weight")].endswith("." + t) for t in targets)
                   and not k.startswith(prefix + "visual.")})
    for m in mods:
        w = combined.pop(f"{m}.weight")
        combined[f"{m}.base_layer.weight"] = w
        if f"{m}.bias" in combined:
            combined[f"{m}.base_layer.bias"] = combined.pop(f"{m}.bias")
        a = torch.randn(R, w.shape[1], generator=g) * 0.1
        b = torch.randn(w.shape[0], R, generator=g) * 0.1
        combined[f"{m}.lora_A.default.weight"] = a
        combined[f"{m}.lora_B.default.weight"] = b
        loras[m] = (a, b)


def _write_release(root, combined: dict, n_shards: int = 3) -> str:
    """``root/transformer/`` as on the model hub: config.json, the index and pickle shards."""
    tr = root / "transformer"
    tr.mkdir(parents=True)
    keys = sorted(combined)
    wm = {}
    for i in range(n_shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{n_shards:05d}.bin"
        part = {k: combined[k] for k in keys[i::n_shards]}
        torch.save(part, tr / name)
        wm.update({k: name for k in part})
    with open(tr / "diffusion_pytorch_model.bin.index.json", "w") as f:
        json.dump({"metadata": {"total_size": sum(v.numel() * v.element_size() for v in combined.values())},
                   "weight_map": wm}, f)
    with open(tr / "config.json", "w") as f:
        json.dump({"_class_name": "QwenVLSD3_DirectMap_Transformer2DModel", "_diffusers_version": "0.33.0.dev0"}, f)
    return str(root)


@pytest.fixture(scope="module")
def stock(tmp_path_factory, comfy):
    """The stock models the release was made from: a small Qwen2-VL folder and a small
    SD3.5-layout DiT file (ComfyUI single-file layout, as sd3.5_large.safetensors)."""
    from model_builders.comfy_formats import mmdit_state_dict
    from model_builders.qwen2vl import LMMSize, build_tiny_qwen2vl
    from dream_engine_core.weights import atomic_save

    root = tmp_path_factory.mktemp("stock")
    lmm_dir = build_tiny_qwen2vl(str(root / "Qwen2-VL-2B-Instruct"), LMMSize(), seed=3)
    comfy_dit = mmdit_state_dict(depth=2, seed=4)
    dit_path = str(root / "sd3.5_large.safetensors")
    atomic_save({"model.diffusion_model." + k: v for k, v in comfy_dit.items()}, dit_path)
    return {"lmm": lmm_dir, "dit": dit_path, "comfy_dit": comfy_dit}


def make_release(root, stock, lmm_lora=True, dit_lora=True, extras=False, seed=6, pos_embed=False) -> dict:
    from safetensors.torch import load_file

    from dream_engine_core.adapter import Adapter, AdapterSpec

    lmm_sd = load_file(os.path.join(stock["lmm"], "model.safetensors"))
    dit_sd = _diffusers_dit(stock["comfy_dit"], 2)
    assert len(dit_sd) >= len(stock["comfy_dit"])  # every ComfyUI key is represented (qkv by its slices)
    torch.manual_seed(5)
    adapter = Adapter(AdapterSpec.direct(128, lmm_dim=64, hidden_dim=96))
    g = torch.Generator().manual_seed(seed)
    combined = {"lmm." + k: v for k, v in lmm_sd.items()}
    combined.update({"dit." + k: v for k, v in dit_sd.items()})
    if extras:  # trained, so different from stock
        for k in EXTRAS:
            combined["dit." + k] = combined["dit." + k] + 0.05 * torch.randn(combined["dit." + k].shape, generator=g)
    if pos_embed:
        combined["dit.pos_embed.pos_embed"] = combined["dit.pos_embed.pos_embed"] * 1.01
    loras = {}
    if lmm_lora:
        _peft_wrap(combined, "lmm.", LMM_TARGETS, g, loras)
    if dit_lora:
        _peft_wrap(combined, "dit.", DIT_TARGETS, g, loras)
    combined.update({k: v.clone() for k, v in adapter.state_dict().items()})
    combined["pooled_proj.weight"] = torch.randn(32, 64, generator=g)
    combined["pooled_proj.bias"] = torch.zeros(32)
    combined["norm_lmm_out.weight"] = torch.ones(64)
    rel = _write_release(root, combined)
    return {"release": rel, "adapter": adapter, "loras": loras, "keys": sorted(combined), "combined": combined}


@pytest.fixture(scope="module", params=list(VARIANTS))
def converted(request, tmp_path_factory, stock):
    """A release variant converted twice: LoRA form (with --dit-base) and merged form."""
    from tools.convert_official import convert

    v = VARIANTS[request.param]
    root = tmp_path_factory.mktemp(f"release-{request.param}")
    fake = make_release(root / "DreamEngine-ObjectFusion", stock, **v)
    lora_out = root / "models-lora"
    w_lora = convert(fake["release"], str(lora_out), stock["lmm"], dit_base=stock["dit"], progress=False,
                     print_table=False)
    w_merged = convert(fake["release"], str(root / "models-merged"), stock["lmm"], dit_form="merged",
                       progress=False, print_table=False)
    return {"name": request.param, "v": v, "fake": fake, "lora": w_lora, "merged": w_merged, "out": lora_out}


def test_writes_the_documented_files_with_usual_permissions(converted):
    out = converted["out"]
    umask = os.umask(0)
    os.umask(umask)
    expected = ["dream_engine/dream_engine_direct_map.safetensors", "LLM/DreamEngine-Qwen2-VL-2B/model.safetensors",
                "loras/dream_engine_sd35_large_lora.safetensors", "dream_engine_conversion.tsv"]
    for rel in expected:
        p = out / rel
        assert p.is_file(), rel
        if rel.endswith(".safetensors"):
            assert stat.S_IMODE(os.stat(p).st_mode) == 0o666 & ~umask, (rel, oct(os.stat(p).st_mode))
    assert not (out / "diffusion_models").exists()  # the LoRA form writes no 2nd DiT
    assert os.path.isfile(converted["merged"]["dit"]) and "dit_lora" not in converted["merged"]
    assert converted["merged"]["dit"].endswith(os.path.join("diffusion_models", "dream_engine_sd35_large.safetensors"))
    assert float(converted["lora"]["peak_rss_mb"]) > 0
    print(f"{converted['name']}: peak RSS of the fake-release conversions {converted['merged']['peak_rss_mb']} MB")


def test_every_key_is_in_the_table(converted):
    fake = converted["fake"]
    for form in ("lora", "merged"):
        with open(converted[form]["table"]) as f:
            table = dict(line.rstrip("\n").split("\t") for line in list(f)[1:])
        assert set(table) == set(fake["keys"]), form
        assert table["pooled_proj.weight"].startswith("unused") and table["norm_lmm_out.weight"].startswith("unused")
    if converted["v"]["lmm_lora"]:
        assert "merged into model.layers.0.self_attn.q_proj.weight" in \
            table["lmm.model.layers.0.self_attn.q_proj.lora_A.default.weight"]


def test_lmm_is_the_release_lmm_and_the_adapter_records_its_fingerprint(converted, stock):
    from safetensors.torch import load_file

    from dream_engine_core.fingerprint import lmm_fingerprint
    from dream_engine_core.weights import read_metadata
    from tools.weights import merge_lora

    fake, lmm = converted["fake"], converted["lora"]["lmm"]
    got = load_file(os.path.join(lmm, "model.safetensors"))
    want = load_file(os.path.join(stock["lmm"], "model.safetensors"))
    for m, (a, b) in fake["loras"].items():
        if m.startswith("lmm."):
            k = m[4:] + ".weight"
            want[k] = merge_lora(want[k], a, b)
    assert set(got) == set(want)
    assert max(float((got[k] - want[k]).abs().max()) for k in want) < 1e-6
    md = read_metadata(converted["lora"]["adapter"])
    assert md["lmm_fingerprint"] == lmm_fingerprint(lmm) and md["lmm_folder"] == "DreamEngine-Qwen2-VL-2B"
    # the release's LoRA changes the fingerprint; without it the LMM is the stock one
    assert (md["lmm_fingerprint"] != lmm_fingerprint(stock["lmm"])) == converted["v"]["lmm_lora"]


def test_lora_form_holds_only_differences(converted):
    from safetensors import safe_open

    fake = converted["fake"]
    with safe_open(converted["lora"]["dit_lora"], "pt") as f:
        keys = set(f.keys())
        md = f.metadata()
    pairs = {k[:-len(".lora_A.weight")] for k in keys if k.endswith(".lora_A.weight")}
    wrapped = {"transformer." + m[4:] for m in fake["loras"] if m.startswith("dit.")}
    assert pairs == wrapped
    assert {k[:-len(".alpha")] for k in keys if k.endswith(".alpha")} == wrapped
    diffs = {k for k in keys if k.endswith(".diff")}
    want = {"diffusion_model.context_embedder.diff",
            "diffusion_model.context_embedder.bias.diff"} if converted["v"]["extras"] else set()
    assert diffs == want
    assert keys == {f"{p}.lora_{x}.weight" for p in pairs for x in "AB"} | {p + ".alpha" for p in pairs} | diffs
    assert md["base_model"] == "sd3.5_large.safetensors"


def test_lora_form_on_stock_samples_like_merged_dit(converted, stock, comfy):
    """stock DiT + the LoRA-form file through ComfyUI's LoraLoaderModelOnly gives the
    same sampled latent as the merged DiT."""
    import comfy.sample
    import comfy.sd
    import folder_paths

    cnodes = comfy_nodes_module()
    # each variant's file under its own name in one loras folder (ComfyUI resolves names across folders)
    loras = converted["out"].parent.parent / "loras"
    loras.mkdir(exist_ok=True)
    name = f"{converted['name']}_sd35_large_lora.safetensors"
    shutil.copyfile(converted["lora"]["dit_lora"], loras / name)
    folder_paths.add_model_folder_path("loras", str(loras))
    stock_model = comfy.sd.load_diffusion_model(stock["dit"])
    (patched,) = cnodes.LoraLoaderModelOnly().load_lora_model_only(stock_model, name, 1.0)
    merged = comfy.sd.load_diffusion_model(converted["merged"]["dit"])
    g = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 7, 96, generator=g), {"pooled_output": torch.randn(1, 80, generator=g)}]]
    neg = [[torch.randn(1, 7, 96, generator=g), {"pooled_output": torch.randn(1, 80, generator=g)}]]
    latent = torch.zeros(1, 16, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 5)

    def sample(model):
        with torch.inference_mode():
            return comfy.sample.sample(model, noise, 3, 3.5, "euler", "simple", pos, neg, latent, seed=5,
                                       disable_pbar=True)

    a, b, s = sample(patched), sample(merged), sample(stock_model)
    d = float((a - b).abs().max())
    print(f"{converted['name']}: |stock + LoRA-form file − merged DiT| latent = {d:.2e} (vs stock "
          f"{float((b - s).abs().max()):.3f})")
    assert d <= 1e-5, d
    changed = converted["v"]["dit_lora"] or converted["v"]["extras"]
    assert (float((b - s).abs().max()) > 1e-3) == changed  # the release changed the DiT (or left it stock)


@pytest.mark.parametrize("converted", ["demo"], indirect=True)
def test_merged_dit_equals_the_demo_model(converted, stock, comfy):
    """The merged DiT file, loaded by ComfyUI, computes what the demo's peft-wrapped DiT does."""
    import comfy.sd

    from training.dit import merge_diffusers_lora, mmdit_from_state_dict

    lora_sd = {}
    for m, (a, b) in converted["fake"]["loras"].items():
        if m.startswith("dit."):
            lora_sd[f"transformer.{m[4:]}.lora_A.weight"] = a
            lora_sd[f"transformer.{m[4:]}.lora_B.weight"] = b
    hand = mmdit_from_state_dict(merge_diffusers_lora(stock["comfy_dit"], lora_sd, depth=2))
    got = comfy.sd.load_diffusion_model(converted["merged"]["dit"]).model.diffusion_model
    g = torch.Generator().manual_seed(0)
    x, ctx, y = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 7, 96, generator=g), torch.randn(1, 80, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        d = float((got(x, t, context=ctx, y=y) - hand(x, t, context=ctx, y=y)).abs().max())
    assert d < 1e-5, d


@pytest.mark.parametrize("converted", ["demo"], indirect=True)
def test_conditioning_equals_the_demo_model(converted, stock):
    """Converted LMM folder + adapter vs the stock LMM wrapped with peft LoRA (as the demo)."""
    from peft import LoraConfig, inject_adapter_in_model
    from PIL import Image

    from dream_engine_core.encoder import LMMEncoder
    from dream_engine_core.engine import DreamEngine

    fake = converted["fake"]
    ref = LMMEncoder.from_folder(stock["lmm"])
    inject_adapter_in_model(LoraConfig(r=R, lora_alpha=R, target_modules=list(LMM_TARGETS)), ref.model)
    mods = dict(ref.model.named_modules())
    n = 0
    with torch.no_grad():
        for m, (a, b) in fake["loras"].items():
            if m.startswith("lmm.model.layers."):
                t = "model.language_model.layers." + m[len("lmm.model.layers."):]
                mods[t].lora_A["default"].weight.copy_(a)
                mods[t].lora_B["default"].weight.copy_(b)
                n += 1
    assert n == 2 * 4
    ref_engine = DreamEngine(ref, fake["adapter"].eval())
    conv = DreamEngine.load(converted["lora"]["lmm"], converted["lora"]["adapter"])
    img = Image.new("RGB", (60, 44), (200, 30, 30))
    for prompt, images, task in (("a red [image 1] on grass", [img], "generate"), ("make it blue", [img], "edit")):
        p1, n1 = ref_engine.encode(prompt, images, task=task)
        p2, n2 = conv.encode(prompt, images, task=task)
        d = max(float((p1.tokens - p2.tokens).abs().max()), float((p1.pooled - p2.pooled).abs().max()),
                float((n1.tokens - n2.tokens).abs().max()))
        assert d < 1e-4, (task, d)
    stock_engine = DreamEngine(LMMEncoder.from_folder(stock["lmm"]), fake["adapter"].eval())
    assert float((stock_engine.encode("a red [image 1]", [img])[0].tokens -
                  conv.encode("a red [image 1]", [img])[0].tokens).abs().max()) > 1e-3


def test_changed_buffer_is_refused_by_the_lora_form(stock, tmp_path, comfy):
    """A release whose ``pos_embed`` differs from stock: ComfyUI's LoRA loader cannot
    carry that (a buffer), so the LoRA form refuses and names the merged form."""
    import comfy.sd

    from tools.convert_official import ConversionError, convert
    from tools.release.dit_lora import COMFY_BUFFERS

    model = comfy.sd.load_diffusion_model(stock["dit"]).model.diffusion_model
    assert set(COMFY_BUFFERS) == {k for k, _ in model.named_buffers()} & set(model.state_dict())
    fake = make_release(tmp_path / "rel", stock, pos_embed=True)
    with pytest.raises(ConversionError, match="pos_embed.*--dit-form merged"):
        convert(fake["release"], str(tmp_path / "out"), stock["lmm"], dit_base=stock["dit"], progress=False,
                print_table=False)
    assert not os.path.exists(tmp_path / "out")  # refused before anything was written
    w = convert(fake["release"], str(tmp_path / "out"), stock["lmm"], dit_base=stock["dit"], dit_form="merged",
                progress=False, print_table=False)
    got = comfy.sd.load_diffusion_model(w["dit"]).model.diffusion_model.pos_embed
    assert torch.allclose(got, stock["comfy_dit"]["pos_embed"] * 1.01)


# ---------------------------------------------------------------- --list and the layout
@pytest.fixture(scope="module")
def demo_release(tmp_path_factory, stock):
    return make_release(tmp_path_factory.mktemp("list") / "DreamEngine-ObjectFusion", stock)


def test_list_reads_no_tensor_and_accepts_root_folder_or_index(demo_release, monkeypatch, capsys):
    import tools.convert_official as co

    def refuse(*a, **k):
        raise AssertionError("--list loaded a tensor")

    monkeypatch.setattr(co.torch, "load", refuse)
    before = co.ShardReader.loads
    root = demo_release["release"]
    tr = os.path.join(root, "transformer")
    for src in (root, tr, os.path.join(tr, "diffusion_pytorch_model.bin.index.json")):
        assert co.list_release(src) == 0
        out = capsys.readouterr().out
        for k in demo_release["keys"]:
            assert k in out
        assert "QwenVLSD3_DirectMap_Transformer2DModel" in out  # config.json reported
        assert "LoRA on 8 projections" in out  # lmm: q,k,v,o in 2 layers
    assert co.ShardReader.loads == before  # no shard was opened


def test_safetensors_shards_list_with_shapes_and_convert(demo_release, stock, tmp_path, capsys):
    """A release re-saved as safetensors shards: --list reads the shard headers (shapes,
    dtypes), and the conversion gives the same LMM as from the pickles."""
    from safetensors.torch import load_file, save_file

    import tools.convert_official as co

    combined = demo_release["combined"]
    keys = sorted(combined)
    rel = tmp_path / "st"
    rel.mkdir()
    wm = {}
    for i in range(2):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: combined[k].contiguous() for k in keys[i::2]}, str(rel / name))
        wm.update({k: name for k in keys[i::2]})
    (rel / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    assert co.list_release(str(rel)) == 0
    out = capsys.readouterr().out
    assert "lmm: model.layers.0.self_attn.q_proj.weight (LoRA merged)  [64, 64] F32" in out
    w = co.convert(str(rel), str(tmp_path / "out"), stock["lmm"], progress=False, print_table=False)
    got = load_file(os.path.join(w["lmm"], "model.safetensors"))
    w2 = co.convert(demo_release["release"], str(tmp_path / "out2"), stock["lmm"], progress=False, print_table=False)
    want = load_file(os.path.join(w2["lmm"], "model.safetensors"))
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.cli
def test_list_cli_exit_status(demo_release, tmp_path):
    # the index alone (shards absent): the table is printed in full, and the missing shards are reported
    idx_only = tmp_path / "idx"
    idx_only.mkdir()
    src_idx = os.path.join(demo_release["release"], "transformer", "diffusion_pytorch_model.bin.index.json")
    with open(src_idx) as f:
        index = json.load(f)
    (idx_only / "diffusion_pytorch_model.bin.index.json").write_text(json.dumps(index))
    r = subprocess.run([sys.executable, "-m", "tools.convert_official", str(idx_only), "--list"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    assert all(k in r.stdout for k in demo_release["keys"]) and "not present" in r.stderr
    # an unmapped key: exit 2, the key named
    index["weight_map"]["text_encoders.clip_l.weight"] = "diffusion_pytorch_model-00001-of-00003.bin"
    (idx_only / "diffusion_pytorch_model.bin.index.json").write_text(json.dumps(index))
    r = subprocess.run([sys.executable, "-m", "tools.convert_official", str(idx_only), "--list"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "text_encoders.clip_l.weight" in r.stdout and "UNMAPPED" in r.stdout


@pytest.mark.cli
def test_unknown_key_fails_loudly_and_writes_nothing(stock, tmp_path):
    from tools.convert_official import ConversionError, convert

    rel = tmp_path / "release"
    rel.mkdir()
    torch.save({"input_embeds_align_mlp.0.weight": torch.zeros(2, 2), "text_encoders.clip_l.weight": torch.zeros(1)},
               rel / "diffusion_pytorch_model-00001-of-00001.bin")
    with open(rel / "diffusion_pytorch_model.bin.index.json", "w") as f:
        json.dump({"weight_map": {"input_embeds_align_mlp.0.weight": "diffusion_pytorch_model-00001-of-00001.bin",
                                  "text_encoders.clip_l.weight": "diffusion_pytorch_model-00001-of-00001.bin"}}, f)
    with pytest.raises(ConversionError, match="text_encoders.clip_l.weight"):
        convert(str(rel), str(tmp_path / "out"), stock["lmm"], progress=False, print_table=False)
    assert not (tmp_path / "out").exists()
    # the same through the command line: exit status 2, the key named, no traceback
    r = subprocess.run([sys.executable, "-m", "tools.convert_official", str(rel), "--out-dir",
                        str(tmp_path / "out2"), "--lmm-base", stock["lmm"], "--no-progress"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "text_encoders.clip_l.weight" in r.stderr and "Traceback" not in r.stderr


def test_pickles_are_opened_only_by_the_converter():
    """``torch.load`` is called once in product code, by the converter's reader, with
    weights_only=True and mmap=True (the calls are read from the syntax tree)."""
    import ast

    calls = []
    for base in ("dream_engine_core", "training", "nodes", "tools", "miniature", "model_builders", "comfy_host",
                 "benchmarks", "scripts"):
        for dp, _, files in os.walk(os.path.join(ROOT, base)):
            for fn in files:
                if fn.endswith(".py"):
                    path = os.path.join(dp, fn)
                    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                                node.func.attr == "load" and getattr(node.func.value, "id", None) == "torch":
                            kw = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                            calls.append((os.path.relpath(path, ROOT), kw))
    assert len(calls) == 1, calls
    f, kw = calls[0]
    assert f == os.path.join("tools", "release", "reader.py") and kw["weights_only"] is True and kw["mmap"] is True
