"""Figure 3's other side: ComfyUI's SD3.5 TripleCLIP (``TripleCLIPLoader`` + ``CLIPTextEncode``)."""
from __future__ import annotations

import time

import torch

from ..measure import calibrate, current_rss, peak_rss, timeit


def load_tripleclip(paths: list):
    """CLIP-L, CLIP-G and T5-XXL as ``TripleCLIPLoader`` loads them; returns the CLIP and its load time."""
    from comfy_host.importer import import_comfy

    import_comfy()
    import comfy.sd

    t = time.perf_counter()
    clip = comfy.sd.load_clip(ckpt_paths=paths, clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
    return clip, time.perf_counter() - t


def clip_text_encode(clip, text):
    tokens = clip.tokenize(text)  # CLIPTextEncode.encode
    return clip.encode_from_tokens_scheduled(tokens), tokens


def clip_encode(args: dict) -> dict:
    """TripleCLIPLoader + CLIPTextEncode on each text; peak RSS is read after the first
    text (the comparison of figure 3), before any longer one runs."""
    from ..prompts import PROMPT_20

    clip, load_s = load_tripleclip(args["clip_paths"])
    res = {"load_s": load_s, "rss_after_load": current_rss(), "threads": torch.get_num_threads(), "texts": []}
    for k, text in enumerate(args["texts"]):
        text = PROMPT_20 if text == "20w" else text
        with torch.inference_mode():
            cond, tokens = clip_text_encode(clip, text)
            r = {"tokens": {kk: sum(len(c) for c in v) for kk, v in tokens.items()},
                 "cond_shape": list(cond[0][0].shape),
                 "time": timeit(lambda: clip_text_encode(clip, text), repeats=args.get("repeats", [3])[k],
                                min_warmup=2 if k == 0 else 1, max_warmup=3, between=calibrate)}
        r["peak_rss"] = peak_rss()
        res["texts"].append(r)
    res["weight_dtypes"] = sorted({str(p.dtype) for p in clip.cond_stage_model.parameters()})
    res["peak_rss"] = res["texts"][0]["peak_rss"]
    return res
