"""`make demo`: run workflow 1 (text to image) on the real ComfyUI server and print
the PNG it saved.

    make demo                                   # the embedded miniature (trained on the shapes world)
    make demo DEMO_ARGS="--prompt 'two green triangles'"
    make demo DEMO_ARGS="--models-dir /path/to/ComfyUI/models"   # your own models
    make demo DEMO_ARGS="--random-models"      # small untrained models (random weights)

What it does: lays out a ComfyUI base directory (default ``build/demo``) with the
embedded miniature Dream Engine (``miniature/models``, trained by ``make
miniature``: an SD3.5-format MMDiT, a 16-channel TAESD VAE, a small Qwen2-VL folder
and a direct-map adapter) — or the user's ``--models-dir``, or with
``--random-models`` small untrained models of the same architecture — links this
repository into ``custom_nodes``, starts
ComfyUI on 127.0.0.1, queues ``example_workflows/api/1_text_to_image.json`` through the
HTTP API, waits, prints the output path and stops the server. Nothing is
downloaded.

With ``--models-dir`` the workflow's file names are used as shipped
(your ``sd3.5_large.safetensors`` with the converter's
``dream_engine_sd35_large_lora.safetensors``, ``sd3.5_vae.safetensors``, the converter's
``DreamEngine-Qwen2-VL-2B`` folder and ``dream_engine_direct_map.safetensors``); override
them with ``--unet``, ``--lora``, ``--vae``, ``--lmm``, ``--adapter``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if not __package__:  # run by path: this repository's packages are found from its root only
    sys.exit("run it from the repository root as a module: python -m scripts.demo")

import comfy_host as host  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MINIATURE = os.path.join(ROOT, "miniature")


def miniature_profile() -> dict | None:
    """File names and settings of the embedded miniature, if it is shipped."""
    p = os.path.join(MINIATURE, "profile.json")
    if not os.path.isfile(p):
        return None
    import json

    with open(p) as f:
        return json.load(f)


def small_models(base: str) -> str:
    """The small random-weight model set, built (once) in ``base/small_models``."""
    from model_builders.comfy_formats import build_demo_models

    host.import_comfy()
    folder = os.path.join(base, "small_models")
    build_demo_models(folder)
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", help="your ComfyUI models folder (diffusion_models/, vae/, LLM/, dream_engine/)")
    ap.add_argument("--random-models", action="store_true",
                    help="use small untrained models (random weights) instead of the embedded miniature")
    ap.add_argument("--workdir", default=os.path.join(ROOT, "build", "demo"),
                    help="ComfyUI base directory to use (default: build/demo)")
    ap.add_argument("--workflow", default="1_text_to_image.json", help="API workflow: a file name in example_workflows/api/, or an absolute path")
    ap.add_argument("--prompt", help="replace the workflow's prompt text")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--size", type=int, help="image width and height (built-in models: 256 by default)")
    ap.add_argument("--unet")
    ap.add_argument("--lora", help="the DiT LoRA in models/loras (the release's DiT difference)")
    ap.add_argument("--vae")
    ap.add_argument("--lmm")
    ap.add_argument("--adapter")
    ap.add_argument("--port", type=int)
    ap.add_argument("--gpu", action="store_true", help="let ComfyUI use the GPU (default: --cpu)")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args(argv)

    t0 = time.time()
    base = os.path.abspath(args.workdir)
    if args.models_dir and not os.path.isdir(args.models_dir):
        print(f"models folder not found: {args.models_dir}", file=sys.stderr)
        return 2
    print(f"[demo] ComfyUI base directory: {base}")
    mini = None if (args.models_dir or args.random_models) else miniature_profile()
    if mini:
        print(f"[demo] models: the embedded miniature ({MINIATURE}; trained on the shapes world, 64 px)")
        host.prepare_base_dir(base, os.path.join(MINIATURE, "models"))
    else:
        print("[demo] models: " + (os.path.abspath(args.models_dir) if args.models_dir else
                                   "built-in small models (random weights; the image is noise-like by design)"))
        host.prepare_base_dir(base, args.models_dir or small_models(base))
    prompt = host.load_api(args.workflow)
    if mini:
        prompt = host.apply_profile(prompt, mini)
    elif not args.models_dir:
        prompt = host.small_model_profile(prompt, size=args.size)
    prompt = host.configure(prompt, unet_name=args.unet or None, lora_name=args.lora or None,
                            vae_name=args.vae or None, lmm=args.lmm or None,
                            adapter=args.adapter or None, text=args.prompt, seed=args.seed,
                            steps=args.steps or None, size=args.size or None)

    server = host.ComfyServer(base, port=args.port, cpu=not args.gpu)
    print(f"[demo] starting ComfyUI on {server.url} (log: {server.log_path})")
    server.start()
    try:
        t1 = time.time()
        try:
            entry = server.run(prompt, timeout=args.timeout)
        except host.PromptRejected as e:
            print(f"[demo] the server refused the workflow:\n{e}", file=sys.stderr)
            return 1
        if entry["status"]["status_str"] != "success":
            err = host.execution_error(entry) or {}
            print(f"[demo] the workflow failed in {err.get('node_type')}: {err.get('exception_message')}",
                  file=sys.stderr)
            return 1
        images = server.output_images(entry)
        print(f"[demo] workflow {args.workflow} ran in {time.time() - t1:.1f}s (total {time.time() - t0:.1f}s)")
        for p in images:
            print(p)
        return 0 if images else 1
    finally:
        server.stop()
        print("[demo] server stopped")


if __name__ == "__main__":
    sys.exit(main())
