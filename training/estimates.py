"""Memory and time per training step on GPUs, estimated from the model sizes.

    python -m training.estimates                 # SD3.5 Medium, the recipe of docs/training.md
    python -m training.estimates --base large    # the release's base, for comparison

Every figure is an estimate (``benchmarks/gpu_check.py`` measures the real ones on a GPU).
How each is computed:

* **parameters**: ComfyUI's own ``MMDiT`` at full size on the meta device (no memory; the
  layouts of ``model_builders.comfy_formats``), the LoRA the trainer injects
  (``training.dit.add_lora``: rank 32 on every attention projection, SD3.5 Medium's ``attn2``
  included), the direct-map adapter (``dream_engine_core.adapter``), Qwen2-VL-2B
  (transformers' class on the meta device) and the SD3 VAE (ComfyUI's encoder and decoder).
* **FLOPs** per sample: ``torch.utils.flop_counter`` over the meta DiT's forward and backward
  at the recipe's token counts — stage 1 sends gradients through the frozen DiT into the
  adapter, stage 2 also into the LoRA — the VAE encoder's forward, and the LMM's forward from
  ``model_builders.flops``.
* **activations** (``training.activations``): what autograd keeps for the backward pass, counted with saved-tensor
  hooks on one real block of each kind (SD3.5 Medium: dual-attention, plain, last; the final
  layer; the adapter) at full width, run on the CPU under bf16 autocast as the trainer runs,
  with PyTorch's SDPA (flash) attention as ComfyUI uses it on NVIDIA GPUs. Three small token
  counts give per block ``a + bx·image_tokens + bc·text_tokens`` bytes, where ``a`` is kept
  once per DiT forward: the bf16 copies autocast makes of the frozen fp32 weights, which the
  linear layers keep for the backward pass. With gradient checkpointing only each block's
  inputs are kept and one block at a time is recomputed.
* **memory per GPU**: the DiT in fp32 (the trainer loads the base in fp32 and autocasts), the
  LMM and the VAE in bf16, every trained tensor with its gradient and two AdamW moments in fp32
  (16 B; DDP adds its gradient buckets), the activations of one micro-batch (``--bucket``: one
  DiT forward per micro-batch; FSDP: one per sample, as the trainer runs it), the larger of
  that and ComfyUI's own estimate of one VAE encode, and a fixed allowance for the CUDA
  context and workspaces. FSDP shards the DiT and the trained tensors over the GPUs and
  gathers two blocks at a time; it does not shard the autocast copies.
* **time per step**: FLOPs ÷ (GPUs × the GPU's dense bf16 peak × :data:`UTILISATION`); with
  FSDP, the all-gathers of the fp32 DiT for every forward and backward at :attr:`GPU.link_gbs`,
  overlapped with compute (the step takes the longer of the two).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import lru_cache

import torch

from training.activations import ADAPTER_HIDDEN, LMM_DIM, _comfy, _pytorch_attention, activation_bytes

GIB = 2 ** 30
UTILISATION = 0.35      # assumed share of the dense bf16 peak the step reaches
CUDA_RESERVE_GIB = 1.5  # CUDA context, cuBLAS / flash workspaces, allocator slack
FRAGMENTATION = 1.10    # the caching allocator's overhead on activations
HEADROOM = 0.90         # a configuration fits when its estimate uses at most this share of the GPU
MICRO_BATCHES = (32, 16, 8, 4, 2, 1)


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    bf16_tflops: float       # dense, fp32 accumulate
    link_gbs: float = 0.0    # all-gather bandwidth per GPU (NVLink), GB/s


# dense bf16 peaks (TFLOPS) of GPUs by name, for GPU(...) from a device (benchmarks/gpu_check.py)
KNOWN_PEAKS = (("H200", 989.4), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.1), ("4090", 165.2))


def gpu_of_device(name: str, total_bytes: int) -> GPU:
    """A :class:`GPU` for a CUDA device (peak 0 when its name is not in :data:`KNOWN_PEAKS`)."""
    peak = next((p for key, p in KNOWN_PEAKS if key in name), 0.0)
    return GPU(name, total_bytes / GIB, peak)


RTX_4090 = GPU("RTX 4090", 24.0, 165.2)
A100_80 = GPU("A100 80GB SXM", 80.0, 312.0, 200.0)
SETUPS = (("1×24 GB", 1, RTX_4090), ("1×80 GB", 1, A100_80), ("8×80 GB", 8, A100_80))


@dataclass(frozen=True)
class StageRecipe:
    """One stage of the paper's recipe (DESIGN §1), with the token counts it runs at."""
    stage: int
    lr: float
    batch: int
    resolution: int
    text_tokens: int       # LMM tokens per sample (the DiT's text stream), the larger tasks' length
    images: float          # images through the vision tower per sample, on average
    lora_rank: int         # 0: no LoRA
    tasks: str


# Image inputs at the release's preprocessing: short side 336 → 24×24 patches of 14 px,
# merged 2×2 into 144 LMM tokens. Stage 1: text-to-image (~35 tokens) and reconstruction
# ("Copy Image: " + one image, ~150); stage 2: editing (one image, ~165) and object fusion
# (two images and a caption, ~320).
VISION_PATCHES = 576
RECIPE = {
    1: StageRecipe(1, 1e-4, 128, 512, 160, 0.5, 0, "t2i + reconstruct"),
    2: StageRecipe(2, 5e-5, 128, 512, 320, 1.5, 32, "edit + fuse"),
}
BASES = ("medium", "large")


# ---------------------------------------------------------------- models
def layout(base: str) -> dict:
    from model_builders.comfy_formats import SD35_LARGE, SD35_MEDIUM

    return dict({"medium": SD35_MEDIUM, "large": SD35_LARGE}[base])


@lru_cache(maxsize=None)
def meta_dit(base: str, lora_rank: int = 0):
    """ComfyUI's MMDiT at full size on the meta device, with the trainer's LoRA."""
    _comfy()
    from model_builders.comfy_formats import new_mmdit
    from training.dit import add_lora

    with torch.device("meta"):
        dit = new_mmdit(device="meta", **layout(base))
    dit.requires_grad_(False)  # frozen, as training.dit.load_dit leaves it
    if lora_rank:
        add_lora(dit, lora_rank)
    return dit


def dual_blocks(base: str) -> tuple:
    return tuple(layout(base).get("dual_attention_blocks", ()))


@lru_cache(maxsize=None)
def sizes(base: str) -> dict:
    """Parameter counts (and the DiT's fp32 buffer) of every model in a training run."""
    from dream_engine_core.adapter import Adapter, AdapterSpec

    dit = meta_dit(base)
    hidden = 64 * layout(base)["depth"]
    out = {"hidden": hidden, "dit": sum(p.numel() for p in dit.parameters()),
           "dit_buffers": sum(b.numel() for b in dit.buffers()),
           "block_max": max(sum(p.numel() for p in b.parameters()) for b in dit.joint_blocks)}
    lora = meta_dit(base, RECIPE[2].lora_rank)
    out["lora"] = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)
    with torch.device("meta"):
        adapter = Adapter(AdapterSpec.direct(hidden, LMM_DIM, ADAPTER_HIDDEN))
        out["adapter"] = sum(p.numel() for p in adapter.parameters())
        out["lmm"] = sum(p.numel() for p in _meta_lmm().parameters())
        enc, dec = _vae_parts()
        out["vae"] = sum(p.numel() for p in enc.parameters()) + sum(p.numel() for p in dec.parameters())
    return out


def lmm_config():
    """Qwen2-VL-2B-Instruct's configuration (``model_builders.qwen2vl.QWEN2VL_2B``)."""
    from transformers import Qwen2VLConfig

    from model_builders.qwen2vl import QWEN2VL_2B as S, QWEN2VL_VOCAB_SIZE

    return Qwen2VLConfig(
        text_config=dict(vocab_size=QWEN2VL_VOCAB_SIZE, hidden_size=S.hidden_size,
                         intermediate_size=S.intermediate_size, num_hidden_layers=S.num_hidden_layers,
                         num_attention_heads=S.num_attention_heads, num_key_value_heads=S.num_key_value_heads,
                         tie_word_embeddings=True),
        vision_config=dict(depth=S.vision_depth, embed_dim=S.vision_embed_dim, hidden_size=S.hidden_size,
                           mlp_ratio=S.vision_mlp_ratio, num_heads=S.vision_heads, in_chans=3, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        tie_word_embeddings=True)


def _meta_lmm():
    from transformers import Qwen2VLForConditionalGeneration

    with torch.device("meta"):
        return Qwen2VLForConditionalGeneration(lmm_config())


# SD3's VAE as ComfyUI builds it (comfy.sd.VAE: a KL autoencoder, 16 latent channels).
VAE_CONFIG = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
              "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _vae_parts():
    _comfy()
    from comfy.ldm.modules.diffusionmodules.model import Decoder, Encoder

    return Encoder(**VAE_CONFIG), Decoder(**VAE_CONFIG)


def vae_encode_bytes(resolution: int) -> float:
    """ComfyUI's own estimate of one image's VAE encode in bf16: ``comfy.sd.VAE.memory_used_encode``
    of a KL autoencoder, ``1767·H·W·dtype size`` (× 1.0 on NVIDIA). ComfyUI encodes as many
    images at once as the free memory holds, so one image's worth is what a step needs."""
    return 1767 * resolution * resolution * 2


# ---------------------------------------------------------------- FLOPs
@lru_cache(maxsize=None)
def dit_flops(base: str, stage: int, resolution: int, text_tokens: int) -> dict:
    """Forward and backward FLOPs of one sample through the DiT (direct map)."""
    from torch.utils.flop_counter import FlopCounterMode

    from training.dit import direct_map

    r = RECIPE[stage]
    dit = meta_dit(base, r.lora_rank)
    hidden = 64 * layout(base)["depth"]
    side = resolution // 8
    with direct_map(dit), torch.device("meta"), _pytorch_attention():
        x = torch.empty(1, 16, side, side)
        ctx = torch.empty(1, text_tokens, hidden, requires_grad=True)   # the adapter's tokens
        vec = torch.empty(1, hidden, requires_grad=True)                # and vector
        with FlopCounterMode(display=False) as fwd:
            out = dit(x, torch.full((1,), 500.0), y=vec, context=ctx)
        with FlopCounterMode(display=False) as bwd:
            out.float().square().mean().backward()
    return {"forward": fwd.get_total_flops(), "backward": bwd.get_total_flops()}


def lmm_flops(r: StageRecipe) -> float:
    from model_builders.flops import lm_forward, vision_forward

    cfg = lmm_config()
    return lm_forward(cfg.text_config, r.text_tokens).flops + r.images * vision_forward(
        cfg.vision_config, [VISION_PATCHES]).flops


@lru_cache(maxsize=None)
def vae_encode_flops(resolution: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from comfy.ldm.modules.diffusionmodules.model import AttnBlock, pytorch_attention

    with torch.device("meta"):
        enc, _ = _vae_parts()
        for m in enc.modules():  # ComfyUI's VAE attention on NVIDIA GPUs (another one on the CPU)
            if isinstance(m, AttnBlock):
                m.optimized_attention = pytorch_attention
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            enc(torch.empty(1, 3, resolution, resolution))
    return fc.get_total_flops()


# ---------------------------------------------------------------- one configuration
def estimate(base: str, stage: int, parallel: str, gpus: int, gpu: GPU, micro_batch: int, checkpointing: bool,
             ema: bool = False) -> dict:
    """Memory per GPU (GiB) and seconds per step of one configuration of the recipe."""
    r = RECIPE[stage]
    s = sizes(base)
    fsdp = parallel == "fsdp" and gpus > 1
    n_image = (r.resolution // 16) ** 2
    dit = 4 * (s["dit"] + s["dit_buffers"])
    dit = dit / gpus + 2 * 4 * s["block_max"] if fsdp else dit
    trained = s["adapter"] + (s["lora"] if r.lora_rank else 0)
    state = trained * (16 + (4 if ema else 0)) / (gpus if fsdp else 1)
    buckets = 4 * trained if (gpus > 1 and not fsdp) else 0
    groups = micro_batch if fsdp else 1   # FSDP: a forward per sample; DDP with --bucket: one per micro-batch
    act = FRAGMENTATION * activation_bytes(layout(base)["depth"], dual_blocks(base), r.lora_rank, micro_batch, groups,
                                           checkpointing, n_image, r.text_tokens)
    static = dit + 2 * s["lmm"] + 2 * s["vae"] + state + buckets
    peak = static + max(act, vae_encode_bytes(r.resolution)) + CUDA_RESERVE_GIB * GIB

    fl = dit_flops(base, stage, r.resolution, r.text_tokens)
    per_sample = fl["forward"] * (2 if checkpointing else 1) + fl["backward"] + lmm_flops(r) + \
        vae_encode_flops(r.resolution)
    peak_flops = gpu.bf16_tflops * 1e12 * UTILISATION
    compute = r.batch * per_sample / (gpus * peak_flops) if peak_flops else float("nan")  # unknown GPU
    comm = 0.0
    if fsdp:  # every forward and every backward gathers the whole fp32 DiT
        comm = (r.batch / gpus) * 2 * 4 * s["dit"] * (gpus - 1) / gpus / (gpu.link_gbs * 1e9)
    step = max(compute, comm)
    return {"base": base, "stage": stage, "parallel": parallel if gpus > 1 else "single", "gpus": gpus,
            "gpu": gpu.name, "micro_batch": micro_batch, "accumulation": r.batch // (gpus * micro_batch),
            "checkpointing": checkpointing,
            "gib": {"dit": dit / GIB, "lmm_vae": (2 * s["lmm"] + 2 * s["vae"]) / GIB, "trained_state":
                    (state + buckets) / GIB, "activations": act / GIB, "peak": peak / GIB},
            "fits": peak <= HEADROOM * gpu.memory_gib * GIB, "flops_per_sample": per_sample,
            "compute_s": compute, "fsdp_gather_s": comm, "step_s": step, "samples_per_s": r.batch / step,
            "flops_per_step": r.batch * per_sample}


def best(base: str, stage: int, parallel: str, gpus: int, gpu: GPU) -> dict:
    """The fastest fitting configuration: without gradient checkpointing if any micro-batch
    fits, else with it; the largest micro-batch that divides the per-GPU batch and fits."""
    per_gpu = RECIPE[stage].batch // gpus
    last = None
    for ckpt in (False, True):
        for m in MICRO_BATCHES:
            if per_gpu % m:
                continue
            last = estimate(base, stage, parallel, gpus, gpu, m, ckpt)
            if last["fits"]:
                return last
    return last


def plan(base: str = "medium") -> list[dict]:
    out = []
    for label, gpus, gpu in SETUPS:
        for stage in (1, 2):
            for parallel in (("ddp", "fsdp") if gpus > 1 else ("ddp",)):
                e = best(base, stage, parallel, gpus, gpu)
                e["setup"] = label
                out.append(e)
    return out


# ---------------------------------------------------------------- report
def sizes_table(base: str = "medium") -> str:
    s = sizes(base)
    r1, r2 = RECIPE[1], RECIPE[2]
    f1 = dit_flops(base, 1, r1.resolution, r1.text_tokens)
    f2 = dit_flops(base, 2, r2.resolution, r2.text_tokens)
    rows = [
        ("DiT (ComfyUI MMDiT, frozen, fp32)", s["dit"], f"+ {s['dit_buffers'] / 1e6:.0f} M position table"),
        ("LoRA, rank 32 (stage 2, trained)", s["lora"], "every attention projection, attn2 included"),
        (f"adapter {LMM_DIM}→{ADAPTER_HIDDEN}→{s['hidden']} ×2 (trained)", s["adapter"], "direct map"),
        ("Qwen2-VL-2B (frozen, bf16)", s["lmm"], "vision tower included"),
        ("SD3 VAE (frozen, bf16)", s["vae"], "encoder + decoder"),
    ]
    L = ["| model | parameters | note |", "|---|---|---|"]
    L += [f"| {a} | {b / 1e6:,.1f} M | {c} |" for a, b, c in rows]
    L += ["", "| per sample | stage 1 | stage 2 |", "|---|---|---|",
          f"| tokens (image + text) | {(r1.resolution // 16) ** 2} + {r1.text_tokens} | "
          f"{(r2.resolution // 16) ** 2} + {r2.text_tokens} |",
          f"| DiT forward | {f1['forward'] / 1e12:.2f} TFLOP | {f2['forward'] / 1e12:.2f} TFLOP |",
          f"| DiT backward | {f1['backward'] / 1e12:.2f} TFLOP | {f2['backward'] / 1e12:.2f} TFLOP |",
          f"| LMM forward | {lmm_flops(r1) / 1e12:.2f} TFLOP | {lmm_flops(r2) / 1e12:.2f} TFLOP |",
          f"| VAE encode | {vae_encode_flops(r1.resolution) / 1e12:.2f} TFLOP | "
          f"{vae_encode_flops(r2.resolution) / 1e12:.2f} TFLOP |"]
    return "\n".join(L)


def plan_table(rows: list[dict]) -> str:
    L = ["| GPUs | stage | processes | micro-batch × accumulation | gradient checkpointing | DiT | LMM + VAE | "
         "trained state | activations | peak per GPU | s / step | samples / s |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in rows:
        g = e["gib"]
        peak = f"**{g['peak']:.1f} GiB**" + ("" if e["fits"] else " (does not fit)")
        gather = f" (gathers {e['fsdp_gather_s']:.1f})" if e["fsdp_gather_s"] else ""
        mode = "1" if e["gpus"] == 1 else f"{e['gpus']}, {e['parallel'].upper()}"
        L.append(f"| {e['setup']} ({e['gpu']}) | {e['stage']} | {mode} | {e['micro_batch']} × {e['accumulation']} | "
                 f"{'on' if e['checkpointing'] else 'off'} | {g['dit']:.1f} GiB | {g['lmm_vae']:.1f} GiB | "
                 f"{g['trained_state']:.2f} GiB | {g['activations']:.1f} GiB | {peak} | {e['step_s']:.1f}{gather} | "
                 f"{e['samples_per_s']:.1f} |")
    return "\n".join(L)


def report(base: str = "medium") -> str:
    """The tables docs/training.md shows (checked by tests/test_medium_estimates.py)."""
    return sizes_table(base) + "\n\n" + plan_table(plan(base))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", choices=BASES, default="medium")
    a = ap.parse_args(argv)
    print(report(a.base))


if __name__ == "__main__":
    main()
