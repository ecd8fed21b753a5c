"""The pack's nodes on the real ComfyUI server: registration, caching, memory over many prompts."""
from __future__ import annotations

import time
import uuid

import pytest

import comfy_host as host
from conftest import shared_server

NODE_INPUTS = {
    "LoadDreamEngine": ["model", "lmm", "adapter", "dtype", "device", "fingerprint_check"],
    "DreamEngineInterleavedConditioning": ["dream_engine", "prompt", "task", "padding", "pooling", "positions",
                                           "image_short_side", "min_pixels", "max_pixels", "segments"],
    "DreamEngineImageSegment": ["image", "name", "frame", "segments", "mask"],
    "DreamEngineBlendRatio": ["segments", "ratio", "apply_to"],
}


@pytest.fixture(scope="module")
def server():
    return shared_server()


def encodes(server) -> int:
    return server.log_text().count("Dream Engine: encoded")


def t2i(prompt_text: str, seed: int = 1) -> dict:
    return host.configure(host.small_model_profile(host.load_api("1_text_to_image.json"), size=128),
                          text=prompt_text, seed=seed, steps=4)


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


# Error cases (bad inputs, model files, wiring, interrupts) are in tests/test_hostile_inputs.py.


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
