"""The shapes world: a synthetic, deterministic data set for the miniature Dream Engine.

Images (64×64 by default) hold 1–4 flat-coloured objects — circle, square or
triangle, in one of six colours and two sizes — on a plain background. Every
image comes with the scene that drew it, so captions and records for the four
Dream Engine tasks are derived exactly, and the evaluator (``shapes_eval``) can be
checked against ground truth.

Records (the trainers' JSONL manifest, see docs/training.md):

* ``t2i``: "two red circles", "a blue square left of a green triangle", …
* ``reconstruct``: an image → itself
* ``edit``: "make it yellow", "turn the circle into a square", "remove the triangle"
* ``fuse``: "the shape of [image 1] in the colour of [image 2]",
  "put [image 1] left of [image 2]"

Everything is drawn from ``random.Random(seed)``: the same seed gives the same
images, captions and records, byte for byte.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 30),
    "purple": (150, 50, 200),
    "orange": (245, 140, 20),
}
BACKGROUND = (240, 240, 240)
SIZES = {"small": 0.14, "large": 0.22}  # half-extent as a fraction of the image side
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    x: float  # centre, fraction of width
    y: float  # centre, fraction of height


@dataclass(frozen=True)
class Scene:
    objects: tuple


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Draw a scene (no anti-aliasing, so every pixel is a palette colour)."""
    img = Image.new("RGB", (size, size), BACKGROUND)
    d = ImageDraw.Draw(img)
    for o in scene.objects:
        h = SIZES[o.size] * size
        cx, cy = o.x * size, o.y * size
        box = [round(cx - h), round(cy - h), round(cx + h) - 1, round(cy + h) - 1]
        c = COLOURS[o.colour]
        if o.shape == "circle":
            d.ellipse(box, fill=c)
        elif o.shape == "square":
            d.rectangle(box, fill=c)
        else:
            d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])], fill=c)
    return img


# Positions: the centres of a 2×2 grid of cells (objects never overlap). Placing
# objects exactly on the cells keeps the miniature's world small enough to learn on a
# CPU; 1–4 objects over 4 cells × 37 cell states still give ~1.9 million scenes.
_CELLS = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]
CELL_NAMES = {(0.25, 0.25): ("top", "left"), (0.75, 0.25): ("top", "right"),
              (0.25, 0.75): ("bottom", "left"), (0.75, 0.75): ("bottom", "right")}


def grounding(scene: Scene) -> str:
    """A grounded description, objects in reading order: "large red circle top left , …"
    (the miniature LMM's captioning target)."""
    objs = sorted(scene.objects, key=lambda o: (o.y, o.x))
    parts = []
    for o in objs:
        where = CELL_NAMES.get((o.x, o.y), ("centre",))
        parts.append(" ".join((o.size, o.colour, o.shape) + where))
    return " , ".join(parts)


def random_scene(rng: random.Random, n: int | None = None, shape=None, colour=None) -> Scene:
    n = n or rng.randint(1, 4)
    sizes = [rng.choice(list(SIZES)) for _ in range(n)]
    pos = rng.sample(_CELLS, n)
    return Scene(tuple(Obj(shape or rng.choice(SHAPES), colour or rng.choice(list(COLOURS)), s, x, y)
                       for s, (x, y) in zip(sizes, pos)))


def _plural(shape: str, n: int) -> str:
    return shape + ("s" if n > 1 else "")


def describe(o: Obj, with_size: bool = False) -> str:
    return " ".join(([o.size] if with_size else []) + [o.colour, o.shape])


def relation(a: Obj, b: Obj) -> str:
    """The spatial relation of a to b that the scene makes unambiguous."""
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def caption_for(scene: Scene, rng: random.Random) -> tuple[str, dict]:
    """A caption and the checks it implies (for ShapesEval)."""
    objs = list(scene.objects)
    kinds = {(o.colour, o.shape) for o in objs}
    if len(objs) == 1:
        o = objs[0]
        return f"a {describe(o)}", {"kind": "single", "objects": [[o.colour, o.shape]]}
    if len(kinds) == 1:
        o = objs[0]
        n = len(objs)
        return f"{NUMBERS[n]} {o.colour} {_plural(o.shape, n)}", {"kind": "count", "objects": [[o.colour, o.shape]],
                                                                 "count": n}
    if len(objs) == 2:
        a, b = objs
        return _pair_caption(a, b, rng.random() < 0.5 and (a.colour, a.shape) != (b.colour, b.shape))
    parts = ", ".join(f"a {describe(o)}" for o in objs[:-1])
    return f"{parts} and a {describe(objs[-1])}", {"kind": "many", "objects": [[o.colour, o.shape] for o in objs]}


# Text→image captions by kind, in these proportions. Captions derived from random
# scenes would be mostly lists of 3–4 objects (counting 1.5 %, position 12 %); the
# kind is drawn first, then a scene that fits it.
T2I_MIX = (("single", 0.15), ("count", 0.25), ("two", 0.2), ("position", 0.25), ("many", 0.15))


def t2i_sample(rng: random.Random) -> tuple[Scene, str, dict]:
    """A text→image training sample: (scene, caption, check), its kind drawn from ``T2I_MIX``."""
    kinds, weights = zip(*T2I_MIX)
    kind = rng.choices(kinds, weights)[0]
    if kind == "single":
        scene = random_scene(rng, n=1)
    elif kind == "count":
        scene = random_scene(rng, n=rng.randint(2, 4), shape=rng.choice(SHAPES), colour=rng.choice(list(COLOURS)))
    elif kind == "many":
        scene = random_scene(rng, n=rng.randint(3, 4))
    else:
        scene = random_scene(rng, n=2)
        while len({(o.colour, o.shape) for o in scene.objects}) < 2:
            scene = random_scene(rng, n=2)
    if kind in ("two", "position"):
        cap, check = _pair_caption(*scene.objects, positional=kind == "position")
    else:
        cap, check = caption_for(scene, rng)
    return scene, cap, check


def _pair_caption(a: Obj, b: Obj, positional: bool) -> tuple[str, dict]:
    """"a X left of a Y" (``positional``) or "a X and a Y", and its check."""
    objects = [[a.colour, a.shape], [b.colour, b.shape]]
    if positional:
        rel = relation(a, b)
        return f"a {describe(a)} {rel} a {describe(b)}", {"kind": "position", "objects": objects, "relation": rel}
    return f"a {describe(a)} and a {describe(b)}", {"kind": "two", "objects": objects}


# ---------------------------------------------------------------- task records
def edit_pair(rng: random.Random) -> tuple[Scene, str, Scene, dict]:
    """A source scene, an instruction, the target scene, and the check."""
    kind = rng.choice(["colour", "shape", "remove"])
    if kind == "remove":
        src = random_scene(rng, n=rng.randint(2, 3))
        # the removed object's shape must be unique so that the instruction is unambiguous
        shapes = [o.shape for o in src.objects]
        uniq = [o for o in src.objects if shapes.count(o.shape) == 1]
        if not uniq:
            return edit_pair(rng)
        victim = rng.choice(uniq)
        tgt = Scene(tuple(o for o in src.objects if o is not victim))
        return src, f"remove the {victim.shape}", tgt, {"kind": "remove", "shape": victim.shape}
    src = random_scene(rng, n=1)
    o = src.objects[0]
    if kind == "colour":
        new = rng.choice([c for c in COLOURS if c != o.colour])
        return src, f"make it {new}", Scene((replace(o, colour=new),)), {"kind": "colour", "colour": new}
    new = rng.choice([s for s in SHAPES if s != o.shape])
    return (src, f"turn the {o.shape} into a {new}", Scene((replace(o, shape=new),)),
            {"kind": "shape", "shape": new})


def fuse_pair(rng: random.Random) -> tuple[list[Scene], str, Scene, dict]:
    """Two single-object scenes, a fusion caption, the target scene, the check."""
    a = random_scene(rng, n=1).objects[0]
    b = random_scene(rng, n=1).objects[0]
    if rng.random() < 0.5:
        while b.colour == a.colour:
            b = random_scene(rng, n=1).objects[0]
        tgt = Scene((Obj(a.shape, b.colour, "large", 0.5, 0.5),))
        return ([Scene((a,)), Scene((b,))], "the shape of [image 1] in the colour of [image 2]", tgt,
                {"kind": "attribute", "objects": [[b.colour, a.shape]]})
    y = rng.choice((0.25, 0.75))
    tgt = Scene((replace(a, x=0.25, y=y), replace(b, x=0.75, y=y)))
    return ([Scene((a,)), Scene((b,))], "put [image 1] left of [image 2]", tgt,
            {"kind": "position", "objects": [[a.colour, a.shape], [b.colour, b.shape]], "relation": "left of"})


def write_dataset(out_dir: str, n: int, seed: int = 0, size: int = 64,
                  mix=(("t2i", 0.4), ("reconstruct", 0.2), ("edit", 0.2), ("fuse", 0.2))) -> str:
    """Write images and ``manifest.jsonl`` (paths relative to it). Returns the manifest path."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    tasks, weights = zip(*mix)
    lines = []

    def save(scene: Scene, name: str) -> str:
        rel = f"images/{name}.png"
        render(scene, size).save(os.path.join(out_dir, rel))
        return rel

    for i in range(n):
        task = rng.choices(tasks, weights)[0]
        if task == "t2i":
            s, cap, check = t2i_sample(rng)
            lines.append({"task": "t2i", "prompt": cap, "target": save(s, f"{i:06d}"), "check": check})
        elif task == "reconstruct":
            s = random_scene(rng)
            p = save(s, f"{i:06d}")
            lines.append({"task": "reconstruct", "images": [p], "target": p})
        elif task == "edit":
            src, instr, tgt, check = edit_pair(rng)
            lines.append({"task": "edit", "images": [save(src, f"{i:06d}_src")], "prompt": instr,
                          "target": save(tgt, f"{i:06d}"), "check": check})
        else:
            srcs, cap, tgt, check = fuse_pair(rng)
            lines.append({"task": "fuse", "images": [save(s, f"{i:06d}_{k}") for k, s in enumerate(srcs)],
                          "names": [srcs[0].objects[0].shape, srcs[1].objects[0].shape]
                          if srcs[0].objects[0].shape != srcs[1].objects[0].shape else ["first", "second"],
                          "prompt": cap, "target": save(tgt, f"{i:06d}"), "check": check})
    path = os.path.join(out_dir, "manifest.jsonl")
    with open(path + ".tmp", "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    os.replace(path + ".tmp", path)
    return path
