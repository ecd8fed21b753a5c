"""ShapesEval of a miniature Dream Engine, rendered through ComfyUI on the real host.

Every image is made by the real ComfyUI server with this pack in ``custom_nodes``,
from the shipped API workflows (``example_workflows/api``) with only their widget values
changed (file names, prompt, seed, size, steps, images, names, blend ratios):

=====================  ===============================  ============================================
category               workflow                         check (``miniature.shapes_eval``)
=====================  ===============================  ============================================
single object          1_text_to_image                  the shape is present
colours                1_text_to_image                  the shape is present in the stated colour
two objects            1_text_to_image                  both shapes are present
counting               1_text_to_image                  exactly N objects of that colour and shape
position               1_text_to_image                  both objects, in the stated relation
colour attribution     1_text_to_image                  both (colour, shape) pairs are present
reconstruct r=0/.5/1   4_reconstruct_variation          same objects at the same places as the input
edit                   2_edit                           new attribute, untouched ones kept
fusion                 3_object_fusion                  the fused object(s) as the caption says
=====================  ===============================  ============================================

Prompts and input scenes are drawn from a seed the training data never used. Beside
the scores, ``chance`` gives the same categories for a prompt-blind generator (random
scenes of the training distribution, judged by the same checks).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

from PIL import Image

import comfy_host as host

from .shapes_eval import check_caption, check_edit, detect, exact_caption, same_scene, score
from .shapes_world import COLOURS, NUMBERS, SHAPES, edit_pair, fuse_pair, random_scene, relation, render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_SEED = 987_654
T2I = ("single", "colours", "two", "counting", "position", "attribution")
RECON_R = (0.0, 0.5, 1.0)
# the miniature's files in a ComfyUI ``models`` folder: file key → subfolder
MODEL_LAYOUT = {"dit": "diffusion_models", "vae": "vae", "adapter": "dream_engine", "lora": "loras", "lmm": "LLM"}


def t2i_cases(rng: random.Random, n: int) -> list[tuple[str, str, dict]]:
    """(category, prompt, check) — GenEval's categories on the shapes world."""
    out = []
    cols = list(COLOURS)
    for _ in range(n):
        c, s = rng.choice(cols), rng.choice(SHAPES)
        out.append(("single", f"a {c} {s}", {"kind": "shape", "shape": s}))
        c, s = rng.choice(cols), rng.choice(SHAPES)
        out.append(("colours", f"a {c} {s}", {"kind": "single", "objects": [[c, s]]}))
        (c1, s1), (c2, s2) = _two(rng)
        out.append(("two", f"a {c1} {s1} and a {c2} {s2}", {"kind": "shapes", "shapes": [s1, s2]}))
        k, c, s = rng.randint(2, 4), rng.choice(cols), rng.choice(SHAPES)
        out.append(("counting", f"{NUMBERS[k]} {c} {s}s", {"kind": "count", "objects": [[c, s]], "count": k}))
        sc = random_scene(rng, n=2)
        a, b = sc.objects
        if (a.colour, a.shape) == (b.colour, b.shape):
            b = type(b)(rng.choice([x for x in SHAPES if x != a.shape]), b.colour, b.size, b.x, b.y)
        rel = relation(a, b)
        out.append(("position", f"a {a.colour} {a.shape} {rel} a {b.colour} {b.shape}",
                    {"kind": "position", "objects": [[a.colour, a.shape], [b.colour, b.shape]], "relation": rel}))
        (c1, s1), (c2, s2) = _two(rng)
        out.append(("attribution", f"a {c1} {s1} and a {c2} {s2}", {"kind": "two", "objects": [[c1, s1], [c2, s2]]}))
    return out


def _two(rng):
    a = (rng.choice(list(COLOURS)), rng.choice(SHAPES))
    b = a
    while b[1] == a[1] or b[0] == a[0]:
        b = (rng.choice(list(COLOURS)), rng.choice(SHAPES))
    return a, b


def judge_t2i(dets, check, exact: bool = False) -> bool:
    """GenEval's presence rule, or with ``exact`` the artist's rule (``shapes_eval.exact_caption``)."""
    if exact:
        return exact_caption(dets, check)
    if check["kind"] == "shape":
        return any(d.shape == check["shape"] for d in dets)
    if check["kind"] == "shapes":
        return all(any(d.shape == s for d in dets) for s in check["shapes"])
    return check_caption(dets, check)


@dataclass
class Case:
    """One ShapesEval item: the workflow and its widget values, and the check."""
    category: str
    workflow: str
    text: str
    judge: Callable[[list], bool]          # detections → pass (GenEval's presence rule)
    exact: Callable[[list], bool]          # detections → pass (the artist's rule)
    images: tuple = ()                     # input scenes (rendered at eval size)
    seg_names: tuple = ()
    ratios: tuple = ()
    colour: str | None = None              # "colours" items: the stated colour (``colour_hit``)


def cases(n: int, seed: int = EVAL_SEED) -> list[Case]:
    """The evaluation items, ``n`` per category, all drawn from ``seed``."""
    rng = random.Random(seed)
    out = []
    for cat, text, check in t2i_cases(rng, n):
        out.append(Case(cat, "1_text_to_image.json", text, partial(judge_t2i, check=check),
                        partial(judge_t2i, check=check, exact=True), colour=check["objects"][0][0] if cat == "colours" else None))
    for r in RECON_R:
        sub = random.Random(seed + int(r * 100))
        for _ in range(n):
            sc = random_scene(sub)
            same = partial(same_scene, scene=sc)  # exact already: the artist's rule too
            out.append(Case(f"reconstruct_r{r:g}", "4_reconstruct_variation.json", "", same, same, (sc,),
                            ratios=(r,)))
    for _ in range(n):
        src, instr, _, check = edit_pair(rng)
        same = partial(check_edit, src=src, check=check)  # exact already
        out.append(Case("edit", "2_edit.json", instr, same, same, (src,)))
    for _ in range(n):
        srcs, cap, _, check = fuse_pair(rng)
        a, b = srcs[0].objects[0].shape, srcs[1].objects[0].shape
        out.append(Case("fusion", "3_object_fusion.json", cap, partial(check_caption, check=check),
                        partial(exact_caption, check=check), tuple(srcs),
                        tuple([a, b] if a != b else ["first", "second"]), (0.0, 0.0)))
    return out


class _Tally:
    """Pass/fail per category by both rules, and whether each "colours" image shows the stated colour."""

    def __init__(self):
        self.results: dict[str, list[bool]] = {}
        self.exact: dict[str, list[bool]] = {}
        self.colour_hits: list[bool] = []

    def add(self, case: Case, dets) -> None:
        self.results.setdefault(case.category, []).append(case.judge(dets))
        self.exact.setdefault(case.category, []).append(case.exact(dets))
        if case.colour:  # the stated colour is there at all
            self.colour_hits.append(any(d.colour == case.colour for d in dets))

    def scores(self) -> dict:
        s = score(self.results)
        s["colour_hit"] = sum(self.colour_hits) / max(1, len(self.colour_hits))
        t2i = [s[c] for c in T2I]
        s["summary"] = {
            "t2i_overall": sum(t2i) / len(t2i),
            "reconstruct_by_r": {f"{r:g}": s[f"reconstruct_r{r:g}"] for r in RECON_R},
            "edit": s["edit"], "fusion": s["fusion"], "overall": s["overall"],
        }
        a = score(self.exact)
        a["t2i_overall"] = sum(a[c] for c in T2I) / len(T2I)
        s["artist"] = a  # the same categories by the artist's rule
        s["summary"]["artist_overall"] = a["overall"]
        return s


def chance(n: int = 24, draws: int = 20, size: int = 64, seed: int = EVAL_SEED) -> dict:
    """ShapesEval of a generator that ignores its prompt and its input images: for every
    item, ``draws`` random scenes of the shapes world (the training distribution),
    rendered and judged by the same detector and checks. What a model must beat."""
    rng = random.Random(seed + 1)
    tally = _Tally()
    items = cases(n, seed)
    for case in items:
        for _ in range(draws):
            tally.add(case, detect(render(random_scene(rng), size)))
    s = tally.scores()
    s["summary"]["images"] = len(items) * draws
    return s


def evaluate(files: dict, workdir: str, n: int = 24, steps: int = 20, short_side: int = 112, size: int = 64,
             cfg: float = 3.5, log=print, seed: int = EVAL_SEED, sampler: str | None = None,
             scheduler: str | None = None) -> dict:
    """Render and score; returns per-category accuracy, the summary, the counts, and
    ``chance``: the same categories for a prompt-blind generator (:func:`chance`).
    ``sampler``/``scheduler``: the KSampler's (None: the workflows' own)."""
    workdir = os.path.abspath(workdir)
    models = os.path.join(workdir, "models")
    for k, sub in MODEL_LAYOUT.items():
        dst = os.path.join(models, sub, os.path.basename(files[k]))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.lexists(dst):
            os.symlink(os.path.abspath(files[k]), dst)
    host.prepare_base_dir(workdir, models)
    inp_dir = os.path.join(workdir, "input")
    names = {k: os.path.basename(v) for k, v in files.items()}
    tally = _Tally()
    prof = {"unet_name": names["dit"], "lora": names["lora"], "vae_name": names["vae"], "lmm": names["lmm"], "adapter": names["adapter"],
            "size": size, "image_short_side": short_side, "steps": steps, "cfg": cfg, "sampler": sampler,
            "scheduler": scheduler}
    server = host.ComfyServer(workdir).start()
    t0 = time.time()
    items = cases(n, seed)
    try:
        for count, case in enumerate(items):
            img_names = []
            for k, sc in enumerate(case.images):
                fn = f"eval_{count:05d}_{k}.png"
                render(sc, size).save(os.path.join(inp_dir, fn))
                img_names.append(fn)
            p = host.apply_profile(host.load_api(case.workflow), prof, text=case.text, dtype="fp32",
                                   images=img_names, segment_names=case.seg_names, ratios=case.ratios, seed=count)
            entry = server.run(p, timeout=600)
            err = host.execution_error(entry)
            if err:
                raise RuntimeError(f"ComfyUI failed on {case.workflow} with {case.text!r}: {json.dumps(err)[:2000]}")
            img = Image.open(server.output_images(entry)[0]).convert("RGB")
            tally.add(case, detect(img))
            k = len(tally.results.get("fusion", ()))
            if case.category == "fusion" and k <= 4:
                img.save(os.path.join(workdir, f"fusion_{k}.png"))
    finally:
        server.stop()
    s = tally.scores()
    s["summary"].update(images=len(items), seconds=round(time.time() - t0, 1), sampler_steps=steps, cfg=cfg,
                        sampler=sampler, scheduler=scheduler)
    s["chance"] = chance(n, size=size, seed=seed)
    log(f"ShapesEval: {json.dumps(s['summary'])}; chance overall {s['chance']['overall']:.3f}")
    shutil.rmtree(inp_dir, ignore_errors=True)
    return s


def shipped_files(ship_dir: str) -> tuple[dict, dict]:
    """The shipped miniature's files (``ship_dir/models``), named by its ``profile.json``, and the profile."""
    with open(os.path.join(ship_dir, "profile.json")) as f:
        prof = json.load(f)
    key = {"dit": "unet_name", "vae": "vae_name", "adapter": "adapter", "lora": "lora", "lmm": "lmm"}
    return {k: os.path.join(ship_dir, "models", sub, prof[key[k]]) for k, sub in MODEL_LAYOUT.items()}, prof


def main(argv=None) -> int:
    """``python -m miniature.evaluate [--write]``: ShapesEval of the shipped miniature as ComfyUI runs
    it (its ``profile.json``: size, steps, CFG, sampler, scheduler); ``--write`` puts the scores
    into ``miniature/scores.json`` (the training run's timings and losses stay)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--n", type=int, default=48, help="prompts per category")
    ap.add_argument("--workdir", default=os.path.join(ROOT, "build", "shapes_eval"))
    ap.add_argument("--write", action="store_true", help="update miniature/scores.json")
    a = ap.parse_args(argv)
    ship = os.path.join(ROOT, "miniature")
    files, prof = shipped_files(ship)
    shutil.rmtree(a.workdir, ignore_errors=True)
    s = evaluate(files, a.workdir, n=a.n, steps=prof["steps"], short_side=prof["image_short_side"],
                 size=prof["size"], cfg=prof["cfg"], sampler=prof.get("sampler"), scheduler=prof.get("scheduler"))
    if a.write:
        path = os.path.join(ship, "scores.json")
        with open(path) as f:
            shipped = json.load(f)
        shipped["scores"] = s
        with open(path, "w") as f:
            json.dump(shipped, f, indent=2)
        print(f"written {path}; regenerate the docs' table with python -m scripts.docs_tables")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
