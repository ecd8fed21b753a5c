"""The adapter ↔ LMM fingerprint: what it hashes, who records it, and LoadDreamEngine
refusing a mismatch on the real ComfyUI server."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

import comfy_host as host
from conftest import shared_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Q0 = "model.layers.0.self_attn.q_proj.weight"


def _variant(src: str, dst: str, change: dict | None = None, dtype=None) -> str:
    """A copy of the LMM folder ``src`` with some tensors changed or all cast."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    sd = load_file(os.path.join(src, "model.safetensors"))
    for k, fn in (change or {}).items():
        sd[k] = fn(sd[k])
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    save_file(sd, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_fingerprint_follows_attention_weights_not_storage(tiny_lmm_dir, tmp_path):
    from safetensors.torch import load_file

    from dream_engine_core.fingerprint import fingerprinted_tensors, lmm_fingerprint

    fp = lmm_fingerprint(tiny_lmm_dir)
    assert fp.startswith("fp1-") and len(fp) == 20
    keys = list(load_file(os.path.join(tiny_lmm_dir, "model.safetensors")))
    # first and last decoder layers' q/k/v/o projections, nothing of the vision tower
    assert sorted(fingerprinted_tensors(keys)) == sorted(f"layers.{i}.self_attn.{p}_proj.weight"
                                                         for i in (0, 1) for p in "qkvo")
    # the same weights stored in bf16: same fingerprint; a LoRA-sized change of one projection: different
    from tools.weights import merge_lora

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 64, generator=g) * 0.1, torch.randn(64, 4, generator=g) * 0.1
    bf16 = _variant(tiny_lmm_dir, str(tmp_path / "bf16"), dtype=torch.bfloat16)
    lora = _variant(tiny_lmm_dir, str(tmp_path / "lora"), {Q0: lambda w: merge_lora(w, a, b)})
    assert lmm_fingerprint(bf16) == fp
    assert lmm_fingerprint(lora) != fp
    # the newer transformers spelling of the same names gives the same fingerprint
    from safetensors.torch import save_file

    renamed = tmp_path / "renamed"
    shutil.copytree(tiny_lmm_dir, renamed)
    sd = load_file(os.path.join(tiny_lmm_dir, "model.safetensors"))
    save_file({k.replace("model.layers.", "model.language_model.layers."): v for k, v in sd.items()},
              str(renamed / "model.safetensors"))
    assert lmm_fingerprint(str(renamed)) == fp


@pytest.mark.cli
def test_save_adapter_records_and_tool_stamps(tiny_lmm_dir, tiny_adapter_path, tmp_path):
    from dream_engine_core.fingerprint import lmm_fingerprint
    from dream_engine_core.weights import load_adapter, read_metadata, save_adapter

    ad = load_adapter(tiny_adapter_path)
    p = str(tmp_path / "a.safetensors")
    save_adapter(p, ad, {"x": "1"}, lmm_folder=tiny_lmm_dir)
    md = read_metadata(p)
    assert md["lmm_fingerprint"] == lmm_fingerprint(tiny_lmm_dir) and md["lmm_folder"] == "tiny-Qwen2-VL"
    q = str(tmp_path / "b.safetensors")
    shutil.copyfile(tiny_adapter_path, q)
    assert "lmm_fingerprint" not in read_metadata(q)
    cmd = [sys.executable, "-m", "tools.fingerprint_adapter", q, tiny_lmm_dir]
    r = subprocess.run(cmd + ["--check"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and "records no LMM fingerprint" in r.stderr
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    md2 = read_metadata(q)
    assert md2["lmm_fingerprint"] == md["lmm_fingerprint"]
    assert {k: v for k, v in md2.items() if not k.startswith("lmm_")} == \
        {k: v for k, v in read_metadata(tiny_adapter_path).items() if not k.startswith("lmm_")}
    torch.testing.assert_close(load_adapter(q).state_dict(), ad.state_dict(), rtol=0, atol=0)
    r = subprocess.run(cmd + ["--check"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "matches" in r.stdout


def test_trainer_export_records_the_fingerprint(tiny_lmm_dir, tiny_adapter_path, tmp_path):
    """training/export.py (also the trainer's own export) stamps the run's LMM."""
    from dream_engine_core.fingerprint import lmm_fingerprint
    from dream_engine_core.weights import load_adapter, read_metadata
    from training.export import export_run

    ad = load_adapter(tiny_adapter_path)
    params = {"adapter." + k: v for k, v in ad.state_dict().items()}
    cfg = {"adapter_spec": ad.spec.as_dict(), "stage": 1, "seed": 0, "manifest": "m.jsonl", "lmm": tiny_lmm_dir}
    out = export_run(params, cfg, str(tmp_path / "a.safetensors"), None)
    assert read_metadata(out["adapter"])["lmm_fingerprint"] == lmm_fingerprint(tiny_lmm_dir)


@pytest.fixture(scope="module")
def server():
    return shared_server()


def _t2i(lmm: str, adapter: str, check: str | None = None) -> dict:
    p = host.small_model_profile(host.load_api("1_text_to_image.json"), size=128)
    ks = host.nodes_of(p, "KSampler")[0]
    p[ks]["inputs"]["steps"] = 2
    node = p[host.nodes_of(p, "LoadDreamEngine")[0]]["inputs"]
    node.update(lmm=lmm, adapter=adapter)
    if check is not None:
        node["fingerprint_check"] = check
    return p


def test_load_dream_engine_refuses_an_adapter_made_with_another_lmm(server):
    from dream_engine_core.weights import load_adapter, save_adapter

    models = os.path.join(server.base_dir, "models")
    small = os.path.join(models, "LLM", host.SMALL["lmm"])
    other_name = "tiny-Qwen2-VL-other-weights"
    other = os.path.join(models, "LLM", other_name)
    if not os.path.isdir(other):
        _variant(small, other, {Q0: lambda w: w + 0.01})
    small_adapter = os.path.join(models, "dream_engine", host.SMALL["adapter"])
    stamped = "fingerprinted_direct_map.safetensors"
    save_adapter(os.path.join(models, "dream_engine", stamped), load_adapter(small_adapter), lmm_folder=small)
    # the object info lists the new input last
    order = server.get("/object_info")["LoadDreamEngine"]["input_order"]
    assert (order.get("required", []) + order.get("optional", []))[-1] == "fingerprint_check"

    bad = server.run(_t2i(other_name, stamped))
    assert bad["status"]["status_str"] == "error"
    msg = host.execution_error(bad)["exception_message"]
    assert host.SMALL["lmm"] in msg and other_name in msg and "fingerprint_check" in msg \
        and "DreamEngine-Qwen2-VL-2B" in msg, msg
    for prompt in (_t2i(host.SMALL["lmm"], stamped), _t2i(other_name, stamped, "ignore")):
        ok = server.run(prompt)
        assert ok["status"]["status_str"] == "success", host.execution_error(ok)
    # an adapter without a fingerprint loads, with a one-line warning
    n = server.log_text().count("records no LMM fingerprint")
    ok = server.run(_t2i(other_name, host.SMALL["adapter"]))
    assert ok["status"]["status_str"] == "success", host.execution_error(ok)
    assert server.log_text().count("records no LMM fingerprint") == n + 1
