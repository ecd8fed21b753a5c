"""The LMM's ModelPatcher on the real ComfyUI host (in-process): the class the host
builds its own models with, loaded before each encode and unloaded by the host's
memory manager (events counted with the patcher's own ON_LOAD / ON_DETACH callbacks).
"""
from __future__ import annotations

from conftest import pack_module

LMM, DIRECT = "tiny-Qwen2-VL", "tiny_direct_map.safetensors"


def count_events(patcher) -> dict:
    from comfy.patcher_extension import CallbacksMP

    n = {"load": 0, "detach": 0}
    patcher.add_callback(CallbacksMP.ON_LOAD, lambda *a: n.__setitem__("load", n["load"] + 1))
    patcher.add_callback(CallbacksMP.ON_DETACH, lambda *a: n.__setitem__("detach", n["detach"] + 1))
    return n


def managed(mm, patcher) -> int:
    return sum(m.model is patcher for m in mm.current_loaded_models)


def test_lmm_patcher_is_loaded_and_unloaded_by_the_host(pack, dit):
    import comfy.model_management as mm
    import comfy.model_patcher

    e = pack_module("nodes.engine")
    handle, _ = e.LoadDreamEngine.execute(dit, LMM, DIRECT, "fp32", "default").args
    core = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    assert type(handle.patcher) is core  # 0.3.75: no CoreModelPatcher, the plain ModelPatcher
    n = count_events(handle.patcher)
    assert managed(mm, handle.patcher) == 0  # loading the node does not load the model
    e.InterleavedConditioning.execute(handle, "a blue square", "generate")
    assert (n["load"], managed(mm, handle.patcher)) == (1, 1)
    e.InterleavedConditioning.execute(handle, "a red circle", "generate")
    assert managed(mm, handle.patcher) == 1  # listed once however often it is asked for
    mm.unload_all_models()
    assert n["detach"] >= 1 and managed(mm, handle.patcher) == 0
    loads = n["load"]
    e.InterleavedConditioning.execute(handle, "a blue square", "generate")
    assert n["load"] == loads + 1 and managed(mm, handle.patcher) == 1  # loaded again for the next encode
    mm.unload_all_models()


def test_newer_host_core_patcher_class_is_used(pack, dit, monkeypatch):
    """Newer ComfyUI's main.py rebinds ``comfy.model_patcher.CoreModelPatcher`` (to the
    dynamic-VRAM patcher) after the pack may have been imported: the class is read when
    the LMM is wrapped, and what it wraps is loaded by the host like any other model."""
    import comfy.model_management as mm
    import comfy.model_patcher

    class HostCorePatcher(comfy.model_patcher.ModelPatcher):
        pass

    monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", HostCorePatcher, raising=False)
    e = pack_module("nodes.engine")
    handle, _ = e.LoadDreamEngine.execute(dit, LMM, DIRECT, "fp32", "cpu").args
    assert type(handle.patcher) is HostCorePatcher
    n = count_events(handle.patcher)
    pos, _ = e.InterleavedConditioning.execute(handle, "a green triangle", "generate").args
    assert pos[0][0].shape[-1] == 128 and (n["load"], managed(mm, handle.patcher)) == (1, 1)
    mm.unload_all_models()
    assert n["detach"] >= 1 and managed(mm, handle.patcher) == 0
