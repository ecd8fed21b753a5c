"""The pack's pictures, composed from what the shipped workflows make on the embedded
miniature (the thumbnails ``scripts/render_thumbnails.py`` renders):

* ``docs/strip.png`` — the README's first picture: each workflow's inputs → output,
  captioned with its task and prompt;
* ``web/icon.png`` — the registry icon (400×400): four of the outputs;
* ``web/banner.png`` — the registry banner (21:9): the outputs in a row under the name.

    .venv/bin/python -m scripts.make_images            # from the repository root, after render_thumbnails

Only the thumbnails and ``miniature/profile.json`` are read; nothing is rendered here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from PIL import Image, ImageDraw, ImageFont

if not __package__:  # run by path: this repository's packages are found from its root only
    sys.exit("run it from the repository root as a module: python -m scripts.make_images")

from .render_thumbnails import CELL, EXAMPLES  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

THUMBS = os.path.join(ROOT, "example_workflows")
#: workflow → its task as the caption names it
TASKS = {"1_text_to_image": "text to image", "2_edit": "edit", "3_object_fusion": "object fusion",
         "4_reconstruct_variation": "variation", "5_edit_upscale_save": "edit, upscale, save"}
#: the strip's rows (widths of the thumbnails balance the two rows)
ROWS = (("1_text_to_image", "2_edit", "4_reconstruct_variation"), ("3_object_fusion", "5_edit_upscale_save"))
BG, INK = (255, 255, 255), (30, 30, 30)
ICON = 400
BANNER = (1344, 576)  # 21:9


def font(size: int):
    return ImageFont.load_default(size=size)


def caption(name: str) -> str:
    prompt, _, _, ratios, _ = EXAMPLES[name + ".json"]
    if prompt is None:
        with open(os.path.join(ROOT, "miniature", "profile.json")) as f:
            prompt = json.load(f)["prompt"]
    text = TASKS[name] + (f": “{prompt}”" if prompt else "")
    if ratios and any(ratios):
        text += " (r = " + ", ".join(f"{r:g}" for r in ratios) + ")"
    return text


def thumb(name: str) -> Image.Image:
    return Image.open(os.path.join(THUMBS, name + ".jpg")).convert("RGB")


def output_cell(name: str) -> Image.Image:
    """The workflow's output: the last CELL×CELL square of its thumbnail."""
    t = thumb(name)
    return t.crop((t.width - CELL, 0, t.width, CELL))


def wrap(d: ImageDraw.ImageDraw, text: str, f, width: int) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        if cur and d.textlength(cur + " " + word, font=f) > width:
            lines.append(cur)
            cur = word
        else:
            cur = (cur + " " + word).strip()
    return lines + [cur]


def strip() -> Image.Image:
    """A card per workflow: its caption (wrapped), then its thumbnail; two rows."""
    pad, gap, line, min_card = 12, 28, 19, 260
    f = font(14)
    d = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    rows = [[(n, thumb(n)) for n in row] for row in ROWS]
    cards = {n: (t, max(t.width, min_card)) for row in rows for n, t in row}
    texts = {n: wrap(d, caption(n), f, w) for n, (_, w) in cards.items()}
    head = {i: max(len(texts[n]) for n, _ in row) * line + 6 for i, row in enumerate(rows)}
    width = max(sum(cards[n][1] for n, _ in row) + gap * (len(row) - 1) for row in rows) + 2 * pad
    height = pad + sum(head[i] + CELL for i in head) + gap * (len(rows) - 1) + pad
    out = Image.new("RGB", (width, height), BG)
    d = ImageDraw.Draw(out)
    y = pad
    for i, row in enumerate(rows):
        x = pad
        for name, t in row:
            for k, text in enumerate(texts[name]):
                d.text((x, y + k * line), text, fill=INK, font=f)
            out.paste(t, (x, y + head[i]))
            x += cards[name][1] + gap
        y += head[i] + CELL + gap
    return out


def icon() -> Image.Image:
    names = ("1_text_to_image", "3_object_fusion", "2_edit", "4_reconstruct_variation")
    cell, gap = 188, 8
    margin = (ICON - 2 * cell - gap) // 2
    out = Image.new("RGB", (ICON, ICON), (24, 26, 33))
    for k, n in enumerate(names):
        x, y = margin + (k % 2) * (cell + gap), margin + (k // 2) * (cell + gap)
        out.paste(output_cell(n).resize((cell, cell), Image.NEAREST), (x, y))
    return out


def banner() -> Image.Image:
    w, h = BANNER
    out = Image.new("RGB", (w, h), (24, 26, 33))
    d = ImageDraw.Draw(out)
    d.text((64, 56), "Dream Engine", fill=(240, 240, 240), font=font(72))
    d.text((66, 150), "text and images in one prompt for Stable Diffusion 3.5 · Qwen2-VL", fill=(170, 175, 190),
           font=font(30))
    names = list(TASKS)
    cell, gap = 224, 24
    x0 = (w - len(names) * cell - (len(names) - 1) * gap) // 2
    for k, n in enumerate(names):
        out.paste(output_cell(n).resize((cell, cell), Image.NEAREST), (x0 + k * (cell + gap), 272))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=ROOT, help="repository root to write docs/ and web/ under")
    args = ap.parse_args(argv)
    for rel, make in (("docs/strip.png", strip), ("web/icon.png", icon), ("web/banner.png", banner)):
        path = os.path.join(args.out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        make().save(path, optimize=True)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
