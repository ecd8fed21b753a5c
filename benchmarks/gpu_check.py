"""Real-size GPU check (any CUDA machine; never part of CI).

    python -m benchmarks.gpu_check                   # full size on CUDA: ~30 GB disk, a 24 GB+ GPU
    python -m benchmarks.gpu_check --parts train     # only the SD3.5-Medium training figures
    python -m benchmarks.gpu_check --cpu --depth 2 --size 256 --steps 2 --lmm-size tiny   # CPU dry run

Run it from the repository root.

Builds, with random weights in the real file formats (cached under ``build/gpu_check/``):

* an SD3.5-Large-architecture MMDiT (38 blocks, hidden 2432, 8.1 B parameters, bf16) as
  the released single file (``model.diffusion_model.*`` keys), its key→shape map taken
  from ComfyUI's own ``MMDiT`` on the meta device and streamed to disk tensor by tensor;
* Qwen2-VL-2B-Instruct (random bf16, ``model_builders.full_size``) and a direct-map
  adapter for the DiT's width;

then starts the **real ComfyUI server** on the GPU (this pack and the measurement probe
``benchmarks/gpu_check_probe.py`` in ``custom_nodes``) once per memory mode and queues:

1. the baseline: the same DiT sampled with ordinary SD3.5-shaped conditioning
   (154 × 4096 tokens, 2048-d pooled) and no LMM in the graph;
2. a text prompt through Load Dream Engine + Interleaved Conditioning;
3. a 2-image fuse prompt;
4. the baseline again, and baselines with each Dream Engine prompt's token counts (the same
   attention lengths, cond and uncond run apart when their lengths differ, as ComfyUI does).

and measures **training on the SD3.5-Medium layout** (``--parts train``): a full-size
random-weight Medium DiT (24 blocks, hidden 1536, dual attention in blocks 0–12, the released
single-file layout), the SD3 VAE (random, real shapes) and the same Qwen2-VL, trained by
``python -m training.train`` exactly as a user runs it — stage 1, then stage 2 from its
adapter — at the recipe's global batch (128) and 512 px on shapes-world records (stage 1:
text-to-image and reconstruction; stage 2: editing and fusion), with the micro-batch and
gradient checkpointing that ``training.estimates`` picks for this GPU's memory. Reported
per stage: seconds per step (median of the steps after the first), samples/s, the trainer's
peak allocated and reserved CUDA memory (its ``log.csv``), and beside them the estimate of
``training.estimates`` for the same configuration and the TFLOP/s achieved.

Reported per mode: encode time and peak VRAM during encoding, peak VRAM during sampling,
seconds per sampling step (median of the steps after the first) against the baseline
(target: within 2 %), the models ComfyUI held on the GPU at the first sampling step, and
ComfyUI's own model-management log lines (``--verbose DEBUG``). Modes: ``normal`` (the
whole GPU), ``limit24`` (``--reserve-vram`` so that 24 GB remain, as on a consumer card,
where the LMM must be offloaded for the DiT) and ``lowvram`` (``--lowvram``). Writes
``gpu_check.json`` and ``gpu_check.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEXT_PROMPT = "a photograph of an astronaut riding a horse on the surface of the moon with dramatic lighting"
FUSE_PROMPT = "the [hat] on the head of the [cat]"
MM_LOG = re.compile(r"(Requested to load|loaded completely|loaded partially|Unloaded partially|models unloaded|"
                    r"Unloading|Dream Engine: |Non dynamic memory free|prepared for dynamic VRAM)")


from .gpu_check_train import run_training, training_table

# ---------------------------------------------------------------- models
def build_models(work: str, depth: int, lmm_size: str, log=print) -> dict:
    import torch

    from comfy_host.importer import import_comfy

    import_comfy()
    from model_builders.comfy_formats import SD35_LARGE, mmdit_shapes
    from model_builders.full_size import build_dream_engine, write_random_safetensors
    from model_builders.qwen2vl import build_tiny_adapter

    models = os.path.join(work, "models")
    for d in ("diffusion_models", "LLM", "dream_engine"):
        os.makedirs(os.path.join(models, d), exist_ok=True)
    dit_name = f"sd35_large_random_d{depth}.safetensors"
    dit = os.path.join(models, "diffusion_models", dit_name)
    if not os.path.exists(dit):
        t = time.perf_counter()
        shapes = mmdit_shapes(**dict(SD35_LARGE, depth=depth))
        size = write_random_safetensors(dit, {"model.diffusion_model." + k: v for k, v in shapes.items()},
                                        dtype=torch.bfloat16, seed=1, metadata={"format": "pt"})
        log(f"built the DiT ({depth} blocks, {size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s")
    de = build_dream_engine(lmm_size, log=log)
    lmm_name = os.path.basename(de["lmm_folder"])
    link = os.path.join(models, "LLM", lmm_name)
    if not os.path.lexists(link):
        os.symlink(de["lmm_folder"], link)
    with open(os.path.join(de["lmm_folder"], "config.json")) as f:
        cfg = json.load(f)
    lmm_dim = (cfg.get("text_config") or {}).get("hidden_size") or cfg["hidden_size"]
    adapter_name = f"direct_{lmm_name}_d{depth}.safetensors"
    adapter = os.path.join(models, "dream_engine", adapter_name)
    if not os.path.exists(adapter):
        full = lmm_size == "full"
        build_tiny_adapter(adapter, lmm_dim=lmm_dim, kind="direct", token_dim=64 * depth, pooled_dim=64 * depth,
                           hidden_dim=4096 if full else 96, seed=0,
                           lmm_name="Qwen2-VL-2B-Instruct" if full else "tiny-qwen2-vl")
    return {"models": models, "dit": dit_name, "lmm": lmm_name, "adapter": adapter_name,
            "dit_bytes": os.path.getsize(dit), "dit_depth": depth}


# ---------------------------------------------------------------- prompts
def _sampler(model, pos, neg, size, steps, seed, prefix):
    return {
        "20": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "21": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 3.5, "sampler_name": "euler",
                                                    "scheduler": "simple", "denoise": 1.0, "model": model,
                                                    "positive": pos, "negative": neg, "latent_image": ["20", 0]}},
        "22": {"class_type": "SaveLatent", "inputs": {"samples": ["21", 0], "filename_prefix": f"gpu_check/{prefix}"}},
    }


def baseline_prompt(m, size, steps, seed, tokens=(154, 154)):
    p = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": m["dit"], "weight_dtype": "default"}},
         "2": {"class_type": "GpuCheckConditioning", "inputs": {"tokens": tokens[0], "width": 4096, "pooled": 2048,
                                                                "seed": 1}},
         "3": {"class_type": "GpuCheckConditioning", "inputs": {"tokens": tokens[1], "width": 4096, "pooled": 2048,
                                                                "seed": 2}}}
    p.update(_sampler(["1", 0], ["2", 0], ["3", 0], size, steps, seed, "baseline"))
    return p


def dream_engine_prompt(m, size, steps, seed, task, prompt):
    cond = {"prompt": prompt, "task": task, "padding": "natural", "pooling": "mean", "positions": "mrope",
            "image_short_side": 336, "min_pixels": 3136, "max_pixels": 401408, "dream_engine": ["4", 0]}
    p = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": m["dit"], "weight_dtype": "default"}},
         "4": {"class_type": "LoadDreamEngine", "inputs": {"model": ["1", 0], "lmm": m["lmm"], "adapter": m["adapter"],
                                                           "dtype": "default", "device": "default"}},
         "5": {"class_type": "DreamEngineInterleavedConditioning", "inputs": cond}}
    if task == "fuse":
        from comfy_host.base_dir import EXAMPLE_IMAGES

        p.update({"10": {"class_type": "LoadImage", "inputs": {"image": EXAMPLE_IMAGES[0]}},
                  "11": {"class_type": "LoadImage", "inputs": {"image": EXAMPLE_IMAGES[1]}},
                  "12": {"class_type": "DreamEngineImageSegment", "inputs": {"name": "hat", "frame": 0,
                                                                             "image": ["10", 0]}},
                  "13": {"class_type": "DreamEngineImageSegment", "inputs": {"name": "cat", "frame": 0,
                                                                             "image": ["11", 0], "segments": ["12", 0]}}})
        cond["segments"] = ["13", 0]
    p.update(_sampler(["4", 1], ["5", 0], ["5", 1], size, steps, seed, task))
    return p


# ---------------------------------------------------------------- one mode
def _events(path, since):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f.readlines()[since:]]


def run_mode(mode: str, m: dict, args, work: str, log=print) -> dict:
    import comfy_host as host

    base = os.path.join(work, f"server-{mode}")
    shutil.rmtree(base, ignore_errors=True)
    host.prepare_base_dir(base, models_dir=m["models"])
    probe = os.path.join(base, "custom_nodes", "gpu_check_probe.py")
    if not os.path.lexists(probe):
        os.symlink(os.path.join(ROOT, "benchmarks", "gpu_check_probe.py"), probe)
    probe_log = os.path.join(base, "probe.jsonl")
    os.environ["GPU_CHECK_PROBE_LOG"] = probe_log
    extra = ["--verbose", "DEBUG"]
    try:
        import comfyui_frontend_package  # noqa: F401
    except ImportError:  # the check never opens the UI; ComfyUI only needs a folder to serve
        web = os.path.join(work, "no-frontend")
        os.makedirs(web, exist_ok=True)
        extra += ["--front-end-root", web]
        log("  comfyui-frontend-package is not installed: serving an empty folder (the check is headless)")
    if mode == "lowvram":
        extra.append("--lowvram")
    elif mode.startswith("limit"):
        import torch

        total = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
        extra += ["--reserve-vram", f"{max(0.0, total - float(mode[5:])):.1f}"]
    srv = host.ComfyServer(base, cpu=args.cpu, extra_args=extra).start(timeout=600)
    runs = []
    try:
        plan = [("baseline", baseline_prompt(m, args.size, args.steps, 1)),
                ("text", dream_engine_prompt(m, args.size, args.steps, 1, "generate", TEXT_PROMPT)),
                ("fuse", dream_engine_prompt(m, args.size, args.steps, 1, "fuse", FUSE_PROMPT)),
                ("baseline_again", baseline_prompt(m, args.size, args.steps, 1))]
        i = 0
        while i < len(plan):
            name, prompt = plan[i]
            n0 = len(_events(probe_log, 0))
            l0 = len(srv.log_text().splitlines())
            t = time.perf_counter()
            entry = srv.run(prompt, timeout=args.timeout)
            wall = time.perf_counter() - t
            if entry["status"]["status_str"] != "success":
                raise RuntimeError(f"{mode}/{name} failed:\n{host.execution_error(entry)}\n{srv.log_tail()}")
            lines = srv.log_text().splitlines()[l0:]
            runs.append(summarize(name, _events(probe_log, n0), lines, wall))
            log(f"  {mode}/{name}: {runs[-1]['step_s']:.3f} s/step, wall {wall:.1f} s")
            tok = runs[-1].get("tokens")
            if tok:  # a baseline with the Dream Engine prompt's token counts (same attention lengths)
                plan.append((f"baseline_as_{name}", baseline_prompt(m, args.size, args.steps, 1, tuple(tok))))
            i += 1
    finally:
        srv.stop()
    return {"mode": mode, "server_args": extra, "runs": runs}


def summarize(name: str, events: list, log_lines: list, wall: float) -> dict:
    nodes = [e for e in events if e["event"] == "node"]
    steps = [e["seconds"] for e in events if e["event"] == "step"]
    first = [e for e in events if e["event"] == "first_step_models"]
    by = {e["class"]: e for e in nodes}
    enc = by.get("InterleavedConditioning")
    smp = by.get("KSampler")
    out = {"run": name, "wall_s": wall, "steps": len(steps), "step_all_s": steps,
           "step_s": statistics.median(steps[1:] if len(steps) > 1 else steps) if steps else float("nan"),
           "sampling_node_s": smp["seconds"] if smp else None,
           "sampling_peak_allocated_mb": smp.get("peak_allocated_mb") if smp else None,
           "sampling_peak_reserved_mb": smp.get("peak_reserved_mb") if smp else None,
           "models_at_first_step": first[0]["models"] if first else None,
           "memory_log": [l for l in log_lines if MM_LOG.search(l)]}
    if enc:
        out.update(encode_node_s=enc["seconds"], encode_peak_allocated_mb=enc.get("peak_allocated_mb"),
                   encode_peak_reserved_mb=enc.get("peak_reserved_mb"))
        for l in log_lines:
            mt = re.search(r"Dream Engine: encoded .*positive (\d+) tokens, negative (\d+) tokens.*?([0-9.]+)s\s*$", l)
            if mt:
                out["tokens"] = [int(mt.group(1)), int(mt.group(2))]
                out["encode_s"] = float(mt.group(3))
    return out


# ---------------------------------------------------------------- report
def table(result: dict) -> str:
    a = result["args"]
    L = [f"GPU check — {result['date']} — {result['device']} — DiT {a['depth']} blocks, {a['size']}² px, "
         f"{a['steps']} steps, LMM {a['lmm_size']}", "",
         "| mode | run | s/step | vs baseline (154+154 tok) | vs baseline, same lengths | encode s (node s) | "
         "peak VRAM encode | peak VRAM sampling | models ComfyUI holds at the first step |",
         "|---|---|---|---|---|---|---|---|---|"]

    def mb(x):
        return "n/a (CPU)" if x is None else f"{x / 1024:.2f} GiB"

    for md in result["modes"]:
        if md.get("error"):
            L.append(f"| {md['mode']} | failed: {md['error'].strip().splitlines()[-1][:200]} | | | | | | | |")
            continue
        base = [r["step_s"] for r in md["runs"] if r["run"] in ("baseline", "baseline_again")]
        b = statistics.median(base) if base else float("nan")
        for r in md["runs"]:
            ms = ", ".join(f"{x['model']} ({x['loaded_mb']:.0f} MB on {x['device']})"
                           for x in (r.get("models_at_first_step") or []))
            enc = (f"{r['encode_s']:.3f} ({r['encode_node_s']:.3f})" if r.get("encode_s") is not None else "")
            same = [x["step_s"] for x in md["runs"] if x["run"] == f"baseline_as_{r['run']}"]
            vs_same = f"{r['step_s'] / same[0]:.3f}×" if same else ""
            L.append(f"| {md['mode']} | {r['run']}{' ' + str(r['tokens']) + ' tok' if r.get('tokens') else ''} | "
                     f"{r['step_s']:.4f} | {r['step_s'] / b:.3f}× | {vs_same} | {enc} | "
                     f"{mb(r.get('encode_peak_allocated_mb')) if r.get('encode_s') is not None else ''} | "
                     f"{mb(r.get('sampling_peak_allocated_mb'))} | {ms} |")
    return "\n".join(L)


def write_report(result: dict, out_dir: str, parts: set, t0: float) -> str:
    """Write gpu_check.json and gpu_check.md for what has run so far; returns the tables."""
    result["total_s"] = time.perf_counter() - t0
    tables = ([table(result)] if result["modes"] else []) + \
        ([training_table(result)] if "train" in parts and result.get("train") else [])
    txt = "\n\n".join(tables)
    result["table"] = txt
    with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out_dir, "gpu_check.md"), "w") as f:
        f.write(txt + "\n\nComfyUI's model-management log lines per run:\n\n")
        for md in result["modes"]:
            for r in md["runs"]:
                f.write(f"{md['mode']} / {r['run']}:\n\n```\n" + "\n".join(r["memory_log"]) + "\n```\n\n")
    return txt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=38, help="DiT blocks (SD3.5-Large: 38; hidden = 64·depth)")
    ap.add_argument("--size", type=int, default=1024, help="image side in pixels")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--lmm-size", choices=("full", "tiny"), default="full")
    ap.add_argument("--cpu", action="store_true", help="run ComfyUI on the CPU (dry run)")
    ap.add_argument("--modes", default=None, help="comma list of normal, limit<GB>, lowvram "
                    "(default: normal,limit24,lowvram on CUDA; normal with --cpu)")
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "gpu_check"), help="models and server folders")
    ap.add_argument("--out", default=None, help="folder for gpu_check.json / .md (default: --work)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per queued prompt or training stage")
    ap.add_argument("--parts", default="sampling,train",
                    help="comma list: sampling (the server checks above), train (SD3.5-Medium training)")
    ap.add_argument("--train-depth", type=int, default=None,
                    help="blocks of the Medium-layout DiT (default 24, the real Medium; 2 with --cpu)")
    ap.add_argument("--train-resolution", type=int, default=None, help="training crops (default 512; 64 with --cpu)")
    ap.add_argument("--train-batch", type=int, default=None, help="global batch (default 128; 4 with --cpu)")
    ap.add_argument("--train-steps", type=int, default=4, help="steps per stage (the first is not timed)")
    ap.add_argument("--train-micro-batch", type=int, default=None,
                    help="default: what training.estimates picks for this GPU (full size), else 2")
    ap.add_argument("--train-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                    help="gradient checkpointing (default: as training.estimates picks; dry runs: stage 2)")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    if parts - {"sampling", "train"}:
        sys.exit(f"--parts: unknown part(s) {sorted(parts - {'sampling', 'train'})}; use sampling and/or train")
    args.train_depth = args.train_depth or (2 if args.cpu else 24)
    args.train_resolution = args.train_resolution or (64 if args.cpu else 512)
    args.train_batch = args.train_batch or (4 if args.cpu else 128)
    if not args.cpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run on a GPU machine, or pass --cpu (with e.g. --depth 2 --size 256 "
                     "--steps 2 --lmm-size tiny) for a dry run")
    modes = (args.modes or ("normal" if args.cpu else "normal,limit24,lowvram")).split(",")
    if args.cpu and set(modes) - {"normal"}:
        sys.exit("with --cpu only the normal mode runs: ComfyUI refuses --lowvram together with --cpu, and "
                 "--reserve-vram has no GPU to act on")
    out_dir = args.out or args.work
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    import torch

    device = "CPU (dry run)" if args.cpu else torch.cuda.get_device_name(0)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": device, "args": vars(args), "torch": torch.__version__,
              "python": platform.python_version(), "modes": []}
    if "sampling" in parts:
        m = build_models(args.work, args.depth, args.lmm_size)
        result["models"] = m
        for mode in modes:
            print(f"mode {mode} ...", flush=True)
            try:
                result["modes"].append(run_mode(mode, m, args, args.work))
            except Exception as e:  # reported, and the other modes and training still run
                print(f"mode {mode} FAILED: {e}", flush=True)
                result["modes"].append({"mode": mode, "error": str(e)[-4000:], "runs": []})
            write_report(result, out_dir, parts, t0)  # each finished mode is kept if a later one fails
    if "train" in parts:
        print("training on the SD3.5-Medium layout ...", flush=True)
        try:
            def keep(stages):
                result["train"] = list(stages)
                write_report(result, out_dir, parts, t0)

            result["train"] = run_training(args, args.work, done=keep)
        except Exception as e:
            print(f"training FAILED: {e}", flush=True)
            result["train_error"] = str(e)[-4000:]
    txt = write_report(result, out_dir, parts, t0)
    print(txt)
    print(f"total {result['total_s']:.0f} s; written {out_dir}/gpu_check.json and gpu_check.md")
    failed = [md["mode"] for md in result["modes"] if md.get("error")] + (["train"] if "train_error" in result else [])
    failed += [f"training stage {r['stage']}" for r in result.get("train", []) if r.get("error")]
    if failed:
        print(f"FAILED: {', '.join(failed)} (errors in gpu_check.json)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
