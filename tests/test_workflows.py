"""Every shipped workflow, queued through the HTTP API of the real ComfyUI server
with the pack in custom_nodes, on the small same-architecture models."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

import comfy_host as host
from conftest import shared_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKFLOWS = host.workflow_files()


@pytest.fixture(scope="module")
def server():
    return shared_server()


def test_workflow_files_are_generated_and_paired():
    assert len(WORKFLOWS) == 5
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "build_workflows.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for ui in WORKFLOWS:
        assert os.path.isfile(host.api_twin(ui)), f"no API twin for {ui}"


def test_templates_listed(server):
    """The server's template route lists exactly the five UI workflows of
    ``example_workflows/`` (the API twins in ``api/`` are not templates), serves each
    one, and serves its thumbnail where the frontend's template browser asks for it
    (``/api/workflow_templates/<pack>/<name>.jpg``)."""
    t = server.get("/api/workflow_templates")
    names = sorted(os.path.splitext(os.path.basename(p))[0] for p in WORKFLOWS)
    assert len(names) == 5 and os.path.dirname(WORKFLOWS[0]).endswith("example_workflows")
    assert sorted(t[host.PACK_NAME]) == names
    assert not any(n.startswith("api") for n in t[host.PACK_NAME])
    for n, ui in zip(names, WORKFLOWS):
        with open(ui) as f:
            assert server.get(f"/api/workflow_templates/{host.PACK_NAME}/{n}.json") == json.load(f)
        assert server.get_bytes(f"/api/workflow_templates/{host.PACK_NAME}/{n}.jpg")[:3] == b"\xff\xd8\xff", n


def test_thumbnails_served_by_the_pack_route(server):
    """The pack's own thumbnail route (``nodes/thumbnails.py``), which newer servers need
    because their template route serves only ``.json``. ComfyUI 0.3.x serves the folder
    statically only under ``/api/…``; the path without the prefix reaches the pack's route
    alone, so this test sees that route answer: each shipped thumbnail byte for byte, and
    404 for any other name (the route serves the shipped pictures and nothing else)."""
    import urllib.error

    for ui in WORKFLOWS:
        n = os.path.splitext(os.path.basename(ui))[0]
        with open(os.path.join(os.path.dirname(ui), n + ".jpg"), "rb") as f:
            assert server.get_bytes(f"/workflow_templates/{host.PACK_NAME}/{n}.jpg") == f.read(), n
    for bad in ("nonexistent", "..%2Fpyproject", "api%2F1_text_to_image"):
        with pytest.raises(urllib.error.HTTPError) as e:
            server.get_bytes(f"/workflow_templates/{host.PACK_NAME}/{bad}.jpg")
        assert e.value.code == 404, bad


@pytest.mark.parametrize("ui_path", WORKFLOWS, ids=[os.path.basename(p) for p in WORKFLOWS])
def test_ui_workflow_matches_node_definitions(server, ui_path):
    """Socket inputs and widget values line up with what the server declares."""
    info = server.get("/object_info")
    with open(ui_path) as f:
        ui = json.load(f)
    for node in ui["nodes"]:
        if node["type"] in ("Note", "MarkdownNote"):
            continue
        d = info[node["type"]]
        spec = {**d["input"].get("required", {}), **d["input"].get("optional", {})}
        order = d["input_order"].get("required", []) + d["input_order"].get("optional", [])
        sockets = [n for n in order if not isinstance(spec[n][0], list) and spec[n][0] not in
                   ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]
        widgets = [n for n in order if n not in sockets]
        opts = {n: (spec[n][1] if len(spec[n]) > 1 else {}) for n in order}
        assert [i["name"] for i in node["inputs"]] == sockets, node["type"]
        extra = sum(1 for w in widgets if opts[w].get("control_after_generate")) + \
            (1 if node["type"] == "LoadImage" else 0)
        assert len(node["widgets_values"]) == len(widgets) + extra, node["type"]
        assert [o["type"] for o in node["outputs"]] == d["output"], node["type"]


@pytest.mark.parametrize("ui_path", WORKFLOWS, ids=[os.path.basename(p) for p in WORKFLOWS])
def test_workflow_runs(server, ui_path):
    prompt = host.small_model_profile(host.load_api(host.api_twin(ui_path)))
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", host.execution_error(entry)
    images = server.output_images(entry)
    assert len(images) == 1 and os.path.isfile(images[0])
    im = Image.open(images[0])
    scale = 1.5 if "upscale" in ui_path else 1.0
    assert im.size == (int(host.SMALL["size"] * scale),) * 2


def test_lora_workflow_runs(server):
    """LoraLoaderModelOnly between Load Dream Engine and the sampler (stage-2 LoRA)."""
    from model_builders.comfy_formats import build_tiny_dit_lora

    lora = os.path.join(server.base_dir, "models", "loras", "dream_engine_tiny_lora.safetensors")
    if not os.path.exists(lora):
        build_tiny_dit_lora(lora)
    base = host.small_model_profile(host.load_api("1_text_to_image.json"))
    ks = host.nodes_of(base, "KSampler")[0]
    base[ks]["inputs"]["seed"] = 1234
    with_lora = json.loads(json.dumps(base))
    with_lora["100"] = {"class_type": "LoraLoaderModelOnly",
                        "inputs": {"model": with_lora[ks]["inputs"]["model"],
                                   "lora_name": os.path.basename(lora), "strength_model": 1.0}}
    with_lora[ks]["inputs"]["model"] = ["100", 0]
    before = server.log_text().count("lora key not loaded")
    a = server.run(base)
    b = server.run(with_lora)
    assert a["status"]["status_str"] == b["status"]["status_str"] == "success", host.execution_error(b)
    assert server.log_text().count("lora key not loaded") == before
    ia, ib = (Image.open(server.output_images(e)[0]).tobytes() for e in (a, b))
    assert ia != ib, "the LoRA did not change the output"


def test_standard_map_adapter_runs(server):
    prompt = host.small_model_profile(host.load_api("3_object_fusion.json"), adapter=host.SMALL["adapter_standard"])
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", host.execution_error(entry)
