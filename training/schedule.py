"""The learning-rate schedule: linear warm-up and cosine decay, as a ``LambdaLR`` factor.

One function serves the trainer and the miniature's own trainers
(``miniature/vae.py``, ``miniature/lmm_pretrain.py``); each call gives exactly the
factors its caller has always used, so runs stay bit-reproducible:

* ``overlap=False`` (the trainer): ``(s + 1) / warmup`` during the warm-up, then a
  cosine from 1 to 0 over the remaining ``total − warmup`` steps;
* ``overlap=True`` (the miniature's VAE and LMM pre-training): the cosine runs over
  all ``total`` steps from step 0 and the warm-up ramp multiplies it.
"""
from __future__ import annotations

import math
from typing import Callable


def warmup_steps(total: int, fraction: float) -> int:
    """Warm-up length for a fraction of the run (at least one step when the fraction is > 0)."""
    return max(1, int(round(total * fraction))) if fraction > 0 else 0


def warmup_cosine(total: int, warmup: int, overlap: bool = False,
                  angle_first: bool = False) -> Callable[[int], float]:
    """The factor of the base learning rate at scheduler step ``s`` (``LambdaLR``'s lambda).

    ``angle_first`` (with ``overlap``) rounds the cosine's angle as ``π·s / total``
    instead of ``π·(s / total)`` — one rounding apart, kept because the miniature's
    VAE was trained with it."""
    if overlap:
        def factor(s: int) -> float:
            angle = math.pi * min(s, total) / total if angle_first else math.pi * min(1.0, s / total)
            return min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(angle))
        return factor

    def factor(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        t = (s - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    return factor
