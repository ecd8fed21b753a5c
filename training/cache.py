"""``--cache``: the frozen models' outputs kept per record, in memory.

The LMM and the VAE are frozen, so what they make of a record never changes:

* the LMM runs once per record and side (conditional / unconditional) at blend
  ratio 0; a sample's ratio ``r`` is then applied to the kept states and vision
  features with the encoder's own formula (``dream_engine_core.encoder.blend``);
* the VAE encodes each target once (only with centre crops: a random crop differs
  per epoch).

Both give the losses of an uncached run (``tests/test_training_cache.py``).
"""
from __future__ import annotations

from typing import Callable

import torch

from dream_engine_core.encoder import blend


class FrozenCache:
    def __init__(self):
        self.lmm: dict = {}      # (record index, unconditional) → (states at r = 0, image spans, vision features)
        self.latents: dict = {}  # record index → target latent

    def hidden(self, key, ratios: list[float], run_r0: Callable) -> torch.Tensor:
        """States ``[1, L, D]`` (float) of the model input ``key`` with the blend ``ratios``;
        ``run_r0()`` encodes that input at ratio 0 (called on a miss)."""
        if key not in self.lmm:
            st = run_r0()
            self.lmm[key] = (st.hidden.float().clone(), st.image_spans, [v.float().clone() for v in st.vision])
        h0, spans, vis = self.lmm[key]
        if not any(r > 0 for r in ratios):
            return h0
        h = h0.clone()
        for (a, b), v, r in zip(spans, vis, ratios):
            if r > 0:
                h[0, a:b] = blend(h0[0, a:b], v, r)
        return h

    def target_latents(self, items: list[dict], encode: Callable) -> torch.Tensor:
        """Latents of the items' targets; ``encode(images [n, H, W, 3])`` runs on the misses."""
        todo = [it for it in items if it["index"] not in self.latents]
        if todo:
            z = encode(torch.stack([it["target"] for it in todo]))
            for it, zi in zip(todo, z):
                self.latents[it["index"]] = zi
        return torch.stack([self.latents[it["index"]] for it in items])
