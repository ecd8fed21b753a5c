"""The miniature's score against training: ShapesEval (artist's rule) of runs that differ
only in their number of training steps or their DiT's size, gathered into
``miniature/curve.json`` (rendered into ``docs/miniature.md`` by ``scripts/docs_tables.py``).

    python -m miniature.pipeline --fraction 0.25              # a point (build/miniature-f0.25-d3)
    python -m miniature.pipeline --fraction 0.5 --depth 4     # another, a larger DiT
    python -m miniature.curve build/miniature-f0.25-d3 build/miniature-f0.5-d4 --shipped

Each argument is a pipeline run's folder (its ``scores.json``); ``--shipped`` adds the run
that made the shipped files (``miniature/scores.json``) as the full-length point.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

from miniature.pipeline import SCALES, SHIP_DIR, TRAINER_STEPS

CURVE = os.path.join(SHIP_DIR, "curve.json")


def point(scores_json: str, label: str) -> dict:
    """One run's settings, training time and ShapesEval scores (both rules)."""
    with open(scores_json) as f:
        data = json.load(f)
    full = SCALES[data["scale"]]
    settings = data.get("settings") or asdict(full)  # runs from before settings were recorded: the named scale
    t = data["timings_s"]
    s = data["scores"]
    if not s:
        raise ValueError(f"{scores_json}: the run skipped ShapesEval (--skip-eval); run it again without")
    return {
        "label": label, "scale": data["scale"], "depth": settings["depth"],
        "fraction": round(settings["pre_steps"] / full.pre_steps, 4),
        "steps": {k: settings[k] for k in TRAINER_STEPS}, "vae_trained": bool(settings["vae_steps"]),
        "train_s": round(sum(t.get(k, 0) for k in ("lmm", "pretrain", "stage1", "stage2")), 1),
        "cores": data.get("cores"), "n": s["n"]["single"],
        "artist": {k: round(v, 4) for k, v in s["artist"].items() if k != "n"},
        "presence": {"overall": round(s["summary"]["overall"], 4), "t2i_overall": round(s["summary"]["t2i_overall"], 4)},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="pipeline run folders (each with its scores.json)")
    ap.add_argument("--shipped", action="store_true", help="add the shipped run (miniature/scores.json)")
    ap.add_argument("--out", default=CURVE)
    a = ap.parse_args(argv)
    sources = [(os.path.join(r, "scores.json"), os.path.basename(os.path.normpath(r))) for r in a.runs]
    if a.shipped:
        sources.append((os.path.join(SHIP_DIR, "scores.json"), "shipped"))
    if not sources:
        ap.error("give run folders and/or --shipped")
    points = []
    for path, label in sources:
        if not os.path.isfile(path):
            ap.error(f"{path} does not exist: is {os.path.dirname(path)} a finished pipeline run?")
        try:
            points.append(point(path, label))
        except ValueError as e:
            ap.error(str(e))
    points.sort(key=lambda p: (p["depth"], p["fraction"]))
    with open(a.out, "w") as f:
        json.dump({"points": points}, f, indent=2)
    for p in points:
        print(f"{p['label']}: depth {p['depth']}, {p['fraction']:g} of the steps, artist's rule "
              f"{p['artist']['overall']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
