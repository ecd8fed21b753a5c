"""The conditioning node shows what the model saw (its UI output, through the real server)."""
from __future__ import annotations

import os
import re
import uuid

import pytest
from PIL import Image

import comfy_host as host
from conftest import shared_server


@pytest.fixture(scope="module")
def server():
    return shared_server()


def fusion_prompt(text: str) -> dict:
    p = host.small_model_profile(host.load_api("3_object_fusion.json"), size=128)
    cond = host.nodes_of(p, "DreamEngineInterleavedConditioning")[0]
    p[cond]["inputs"]["prompt"] = text
    p[host.nodes_of(p, "KSampler")[0]]["inputs"]["steps"] = 2
    return p


def test_ui_output_and_log_show_what_the_model_saw(server):
    from dream_engine_core.encoder import LMMEncoder

    tag = uuid.uuid4().hex[:6]
    text = f"the [disc] balanced on top of the [box] on a wooden table {tag}"
    p = fusion_prompt(text)
    entry = server.run(p)
    assert entry["status"]["status_str"] == "success", host.execution_error(entry)
    cond = host.nodes_of(p, "DreamEngineInterleavedConditioning")[0]
    shown = entry["outputs"][cond]["text"][0]

    # the images as the node received them, through the pack's encoder in-process
    files = [p[n]["inputs"]["image"] for n in host.nodes_of(p, "LoadImage")]
    pil = [Image.open(os.path.join(server.base_dir, "input", f)).convert("RGB") for f in files]
    enc = LMMEncoder.from_folder(os.path.join(server.base_dir, "models", "LLM", host.SMALL["lmm"]))
    prep = enc.prepare_images(pil)
    ph = [f"<image {i + 1}: {w}×{h} → {n} tokens>" for i, ((w, h), n) in
          enumerate(zip(prep.encoded_sizes, prep.tokens_per_image))]
    caption = text.replace("[disc]", "disc").replace("[box]", "box")
    lines = shown.splitlines()
    assert lines[0] == "positive: " + repr(f"Combine the objects: disc{ph[0]}, box{ph[1]} and generate an image "
                                           f"following: {caption}")
    assert lines[1] == "negative: " + repr(f"Combine the objects: disc{ph[0]}, box{ph[1]} and generate an image "
                                           f"following: ")
    for i, (im, (w, h), n, r) in enumerate(zip(pil, prep.encoded_sizes, prep.tokens_per_image, (0.3, 0.7))):
        assert f"image {i + 1}: {im.width}×{im.height} → encoded {w}×{h}, {n} tokens, r={r:g}" in lines
        assert n == (w // 28) * (h // 28)
    m = re.search(r"^positive tokens: (\d+) \((\d+) image, (\d+) text\)$", shown, re.M)
    assert m and int(m[2]) == sum(prep.tokens_per_image) and int(m[1]) == int(m[2]) + int(m[3])
    assert re.search(r"^negative tokens: \d+ \(\d+ image, \d+ text\)$", shown, re.M)
    # the same in the server log
    assert shown in server.log_text()
