"""The pack's nodes on the real ComfyUI server: registration, caching, errors."""
from __future__ import annotations

import os
import time
import uuid

import pytest

import comfy_host as host

NODE_INPUTS = {
    "LoadDreamEngine": ["model", "lmm", "adapter", "dtype", "device", "fingerprint_check"],
    "DreamEngineInterleavedConditioning": ["dream_engine", "prompt", "task", "padding", "pooling", "positions",
                                           "image_short_side", "min_pixels", "max_pixels", "segments"],
    "DreamEngineImageSegment": ["image", "name", "frame", "segments", "mask"],
    "DreamEngineBlendRatio": ["segments", "ratio", "apply_to"],
}


@pytest.fixture(scope="module")
def server():
    return host.get_server()


def encodes(server) -> int:
    return server.log_text().count("Dream Engine: encoded")


def t2i(prompt_text: str, seed: int = 1) -> dict:
    p = host.small_model_profile(host.load_api("1_text_to_image.json"), size=128)
    cond = host.nodes_of(p, "DreamEngineInterleavedConditioning")[0]
    p[cond]["inputs"]["prompt"] = prompt_text
    ks = host.nodes_of(p, "KSampler")[0]
    p[ks]["inputs"]["seed"] = seed
    p[ks]["inputs"]["steps"] = 4
    return p


def test_object_info_lists_the_nodes(server):
    info = server.get("/object_info")
    for node, inputs in NODE_INPUTS.items():
        assert node in info, f"{node} not registered:\n{server.log_tail()}"
        order = info[node]["input_order"]
        assert order.get("required", []) + order.get("optional", []) == inputs
        assert info[node]["category"] == "conditioning/dream_engine"
    lmm = info["LoadDreamEngine"]["input"]["required"]["lmm"]
    assert lmm[0] == "COMBO" and host.SMALL["lmm"] in lmm[1]["options"]
    assert info["LoadDreamEngine"]["output"] == ["DREAM_ENGINE", "MODEL"]
    assert info["DreamEngineInterleavedConditioning"]["output"] == ["CONDITIONING", "CONDITIONING"]
    assert "IMPORT FAILED" not in "\n".join(l for l in server.log_text().splitlines() if host.PACK_NAME in l)


def test_seed_change_does_not_reencode(server):
    text = f"a yellow circle left of a red square {uuid.uuid4().hex[:6]}"
    n0 = encodes(server)
    a = server.run(t2i(text, seed=1))
    assert a["status"]["status_str"] == "success", host.execution_error(a)
    assert encodes(server) == n0 + 1
    b = server.run(t2i(text, seed=2))
    assert b["status"]["status_str"] == "success"
    assert encodes(server) == n0 + 1, "changing only the seed re-ran the encoder"
    cached = host.status_messages(b, "execution_cached")[0]["nodes"]
    p = t2i(text)
    for ct in ("LoadDreamEngine", "DreamEngineInterleavedConditioning"):
        assert host.nodes_of(p, ct)[0] in cached
    assert host.nodes_of(p, "KSampler")[0] not in cached
    server.run(t2i(text + " and a cat", seed=2))
    assert encodes(server) == n0 + 2


def _error_text(entry) -> str:
    e = host.execution_error(entry)
    assert entry["status"]["status_str"] == "error" and e is not None
    return f"{e['node_type']}: {e['exception_message']}"


def _rejected(server, prompt) -> str:
    with pytest.raises(host.PromptRejected) as ei:
        server.queue(prompt)
    return str(ei.value)


def _still_serving(server):
    ok = server.run(t2i(f"a purple triangle {uuid.uuid4().hex[:6]}"))
    assert ok["status"]["status_str"] == "success", host.execution_error(ok)


def test_prompt_referencing_a_missing_segment(server):
    p = host.small_model_profile(host.load_api("2_edit.json"), size=128)
    cond = host.nodes_of(p, "DreamEngineInterleavedConditioning")[0]
    p[cond]["inputs"].update(task="generate", prompt="[image 1] next to [image 2]")
    msg = _error_text(server.run(p))
    assert "DreamEngineInterleavedConditioning" in msg and "[image 2]" in msg and "connect another image segment" in msg
    _still_serving(server)


def test_empty_prompt(server):
    msg = _error_text(server.run(t2i("   ")))
    assert "prompt is empty" in msg
    _still_serving(server)


def test_ratio_out_of_range(server):
    p = host.small_model_profile(host.load_api("4_reconstruct_variation.json"), size=128)
    br = host.nodes_of(p, "DreamEngineBlendRatio")[0]
    p[br]["inputs"]["ratio"] = 1.5
    msg = _rejected(server, p)
    assert "ratio" in msg and "bigger than max" in msg
    _still_serving(server)


def _build_adapter(server, name, **kw):
    from model_builders.qwen2vl import build_tiny_adapter

    path = os.path.join(server.base_dir, "models", "dream_engine", name)
    if not os.path.exists(path):
        build_tiny_adapter(path, **kw)
    return name


def test_adapter_for_another_lmm(server):
    name = _build_adapter(server, "wrong_lmm_dim.safetensors", lmm_dim=32, kind="direct", token_dim=128)
    p = t2i("a red circle")
    p[host.nodes_of(p, "LoadDreamEngine")[0]]["inputs"]["adapter"] = name
    msg = _error_text(server.run(p))
    assert "LoadDreamEngine" in msg and "32-d LMM states" in msg and "hidden size 64" in msg
    _still_serving(server)


def test_adapter_for_another_dit(server):
    name = _build_adapter(server, "wrong_dit_width.safetensors", lmm_dim=64, kind="direct", token_dim=96)
    p = t2i("a red circle")
    p[host.nodes_of(p, "LoadDreamEngine")[0]]["inputs"]["adapter"] = name
    msg = _error_text(server.run(p))
    assert "hidden width is 128" in msg and "input_embeds_align_mlp.2.weight" in msg
    _still_serving(server)


def test_missing_model_files(server):
    p = t2i("a red circle")
    le = host.nodes_of(p, "LoadDreamEngine")[0]
    p[le]["inputs"]["adapter"] = "no_such_adapter.safetensors"
    msg = _rejected(server, p)
    assert "no_such_adapter.safetensors" in msg and "dream_engine" in msg
    p[le]["inputs"].update(adapter=host.SMALL["adapter"], lmm="no-such-lmm")
    msg = _rejected(server, p)
    assert "no-such-lmm" in msg and "config.json" in msg and "model.safetensors" in msg
    # an incomplete LMM folder: every missing file is named
    broken = os.path.join(server.base_dir, "models", "LLM", "broken-Qwen2-VL")
    os.makedirs(broken, exist_ok=True)
    with open(os.path.join(broken, "config.json"), "w") as f:
        f.write('{"model_type": "qwen2_vl"}')
    p[le]["inputs"]["lmm"] = "broken-Qwen2-VL"
    msg = _rejected(server, p)
    for missing in ("preprocessor_config.json", "tokenizer_config.json", "tokenizer.json", "model.safetensors"):
        assert missing in msg
    _still_serving(server)


@pytest.mark.slow
def test_rss_stays_flat_over_200_prompts(server):
    """200 prompts (each re-encodes: the text changes) keep RSS growth under 5 %."""
    def run(i):
        e = server.run(t2i(f"a small {('red', 'blue', 'green')[i % 3]} shape number {i}", seed=i))
        assert e["status"]["status_str"] == "success"

    for i in range(20):  # warm-up
        run(i)
    rss0 = server.rss_bytes()
    t0 = time.time()
    for i in range(20, 220):
        run(i)
    rss1 = server.rss_bytes()
    growth = (rss1 - rss0) / rss0
    print(f"RSS {rss0 / 2**20:.1f} MiB -> {rss1 / 2**20:.1f} MiB ({growth:+.2%}) over 200 prompts, "
          f"{time.time() - t0:.1f}s")
    assert growth < 0.05
