"""Random-weight models at full size (or tiny, for the smoke test), in the real file formats.

* Dream Engine: an HF-format Qwen2-VL folder (config, tokenizer, processor config from
  :func:`model_builders.qwen2vl.build_tiny_qwen2vl` with ``weights=False``) plus the
  weights of ``Qwen2VLForConditionalGeneration`` written as safetensors, and a direct-map
  adapter file. Both load through ``DreamEngine.load`` — the same path as the release.
* SD3.5's TripleCLIP: ComfyUI's own ``SD3ClipModel`` is instantiated on the meta
  device and each of its three text encoders' state dicts (CLIP-L, CLIP-G, T5-XXL, the
  exact keys ``comfy.sd.load_clip`` detects and loads) is written as a bf16 safetensors
  file, as the usual ``clip_l.safetensors`` / ``clip_g.safetensors`` /
  ``t5xxl_*.safetensors`` files are.

Weights are generated and written one tensor at a time (a streaming safetensors
writer), so building never holds a model in memory: the 9.5 GB T5-XXL is written with
a few hundred MB of RAM. Everything is cached under ``build/bench/<size>/`` with a
stamp file, so later runs reuse it.
"""
from __future__ import annotations

import os
import shutil
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build", "bench")
BUILD_VERSION = "1"

def _fill_value(name: str, shape: tuple, gen: torch.Generator, dtype: torch.dtype, std: float) -> torch.Tensor:
    """Norm weights 1, biases 0, everything else N(0, std²)."""
    low = name.lower()
    if len(shape) == 1 and ("norm" in low or "ln_" in low or low.endswith(".ln.weight")) and low.endswith("weight"):
        return torch.ones(shape, dtype=dtype)
    if low.endswith("bias"):
        return torch.zeros(shape, dtype=dtype)
    t = torch.empty(shape, dtype=torch.float32)
    t.normal_(0.0, std, generator=gen)
    return t.to(dtype)


def write_random_safetensors(path: str, shapes: dict[str, tuple], dtype=torch.bfloat16, seed: int = 0,
                             std: float = 0.02, metadata: dict | None = None) -> int:
    """Stream a safetensors file of random tensors (``tools.weights.StreamingSafetensors``);
    returns bytes written. Peak memory is one tensor (in fp32) at a time."""
    from tools.weights import StreamingSafetensors

    gen = torch.Generator().manual_seed(seed)
    with StreamingSafetensors(path, [(k, dtype, tuple(shp)) for k, shp in shapes.items()], metadata) as w:
        for k, shp in shapes.items():
            w.write(k, _fill_value(k, tuple(shp), gen, dtype, std))
    return w.bytes


def _stamp_ok(p: str, key: str) -> bool:
    return os.path.isfile(p) and open(p).read().strip() == key


def _stamp(p: str, key: str) -> None:
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write(key)


def sizes(size: str):
    from model_builders.qwen2vl import QWEN2VL_2B, LMMSize

    if size == "full":
        return QWEN2VL_2B, dict(hidden_dim=4096, token_dim=2432, pooled_dim=2432)
    if size == "tiny":
        return LMMSize(), dict(hidden_dim=96, token_dim=128, pooled_dim=128)
    raise ValueError(f"size must be 'full' or 'tiny', got {size!r}")


def build_dream_engine(size: str = "full", log=print) -> dict:
    """The LMM folder and the adapter file; returns their paths."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from model_builders.qwen2vl import build_tiny_adapter, build_tiny_qwen2vl

    lmm_size, ad = sizes(size)
    full = size == "full"
    folder = os.path.join(BUILD, size, "Qwen2-VL-2B-random" if full else "Qwen2-VL-tiny")
    adapter = os.path.join(BUILD, size, "dream_engine_direct_map.safetensors")
    tkey = f"{BUILD_VERSION}:real-qwen2-vocabulary"
    # both sizes carry the real vocabulary (151,936 embedding rows)
    wkey = f"{BUILD_VERSION}:{lmm_size}:{ad}:" + tkey
    out = {"lmm_folder": folder, "adapter": adapter}
    wstamp, tstamp = os.path.join(folder, ".built"), os.path.join(folder, ".tokenizer")
    have_w = _stamp_ok(wstamp, wkey) and os.path.isfile(os.path.join(folder, "model.safetensors")) \
        and os.path.isfile(adapter)
    if have_w and _stamp_ok(tstamp, tkey):
        return out
    t0 = time.perf_counter()
    dtype = torch.bfloat16 if full else torch.float32
    if not have_w:
        shutil.rmtree(folder, ignore_errors=True)
    # config, the real Qwen2 tokenizer and the processor config
    build_tiny_qwen2vl(folder, lmm_size, seed=0, dtype=dtype, weights=False, real_vocab=True)
    _stamp(tstamp, tkey)
    if have_w:
        return out
    config = Qwen2VLConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(config)
    sd = model.state_dict()
    tied = getattr(config, "tie_word_embeddings", False) or getattr(config.text_config, "tie_word_embeddings", False)
    shapes = {k: tuple(v.shape) for k, v in sd.items() if not (tied and k == "lm_head.weight")}
    del model, sd
    write_random_safetensors(os.path.join(folder, "model.safetensors"), shapes, dtype=dtype, seed=0,
                             metadata={"format": "pt"})
    build_tiny_adapter(adapter, lmm_dim=lmm_size.hidden_size, kind="direct", seed=0,
                       lmm_name="Qwen2-VL-2B-Instruct" if full else "tiny-qwen2-vl", **ad)
    if full:  # store the adapter in bf16, as a release-converted file would be
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(adapter, "pt") as f:
            meta = f.metadata()
            t = {k: f.get_tensor(k).to(torch.bfloat16) for k in f.keys()}
        save_file(t, adapter, metadata=meta)
    _stamp(wstamp, wkey)
    log(f"  built Dream Engine ({size}) in {time.perf_counter() - t0:.1f} s: {folder}")
    return out


def tripleclip_shapes(size: str = "full") -> dict[str, dict[str, tuple]]:
    """Keys and shapes of ComfyUI's CLIP-L, CLIP-G and T5-XXL as its SD3 loader expects."""
    from comfy_host.importer import import_comfy

    import_comfy()
    import comfy.text_encoders.sd3_clip as sd3

    model = sd3.SD3ClipModel(device="meta", dtype=torch.bfloat16, dtype_t5=torch.bfloat16)
    return {name: {k: tuple(v.shape) for k, v in getattr(model, name).transformer.state_dict().items()}
            for name in ("clip_l", "clip_g", "t5xxl")}


def build_tripleclip(size: str = "full", log=print) -> dict:
    """``clip_l.safetensors``, ``clip_g.safetensors``, ``t5xxl_bf16.safetensors`` (random bf16).

    Only the full size exists (ComfyUI's SD3 loader detects the encoders by their layer
    counts, so they cannot be shrunk); the tiny smoke run skips this comparison.
    """
    folder = os.path.join(BUILD, "full", "tripleclip")
    files = {"clip_l": "clip_l.safetensors", "clip_g": "clip_g.safetensors", "t5xxl": "t5xxl_bf16.safetensors"}
    out = {k: os.path.join(folder, v) for k, v in files.items()}
    key = f"{BUILD_VERSION}:tripleclip"
    if _stamp_ok(os.path.join(folder, ".built"), key) and all(os.path.isfile(p) for p in out.values()):
        return out
    t0 = time.perf_counter()
    os.makedirs(folder, exist_ok=True)
    shapes = tripleclip_shapes(size)
    for i, (name, shp) in enumerate(shapes.items()):
        write_random_safetensors(out[name], shp, dtype=torch.bfloat16, seed=10 + i)
    _stamp(os.path.join(folder, ".built"), key)
    log(f"  built TripleCLIP in {time.perf_counter() - t0:.1f} s: {folder}")
    return out


if __name__ == "__main__":  # python -m model_builders.full_size [full|tiny] [--clip]
    import sys

    import dream_engine_core  # noqa: F401

    sz = sys.argv[1] if len(sys.argv) > 1 else "full"
    print(build_dream_engine(sz))
    if "--clip" in sys.argv:
        print(build_tripleclip(sz))
