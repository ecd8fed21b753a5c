"""``make bench``: build the random-weight models, run every figure, print a table, write JSON.

    python -m benchmarks.run                      # everything at full size (~15-25 min here)
    python -m benchmarks.run --figures 1,2        # some figures
    python -m benchmarks.run --size tiny --quick  # the smoke run (tests/test_bench_smoke.py)

Each case runs in a fresh subprocess (``benchmarks.worker``) so its peak RSS is its own.
Workers inherit the environment, plus ``OMP_WAIT_POLICY=PASSIVE`` unless
``--omp-wait-policy default`` (see docs/performance.md: on a CPU shared with other
busy processes, OpenMP's default spin-waiting makes every torch op several times
slower; the same setting applies to both encoders compared). The figures are
``benchmarks/figures.py``, the table ``benchmarks/report.py``; this module runs them and
writes the results.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

from .figures import FIGURES, not_measured
from .report import table, table_rows

ALL_FIGURES = tuple(FIGURES)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
PY = sys.executable


class Bench:
    """One run: the models it built, the worker results it keeps (a case that two figures
    use runs once) and the figures' results."""

    def __init__(self, args):
        self.args = args
        self.size = args.size
        self.quick = args.quick
        self.env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if args.omp_wait_policy != "default":
            self.env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
        self.results: dict = {}
        self.log = lambda *a: print(*a, flush=True)
        self.on_figure = None

    def worker(self, case: str, **kw) -> dict:
        """Run one case (``benchmarks.worker``) in a fresh process; its result, with the wall
        time, the spawn time and the load average before and after."""
        load0 = _loadavg()
        t = time.time()
        p = subprocess.run([PY, "-m", "benchmarks.worker", case, json.dumps(kw)], cwd=ROOT, env=self.env,
                           capture_output=True, text=True)
        lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
        if p.returncode != 0 or not lines:
            raise RuntimeError(f"worker {case} failed ({p.returncode}):\n{p.stderr[-3000:]}")
        out = json.loads(lines[-1][7:])
        out["_wall_s"] = time.time() - t
        out["_t_spawn"] = t
        out["_loadavg"] = [load0, _loadavg()]
        return out

    def reps(self, full: int, quick: int = 1) -> int:
        return quick if self.quick else full

    def models(self) -> dict:
        """The random-weight models (``model_builders.full_size``, built in a subprocess once)."""
        if "models" in self.results:
            return self.results["models"]
        t = time.perf_counter()
        clip = self.size == "full" and bool({3, 4} & set(getattr(self.args, "figure_list", ALL_FIGURES)))  # only its figures need it
        cmd = [PY, "-m", "model_builders.full_size", self.size] + (["--clip"] if clip else [])
        p = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"building the models failed:\n{p.stderr[-3000:]}")
        from model_builders.full_size import BUILD

        clip = [os.path.join(BUILD, "full", "tripleclip", f) for f in
                ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_bf16.safetensors")]
        de = {"lmm_folder": os.path.join(BUILD, self.size, "Qwen2-VL-2B-random" if self.size == "full"
                                         else "Qwen2-VL-tiny"),
              "adapter": os.path.join(BUILD, self.size, "dream_engine_direct_map.safetensors")}
        self.results["models"] = {"dream_engine": de, "tripleclip": clip if self.size == "full" else None,
                                  "build_s": time.perf_counter() - t}
        self.log(f"models ready ({self.results['models']['build_s']:.0f} s)")
        return self.results["models"]

    def de_args(self) -> dict:
        m = self.models()["dream_engine"]
        return dict(m, dtype="bfloat16" if self.size == "full" else "float32", size=self.size)

    def de_case(self, key: str, prompt: str, **kw):
        """One Dream Engine encode case, run once however many figures use it."""
        if key not in self.results.setdefault("de_cases", {}):
            kw.setdefault("repeats", self.reps(5, 2))
            self.results["de_cases"][key] = self.worker("de_encode", prompt=prompt, **self.de_args(), **kw)
        return self.results["de_cases"][key]

    def reuse(self, f):
        """Figure ``f`` from an earlier run's JSON in ``--out`` (its partial file first)."""
        tag = self.size + ("-quick" if self.quick else "")
        for name in (f"{tag}-fig{f}.json.tmp", f"{tag}-fig{f}.json"):
            p = os.path.join(self.args.out, name)
            if os.path.exists(p):
                with open(p) as fh:
                    d = json.load(fh)
                d.pop("meta", None)
                d["reused_from"] = name + " (" + time.strftime("%Y-%m-%d %H:%M", time.gmtime(os.path.getmtime(p))) + " UTC)"
                if f == 1:
                    self.results["fig1"] = d
                return d
        raise FileNotFoundError(f"no earlier result for figure {f} in {self.args.out}")

    def run(self, figures):
        started = datetime.datetime.now(datetime.timezone.utc)
        t0 = time.perf_counter()
        self.models()
        figs = {}
        for f in figures:
            if f in self.args.reuse_figures:  # measured by an earlier (interrupted) run
                figs[f] = self.reuse(f)
            else:
                figs[f] = self.measure(f)
            self.log("\n".join(table_rows({f: figs[f]})))
            if self.on_figure and f not in self.args.reuse_figures:
                self.on_figure(f, figs[f])
        meta = {"date": started.isoformat(timespec="seconds"), "size": self.size, "quick": self.quick,
                "total_s": time.perf_counter() - t0, "machine": _machine(),
                "omp_wait_policy": self.env.get("OMP_WAIT_POLICY", "default"), "models": self.results["models"]}
        return meta, figs

    def measure(self, f: int) -> dict:
        self.log(f"figure {f} ...")
        tf = time.perf_counter()
        try:
            fig = FIGURES[f](self)
            if f == 1:
                self.results["fig1"] = fig
        except Exception as e:  # noqa: BLE001 — a failing figure is reported, the others still run
            fig = not_measured(f, f"figure {f}", f"error: {type(e).__name__}: {str(e)[-1500:]}")
        fig["elapsed_s"] = time.perf_counter() - tf
        self.log(f"figure {f} done in {fig['elapsed_s']:.0f} s")
        return fig


def _loadavg():
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except OSError:
        return None


def _machine():
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = [l for l in open("/proc/meminfo") if l.startswith("MemTotal")][0].split()[1]
    except OSError:
        mem = "0"
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(int(mem) / 2**20, 1),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version()}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("full", "tiny"), default="full")
    ap.add_argument("--figures", default=",".join(map(str, ALL_FIGURES)))
    ap.add_argument("--quick", action="store_true", help="one repeat per case (smoke test)")
    ap.add_argument("--out", default=RESULTS, help="folder for the JSON results")
    ap.add_argument("--clip-cold-runs", type=int, default=1,
                    help="cold loads of TripleCLIP (each peaks near 19 GB RSS here: ComfyUI holds the file's "
                         "state dict and the model at once)")
    ap.add_argument("--reuse", default="", help="figures to take from an earlier run's JSON in --out "
                    "(e.g. after an interrupted run) instead of measuring them again")
    ap.add_argument("--cases", default="", help="figure 2's cases to run (e.g. a,b; default all)")
    ap.add_argument("--no-breakdown", action="store_true", help="skip figure 2's per-part timings")
    ap.add_argument("--omp-wait-policy", default="passive", choices=("passive", "active", "default"))
    args = ap.parse_args(argv)
    args.figure_list = [int(x) for x in args.figures.split(",") if x.strip()]
    args.reuse_figures = {int(x) for x in args.reuse.split(",") if x.strip()}
    args.cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    return args


def main(argv=None):
    args = parse_args(argv)
    bench = Bench(args)
    os.makedirs(args.out, exist_ok=True)
    tag = args.size + ("-quick" if args.quick else "")

    def partial(n, f):  # each figure's JSON as soon as it is done
        with open(os.path.join(args.out, f"{tag}-fig{n}.json.tmp"), "w") as fh:
            json.dump(f, fh, indent=1, default=str)
    bench.on_figure = partial
    meta, figs = bench.run(args.figure_list)
    txt = table(meta, figs)
    print(txt, flush=True)
    write_results(args.out, tag, meta, figs, txt)
    return 0


def write_results(out: str, tag: str, meta: dict, figs: dict, txt: str) -> None:
    """Each figure's JSON (replacing its partial file), the summary and the table."""
    for n, f in figs.items():
        if os.path.exists(os.path.join(out, f"{tag}-fig{n}.json.tmp")):
            os.unlink(os.path.join(out, f"{tag}-fig{n}.json.tmp"))
        with open(os.path.join(out, f"{tag}-fig{n}.json"), "w") as fh:
            json.dump({"meta": meta, **f}, fh, indent=1, default=str)
    with open(os.path.join(out, f"{tag}-summary.json"), "w") as fh:
        json.dump({"meta": meta, "figures": {str(n): {"title": f.get("title"), "target": f.get("target"),
                                                      "met": f.get("met"), "not_measured": f.get("not_measured")}
                                             for n, f in figs.items()}, "table": txt}, fh, indent=1, default=str)
    with open(os.path.join(out, f"{tag}-table.md"), "w") as fh:
        fh.write(txt + "\n")


if __name__ == "__main__":
    sys.exit(main())
