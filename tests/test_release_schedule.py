"""The shipped workflows sample on the release's schedule.

The release samples with diffusers' ``FlowMatchEulerDiscreteScheduler`` built from SD3.5
Large's ``scheduler/scheduler_config.json`` (``num_train_timesteps`` 1000, ``shift`` 3.0,
no dynamic shifting), 28 steps, CFG 3.5, and steps ``x + (σ_next − σ)·v`` (the official
repository's ``pipeline_qwen_vl_stable_diffusion_3.py: cfg_predict`` at commit 374cffe).
Here diffusers itself computes that schedule, and ComfyUI's own ``KSampler`` computes the
sigmas of every shipped workflow's KSampler settings on an SD3.5-format model.
"""
from __future__ import annotations

import json

import pytest
import torch

from comfy_host.workflows import workflow_files

# SD3.5 Large's scheduler_config.json (the keys it sets; the rest are diffusers' defaults).
SD35_LARGE_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}


def release_sigmas(steps: int) -> torch.Tensor:
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler.from_config(SD35_LARGE_SCHEDULER)
    sched.set_timesteps(steps)
    return sched.sigmas.double()


def shipped_ksamplers() -> list[tuple[str, dict]]:
    out = []
    for path in workflow_files():
        with open(path) as f:
            wf = json.load(f)
        for node in wf["nodes"]:
            if node["type"] == "KSampler":
                seed, _ctl, steps, cfg, sampler, scheduler, denoise = node["widgets_values"]
                out.append((path.rsplit("/", 1)[-1], dict(steps=steps, cfg=cfg, sampler=sampler,
                                                          scheduler=scheduler, denoise=denoise)))
    return out


def test_every_workflow_has_a_ksampler():
    names = {n for n, _ in shipped_ksamplers()}
    assert names == {p.rsplit("/", 1)[-1] for p in workflow_files()}


@pytest.mark.parametrize("name,ks", shipped_ksamplers(), ids=[n for n, _ in shipped_ksamplers()])
def test_shipped_sigmas_equal_the_release(dit, name, ks):
    import comfy.samplers

    assert (ks["steps"], ks["cfg"], ks["sampler"], ks["denoise"]) == (28, 3.5, "euler", 1.0)
    sampler = comfy.samplers.KSampler(dit, steps=ks["steps"], device="cpu", sampler=ks["sampler"],
                                      scheduler=ks["scheduler"], denoise=ks["denoise"])
    ours = sampler.sigmas.double()
    ref = release_sigmas(ks["steps"])
    assert ours.shape == ref.shape == (29,)
    assert float((ours - ref).abs().max()) < 1e-6, (ours - ref).abs().max()
    # the last non-zero sigma, which ComfyUI's default ``simple`` scheduler gets wrong (0.1007)
    assert abs(float(ours[-2]) - 0.0089) < 1e-4


def test_simple_scheduler_is_not_the_release(dit):
    """The check above can fail: ComfyUI's ``simple`` schedule differs from the release's."""
    import comfy.samplers

    simple = comfy.samplers.KSampler(dit, steps=28, device="cpu", sampler="euler", scheduler="simple").sigmas
    assert float((simple.double() - release_sigmas(28)).abs().max()) > 0.05


def test_euler_step_equals_the_release_step(dit):
    """ComfyUI's ``euler`` on a flow model moves x by (σ_next − σ)·v, as diffusers' step does."""
    import comfy.samplers
    from diffusers import FlowMatchEulerDiscreteScheduler

    sigmas = comfy.samplers.KSampler(dit, steps=28, device="cpu", sampler="euler", scheduler="normal").sigmas
    sched = FlowMatchEulerDiscreteScheduler.from_config(SD35_LARGE_SCHEDULER)
    sched.set_timesteps(28)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 8, 8, generator=g)
    v = torch.randn(1, 16, 8, 8, generator=g)
    ms = dit.get_model_object("model_sampling")
    for i in (0, 13, 27):
        s = sigmas[i:i + 1].float()
        denoised = ms.calculate_denoised(s, v, x)  # what the model wrapper returns for velocity v
        ours = comfy.samplers.ksampler("euler").sampler_function(
            lambda xx, ss, **kw: denoised, x, sigmas[i:i + 2].float(), disable=True)
        sched._step_index = i
        ref = sched.step(v, sched.timesteps[i], x, return_dict=False)[0]
        assert float((ours - ref).abs().max()) < 1e-5
        # ComfyUI feeds the DiT timestep σ·1000, the release t = σ·1000 from its scheduler
        assert abs(float(ms.timestep(s)) - float(sched.timesteps[i])) < 1e-3
