"""``--val-every``: what the model draws during training.

An Euler render of ``--val-prompt`` with CFG through the trainer's own adapter and
DiT (the flow's SD3 schedule, shift 3), saved as ``OUT/val/step-N.png``."""
from __future__ import annotations

import os

import torch

from dream_engine_core.prompt import build_task_inputs

from . import dit as DT


@torch.no_grad()
def render(tr, prompt: str, steps: int = 28, guidance: float = 3.5, seed: int = 0, shift: float = 3.0):
    """Image ``[1, H, W, 3]`` in [0, 1] of ``prompt`` from the trainer ``tr``'s current weights."""
    enc, module, cfg = tr.encoder, tr.module, tr.cfg
    ti = build_task_inputs(prompt, [], "generate", style="inference")
    prep = enc.prepare_images([])
    conds = []
    for inp in (ti.cond, ti.uncond):
        h = enc.encode(inp, prep, positions=cfg.positions).hidden.float().clone()
        conds.append(module.adapter(h, None, cfg.pooling))
    lat = cfg.resolution // 8
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 16, lat, lat), generator=g).to(tr.device)
    ts = torch.linspace(1, 0, steps + 1)
    sig = shift * ts / (1 + (shift - 1) * ts)
    for i in range(steps):
        s = sig[i].view(1).to(tr.device)
        with tr.autocast():
            vc = module.dit(x, DT.timestep(s), context=conds[0][0], y=conds[0][1]).float()
            vu = module.dit(x, DT.timestep(s), context=conds[1][0], y=conds[1][1]).float()
        v = vu + guidance * (vc - vu)
        x = x + (sig[i + 1] - sig[i]).item() * v
    return DT.decode_latents(tr.vae, tr.latent_format, x)


def save_render(tr, path: str) -> str:
    from PIL import Image

    c = tr.cfg
    img = render(tr, c.val_prompt, c.val_steps, c.val_guidance, seed=c.seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray((img[0].cpu().numpy() * 255).round().astype("uint8")).save(path)
    return path
