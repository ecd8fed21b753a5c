"""Train a 16-channel TAESD-format VAE on the shapes world (the miniature's VAE).

The model is ComfyUI's own ``comfy.taesd.taesd.TAESD`` with 16 latent channels, so
the saved file (``taesd_encoder.*``, ``taesd_decoder.*``, ``vae_scale``,
``vae_shift``) loads with ComfyUI's ``VAELoader`` and is detected as TAESD.

Objective: L1 + MSE reconstruction with a small L2 penalty on the raw latents,
so they stay inside the decoder's input clamp (``tanh(x/3)·3``). The joint training
runs on random crops (the model is fully convolutional, crops are cheap); then the
decoder alone is fine-tuned on whole images for ``decoder_steps`` (the encoder, and so
the latent space, frozen): trained on crops only, the decoder round-trips 92 % of
whole scenes so that ShapesEval finds them again, after 100 whole-image steps 100 %
(300 scenes). After training,
``vae_scale`` and ``vae_shift`` are calibrated so that SD3's latent format
(``(z − 0.0609)·1.5305``) turns encoded shapes-world images into latents of
zero mean and unit variance — what the DiT's noise schedule assumes.

    python -m miniature.vae --out build/miniature/vae.safetensors --steps 1500
"""
from __future__ import annotations

import argparse
import random

import numpy as np
import torch
import torch.nn.functional as F

from model_builders.comfy_formats import new_taesd
from training.schedule import warmup_cosine

from .shapes_world import random_scene, render

SD3_SCALE, SD3_SHIFT = 1.5305, 0.0609


def shapes_batch(rng: random.Random, n: int, size: int) -> torch.Tensor:
    """``[n, 3, size, size]`` in [-1, 1]."""
    arr = np.stack([np.asarray(render(random_scene(rng), size), dtype=np.float32) for _ in range(n)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def train_vae(out: str, steps: int = 1500, batch: int = 16, size: int = 64, lr: float = 1e-3, seed: int = 0,
              latent_weight: float = 1e-3, log_every: int = 100, progress: bool = True, crop: int = 32,
              bf16: bool = True, eval_n: int = 64, decoder_steps: int = 200) -> dict:
    from comfy_host.importer import import_comfy
    from tqdm import tqdm

    from dream_engine_core.weights import atomic_save

    import_comfy()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    vae = new_taesd(seed)
    enc, dec = vae.taesd_encoder, vae.taesd_decoder
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, steps // 20, overlap=True, angle_first=True))
    fixed = shapes_batch(random.Random(seed + 999), eval_n, size)
    history = []

    def eval_loss():
        with torch.no_grad():
            e = enc(fixed * 0.5 + 0.5)
            return float(F.mse_loss(dec(e), fixed * 0.5 + 0.5))

    history.append((0, eval_loss()))
    bar = tqdm(range(steps), desc="vae", disable=not progress)
    for step in bar:
        x = shapes_batch(rng, batch, size) * 0.5 + 0.5
        if crop < size:  # fully convolutional: random crops train it at a fraction of the cost
            i, j = rng.randrange(0, size - crop + 1, 8), rng.randrange(0, size - crop + 1, 8)
            x = x[:, :, i:i + crop, j:j + crop]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            e = enc(x)
            y = dec(e)
        e, y = e.float(), y.float()
        loss = F.l1_loss(y, x) + F.mse_loss(y, x) + latent_weight * e.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            history.append((step + 1, eval_loss()))
            bar.set_postfix(mse=f"{history[-1][1]:.5f}")
    if decoder_steps:
        _finetune_decoder(enc, dec, rng, decoder_steps, batch, size, lr * 0.3, bf16, progress)
        history.append((steps + decoder_steps, eval_loss()))
    with torch.no_grad():
        e = enc(shapes_batch(random.Random(seed + 7), eval_n, size) * 0.5 + 0.5)
        mean, std = float(e.mean()), float(e.std())
        vae.vae_scale.fill_(std * SD3_SCALE)
        vae.vae_shift.fill_(SD3_SHIFT - mean / (std * SD3_SCALE))
    atomic_save(vae.state_dict(), out, {"format": "taesd", "latent_channels": "16", "trained_on": "shapes world",
                                        "image_size": str(size), "steps": str(steps),
                                        "decoder_steps": str(decoder_steps), "seed": str(seed),
                                        "final_mse": f"{history[-1][1]:.6f}"})
    return {"history": history, "latent_mean": mean, "latent_std": std, "path": out}


def _finetune_decoder(enc, dec, rng, steps, batch, size, lr, bf16, progress) -> None:
    """The decoder alone on whole images (the encoder frozen), the learning rate decaying linearly."""
    from tqdm import tqdm

    enc.requires_grad_(False)
    opt = torch.optim.AdamW(dec.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / steps)
    for _ in tqdm(range(steps), desc="vae decoder", disable=not progress):
        x = shapes_batch(rng, batch, size) * 0.5 + 0.5
        with torch.no_grad():
            e = enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = dec(e)
        loss = F.l1_loss(y.float(), x) + F.mse_loss(y.float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec.parameters(), 1.0)
        opt.step()
        sched.step()
    enc.requires_grad_(True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    r = train_vae(a.out, a.steps, a.batch, a.size, seed=a.seed)
    print(f"vae: mse {r['history'][0][1]:.5f} -> {r['history'][-1][1]:.5f}; written {r['path']}")


if __name__ == "__main__":
    main()
