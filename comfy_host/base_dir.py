"""A ComfyUI base directory for the real server: ``models/`` (a models folder given by
the caller, linked in: the user's, the shipped miniature's, or the small random-weight set
that ``model_builders.comfy_formats.build_demo_models`` writes), ``custom_nodes/`` with this
repository linked in as ``comfyui-dream-engine``, and two example images in ``input/``.
"""
from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_NAME = "comfyui-dream-engine"
EXAMPLE_IMAGES = ("dream_engine_example_1.png", "dream_engine_example_2.png")


def write_example_images(input_dir: str) -> list[str]:
    """Two small deterministic pictures (a red disc on grey, a blue square on cream)."""
    from PIL import Image, ImageDraw

    os.makedirs(input_dir, exist_ok=True)
    out = []
    for name, bg, fg, shape in ((EXAMPLE_IMAGES[0], (200, 200, 200), (220, 40, 40), "disc"),
                                (EXAMPLE_IMAGES[1], (245, 235, 210), (40, 80, 220), "square")):
        p = os.path.join(input_dir, name)
        if not os.path.exists(p):
            im = Image.new("RGB", (96, 80), bg)
            d = ImageDraw.Draw(im)
            if shape == "disc":
                d.ellipse((24, 16, 72, 64), fill=fg)
            else:
                d.rectangle((28, 20, 68, 60), fill=fg)
            im.save(p)
        out.append(p)
    return out


def prepare_base_dir(base: str, models_dir: str) -> str:
    """Lay out a ComfyUI base directory whose ``models`` is a link to ``models_dir``."""
    os.makedirs(base, exist_ok=True)
    custom = os.path.join(base, "custom_nodes")
    os.makedirs(custom, exist_ok=True)
    link = os.path.join(custom, PACK_NAME)
    if not os.path.lexists(link):
        os.symlink(ROOT, link)
    models = os.path.join(base, "models")
    models_dir = os.path.abspath(models_dir)
    if os.path.islink(models) and os.readlink(models) != models_dir:
        os.unlink(models)
    elif os.path.isdir(models) and not os.path.islink(models) and os.path.realpath(models) != os.path.realpath(models_dir):
        # models an earlier layout built in place: keep them beside, link the requested set
        os.replace(models, models + ".small")
    if not os.path.lexists(models):
        os.symlink(models_dir, models)
    write_example_images(os.path.join(base, "input"))
    return base


