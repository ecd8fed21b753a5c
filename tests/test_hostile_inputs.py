"""Hostile inputs: every input of every node, every model file the pack reads, wrong
wiring and interrupts, as a demanding user (or a hostile API client) would try them.

Node cases run through the real ComfyUI server (``shared_server`` in ``tests/conftest.py``). Each case
asserts a clear error that names the fix, on the right node and input, once; that no
image was written (nothing half-way); and the server keeps serving. docs/reliability.md
lists these cases with the messages users see.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import uuid

import pytest
import torch

import comfy_host as host
from conftest import shared_server
from dream_engine_core.weights import WeightsError, check_safetensors

S = host.SMALL
PACK_ERRORS = "dream_engine."  # the short type name of the pack's own errors


# ------------------------------------------------------------------ graphs
def graph(text: str = "a red circle", *, lmm: str = S["lmm"], adapter: str = S["adapter"], task: str = "generate",
          images: int = 0, size: int = 64, steps: int = 2, **cond_inputs) -> dict:
    """An API prompt: UNET + VAE + Load Dream Engine + conditioning (+ ``images`` image
    segments) → KSampler → VAEDecode → SaveImage. Node ids: 1 UNET, 2 VAE, 3 loader,
    4 conditioning, 5 latent, 6 sampler, 7 decode, 8 save, 10+ LoadImage, 30+ segments."""
    p = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": S["unet_name"], "weight_dtype": "default"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": S["vae_name"]}},
        "3": {"class_type": "LoadDreamEngine", "inputs": {"model": ["1", 0], "lmm": lmm, "adapter": adapter,
                                                          "dtype": "default", "device": "default"}},
        "4": {"class_type": "DreamEngineInterleavedConditioning",
              "inputs": {"dream_engine": ["3", 0], "prompt": text, "task": task, "padding": "natural",
                         "pooling": "mean", "positions": "mrope", "image_short_side": 56, "min_pixels": 3136,
                         "max_pixels": 401408, **cond_inputs}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": steps, "cfg": 3.5, "sampler_name": "euler",
                                                   "scheduler": "simple", "denoise": 1.0, "model": ["3", 1],
                                                   "positive": ["4", 0], "negative": ["4", 1],
                                                   "latent_image": ["5", 0]}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["2", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"filename_prefix": "hostile/out", "images": ["7", 0]}},
    }
    prev = None
    for i in range(images):
        p[str(10 + i)] = {"class_type": "LoadImage", "inputs": {"image": host.EXAMPLE_IMAGES[i % 2]}}
        seg = {"image": [str(10 + i), 0], "name": "", "frame": 0}
        if prev:
            seg["segments"] = [prev, 0]
        prev = str(30 + i)
        p[prev] = {"class_type": "DreamEngineImageSegment", "inputs": seg}
    if prev:
        p["4"]["inputs"]["segments"] = [prev, 0]
    return p


@pytest.fixture(scope="module")
def server():
    return shared_server()


def _models(server, *parts) -> str:
    return os.path.join(server.base_dir, "models", *parts)


def _outputs(server) -> int:
    n = 0
    for _, _, files in os.walk(os.path.join(server.base_dir, "output")):
        n += len(files)
    return n


def rejected(server, p) -> dict:
    """The prompt is refused at validation: ``{node_id: [(input_name, details), …]}``."""
    n0 = _outputs(server)
    with pytest.raises(host.PromptRejected) as ei:
        server.queue(p)
    assert _outputs(server) == n0
    return _node_errors(ei.value.body)


def _node_errors(body: dict) -> dict:
    out = {nid: [(e.get("extra_info", {}).get("input_name"), f"{e['message']}: {e['details']}") for e in ne["errors"]]
           for nid, ne in body["node_errors"].items()}
    print("rejected:", out)
    return out


def failed(server, p) -> dict:
    """The prompt runs and fails: ComfyUI's execution error, nothing saved."""
    n0 = _outputs(server)
    entry = server.run(p)
    err = host.execution_error(entry)
    assert entry["status"]["status_str"] == "error" and err is not None, entry["status"]
    assert _outputs(server) == n0, "a failed prompt wrote an image"
    print(f"failed: {err['node_type']} {err['exception_type']}: {err['exception_message'].strip()}")
    return err


def still_serving(server):
    ok = server.run(graph(f"a purple triangle {uuid.uuid4().hex[:6]}"))
    assert ok["status"]["status_str"] == "success", host.execution_error(ok)


def _one_error_on(errors: dict, node: str, input_name: str) -> str:
    """Exactly one validation message, on ``input_name`` of ``node``; returns it."""
    assert list(errors) == [node], errors
    assert [name for name, _ in errors[node]] == [input_name], errors
    return errors[node][0][1]


# ------------------------------------------------------------------ LMM names confined to the LLM folders
def test_lmm_name_cannot_leave_the_llm_folder(server):
    outside = os.path.join(server.base_dir, "outside-models")
    if not os.path.isdir(os.path.join(outside, "Qwen2-VL-outside")):
        shutil.copytree(_models(server, "LLM", S["lmm"]), os.path.join(outside, "Qwen2-VL-outside"))
    rel = os.path.relpath(os.path.join(outside, "Qwen2-VL-outside"), _models(server, "LLM"))
    assert rel.startswith("..")
    forms = [rel,                                              # ../outside-models/Qwen2-VL-outside
             "../../../../../../../../" + os.path.join(outside, "Qwen2-VL-outside").lstrip("/"),
             os.path.join(outside, "Qwen2-VL-outside"),        # absolute
             rel.replace("/", "%2F"), rel.replace("/", "%2f").replace("..", "%2e%2e"),  # encoded separators
             rel.replace("/", "\\"),                           # Windows separators
             f"{S['lmm']}/../{S['lmm']}", f"./{S['lmm']}", f"{S['lmm']}/", "", "\x00"]
    for name in forms:
        msg = _one_error_on(rejected(server, graph(lmm=name)), "3", "lmm")
        assert "is not a folder name" in msg or "not found in the LLM model folder" in msg, (name, msg)
    still_serving(server)


def test_symlinked_model_folder_inside_llm_is_followed(server):
    """A user's own link inside models/LLM (to weights kept elsewhere) keeps working."""
    outside = os.path.join(server.base_dir, "outside-models", "Qwen2-VL-linked")
    if not os.path.isdir(outside):
        shutil.copytree(_models(server, "LLM", S["lmm"]), outside)
    link = _models(server, "LLM", "linked-Qwen2-VL")
    if not os.path.lexists(link):
        os.symlink(outside, link)
    assert "linked-Qwen2-VL" in server.get("/object_info/LoadDreamEngine")["LoadDreamEngine"]["input"][
        "required"]["lmm"][1]["options"]
    ok = server.run(graph(f"a linked model {uuid.uuid4().hex[:6]}", lmm="linked-Qwen2-VL"))
    assert ok["status"]["status_str"] == "success", host.execution_error(ok)


def refused(server, p, node: str, input_name: str) -> str:
    """A combo value outside its list, refused once, naming ``input_name``: ComfyUI
    versions that check V3 combo lists refuse it at validation, on that input; 0.3.75
    does not check them, so the node refuses it when it runs. Returns the message."""
    n0 = _outputs(server)
    try:
        pid = server.queue(p)
    except host.PromptRejected as e:
        return _one_error_on(_node_errors(e.body), node, input_name)
    entry = server.wait(pid)
    err = host.execution_error(entry)
    assert entry["status"]["status_str"] == "error" and err is not None and err["node_id"] == node, entry["status"]
    assert _outputs(server) == n0, "a failed prompt wrote an image"
    assert input_name in err["exception_message"], err
    print(f"failed: {err['node_type']} {err['exception_type']}: {err['exception_message'].strip()}")
    return err["exception_message"]


def test_adapter_name_cannot_leave_its_folder(server):
    for name in ("../LLM/tiny-Qwen2-VL/model.safetensors", "/etc/passwd", "..%2Fdream_engine%2F" + S["adapter"],
                 os.path.join(_models(server, "dream_engine"), S["adapter"]), "no_such_adapter.safetensors"):
        msg = refused(server, graph(adapter=name), "3", "adapter")
        assert "not found in the dream_engine model folder" in msg or S["adapter"] in msg, msg
    still_serving(server)


def test_each_validation_message_lands_on_its_own_input_once(server):
    errors = rejected(server, graph(lmm="no-such-lmm", adapter=S["adapter"]))
    msg = _one_error_on(errors, "3", "lmm")
    assert msg.count("no-such-lmm") == 1 and "adapter" not in msg, msg
    # a bad adapter with a bad LMM: the LMM's message stays on lmm alone; the adapter's
    # (ComfyUI's list check, where the version has one) on adapter alone
    errors = rejected(server, graph(lmm="no-such-lmm", adapter="no_such_adapter.safetensors"))
    by_input = {}
    for name, details in errors["3"]:
        by_input.setdefault(name, []).append(details)
    assert len(by_input.pop("lmm")) == 1 and all(len(v) == 1 for v in by_input.values()), errors
    assert set(by_input) <= {"adapter"} and all("no-such-lmm" not in v[0] for v in by_input.values())


# ------------------------------------------------------------------ LMM folders
def _lmm_copy(server, name: str) -> str:
    d = _models(server, "LLM", name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    shutil.copytree(_models(server, "LLM", S["lmm"]), d)
    return d


def test_missing_and_incomplete_lmm_folders(server):
    msg = _one_error_on(rejected(server, graph(lmm="no-such-lmm")), "3", "lmm")
    assert "no-such-lmm" in msg and "config.json" in msg and "model.safetensors" in msg
    broken = _models(server, "LLM", "broken-Qwen2-VL")
    os.makedirs(broken, exist_ok=True)
    with open(os.path.join(broken, "config.json"), "w") as f:
        f.write('{"model_type": "qwen2_vl"}')
    msg = _one_error_on(rejected(server, graph(lmm="broken-Qwen2-VL")), "3", "lmm")
    for missing in ("preprocessor_config.json", "tokenizer.json", "model.safetensors"):
        assert missing in msg
    still_serving(server)


def test_text_only_qwen2_folder(server):
    d = _lmm_copy(server, "text-only-Qwen2")
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    cfg["model_type"] = "qwen2"
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    msg = _one_error_on(rejected(server, graph(lmm="text-only-Qwen2")), "3", "lmm")
    assert "'qwen2' model" in msg and "Qwen2-VL" in msg


def test_lmm_with_only_pickled_weights(server):
    d = _lmm_copy(server, "pickled-Qwen2-VL")
    os.rename(os.path.join(d, "model.safetensors"), os.path.join(d, "pytorch_model.bin"))
    msg = _one_error_on(rejected(server, graph(lmm="pickled-Qwen2-VL")), "3", "lmm")
    assert "pickled weights" in msg and "pytorch_model.bin" in msg and "convert" in msg


def _truncate(path: str, keep: float = 0.6) -> tuple[int, int]:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))
    return size, int(size * keep)


def test_truncated_lmm_weights(server):
    """Refused when the prompt is queued, on ``lmm``, before transformers opens anything."""
    d = _lmm_copy(server, "truncated-Qwen2-VL")
    full, cut = _truncate(os.path.join(d, "model.safetensors"))
    msg = _one_error_on(rejected(server, graph(lmm="truncated-Qwen2-VL")), "3", "lmm")
    assert os.path.join("truncated-Qwen2-VL", "model.safetensors") in msg
    assert f"truncated: expected {full} bytes, found {cut}" in msg and "re-download" in msg
    still_serving(server)


# one broken file of each kind (tests/test_lmm_folder_checks.py has every case of the checker)
LMM_FILE_CASES = ["config empty", "config no vision_config", "config no hidden_size", "tokenizer not JSON",
                  "tokenizer_config not JSON", "merges.txt bad line", "preprocessor not JSON",
                  "preprocessor patch 16", "processor_config nested", "index not JSON", "index key not in shard",
                  "weights empty", "shard truncated"]


@pytest.mark.parametrize("case", LMM_FILE_CASES)
def test_broken_file_in_the_lmm_folder(server, case):
    """Each broken file gives one message on ``lmm`` when the prompt is queued, naming the
    file, what is wrong and the fix (never the library's raw error); the next prompt runs."""
    from test_lmm_folder_checks import CASES

    _, edit, named, what, fix = next(c for c in CASES if c[0] == case)
    name = "broken-" + case.replace(" ", "-").replace(".", "-")
    d = _lmm_copy(server, name)
    edit(d)
    msg = _one_error_on(rejected(server, graph(lmm=name)), "3", "lmm")
    assert os.path.join(name, named) in msg and what in msg and fix in msg, msg
    shutil.rmtree(d)  # the LMM list stays short
    still_serving(server)


# ------------------------------------------------------------------ adapter files
def _adapter_file(server, name: str, build=True, **kw) -> str:
    from model_builders.qwen2vl import build_tiny_adapter

    path = _models(server, "dream_engine", name)
    if build:
        build_tiny_adapter(path, **{"lmm_dim": 64, "kind": "direct", "token_dim": 128, **kw})
    return path


def _adapter_error(server, name: str) -> dict:
    err = failed(server, graph(adapter=name))
    assert err["node_type"] == "LoadDreamEngine", err
    return err


def test_truncated_adapter(server):
    path = _adapter_file(server, "truncated_adapter.safetensors")
    full, cut = _truncate(path)
    err = _adapter_error(server, "truncated_adapter.safetensors")
    assert err["exception_type"] == "dream_engine.WeightsError"
    msg = err["exception_message"]
    assert path in msg and f"truncated: expected {full} bytes, found {cut}" in msg and "re-download" in msg
    still_serving(server)


def test_adapter_that_is_not_safetensors(server):
    path = _adapter_file(server, "pickle_adapter.safetensors", build=False)
    with open(path, "wb") as f:
        f.write(b"\x80\x02}q\x00." + b"\x00" * 64)  # a pickle under a safetensors name
    msg = _adapter_error(server, "pickle_adapter.safetensors")["exception_message"]
    assert path in msg and "not a safetensors file" in msg and "tools.convert_official" in msg


def test_empty_adapter(server):
    path = _adapter_file(server, "empty_adapter.safetensors", build=False)
    open(path, "wb").close()
    err = _adapter_error(server, "empty_adapter.safetensors")
    assert err["exception_type"] == "dream_engine.WeightsError"
    msg = err["exception_message"]
    assert path in msg and "is empty (0 bytes)" in msg and "re-download" in msg and "pickle" not in msg, msg
    still_serving(server)


def test_adapter_with_unreadable_header(server):
    path = _adapter_file(server, "garbled_adapter.safetensors", build=False)
    header = b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]'  # no closing brace
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + b"\x00" * 8)
    msg = _adapter_error(server, "garbled_adapter.safetensors")["exception_message"]
    assert path in msg and "header is unreadable" in msg and "re-download" in msg


def test_adapter_with_extra_and_missing_keys(server):
    from safetensors.torch import load_file, save_file

    path = _adapter_file(server, "extra_keys_adapter.safetensors")
    from dream_engine_core.weights import read_metadata

    md = read_metadata(path)
    sd = load_file(path)
    sd["extra.weight"] = torch.zeros(2)
    del sd["condition_embeds_align_mlp.2.bias"]
    save_file(sd, path, metadata=md)
    msg = _adapter_error(server, "extra_keys_adapter.safetensors")["exception_message"]
    assert "unexpected keys: extra.weight" in msg and "missing keys: condition_embeds_align_mlp.2.bias" in msg


def test_adapter_for_another_lmm(server):
    _adapter_file(server, "wrong_lmm_dim.safetensors", lmm_dim=32, token_dim=128)
    msg = _adapter_error(server, "wrong_lmm_dim.safetensors")["exception_message"]
    assert "32-d LMM states" in msg and "hidden size 64" in msg and "pick the adapter" in msg
    still_serving(server)


def test_adapter_for_another_dit(server):
    _adapter_file(server, "wrong_dit_width.safetensors", token_dim=96)
    msg = _adapter_error(server, "wrong_dit_width.safetensors")["exception_message"]
    assert "hidden width is 128" in msg and "input_embeds_align_mlp.2.weight" in msg


# ------------------------------------------------------------------ combo and number inputs
@pytest.mark.parametrize("node,field,value", [
    ("3", "dtype", "fp8"), ("3", "device", "tpu"), ("4", "task", "inpaint"), ("4", "padding", "longest"),
    ("4", "pooling", "max"), ("4", "positions", "3d"),
])
def test_combo_values_outside_their_list(server, node, field, value):
    p = graph(f"a combo case {uuid.uuid4().hex[:6]}")
    p[node]["inputs"][field] = value
    assert value in refused(server, p, node, field)


@pytest.mark.parametrize("node,field,value", [
    ("4", "image_short_side", -1), ("4", "min_pixels", 10), ("4", "max_pixels", "many"), ("6", "steps", "nan"),
])
def test_number_values_out_of_range(server, node, field, value):
    p = graph()
    p[node]["inputs"][field] = value
    assert str(value) in _one_error_on(rejected(server, p), node, field)


def test_max_pixels_below_min_pixels(server):
    err = failed(server, graph(min_pixels=100000, max_pixels=5000))
    assert "max_pixels (5000) must be at least min_pixels (100000)" in err["exception_message"]


# ------------------------------------------------------------------ prompts
def test_empty_prompt_has_a_short_error_type(server):
    err = failed(server, graph("   "))
    assert err["node_type"] == "DreamEngineInterleavedConditioning"
    assert err["exception_type"] == "dream_engine.PromptError", err["exception_type"]
    assert "prompt is empty" in err["exception_message"]
    still_serving(server)


@pytest.mark.parametrize("text,images,expected", [
    ("[image 1] next to [image 2]", 1, "connect another image segment"),
    ("a [cat", 0, "unmatched '['"),
    ("a cat]", 0, "unmatched ']'"),
    ("[image 0]", 1, "[image 0]"),
    ("[dog] on a beach", 1, "[dog]"),
])
def test_prompt_references(server, text, images, expected):
    err = failed(server, graph(text, images=images))
    assert err["exception_type"] == "dream_engine.PromptError" and expected in err["exception_message"], err


def test_edit_takes_one_image(server):
    msg = failed(server, graph("make it red", task="edit", images=2))["exception_message"]
    assert "edit takes exactly one image, 2 were given" in msg


def test_unicode_and_long_prompts_work(server):
    for text in ("一只红色的猫 🐱 على الشاطئ", "a red circle, " * 400):  # CJK, emoji, RTL; ~2000 tokens
        ok = server.run(graph(text + uuid.uuid4().hex[:6]))
        assert ok["status"]["status_str"] == "success", host.execution_error(ok)


# ------------------------------------------------------------------ image segments and blend ratios
def test_segment_frame_out_of_range(server):
    p = graph("[image 1] on grass", images=1)
    p["30"]["inputs"]["frame"] = 3
    msg = failed(server, p)["exception_message"]
    assert "frame 3 does not exist" in msg and "1 frame(s)" in msg


def test_segment_mask_that_selects_nothing(server):
    p = graph("[image 1] on grass", images=1)
    p["40"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}
    p["30"]["inputs"]["mask"] = ["40", 0]
    msg = failed(server, p)["exception_message"]
    assert "MASK selects no pixel" in msg and "disconnect the mask" in msg


@pytest.mark.parametrize("names,expected", [(["cat", "cat"], "two image segments are named 'cat'"),
                                            (["[cat]", ""], "may not contain square brackets"),
                                            (["image 2", ""], "reserved")])
def test_segment_names(server, names, expected):
    p = graph("[image 1] and [image 2]", images=2)
    p["30"]["inputs"]["name"], p["31"]["inputs"]["name"] = names
    msg = failed(server, p)["exception_message"]
    assert expected in msg, msg


@pytest.mark.parametrize("ratio,where", [(1.5, "rejected"), ("abc", "rejected"), ("nan", "failed")])
def test_blend_ratio_values(server, ratio, where):
    p = graph("[image 1] on grass", images=1)
    p["41"] = {"class_type": "DreamEngineBlendRatio", "inputs": {"segments": ["30", 0], "ratio": ratio,
                                                                  "apply_to": "last"}}
    p["4"]["inputs"]["segments"] = ["41", 0]
    if where == "rejected":
        _one_error_on(rejected(server, p), "41", "ratio")
    else:
        assert "blend ratio must be in [0, 1], got nan" in failed(server, p)["exception_message"]


def test_ten_images_work(server):
    ok = server.run(graph(" ".join(f"[image {i + 1}]" for i in range(10)) + " in a row", images=10))
    assert ok["status"]["status_str"] == "success", host.execution_error(ok)


# ------------------------------------------------------------------ wrong wiring
def test_direct_map_conditioning_sampled_with_the_original_model(server):
    p = graph(f"a red square {uuid.uuid4().hex[:6]}")
    p["6"]["inputs"]["model"] = ["1", 0]  # the UNET loader's MODEL, not Load Dream Engine's
    err = failed(server, p)
    assert err["node_type"] == "KSampler" and err["exception_type"] == "dream_engine.WiringError", err
    assert "connect Load Dream Engine's MODEL output to the sampler" in err["exception_message"]
    still_serving(server)


def test_ordinary_conditioning_sampled_with_the_patched_model(server):
    """Standard-map conditioning (ordinary SD3.5 conditioning, as CLIPTextEncode makes)
    into the MODEL patched for a direct-map adapter."""
    p = graph(f"a red square {uuid.uuid4().hex[:6]}")
    p["9"] = {"class_type": "LoadDreamEngine", "inputs": {"model": ["1", 0], "lmm": S["lmm"],
                                                          "adapter": S["adapter_standard"], "dtype": "default",
                                                          "device": "default"}}
    p["4"]["inputs"]["dream_engine"] = ["9", 0]  # standard-map conditioning, patched MODEL from node 3
    err = failed(server, p)
    assert err["node_type"] == "KSampler" and err["exception_type"] == "dream_engine.WiringError", err
    msg = err["exception_message"]
    assert "samples only conditioning from Dream Engine Interleaved Conditioning" in msg
    assert "e.g. from CLIPTextEncode" in msg
    still_serving(server)


def test_both_right_wirings_still_sample(server):
    p = graph(f"a blue square {uuid.uuid4().hex[:6]}", adapter=S["adapter_standard"])  # unpatched MODEL
    ok = server.run(p)
    assert ok["status"]["status_str"] == "success", host.execution_error(ok)


# ------------------------------------------------------------------ interrupts
def test_interrupt_stops_a_language_model_pass_before_its_last_layer(engine):
    lm_layers = engine.encoder.model.model.language_model.layers
    assert len(lm_layers) >= 2
    ran = []
    hooks = [m.register_forward_hook(lambda *_a, i=i: ran.append(i)) for i, m in enumerate(lm_layers)]

    class Stop(Exception):
        pass

    def check():
        if ran:  # the first layer of the first language-model pass has run
            raise Stop

    try:
        with pytest.raises(Stop):
            engine.encode(f"an interrupted prompt {uuid.uuid4().hex}", check_interrupt=check)
        assert ran == [0], f"layers that ran after the interrupt: {ran}"
        assert all(not m._forward_pre_hooks for m in lm_layers), "interrupt hooks left behind"
        ran.clear()
        pos, _ = engine.encode(f"the next prompt {uuid.uuid4().hex}", check_interrupt=lambda: None)
        assert ran[:len(lm_layers)] == list(range(len(lm_layers))) and torch.isfinite(pos.tokens).all()
    finally:
        for h in hooks:
            h.remove()


def test_interrupt_stops_a_vision_pass_before_its_last_block(engine):
    from PIL import Image

    blocks = engine.encoder.model.model.visual.blocks
    lm_layers = engine.encoder.model.model.language_model.layers
    ran, lm_ran = [], []
    hooks = [m.register_forward_hook(lambda *_a, i=i: ran.append(i)) for i, m in enumerate(blocks)]
    hooks += [m.register_forward_hook(lambda *_a: lm_ran.append(1)) for m in lm_layers]

    class Stop(Exception):
        pass

    def check():
        if ran:
            raise Stop

    try:
        with pytest.raises(Stop):
            engine.encode("[image 1] on grass", [Image.new("RGB", (64, 64), "red")], check_interrupt=check)
        assert ran == [0] and not lm_ran
    finally:
        for h in hooks:
            h.remove()


def test_between_stages_only_registers_no_layer_check(engine):
    """Inside ``interrupt.between_stages_only`` (the cancel benchmark's comparison) an encode
    checks between its stages only: no layer or block hook is registered during it, and
    outside it they are again."""
    from dream_engine_core.interrupt import between_stages_only, interrupt_modules

    mods = interrupt_modules(engine.encoder.model)
    seen = []

    def check():  # how many hooks are registered when a check runs
        seen.append(sum(len(m._forward_pre_hooks) for m in mods))

    with between_stages_only():
        engine.encode(f"a prompt checked between stages {uuid.uuid4().hex}", check_interrupt=check)
    inside = list(seen)
    seen.clear()
    engine.encode(f"a prompt checked at every layer {uuid.uuid4().hex}", check_interrupt=check)
    assert inside and not any(inside), inside
    assert len(seen) > len(inside) and max(seen) == len(mods), (seen, len(mods))


async def _interrupt_after_first_progress(server, p: dict, node: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.url}/ws?clientId={server.client_id}") as ws:
            pid = server.queue(p)
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                d = m.get("data", {})
                if d.get("prompt_id") != pid:
                    continue
                if m["type"] == "progress" and d.get("node") == node:
                    await session.post(f"{server.url}/interrupt", json={"prompt_id": pid})
                    return pid
                if m["type"] in ("execution_success", "execution_error"):
                    return pid
    return pid


def test_interrupt_while_encoding_ten_images_then_next_prompt_runs(server):
    """/interrupt after the encoder's first stage (images prepared): the vision and
    language-model passes that follow stop at their next block, the prompt ends as
    interrupted on the conditioning node, and the next prompt runs normally."""
    p = graph(" ".join(f"[image {i + 1}]" for i in range(10)) + f" in a row {uuid.uuid4().hex[:6]}", images=10,
              image_short_side=896, max_pixels=1024 * 28 * 28)
    pid = asyncio.run(_interrupt_after_first_progress(server, p, "4"))
    entry = server.wait(pid)
    interrupted = host.status_messages(entry, "execution_interrupted")
    assert interrupted and interrupted[0]["node_id"] == "4", entry["status"]
    assert "8" not in entry.get("outputs", {})
    still_serving(server)


# ------------------------------------------------------------------ files the trainer and converter read
def test_check_safetensors_on_corrupt_files(tmp_path):
    from safetensors.torch import save_file

    good = str(tmp_path / "good.safetensors")
    save_file({"a": torch.ones(4), "b": torch.zeros(2, 3)}, good)
    check_safetensors(good)
    raw = open(good, "rb").read()
    cases = {
        "padded": (raw + b"\x00" * 16, "is corrupt: its header describes"),
        "short header": (raw[:20], "is truncated: expected at least"),
        "empty": (b"", "is empty (0 bytes)"),
        "zip": (b"PK\x03\x04" + b"\x00" * 60, "is not a safetensors file"),
        "bad offsets": (_with_header({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, 8),
                        "needs 16 bytes, its offsets give 8"),
    }
    for label, (data, expected) in cases.items():
        p = str(tmp_path / f"{label}.safetensors")
        with open(p, "wb") as f:
            f.write(data)
        with pytest.raises(WeightsError, match="re-download") as e:
            check_safetensors(p)
        assert expected in str(e.value) and p in str(e.value), (label, str(e.value))


def _with_header(header: dict, data_len: int) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + b"\x00" * data_len


def test_trainer_inputs_truncated(tmp_path, comfy):
    from model_builders.comfy_formats import build_demo_models

    from training import dit as DT

    models = str(tmp_path / "models")
    files = build_demo_models(models)
    for sub, name, load in (("diffusion_models", files["dit"], DT.load_dit), ("vae", files["vae"], DT.load_vae)):
        path = os.path.join(models, sub, name)
        full, cut = _truncate(path)
        with pytest.raises(WeightsError, match=f"truncated: expected {full} bytes, found {cut}"):
            load(path)


def test_converter_input_truncated(tmp_path):
    from safetensors.torch import save_file

    from tools.convert_official import ShardReader

    p = str(tmp_path / "diffusion_pytorch_model-00001-of-00002.safetensors")
    save_file({"dit.x": torch.ones(64)}, p)
    full, cut = _truncate(p)
    with pytest.raises(WeightsError, match=f"truncated: expected {full} bytes, found {cut}"):
        ShardReader().open(p)
