"""Figure 4: from an empty process to the first conditioning (imports, load, first encode),
Dream Engine and TripleCLIP. ``args["t_module"]`` is when the worker's interpreter started."""
from __future__ import annotations

import time

import torch

from ..measure import peak_rss


def cold_de(args: dict) -> dict:
    t_import = time.time()
    from dream_engine_core.engine import EncodeOptions

    from ..prompts import PROMPT_20
    from .encode import load_engine

    t0 = time.time()
    eng, _ = load_engine(args)
    t1 = time.time()
    with torch.inference_mode():
        eng.encode(PROMPT_20, [], options=EncodeOptions())
    t2 = time.time()
    return {"t_module": args["t_module"], "t_imports_done": t0, "t_import_start": t_import, "load_s": t1 - t0,
            "first_encode_s": t2 - t1, "t_done": t2, "peak_rss": peak_rss()}


def cold_clip(args: dict) -> dict:
    from comfy_host.importer import import_comfy

    from ..prompts import PROMPT_20
    from .clip import clip_text_encode, load_tripleclip

    import_comfy()
    import comfy.sd  # noqa: F401

    t0 = time.time()
    clip, _ = load_tripleclip(args["clip_paths"])
    t1 = time.time()
    with torch.inference_mode():
        clip_text_encode(clip, PROMPT_20)
    t2 = time.time()
    return {"t_module": args["t_module"], "t_imports_done": t0, "load_s": t1 - t0, "first_encode_s": t2 - t1,
            "t_done": t2, "peak_rss": peak_rss()}
