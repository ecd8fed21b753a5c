"""Shapes world (miniature data) and ShapesEval."""
import hashlib
import json
import os
import random

from miniature.shapes_eval import check_caption, detect, same_scene, validate
from miniature.shapes_world import Obj, Scene, random_scene, render, write_dataset


def _digest(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            h.update(f.encode())
            h.update(open(os.path.join(root, f), "rb").read())
    return h.hexdigest()


def test_dataset_is_deterministic(tmp_path):
    a = write_dataset(str(tmp_path / "a"), 40, seed=3)
    b = write_dataset(str(tmp_path / "b"), 40, seed=3)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    c = write_dataset(str(tmp_path / "c"), 40, seed=4)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    recs = [json.loads(line) for line in open(a)]
    assert {r["task"] for r in recs} == {"t2i", "reconstruct", "edit", "fuse"}
    for r in recs:
        for p in r.get("images", []) + [r["target"]]:
            assert os.path.exists(os.path.join(os.path.dirname(a), p))


def test_evaluator_agrees_with_ground_truth():
    v = validate(300, seed=7)
    assert v["overall"] >= 0.99, v


def test_evaluator_rejects_wrong_images():
    s = Scene((Obj("circle", "red", "large", 0.3, 0.3),))
    dets = detect(render(s))
    assert check_caption(dets, {"kind": "single", "objects": [["red", "circle"]]})
    assert not check_caption(dets, {"kind": "single", "objects": [["red", "square"]]})
    assert not check_caption(dets, {"kind": "single", "objects": [["blue", "circle"]]})
    moved = Scene((Obj("circle", "red", "large", 0.7, 0.7),))
    assert same_scene(dets, s) and not same_scene(dets, moved)
    blank = detect(render(Scene(())))
    assert blank == []


def test_artists_rule_counts_every_named_object():
    """The artist's rule (exact_caption): each named object exactly as often as asked,
    nothing else of a named shape; GenEval's presence rule (check_caption) passes more."""
    from miniature.shapes_eval import exact_caption

    def dets(*objs):
        cells = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]
        return detect(render(Scene(tuple(Obj(sh, c, "large", *cells[i]) for i, (c, sh) in enumerate(objs)))))

    red_circle = {"kind": "single", "objects": [["red", "circle"]]}
    one, two = dets(("red", "circle")), dets(("red", "circle"), ("red", "circle"))
    assert exact_caption(one, red_circle) and check_caption(two, red_circle) and not exact_caption(two, red_circle)
    assert not exact_caption(dets(("red", "circle"), ("blue", "circle")), red_circle)  # another circle
    assert exact_caption(dets(("red", "circle"), ("blue", "square")), red_circle)      # squares were not named
    assert not exact_caption([], red_circle) and not exact_caption([], {"kind": "shape", "shape": "circle"})
    assert not exact_caption(two, {"kind": "shape", "shape": "circle"})
    pair = {"kind": "two", "objects": [["red", "circle"], ["blue", "square"]]}
    assert exact_caption(dets(("red", "circle"), ("blue", "square")), pair)
    assert not exact_caption(dets(("red", "circle"), ("blue", "square"), ("blue", "square")), pair)
    assert exact_caption(dets(("green", "triangle"), ("red", "square")), {"kind": "shapes", "shapes": ["triangle", "square"]})
    # position: cells 0 and 1 are left and right in the top row
    left = {"kind": "position", "objects": [["red", "circle"], ["blue", "square"]], "relation": "left of"}
    assert exact_caption(dets(("red", "circle"), ("blue", "square")), left)
    assert not exact_caption(dets(("blue", "square"), ("red", "circle")), left)
    assert not exact_caption(dets(("red", "circle"), ("blue", "square"), ("red", "circle")), left)
    assert check_caption(dets(("red", "circle"), ("blue", "square"), ("red", "circle")), left)


def test_scenes_do_not_overlap():
    rng = random.Random(0)
    for _ in range(200):
        s = random_scene(rng)
        assert len(detect(render(s))) == len(s.objects)


def test_text_to_image_captions_follow_the_mix_and_the_picture():
    """Captions are drawn by kind (T2I_MIX), and each one is true of the scene it comes with."""
    from miniature.shapes_world import T2I_MIX, t2i_sample

    rng = random.Random(11)
    n = 3000
    counts = {}
    for i in range(n):
        scene, cap, check = t2i_sample(rng)
        counts[check["kind"]] = counts.get(check["kind"], 0) + 1
        if i < 300:
            assert check_caption(detect(render(scene)), check), (cap, scene)
        if check["kind"] == "count":
            assert cap.split()[0] in ("two", "three", "four") and len(scene.objects) == check["count"]
        if check["kind"] == "position":
            assert check["relation"] in cap
    for kind, w in T2I_MIX:
        assert abs(counts[kind] / n - w) < 0.03, (kind, counts)


def test_lmm_content_labels_name_what_each_vision_token_covers():
    import torch

    from miniature.lmm_pretrain import _CONTENT, _content_labels

    s = Scene((Obj("circle", "red", "large", 0.25, 0.25), Obj("square", "blue", "small", 0.75, 0.75)))
    lab = _content_labels(s, torch.tensor([1, 8, 8]), 2)  # 4×4 merged tokens, row-major
    assert lab.shape == (16, 3)
    names = [[vals[int(k)] for k, (_, vals) in zip(row, _CONTENT)] for row in lab]
    for t in (0, 1, 4, 5):
        assert names[t] == ["red", "circle", "large"]
    for t in (10, 11, 14, 15):
        assert names[t] == ["blue", "square", "small"]
    for t in (2, 3, 6, 7, 8, 9, 12, 13):
        assert names[t] == [None, None, None]
