"""A complete tiny training setup (tests, benchmarks, docs quick-start): SD3.5-format DiT,
16-channel VAE, small Qwen2-VL (``model_builders``) and a shapes-world manifest covering all
four tasks.

    python -m miniature.training_set build/tiny_train     # then see docs/training.md
"""
from __future__ import annotations

import os
import sys


def build_tiny_training_set(folder: str, n_records: int = 8, depth: int = 2, seed: int = 0,
                            image_size: int = 32, dual_attention_blocks=()) -> dict[str, str]:
    """Write (or keep) the files and return their paths: dit, vae, lmm, manifest.
    ``dual_attention_blocks``: the DiT in SD3.5-Medium layout (e.g.
    ``model_builders.comfy_formats.TINY_MEDIUM``)."""
    from comfy_host.importer import import_comfy

    import_comfy()
    from model_builders.comfy_formats import build_core_models

    from .shapes_world import write_dataset

    paths = {
        "dit": os.path.join(folder, "dit.safetensors"),
        "vae": os.path.join(folder, "vae.safetensors"),
        "lmm": os.path.join(folder, "tiny-Qwen2-VL"),
        "manifest": os.path.join(folder, "data", "manifest.jsonl"),
    }
    build_core_models(paths, depth=depth, seed=seed, dual_attention_blocks=dual_attention_blocks)
    if not os.path.exists(paths["manifest"]):
        write_dataset(os.path.join(folder, "data"), n_records, seed=seed, size=image_size)
    return paths


if __name__ == "__main__":
    for k, v in build_tiny_training_set(sys.argv[1] if len(sys.argv) > 1 else "build/tiny_train",
                                        n_records=int(sys.argv[2]) if len(sys.argv) > 2 else 16).items():
        print(f"{k}: {v}")
