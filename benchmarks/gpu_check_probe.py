"""Measurement probe that ``benchmarks/gpu_check.py`` links into the check server's
``custom_nodes`` (never part of the pack, never shipped to users).

* ``GpuCheckConditioning``: ordinary SD3.5-shaped conditioning (``tokens`` × 4096 context,
  a 2048-d pooled vector, random values) with no text encoder in the graph — the
  baseline the Dream Engine graph is compared with.
* Every node's execution is timed and, on CUDA, its peak allocated / reserved VRAM
  recorded (``torch.cuda.reset_peak_memory_stats`` before the node).
* Every sampling step (``comfy.samplers.sampling_function``: one call per step, positive
  and negative together) is timed with the device synchronised on both sides, and at
  the first step of each sampling node the models ComfyUI holds on the GPU are listed
  (from ``comfy.model_management.current_loaded_models``).

Events are appended as JSON lines to ``$GPU_CHECK_PROBE_LOG``.
"""
from __future__ import annotations

import json
import os
import time

import torch

import comfy.model_management as mm
import comfy.samplers
import execution

LOG = os.environ.get("GPU_CHECK_PROBE_LOG")
_state = {"first_step": False, "node": None}


def _emit(**event):
    if LOG:
        with open(LOG, "a") as f:
            f.write(json.dumps(event) + "\n")


def _cuda() -> bool:
    return torch.cuda.is_available() and not mm.is_device_cpu(mm.get_torch_device())


def _sync():
    if _cuda():
        torch.cuda.synchronize()


def _loaded_models() -> list:
    out = []
    for lm in mm.current_loaded_models:
        p = lm.model
        if p is None:
            continue
        out.append({"model": type(p.model).__name__, "patcher": type(p).__name__,
                    "device": str(p.current_loaded_device()), "load_device": str(p.load_device),
                    "loaded_mb": p.loaded_size() / 2 ** 20, "size_mb": p.model_size() / 2 ** 20})
    return out


_get_output_data = execution.get_output_data


async def _timed_get_output_data(prompt_id, unique_id, obj, *args, **kwargs):
    name = getattr(obj, "__name__", type(obj).__name__)
    _sync()
    if _cuda():
        torch.cuda.reset_peak_memory_stats()
    _state.update(first_step=True, node=name)
    t = time.perf_counter()
    try:
        return await _get_output_data(prompt_id, unique_id, obj, *args, **kwargs)
    finally:
        _sync()
        ev = {"event": "node", "prompt_id": prompt_id, "id": unique_id, "class": name,
              "seconds": time.perf_counter() - t}
        if _cuda():
            ev.update(peak_allocated_mb=torch.cuda.max_memory_allocated() / 2 ** 20,
                      peak_reserved_mb=torch.cuda.max_memory_reserved() / 2 ** 20,
                      allocated_after_mb=torch.cuda.memory_allocated() / 2 ** 20)
        _emit(**ev)


execution.get_output_data = _timed_get_output_data

_sampling_function = comfy.samplers.sampling_function


def _timed_sampling_function(*args, **kwargs):
    if _state["first_step"]:
        _state["first_step"] = False
        _emit(event="first_step_models", node=_state["node"], models=_loaded_models(),
              allocated_mb=torch.cuda.memory_allocated() / 2 ** 20 if _cuda() else None)
    _sync()
    t = time.perf_counter()
    out = _sampling_function(*args, **kwargs)
    _sync()
    _emit(event="step", node=_state["node"], seconds=time.perf_counter() - t)
    return out


comfy.samplers.sampling_function = _timed_sampling_function


class GpuCheckConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"tokens": ("INT", {"default": 154, "min": 1, "max": 4096}),
                             "width": ("INT", {"default": 4096, "min": 1, "max": 16384}),
                             "pooled": ("INT", {"default": 2048, "min": 1, "max": 16384}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "gpu_check"

    def make(self, tokens, width, pooled, seed):
        g = torch.Generator().manual_seed(seed)
        ctx = torch.randn(1, tokens, width, generator=g)
        return ([[ctx, {"pooled_output": torch.randn(1, pooled, generator=g)}]],)


NODE_CLASS_MAPPINGS = {"GpuCheckConditioning": GpuCheckConditioning}
