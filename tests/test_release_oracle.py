"""The pack measured against the official release's own code (``tests/release_oracle.py``).

A tiny release is built the way the release's demo builds its model — a transformers
Qwen2-VL with the real Qwen2 vocabulary and a diffusers ``SD3Transformer2DModel``, each
wrapped with peft LoRA, combined with the two align MLPs — and written as the release
ships it (``torch.save`` shards + index). The release's code runs on it as the demo runs
it (fresh stock models + LoRA, ``load_state_dict``); the pack converts it with
``tools.convert_official`` and runs it through its nodes in ComfyUI (stock DiT +
the converted LoRA through ComfyUI's ``LoraLoaderModelOnly``, Load Dream Engine,
Interleaved Conditioning, ComfyUI's sampler). For text, fuse, edit, reconstruct and free
interleave, each padding, the conditioning, the pooled vector, the DiT's velocity and one
guided step are compared:

* ``natural``: the release's forward on each input alone (the trainer's batch of one);
* ``reference``: the release's ``cfg_predict`` at its default ``max_sequence_length`` 77,
  or, where that call fails (image prompts longer than 77 tokens), the smallest length at
  which it runs — on the transformers of this environment (5.x);
* ``reference_4.49_gpu``: the same calls with the release's LMM run on transformers 4.49
  with its CUDA SDPA mask (``.venv/tf449``, see :func:`release_oracle.unmask_as_on_cuda`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import release_oracle as ro
from conftest import ROOT, comfy_nodes_module, pack_module

pytestmark = pytest.mark.heavy  # the release's own code as the oracle, and a second transformers

TF449 = os.path.join(ROOT, ".venv", "tf449")
MLP, POOLED_PROJ = 96, (32, 16)
STEP = 5          # the guided step compared (σ ≈ 0.95 of 28)
GUIDANCE = 3.5
TOL = 1e-5        # relative, on one guided step
LMM_NAME, ADAPTER = "DreamEngine-Qwen2-VL-2B", "dream_engine_direct_map.safetensors"

# (name, pack prompt, task, segment names, blend r, release call)
CASES = [
    ("text", "a red cube on a blue sphere", "generate", [], 0.0, {"prompt": "a red cube on a blue sphere"}),
    ("fuse", "a [dog] wearing a [hat]", "fuse", ["hat", "dog"], 0.0,
     {"prompt": "a dog wearing a hat", "segments": [["hat", 0], ["dog", 1]]}),
    ("fuse_r", "a [dog] wearing a [hat]", "fuse", ["hat", "dog"], 0.6,
     {"prompt": "a dog wearing a hat", "segments": [["hat", 0], ["dog", 1]]}),
    ("edit", "make it blue", "edit", [""], 0.0, {"prompt": "make it blue", "image": 0}),
    ("reconstruct", "", "reconstruct", [""], 0.0, {"image": 0}),
    ("reconstruct_r", "", "reconstruct", [""], 0.5, {"image": 0}),
    ("interleave", "a cat like [image 1] in the style of [image 2]", "generate", ["", ""], 0.0,
     {"segments": ["a cat like ", 0, " in the style of ", 1]}),
]
IDS = [c[0] for c in CASES]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# ----------------------------------------------------------------------------- the release and its conversion
@pytest.fixture(scope="module")
def world(tmp_path_factory, comfy):
    """The stock models, the release built from them, its conversion, and the oracle model
    loaded from the release's files as the demo loads it."""
    import comfy.sd
    import folder_paths
    from PIL import Image
    from safetensors.torch import save_file

    from dream_engine_core.weights import atomic_save
    from model_builders.qwen2vl import LMMSize, build_tiny_qwen2vl
    from tools.convert_official import convert

    root = tmp_path_factory.mktemp("release-oracle")
    stock_lmm = build_tiny_qwen2vl(str(root / "Qwen2-VL-2B-Instruct"), LMMSize(), seed=11, real_vocab=True)
    # the stock DiT, as the user's sd3.5_large.safetensors (ComfyUI single-file layout)
    diffusers_file = str(root / "stock_dit_diffusers.safetensors")
    save_file({k: v.contiguous() for k, v in ro.tiny_dit(seed=12).state_dict().items()}, diffusers_file)
    stock = comfy.sd.load_diffusion_model(diffusers_file).model.diffusion_model.state_dict()
    base = root / "models" / "diffusion_models"
    base.mkdir(parents=True)
    atomic_save({"model.diffusion_model." + k: v for k, v in stock.items()}, str(base / "sd3.5_large.safetensors"))
    # the release: stock models + LoRA (trained B) + the align MLPs, as one state dict
    torch.manual_seed(13)
    made = ro.build_release(stock_lmm, ro.tiny_dit(seed=12), MLP, POOLED_PROJ)
    rel_root = str(root / "DreamEngine-ObjectFusion")
    ro.write_release(rel_root, ro.checkpoint_names(made.state_dict()))
    # the demo's way: fresh stock models, LoRA, load_state_dict
    oracle = ro.load_release(ro.build_release(stock_lmm, ro.tiny_dit(seed=12), MLP, POOLED_PROJ), rel_root)
    for name, p in made.state_dict().items():  # the files carry the model exactly
        assert torch.equal(p, oracle.state_dict()[name]), name
    written = convert(rel_root, str(root / "models"), stock_lmm, dit_base=str(base / "sd3.5_large.safetensors"),
                      dtype="keep", progress=False, print_table=False)
    for kind in ("LLM", "dream_engine", "loras", "diffusion_models"):
        folder_paths.add_model_folder_path(kind, str(root / "models" / kind))
    g = torch.Generator().manual_seed(14)
    images = []
    for k, (w, h) in enumerate([(300, 220), (180, 260)]):
        arr = (torch.rand(h, w, 3, generator=g) * 255).round().to(torch.uint8).numpy()
        images.append(Image.fromarray(arr, "RGB"))
        images[-1].save(root / f"image{k}.png")
    return {"root": root, "oracle": oracle, "stock_lmm": stock_lmm, "release": rel_root, "written": written,
            "images": images, "processor": ro.release_processor(stock_lmm)}


@pytest.fixture(scope="module")
def sampler_model(world, pack):
    """Stock DiT + the converted LoRA (ComfyUI's own loaders) → Load Dream Engine."""
    import comfy.sd

    cnodes = comfy_nodes_module()
    base = comfy.sd.load_diffusion_model(str(world["root"] / "models" / "diffusion_models" / "sd3.5_large.safetensors"))
    (with_lora,) = cnodes.LoraLoaderModelOnly().load_lora_model_only(
        base, os.path.basename(world["written"]["dit_lora"]), 1.0)
    handle, patched = pack_module("nodes.engine").LoadDreamEngine.execute(with_lora, LMM_NAME, ADAPTER, "fp32",
                                                                          "cpu").args
    return handle, patched


def pack_conditioning(world, handle, case, padding):
    name, prompt, task, names, r, _ = case
    e, s = pack_module("nodes.engine"), pack_module("nodes.segments")
    seg = None
    for k, n in enumerate(names):
        img = torch.from_numpy(np.asarray(world["images"][k])).float()[None] / 255.0
        seg = s.ImageSegment.execute(img, n, 0, segments=seg).args[0]
        if r:
            seg = s.BlendRatio.execute(seg, r, "last").args[0]
    pos, neg = e.InterleavedConditioning.execute(handle, prompt, task, padding, "mean", "mrope", seg).args
    return pos, neg


def release_call(world, case) -> dict:
    call = dict(case[5])
    imgs = [ro.demo_resize(im) for im in world["images"]]
    if "image" in call:
        call["image"] = imgs[call["image"]]
    if "segments" in call:
        call["segments"] = [[s[0], imgs[s[1]]] if isinstance(s, list) else (imgs[s] if isinstance(s, int) else s)
                            for s in call["segments"]]
    return call


def reference_length(world, case) -> tuple[int, str]:
    """The ``max_sequence_length`` the reference padding reproduces: 77, the release's
    default, when its ``cfg_predict`` runs there; otherwise the smallest length at which it
    runs — the positive's own length (checked: it runs there and fails one below) — with
    the error the call at 77 gives."""
    p, call = world["processor"], release_call(world, case)
    try:
        ro.cfg_inputs(p, max_sequence_length=77, **call)
        return 77, ""
    except RuntimeError as e:
        err = str(e).splitlines()[0]
    n = ro.cfg_inputs(p, max_sequence_length=77, batch=False, **call)[0]["input_ids"].shape[1]
    ro.cfg_inputs(p, max_sequence_length=n, **call)
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        ro.cfg_inputs(p, max_sequence_length=n - 1, **call)
    return n, err


def release_states(world, case, padding) -> list[torch.Tensor]:
    """[positive states, negative states] of the release (5.x) for this padding."""
    o, p = world["oracle"], world["processor"]
    call = release_call(world, case)
    n, _ = reference_length(world, case)
    inputs = ro.cfg_inputs(p, max_sequence_length=n, **call)
    r = case[4] or None
    with torch.no_grad():
        if padding == "reference":
            h = o.lmm_states(**inputs, vit_skip_ratio=r)
            return [h[:1], h[1:]]
        rows = split_rows(inputs, p.tokenizer.convert_tokens_to_ids("<|vision_start|>"))
        return [o.lmm_states(**row, vit_skip_ratio=r) for row in rows]


def split_rows(inputs: dict, vision_start: int) -> list[dict]:
    """The batched positive and negative, each alone and without its pad tokens."""
    rows, first = [], 0
    grid = inputs.get("lmm_image_grid_thw")
    for i in range(2):
        m = inputs["lmm_attention_mask"][i].bool()
        ids = inputs["lmm_input_ids"][i][m][None]
        row = {"lmm_input_ids": ids, "lmm_attention_mask": torch.ones_like(ids)}
        n_img = int((ids == vision_start).sum())
        if n_img:
            g = grid[first:first + n_img]
            start = int(grid[:first].prod(-1).sum()) if first else 0
            row["lmm_pixel_values"] = inputs["lmm_pixel_values"][start:start + int(g.prod(-1).sum())]
            row["lmm_image_grid_thw"] = g
            first += n_img
        rows.append(row)
    return rows


def compare(world, sampler_model, case, padding, states) -> dict:
    """Relative differences pack ↔ release: tokens, pooled, velocity of each side, one guided step."""
    import comfy.model_management as mm
    import comfy.sample
    import comfy.samplers

    o = world["oracle"]
    handle, patched = sampler_model
    pos, neg = pack_conditioning(world, handle, case, padding)
    out = {}
    sched = ro.scheduler(28)
    g = torch.Generator().manual_seed(15)
    latents = torch.randn(1, 16, 8, 8, generator=g)
    with torch.no_grad():
        rel_tok = [o.adapt(h) for h in states]
        for side, c, (t, pl) in (("positive", pos, rel_tok[0]), ("negative", neg, rel_tok[1])):
            out[f"{side} tokens"] = rel(c[0][0], t)
            out[f"{side} pooled"] = rel(c[0][1]["pooled_output"], pl)
        mm.load_models_gpu([patched])
        dm = patched.model.diffusion_model
        t = sched.timesteps[STEP]
        for side, c, (tk, pl) in (("positive", pos, rel_tok[0]), ("negative", neg, rel_tok[1])):
            ours = dm(latents, t.reshape(1), context=c[0][0], y=c[0][1]["pooled_output"])
            theirs = o.dit_forward(latents, t.reshape(1), tk, pl)
            out[f"{side} velocity"] = rel(ours, theirs)
        if states[0].shape == states[1].shape:
            batched = torch.cat(states)
        else:  # natural lengths: the release's step on each row alone
            batched = None
        if batched is not None:
            v, x_next = ro.cfg_step(o, batched, latents, sched, STEP, GUIDANCE)
        else:
            vs = [o.dit_forward(latents, t.reshape(1), *o.adapt(h)) for h in states]
            v = vs[1] + GUIDANCE * (vs[0] - vs[1])
            sched._step_index = STEP
            x_next = sched.step(v, t, latents, return_dict=False)[0]
    # ComfyUI's own sampler, one Euler step between the release's sigmas STEP and STEP + 1
    sig = sched.sigmas[STEP:STEP + 2].float()
    fmt = patched.model.latent_format
    latent_in = torch.zeros_like(latents)  # an empty latent: ComfyUI starts from σ0·noise
    noise = latents / sig[0]
    seen = {}

    def callback(step, x0, x, total):  # the sampler's guided prediction (x0 = x − σ·v)
        seen["v"] = (x.float() - x0.float()) / sig[0]

    with torch.inference_mode():
        sampler = comfy.samplers.sampler_object("euler")
        got = comfy.sample.sample_custom(patched, noise, GUIDANCE, sampler, sig, pos, neg, latent_in,
                                         callback=callback, disable_pbar=True, seed=0)
    ours_next = fmt.process_in(got) * (1 - sig[1])  # undo ComfyUI's process_out and inverse noise scaling
    out["guided velocity"] = rel(seen["v"], v)
    out["guided step"] = rel(ours_next, x_next)
    return out


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("padding", ["natural", "reference"])
def test_pack_equals_the_release(world, sampler_model, case, padding):
    states = release_states(world, case, padding)
    diffs = compare(world, sampler_model, case, padding, states)
    print(f"{case[0]} {padding}: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    assert max(diffs.values()) < TOL, diffs


def test_reference_length_is_the_smallest_that_runs(world):
    """At 77 the release's cfg_predict runs text and truncates nothing; it fails for the image
    prompts longer than 77 tokens (edit, reconstruct, interleave) and runs at their positive's
    length; fuse computes its own length."""
    got = {c[0]: reference_length(world, c) for c in CASES}
    assert got["text"] == (77, "")
    for name in ("edit", "reconstruct", "interleave"):
        n, err = got[name]
        assert n > 77 and "Sizes of tensors must match" in err, (name, got[name])
    # fuse ignores max_sequence_length: it runs at 77 (the length it computes is the positive's)
    assert got["fuse"] == (77, "")


@pytest.fixture(scope="module")
def states_449(world, tmp_path_factory):
    """The release's LMM states computed under transformers 4.49 (``.venv/tf449``), with the
    mask 4.49 gives SDPA on CUDA; one subprocess for every case."""
    stamp = os.path.join(TF449, ".stamp")
    if not os.path.isfile(stamp):
        pytest.fail(f"{TF449} is missing: scripts/setup_env.sh installs transformers 4.49 there", pytrace=False)
    d = tmp_path_factory.mktemp("tf449")
    cases = []
    for c in CASES:
        call = dict(c[5])
        img = lambda k: str(world["root"] / f"image{k}.png")  # noqa: E731
        if "image" in call:
            call["image"] = img(call["image"])
        if "segments" in call:
            call["segments"] = [[s[0], img(s[1])] if isinstance(s, list) else ("file:" + img(s) if isinstance(s, int)
                                                                                else s) for s in call["segments"]]
        call["max_sequence_length"] = reference_length(world, c)[0]
        cases.append({"name": c[0], "call": call, "r": c[4] or None})
    spec = {"release": world["release"], "lmm_folder": world["stock_lmm"], "mlp_dim": MLP,
            "pooled_proj": list(POOLED_PROJ), "token_dim": world["oracle"].dit.config.caption_projection_dim,
            "cuda_unmask": True, "cases": cases}
    with open(d / "spec.json", "w") as f:
        json.dump(spec, f)
    env = dict(os.environ, PYTHONPATH=TF449)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "release_oracle.py"), "states",
                        str(d / "spec.json"), str(d / "states.safetensors")], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    from safetensors import safe_open

    with safe_open(str(d / "states.safetensors"), "pt") as f:
        assert f.metadata()["transformers"] == "4.49.0"
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_449_gpu_equals_the_release_on_449(world, sampler_model, states_449, case):
    h = states_449[case[0]]
    diffs = compare(world, sampler_model, case, "reference_4.49_gpu", [h[:1], h[1:]])
    print(f"{case[0]} reference_4.49_gpu vs 4.49: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    assert max(diffs.values()) < TOL, diffs


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("text", "fuse", "interleave")],
                         ids=["text", "fuse", "interleave"])
def test_the_two_pad_behaviours_differ(world, sampler_model, states_449, case):
    """The check above can fail: ``reference`` (5.x pad states) against 4.49's differs."""
    h = states_449[case[0]]
    diffs = compare(world, sampler_model, case, "reference", [h[:1], h[1:]])
    print(f"{case[0]} reference vs 4.49: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    assert diffs["guided velocity"] > 100 * TOL, diffs
