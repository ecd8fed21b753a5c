"""Shapes world (miniature data) and ShapesEval."""
import hashlib
import json
import os
import random

from training.shapes_eval import check_caption, detect, same_scene, validate
from training.shapes_world import Obj, Scene, random_scene, render, write_dataset


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


def test_scenes_do_not_overlap():
    rng = random.Random(0)
    for _ in range(200):
        s = random_scene(rng)
        assert len(detect(render(s))) == len(s.objects)
