"""Render each shipped workflow on the embedded miniature: the workflow thumbnails
(``example_workflows/<name>.jpg``: the template browser's picture for the template
of that name, and the README's) and the README's demo picture
(``docs/miniature_demo.png``).

    python -m scripts.render_thumbnails            # from the repository root; needs the shipped miniature

Every picture is made by the real ComfyUI server from ``example_workflows/api/<name>.json``
with only widget values changed (``comfy_host.workflows.configure``): the
miniature's files and settings, a shapes-world prompt, shapes-world input images.
A thumbnail shows the inputs, then the output, each scaled up (nearest neighbour)
from the miniature's 64 px.
"""
from __future__ import annotations

import argparse
import os
import sys

from PIL import Image, ImageDraw

if not __package__:  # run by path: this repository's packages are found from its root only
    sys.exit("run it from the repository root as a module: python -m scripts.render_thumbnails")

import comfy_host as host  # noqa: E402
from miniature.shapes_world import Obj, Scene, render  # noqa: E402

from .demo import MINIATURE, miniature_profile  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CELL = 128

# workflow → (prompt, input scenes, segment names, blend ratios, seed)
EXAMPLES = {
    "1_text_to_image.json": (None, [], [], [], None),   # the profile's prompt, as `make demo` runs it
    "2_edit.json": ("make it yellow", [Scene((Obj("square", "blue", "large", 0.25, 0.25),))], [""], [], 1),
    "3_object_fusion.json": ("put [circle] left of [triangle]",
                             [Scene((Obj("circle", "red", "large", 0.75, 0.75),)),
                              Scene((Obj("triangle", "green", "large", 0.25, 0.25),))],
                             ["circle", "triangle"], [0.0, 0.0], 1),
    "4_reconstruct_variation.json": ("", [Scene((Obj("circle", "orange", "large", 0.25, 0.25),
                                                 Obj("triangle", "blue", "small", 0.75, 0.25),
                                                 Obj("square", "purple", "large", 0.75, 0.75)))], [""], [1.0], 1),
    "5_edit_upscale_save.json": ("turn the circle into a square",
                                 [Scene((Obj("circle", "red", "large", 0.75, 0.25),))], [""], [], 1),
}


def strip(images: list[Image.Image]) -> Image.Image:
    """Inputs, an arrow, the output; each CELL px."""
    gap = 24
    n = len(images)
    w = n * CELL + (n - 1) * 8 + (gap if n > 1 else 0)
    out = Image.new("RGB", (w, CELL), (255, 255, 255))
    x = 0
    for k, im in enumerate(images):
        if k == n - 1 and n > 1:
            d = ImageDraw.Draw(out)
            y = CELL // 2
            d.line([(x + 2, y), (x + gap - 6, y)], fill=(90, 90, 90), width=3)
            d.polygon([(x + gap - 4, y), (x + gap - 12, y - 6), (x + gap - 12, y + 6)], fill=(90, 90, 90))
            x += gap
        out.paste(im.convert("RGB").resize((CELL, CELL), Image.NEAREST), (x, 0))
        x += CELL + 8
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=os.path.join(ROOT, "build", "thumbnails"))
    ap.add_argument("--out", default=os.path.join(ROOT, "example_workflows"), help="where the thumbnails go")
    ap.add_argument("--demo-out", default=os.path.join(ROOT, "docs", "miniature_demo.png"))
    args = ap.parse_args(argv)

    prof = miniature_profile()
    if prof is None:
        print("no shipped miniature (miniature/profile.json); run: python -m miniature.pipeline --ship",
              file=sys.stderr)
        return 2
    base = os.path.abspath(args.workdir)
    host.prepare_base_dir(base, os.path.join(MINIATURE, "models"))
    server = host.ComfyServer(base).start()
    try:
        for wf, (text, scenes, names, ratios, seed) in EXAMPLES.items():
            inputs = [render(s, prof["size"]) for s in scenes]
            files = []
            for k, im in enumerate(inputs):
                files.append(f"thumb_{wf[:-5]}_{k}.png")
                im.save(os.path.join(base, "input", files[-1]))
            if text is None:  # exactly what `make demo` queues
                p = host.apply_profile(host.load_api(wf), prof)
            else:
                p = host.apply_profile(host.load_api(wf), prof, text=text, dtype="fp32", images=files,
                                       segment_names=names, ratios=ratios, seed=seed)
            entry = server.run(p, timeout=600)
            err = host.execution_error(entry)
            if err:
                print(f"{wf} failed: {err.get('exception_message')}", file=sys.stderr)
                return 1
            out = Image.open(server.output_images(entry)[0])
            dst = os.path.join(args.out, wf[:-5] + ".jpg")
            strip(inputs + [out]).save(dst, quality=92)
            print(dst)
            if wf == "1_text_to_image.json":
                out.convert("RGB").resize((256, 256), Image.NEAREST).save(args.demo_out)
                print(args.demo_out, f"(the `make demo` picture; prompt: {prof['prompt']!r})")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
