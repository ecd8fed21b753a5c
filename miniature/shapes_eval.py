"""ShapesEval: a deterministic evaluator of shapes-world images, in the spirit of GenEval.

Detection: each pixel is assigned to the nearest palette colour (or the
background) when it lies within a distance threshold; connected components of
each colour above a minimum area are objects. Shape is classified from the fill
ratio of the component in its bounding box (square ≈ 1, circle ≈ π/4,
triangle ≈ 1/2) and the position of its widest row (a triangle is widest at the
bottom). Positions are component centroids.

Checks (one per generated image, each scored 0 or 1):

* ``single`` — the object (colour and shape) is present;
* ``two`` / ``many`` — every listed object is present;
* ``count`` — exactly ``count`` objects of that colour and shape, and no others;
* ``colour`` (t2i colours) — see ``single``: colour and shape must both match;
* ``position`` — both objects present and in the stated relation;
* ``attribute`` — colour attribution: the object with the stated colour has the stated shape;
* edits: ``colour`` / ``shape`` — the single object now has the new attribute and
  the untouched attributes (shape / colour, position within tolerance) are kept;
  ``remove`` — that shape is gone and every other object is still there;
* reconstruction — the detected object set equals the source's (colour, shape and
  position within tolerance).

:func:`exact_caption` is the *artist's rule* for the caption checks: every named object
drawn exactly as often as asked and nothing else of a named kind (shape), so "a red
circle" drawn twice, or beside a blue circle, fails, and so does a blank image. The
reconstruction and edit checks are exact already.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .shapes_world import BACKGROUND, COLOURS, Scene

PALETTE = np.array([BACKGROUND] + list(COLOURS.values()), dtype=np.float32)
NAMES = ["background"] + list(COLOURS)
MAX_DIST = 70.0      # RGB distance to accept a pixel as a palette colour
MIN_AREA_FRAC = 0.008  # of the image area
POS_TOL = 0.12       # position tolerance, fraction of the side


@dataclass(frozen=True)
class Detected:
    shape: str
    colour: str
    x: float
    y: float
    area: float  # fraction of the image


def _components(mask: np.ndarray):
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    for i in range(1, n + 1):
        yield lab == i


def classify(comp: np.ndarray) -> str:
    ys, xs = np.nonzero(comp)
    h = ys.max() - ys.min() + 1
    w = xs.max() - xs.min() + 1
    fill = comp.sum() / float(h * w)
    rows = comp[ys.min():ys.max() + 1].sum(1)
    top, bottom = rows[: max(1, h // 4)].mean(), rows[-max(1, h // 4):].mean()
    if fill > 0.9:
        return "square"
    if bottom > 1.6 * top and fill < 0.7:
        return "triangle"
    return "circle"


def detect(img: Image.Image) -> list[Detected]:
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    H, W, _ = a.shape
    d = np.linalg.norm(a[:, :, None, :] - PALETTE[None, None], axis=-1)
    idx = d.argmin(-1)
    ok = d.min(-1) < MAX_DIST
    out = []
    for ci in range(1, len(NAMES)):
        mask = (idx == ci) & ok
        if mask.sum() < MIN_AREA_FRAC * H * W:
            continue
        for comp in _components(mask):
            area = comp.sum()
            if area < MIN_AREA_FRAC * H * W:
                continue
            ys, xs = np.nonzero(comp)
            out.append(Detected(classify(comp), NAMES[ci], float(xs.mean() + 0.5) / W,
                                float(ys.mean() + 0.5) / H, float(area) / (H * W)))
    return out


def _find(dets, colour, shape):
    return [d for d in dets if d.colour == colour and d.shape == shape]


def _rel_ok(a: Detected, b: Detected, rel: str) -> bool:
    dx, dy = b.x - a.x, b.y - a.y
    return {"left of": dx > 0.05, "right of": dx < -0.05, "above": dy > 0.05, "below": dy < -0.05}[rel]


def check_caption(dets: list[Detected], check: dict) -> bool:
    kind = check["kind"]
    objs = [tuple(o) for o in check["objects"]]
    if kind in ("single", "two", "many", "attribute"):
        return all(_find(dets, c, s) for c, s in objs)
    if kind == "count":
        c, s = objs[0]
        return len(_find(dets, c, s)) == check["count"] and len(dets) == check["count"]
    if kind == "position":
        a, b = _find(dets, *objs[0]), _find(dets, *objs[1])
        return bool(a and b) and any(_rel_ok(x, y, check["relation"]) for x in a for y in b)
    raise ValueError(f"unknown check kind {kind!r}")


def exact_caption(dets: list[Detected], check: dict) -> bool:
    """The artist's rule (module docstring) for a caption check. Kinds beyond
    :func:`check_caption`'s: ``shape`` (one ``shape``, any colour) and ``shapes`` (each of
    ``shapes`` once, any colours)."""
    from collections import Counter

    kind = check["kind"]
    if kind in ("shape", "shapes"):
        want = Counter(check["shapes"] if kind == "shapes" else [check["shape"]])
        return Counter(d.shape for d in dets if d.shape in want) == want
    if kind == "count":
        return check_caption(dets, check)
    want = Counter(tuple(o) for o in check["objects"])
    named = {s for _, s in want}
    drawn = Counter((d.colour, d.shape) for d in dets if d.shape in named)
    if drawn != want:
        return False
    return kind != "position" or check_caption(dets, check)


def _near(a, b) -> bool:
    return abs(a.x - b.x) <= POS_TOL and abs(a.y - b.y) <= POS_TOL


def same_scene(dets: list[Detected], scene: Scene) -> bool:
    """Reconstruction consistency: the same objects (colour, shape) at the same places."""
    if len(dets) != len(scene.objects):
        return False
    left = list(dets)
    for o in scene.objects:
        m = [d for d in left if d.colour == o.colour and d.shape == o.shape and _near(d, o)]
        if not m:
            return False
        left.remove(m[0])
    return True


def check_edit(dets: list[Detected], src: Scene, check: dict) -> bool:
    kind = check["kind"]
    if kind == "remove":
        keep = Scene(tuple(o for o in src.objects if o.shape != check["shape"]))
        return not [d for d in dets if d.shape == check["shape"]] and same_scene(dets, keep)
    if len(dets) != 1:
        return False
    d, o = dets[0], src.objects[0]
    if kind == "colour":
        return d.colour == check["colour"] and d.shape == o.shape and _near(d, o)
    return d.shape == check["shape"] and d.colour == o.colour and _near(d, o)


def score(results: dict[str, list[bool]]) -> dict:
    """Per-category accuracy, and overall = mean of the categories."""
    cats = {k: (sum(v) / len(v) if v else math.nan) for k, v in results.items()}
    valid = [v for v in cats.values() if not math.isnan(v)]
    cats["overall"] = sum(valid) / len(valid) if valid else math.nan
    cats["n"] = {k: len(v) for k, v in results.items()}
    return cats


def validate(n: int = 500, seed: int = 1234, size: int = 64) -> dict:
    """Agreement of the detector with the scenes' ground truth on rendered images.

    For each of ``n`` trials a scene is rendered and judged against a caption check,
    a reconstruction check and an edit check, each taken from either the scene itself
    (truth: pass) or from another random scene (truth computed symbolically from the
    scene description, usually fail). Returns agreement per check and overall.
    """
    import random

    from .shapes_world import caption_for, edit_pair, random_scene, render

    rng = random.Random(seed)
    agree = {"caption": [], "reconstruct": [], "edit": []}
    for _ in range(n):
        s = random_scene(rng)
        other = random_scene(rng)
        dets = detect(render(s, size))
        _, chk = caption_for(s if rng.random() < 0.5 else other, rng)
        agree["caption"].append(check_caption(dets, chk) == check_caption(list(s.objects), chk))
        ref = s if rng.random() < 0.5 else other
        agree["reconstruct"].append(same_scene(dets, ref) == same_scene(list(s.objects), ref))
        src, _, tgt, echk = edit_pair(rng)
        shown = tgt if rng.random() < 0.5 else src
        agree["edit"].append(check_edit(detect(render(shown, size)), src, echk) ==
                             check_edit(list(shown.objects), src, echk))
    out = {k: sum(v) / len(v) for k, v in agree.items()}
    out["overall"] = sum(sum(v) for v in agree.values()) / sum(len(v) for v in agree.values())
    out["n"] = n
    return out
