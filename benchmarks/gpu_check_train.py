"""The GPU check's training part (``python -m benchmarks.gpu_check --parts train``): a
full-size random-weight SD3.5-Medium DiT, the SD3 VAE and Qwen2-VL trained through
``python -m training.train`` (both stages), with the micro-batch and checkpointing
``training.estimates`` picks for the GPU; s/step and peak memory beside the estimate.
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- training on the Medium layout
def medium_layout(depth: int) -> dict:
    """SD3.5-Medium's layout at ``depth`` blocks: dual attention in the first 13 of 24 (in
    proportion at other depths, at least one)."""
    from model_builders.comfy_formats import SD35_MEDIUM

    dual = max(1, round(depth * len(SD35_MEDIUM["dual_attention_blocks"]) / SD35_MEDIUM["depth"]))
    return dict(SD35_MEDIUM, depth=depth, dual_attention_blocks=tuple(range(dual)))


def vae_shapes() -> dict[str, tuple]:
    """Keys and shapes of SD3's 16-channel VAE as ComfyUI builds it (``training.estimates.VAE_CONFIG``)."""
    import torch

    from training.estimates import _vae_parts

    with torch.device("meta"):
        enc, dec = _vae_parts()
    return {**{"encoder." + k: tuple(v.shape) for k, v in enc.state_dict().items()},
            **{"decoder." + k: tuple(v.shape) for k, v in dec.state_dict().items()}}


def build_training_models(work: str, depth: int, lmm_size: str, log=print) -> dict:
    """The Medium-layout DiT (random bf16, single-file layout), a VAE (SD3's with the full
    LMM, the small TAESD with the tiny one) and the LMM folder, under ``work/train``."""
    import torch

    from comfy_host.importer import import_comfy

    import_comfy()
    from model_builders.comfy_formats import build_tiny_vae, mmdit_shapes
    from model_builders.full_size import build_dream_engine, write_random_safetensors

    folder = os.path.join(work, "train")
    os.makedirs(folder, exist_ok=True)
    dit = os.path.join(folder, f"sd35_medium_random_d{depth}.safetensors")
    if not os.path.exists(dit):
        t = time.perf_counter()
        shapes = mmdit_shapes(**medium_layout(depth))
        size = write_random_safetensors(dit, {"model.diffusion_model." + k: v for k, v in shapes.items()},
                                        dtype=torch.bfloat16, seed=2, metadata={"format": "pt"})
        log(f"built the Medium-layout DiT ({depth} blocks, {size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s")
    vae = os.path.join(folder, f"vae_{lmm_size}.safetensors")
    if not os.path.exists(vae):
        if lmm_size == "full":
            write_random_safetensors(vae, vae_shapes(), dtype=torch.bfloat16, seed=3)
        else:
            build_tiny_vae(vae)
    return {"dit": dit, "vae": vae, "lmm": build_dream_engine(lmm_size, log=log)["lmm_folder"]}


STAGE_TASKS = {1: (("t2i", 0.5), ("reconstruct", 0.5)), 2: (("edit", 0.5), ("fuse", 0.5))}


def training_manifest(work: str, stage: int, n: int, size: int) -> str:
    from miniature.shapes_world import write_dataset

    folder = os.path.join(work, "train", f"data_s{stage}_{size}px_{n}")
    path = os.path.join(folder, "manifest.jsonl")
    if not os.path.exists(path):
        write_dataset(folder, n, seed=stage, size=size, mix=STAGE_TASKS[stage])
    return path


def training_plan(args, stage: int) -> dict:
    """Micro-batch and gradient checkpointing: the options given, else what
    ``training.estimates`` picks for this GPU at full size, else (a dry run) 2, and gradient
    checkpointing in stage 2 only, so that both paths run."""
    import torch

    from training import estimates as E

    out = {"micro_batch": args.train_micro_batch, "checkpointing": args.train_checkpointing, "estimate": None}
    full = (args.train_depth == E.layout("medium")["depth"] and args.train_resolution == E.RECIPE[stage].resolution
            and args.train_batch == E.RECIPE[stage].batch and not args.cpu)
    if full:
        p = torch.cuda.get_device_properties(0)
        gpu = E.gpu_of_device(torch.cuda.get_device_name(0), p.total_memory)
        best = E.best("medium", stage, "ddp", 1, gpu)
        if out["micro_batch"] is None:
            out["micro_batch"], out["checkpointing"] = best["micro_batch"], best["checkpointing"]
        out["estimate"] = E.estimate("medium", stage, "ddp", 1, gpu, out["micro_batch"], bool(out["checkpointing"]))
    out["micro_batch"] = out["micro_batch"] or min(2, args.train_batch)
    out["checkpointing"] = stage == 2 if out["checkpointing"] is None else out["checkpointing"]
    return out


def run_training(args, work: str, log=print, done=None) -> list[dict]:
    """Stage 1, then stage 2 from its adapter, each through ``python -m training.train``;
    ``done(stages)`` is called after each stage (the report is written as the run goes)."""
    import csv
    import subprocess

    m = build_training_models(work, args.train_depth, args.lmm_size, log=log)
    runs = os.path.join(work, "train", "runs")
    shutil.rmtree(runs, ignore_errors=True)
    out = []
    for stage in (1, 2):
        plan = training_plan(args, stage)
        manifest = training_manifest(work, stage, args.train_batch * args.train_steps, args.train_resolution)
        run = os.path.join(runs, f"s{stage}")
        cmd = [sys.executable, "-m", "training.train", "--stage", str(stage), "--manifest", manifest,
               "--lmm", m["lmm"], "--dit", m["dit"], "--vae", m["vae"], "--out", run,
               "--batch", str(args.train_batch), "--micro-batch", str(plan["micro_batch"]),
               "--resolution", str(args.train_resolution), "--steps", str(args.train_steps), "--warmup", "0",
               "--ckpt-every", "0", "--bucket", "--no-progress"]
        if plan["checkpointing"]:
            cmd.append("--gradient-checkpointing")
        if stage == 2:
            cmd += ["--adapter-init", os.path.join(runs, "s1", "adapter.safetensors")]
        if args.lmm_size != "full":
            cmd += ["--adapter-hidden", "64", "--lmm-short-side", "56"]
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="") if args.cpu else None
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout, env=env)
        wall = time.perf_counter() - t
        if r.returncode != 0:  # kept in the report; stage 2 needs stage 1's adapter, so stop here
            log(f"  training stage {stage} FAILED:\n{r.stderr[-4000:]}")
            out.append({"stage": stage, "error": r.stderr[-4000:], "command": " ".join(cmd[1:])})
            if done:
                done(out)
            break
        with open(os.path.join(run, "log.csv")) as f:
            rows = list(csv.DictReader(f))
        step_s = [args.train_batch / float(x["samples_per_s"]) for x in rows]

        def peak(col):
            vals = [float(x[col]) for x in rows if x.get(col)]
            return max(vals) if vals else None

        res = {"stage": stage, "micro_batch": plan["micro_batch"],
               "accumulation": args.train_batch // plan["micro_batch"], "checkpointing": plan["checkpointing"],
               "steps": len(rows), "step_all_s": step_s,
               "step_s": statistics.median(step_s[1:] if len(step_s) > 1 else step_s),
               "max_allocated_gib": peak("max_allocated_gib"), "max_reserved_gib": peak("max_reserved_gib"),
               "wall_s": wall, "command": " ".join(cmd[1:])}
        est = plan["estimate"]
        if est is not None:
            res.update(estimated_peak_gib=est["gib"]["peak"], estimated_step_s=est["step_s"],
                       achieved_tflops=est["flops_per_step"] / res["step_s"] / 1e12)
        peak_txt = "n/a (CPU)" if res["max_allocated_gib"] is None else f"{res['max_allocated_gib']:.2f} GiB"
        log(f"  training stage {stage}: {res['step_s']:.2f} s/step (micro-batch {plan['micro_batch']}, "
            f"checkpointing {'on' if plan['checkpointing'] else 'off'}), peak allocated {peak_txt}")
        out.append(res)
        if done:
            done(out)
    return out


def training_table(result: dict) -> str:
    a = result["args"]
    L = [f"Training on the SD3.5-Medium layout — {result['device']} — {a['train_depth']} blocks, "
         f"{a['train_resolution']} px, global batch {a['train_batch']}, {a['train_steps']} steps per stage, "
         f"LMM {a['lmm_size']}", "",
         "| stage | micro-batch × accumulation | gradient checkpointing | s/step (median) | samples/s | "
         "peak allocated | peak reserved | estimate: peak, s/step | achieved TFLOP/s |",
         "|---|---|---|---|---|---|---|---|---|"]

    def gib(x):
        return "n/a (CPU)" if x is None else f"{x:.2f} GiB"

    for r in result.get("train", []):
        if r.get("error"):
            L.append(f"| {r['stage']} | failed: {r['error'].strip().splitlines()[-1][:200]} | | | | | | | |")
            continue
        est = (f"{r['estimated_peak_gib']:.1f} GiB, {r['estimated_step_s']:.1f} s"
               if r.get("estimated_peak_gib") is not None else "n/a (not full size)")
        tf = f"{r['achieved_tflops']:.0f}" if r.get("achieved_tflops") is not None else ""
        L.append(f"| {r['stage']} | {r['micro_batch']} × {r['accumulation']} | "
                 f"{'on' if r['checkpointing'] else 'off'} | {r['step_s']:.3f} | "
                 f"{a['train_batch'] / r['step_s']:.2f} | "
                 f"{gib(r['max_allocated_gib'])} | {gib(r['max_reserved_gib'])} | {est} | {tf} |")
    return "\n".join(L)
