"""A/B of the LMM's CPU linear path at full size (not part of ``make bench``):

    python -m benchmarks.cpu_linear_ab                       # fp32, 3 repeats
    python -m benchmarks.cpu_linear_ab --dtype bfloat16 --cases 2a
    python -m benchmarks.cpu_linear_ab --max-rows 1024       # another row limit (oneDNN path)

Loads the full-size random-weight Dream Engine that ``make bench`` builds
(``model_builders.full_size``) once, then encodes each case on the pack's CPU paths
(``dream_engine_core/cpu_linear.py``: ``packed``, ``onednn``) and on transformers'
``nn.Linear`` (``blas``), in turn, one warm-up round then ``--repeats`` rounds, the text
cache off. Prints the medians, the speed-ups and the largest difference of the
conditioning tokens; ``--out`` writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

CASES = ("2a", "2b", "image")


def _cases(eng, names):
    from benchmarks.prompts import PROMPT_20, image_prompt, long_prompt, test_image
    from dream_engine_core.prompt import build_task_inputs

    enc = eng.encoder

    def count(p):
        return enc.token_count(build_task_inputs(p, [], "generate", "inference").cond, enc.prepare_images([]))

    make = {"2a": lambda: ("2a 20-word prompt", PROMPT_20, []),
            "2b": lambda: ("2b 300-token prompt", long_prompt(300, count), []),
            "image": lambda: ("one 512² image + 20 words", image_prompt(1), [test_image(0, 512, 512)])}
    return [make[n]() for n in names]


PATHS = ("packed", "onednn", "blas")


def ab(eng, prompt, images, repeats: int, paths=PATHS) -> dict:
    """Encode ``prompt`` on each CPU path in turn (``DreamEngine.set_cpu_linear``, then one
    untimed encode), one warm-up round then ``repeats`` rounds; times, medians, speed-ups over ``blas`` and the
    largest difference of each path's tokens from ``blas``'s. The environment's path is put
    back at the end."""
    times = {p: [] for p in paths}
    out = {}
    try:
        for rnd in range(repeats + 1):
            got = {}
            for path in paths:
                eng.set_cpu_linear(path)  # drops the packed copies: the untimed encode makes them again
                eng.encode(prompt, images)
                t = time.perf_counter()
                pos, neg = eng.encode(prompt, images)
                dt = time.perf_counter() - t
                got[path] = pos.tokens
                if rnd:
                    times[path].append(dt)
            if rnd == 0:
                ref = got[paths[-1]]
                out.update(tokens=[int(pos.tokens.shape[1]), int(neg.tokens.shape[1])],
                           max_abs_diff={p: (got[p] - ref).abs().max().item() for p in paths},
                           max_abs=ref.abs().max().item())
    finally:
        eng.set_cpu_linear()
    out["seconds"] = times
    out["median"] = {k: statistics.median(v) for k, v in times.items()}
    out["speedup"] = {p: out["median"][paths[-1]] / out["median"][p] for p in paths}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    ap.add_argument("--max-rows", type=int, default=None, help="cpu_linear.MAX_ROWS for this run")
    ap.add_argument("--out", default=None, help="JSON file for the figures")
    args = ap.parse_args(argv)
    names = args.cases.split(",")
    if set(names) - set(CASES):
        raise SystemExit(f"--cases: unknown {sorted(set(names) - set(CASES))}; use {', '.join(CASES)}")
    from dream_engine_core import cpu_linear
    from dream_engine_core.engine import DreamEngine
    from model_builders.full_size import build_dream_engine

    if args.max_rows:
        cpu_linear.MAX_ROWS = args.max_rows
    de = build_dream_engine("full")
    eng = DreamEngine.load(de["lmm_folder"], de["adapter"], dtype=getattr(torch, args.dtype))
    eng.encoder.text_cache_size = 0
    result = {"dtype": args.dtype, "threads": torch.get_num_threads(), "max_rows": cpu_linear.MAX_ROWS,
              "layers": eng.encoder.cpu_linear_layers, "repeats": args.repeats, "cases": {}}
    print("| case | tokens | packed (the pack) | oneDNN, no copy | F.linear (blas) | speed-up packed / oneDNN "
          "| max abs. difference from F.linear: packed / oneDNN |")
    print("|---|---|---|---|---|---|---|")
    for label, prompt, images in _cases(eng, names):
        r = ab(eng, prompt, images, args.repeats)
        result["cases"][label] = r
        m, su, d = r["median"], r["speedup"], r["max_abs_diff"]
        print(f"| {label} | {r['tokens'][0]}+{r['tokens'][1]} | {m['packed']:.3f} s | {m['onednn']:.3f} s | "
              f"{m['blas']:.3f} s | {su['packed']:.2f}× / {su['onednn']:.2f}× | {d['packed']:.1e} / "
              f"{d['onednn']:.1e} (of {r['max_abs']:.2f}) |", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
