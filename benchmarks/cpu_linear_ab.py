"""A/B of the LMM's CPU linear path at full size (not part of ``make bench``):

    python -m benchmarks.cpu_linear_ab                       # fp32, 3 repeats
    python -m benchmarks.cpu_linear_ab --dtype bfloat16 --cases 2a
    python -m benchmarks.cpu_linear_ab --max-rows 1024       # another row limit

Loads the full-size random-weight Dream Engine that ``make bench`` builds
(``model_builders.full_size``) once, then encodes each case with the pack's linear layers
(``dream_engine_core/cpu_linear.py``: oneDNN up to ``MAX_ROWS`` rows) and with
transformers' ``nn.Linear`` (``cpu_linear.uninstall``), alternating, one warm-up round then
``--repeats`` rounds, the text cache off. Prints the medians, the speed-up and the largest
difference of the conditioning tokens; ``--out`` writes the JSON.
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


def ab(eng, prompt, images, repeats: int) -> dict:
    from dream_engine_core import cpu_linear

    model = eng.encoder.model
    times = {"onednn": [], "linear": []}
    out = {}
    for rnd in range(repeats + 1):
        got = {}
        for path in ("onednn", "linear"):
            if path == "linear":
                n = cpu_linear.uninstall(model)
            try:
                t = time.perf_counter()
                pos, neg = eng.encode(prompt, images)
                dt = time.perf_counter() - t
            finally:
                if path == "linear" and n:
                    cpu_linear.install(model)
            got[path] = pos.tokens
            if rnd:
                times[path].append(dt)
        if rnd == 0:
            out.update(tokens=[int(pos.tokens.shape[1]), int(neg.tokens.shape[1])],
                       max_abs_diff=(got["onednn"] - got["linear"]).abs().max().item(),
                       max_abs=got["linear"].abs().max().item())
    out["seconds"] = times
    out["median"] = {k: statistics.median(v) for k, v in times.items()}
    out["speedup"] = out["median"]["linear"] / out["median"]["onednn"]
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
    print("| case | tokens | oneDNN (the pack) | F.linear | speed-up | max abs. difference |")
    print("|---|---|---|---|---|---|")
    for label, prompt, images in _cases(eng, names):
        r = ab(eng, prompt, images, args.repeats)
        result["cases"][label] = r
        print(f"| {label} | {r['tokens'][0]}+{r['tokens'][1]} | {r['median']['onednn']:.2f} s | "
              f"{r['median']['linear']:.2f} s | {r['speedup']:.2f}× | {r['max_abs_diff']:.1e} |", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
