"""The tables in the docs that come from a data file, generated from it:

* ``docs/performance.md``, the benchmark table — ``benchmarks/results/full-fig*.json``
  (``make bench``), rendered by the benchmark's own ``benchmarks.run.table_rows``;
* ``docs/miniature.md``, the shipped miniature's run and ShapesEval scores —
  ``miniature/scores.json`` (``python -m miniature.pipeline --ship``) — and its score
  against training — ``miniature/curve.json`` (``python -m miniature.curve``).

Each table sits between two marker comments in its document; only that part is rewritten.

    .venv/bin/python -m scripts.docs_tables           # rewrite the tables (from the repository root)
    .venv/bin/python -m scripts.docs_tables --check   # exit 1 if a document is out of date
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

if not __package__:  # run by path: this repository's packages are found from its root only
    sys.exit("run it from the repository root as a module: python -m scripts.docs_tables")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BENCH_RESULTS = os.path.join(ROOT, "benchmarks", "results")
SCORES = os.path.join(ROOT, "miniature", "scores.json")
CURVE = os.path.join(ROOT, "miniature", "curve.json")

# ShapesEval rows: (label, key in scores, the project's target)
MINIATURE_ROWS = [("single object", "single"), ("colours", "colours"), ("two objects", "two"),
                  ("counting", "counting"), ("position", "position"), ("colour attribution", "attribution"),
                  ("reconstruction, r = 0", "reconstruct_r0"), ("reconstruction, r = 0.5", "reconstruct_r0.5"),
                  ("reconstruction, r = 1", "reconstruct_r1"), ("edit", "edit"), ("fusion", "fusion")]
T2I = ("single", "colours", "two", "counting", "position", "attribution")
PHASES = (("data", "data"), ("vae", "VAE"), ("lmm", "LMM"), ("pretrain", "pretraining"), ("stage1", "stage 1"),
          ("stage2", "stage 2"), ("export", "export"), ("eval", "ShapesEval"))
LOSSES = (("lmm", "LMM alignment", 2), ("pretrain", "pretraining", 3), ("stage1", "stage 1 (fresh adapter)", 3),
          ("stage2", "stage 2", 3))


def benchmark_table(results: str = BENCH_RESULTS, tag: str = "full") -> tuple[str, str]:
    """(source, markdown) of the latest ``make bench`` run kept in ``results``."""
    from benchmarks.run import table_rows

    figs, meta = {}, None
    for path in sorted(glob.glob(os.path.join(results, f"{tag}-fig*.json"))):
        with open(path) as f:
            fig = json.load(f)
        meta = meta or fig["meta"]
        figs[int(fig["figure"])] = fig
    if not figs:
        raise SystemExit(f"no {tag}-fig*.json in {results}: run `make bench` first")
    m = meta["machine"]
    head = (f"`make bench` run of {meta['date'][:10]}: size {meta['size']}, {m['cpu']}, {m['cores']} cores, "
            f"torch {m['torch']}, OMP_WAIT_POLICY={meta['omp_wait_policy']}; {meta['total_s'] / 60:.0f} min of "
            f"measurement.")
    return f"benchmarks/results/{tag}-fig*.json", head + "\n\n" + "\n".join(table_rows(figs))


def miniature_table(path: str = SCORES) -> tuple[str, str]:
    """(source, markdown) of the shipped miniature's run and ShapesEval scores."""
    with open(path) as f:
        data = json.load(f)
    s, chance = data["scores"], data["scores"]["chance"]
    summ = s["summary"]
    t = data["timings_s"]
    phases = ", ".join(f"{label} {t[k]:.0f} s" for k, label in PHASES if k in t)
    losses = ", ".join(f"{label} {data['losses'][k][0]:.{d}f} → {data['losses'][k][1]:.{d}f}"
                       for k, label, d in LOSSES if k in data["losses"])
    n = s["n"]
    lines = [f"`python -m miniature.pipeline` (scale {data['scale']}): {data['total_s'] / 60:.0f} min in all "
             f"({phases}). Fixed-set losses: {losses}. ShapesEval: {n['single']} prompts per category, one seed "
             f"each, {summ['sampler_steps']} sampler steps, CFG {summ['cfg']:g}, {summ['images']} images rendered "
             f"by the real ComfyUI server:",
             "",
             "| category | artist's rule | presence rule | chance (artist / presence) | prompts | target (artist) |",
             "|---|---|---|---|---|---|"]
    a, ca = s["artist"], chance["artist"]
    for label, key in MINIATURE_ROWS:
        lines.append(f"| {label} | {a[key]:.2f} | {s[key]:.2f} | {ca[key]:.2f} / {chance[key]:.2f} | {n[key]} | "
                     "≥ 0.8 |")
    lines.append(f"| text→image (mean of the six) | {a['t2i_overall']:.2f} | {summ['t2i_overall']:.2f} | "
                 f"{ca['t2i_overall']:.2f} / {chance['summary']['t2i_overall']:.2f} | {sum(n[k] for k in T2I)} | |")
    lines.append(f"| **overall** (mean of the eleven) | **{a['overall']:.2f}** | {summ['overall']:.2f} | "
                 f"{ca['overall']:.2f} / {chance['summary']['overall']:.2f} | {summ['images']} images | ≥ 0.9 |")
    lines.append(f"| stated colour present (colours prompts) | | {s['colour_hit']:.2f} | {chance['colour_hit']:.2f} | "
                 f"{n['colours']} | |")
    return "miniature/scores.json", "\n".join(lines)


def curve_table(path: str = CURVE) -> tuple[str, str]:
    """(source, markdown) of the miniature's ShapesEval (artist's rule) against training."""
    with open(path) as f:
        points = json.load(f)["points"]
    short = {"single": "single", "colours": "colours", "two": "two", "counting": "count", "position": "position",
             "attribution": "attrib.", "reconstruct_r0": "rec. 0", "reconstruct_r0.5": "rec. 0.5",
             "reconstruct_r1": "rec. 1", "edit": "edit", "fusion": "fusion"}
    keys = [k for _, k in MINIATURE_ROWS]
    lines = ["| run | DiT blocks | steps: LMM / pretraining / stage 1 / stage 2 | training | artist's rule overall | "
             "presence overall | " + " | ".join(short[k] for k in keys) + " |",
             "|" + "---|" * (6 + len(keys))]
    for p in points:
        st = p["steps"]
        where = f" on {p['cores']} core{'s' if p['cores'] != 1 else ''}" if p.get("cores") else ""
        vae = "; VAE trained in the run" if p["vae_trained"] else ""
        lines.append(f"| {p['label']} ({p['fraction']:g}×) | {p['depth']} | {st['lmm_steps']} / {st['pre_steps']} / "
                     f"{st['s1_steps']} / {st['s2_steps']} | {p['train_s'] / 60:.0f} min{where}{vae} | "
                     f"**{p['artist']['overall']:.2f}** | {p['presence']['overall']:.2f} | "
                     + " | ".join(f"{p['artist'][k]:.2f}" for k in keys) + " |")
    return "miniature/curve.json", "\n".join(lines)


TABLES = [  # (document, name of the block, generator)
    (os.path.join("docs", "performance.md"), "benchmark table", benchmark_table),
    (os.path.join("docs", "miniature.md"), "miniature scores", miniature_table),
    (os.path.join("docs", "miniature.md"), "miniature curve", curve_table),
]


def markers(name: str, source: str) -> tuple[str, str]:
    return (f"<!-- {name}: generated by scripts/docs_tables.py from {source}; do not edit -->",
            f"<!-- end of {name} -->")


def updated(text: str, name: str, source: str, body: str) -> str:
    """``text`` with the block ``name`` replaced by ``body``."""
    begin, end = markers(name, source)
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"the document has no block {begin!r} … {end!r}")
    return text[:i + len(begin)] + "\n" + body + "\n" + text[j:]


def stale(root: str = ROOT) -> list[str]:
    """The documents whose generated tables differ from their data."""
    out = []
    for doc, name, make in TABLES:
        with open(os.path.join(root, doc), encoding="utf-8") as f:
            text = f.read()
        if updated(text, name, *make()) != text and doc not in out:
            out.append(doc)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only report documents that are out of date")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale()
        for doc in bad:
            print(f"{doc} is out of date: run python -m scripts.docs_tables", file=sys.stderr)
        return 1 if bad else 0
    for doc, name, make in TABLES:
        path = os.path.join(ROOT, doc)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = updated(text, name, *make())
        if new != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
            print(f"updated {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
