"""The benchmark prompts and images.

The benchmark LMMs (random weights) carry the real Qwen2 vocabulary
(:func:`model_builders.qwen2vl.build_qwen2vl_tokenizer`), so every token count the
benchmarks report (the 20-word prompt, the 300-token prompt) is the count the released
model's tokenizer gives for the same text.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

# (a) 20 words.
PROMPT_20 = ("a photograph of an astronaut riding a horse on the surface of the moon "
             "with dramatic lighting and a wide angle")

_LONG_WORDS = (
    "a detailed oil painting of an old harbour town at dusk with fishing boats resting on calm "
    "water while warm lantern light spills from the windows of narrow stone houses and seagulls "
    "circle above the masts under a sky of deep violet and orange clouds in the style of a "
    "romantic landscape master with soft brush strokes rich texture and careful attention to "
    "reflections on the wet cobblestones where a lone figure in a red coat walks a small dog "
    "past a market stall selling bread cheese and flowers beside a lighthouse on the far cliff"
).split()

# The words of the prompts (prompt variants swap in those that are one token).
WORDS = tuple(sorted(set(PROMPT_20.split()) | set(_LONG_WORDS) | {"Generate", "Image:", "Image", "image"}))


def long_prompt(n_tokens: int, count_tokens) -> str:
    """A prompt whose conditional model input is exactly ``n_tokens`` tokens (as counted by
    ``count_tokens(prompt)``), built from the long sentence repeated."""
    words = []
    i = 0
    while True:
        words.append(_LONG_WORDS[i % len(_LONG_WORDS)])
        i += 1
        if count_tokens(" ".join(words)) >= n_tokens:
            break
    while count_tokens(" ".join(words)) > n_tokens and len(words) > 1:
        words.pop()
    return " ".join(words)


def image_prompt(n_images: int) -> str:
    """(c)/scaling: a generate prompt referring to ``n_images`` images."""
    if n_images == 0:
        return PROMPT_20
    refs = " and ".join(f"[image {i + 1}]" for i in range(n_images))
    return f"a photograph combining {refs} on the surface of the moon with dramatic lighting"


def test_image(seed: int, width: int = 512, height: int = 512) -> Image.Image:
    """A deterministic noise image (content does not change the compute)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
