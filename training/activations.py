"""What autograd keeps for a training step's backward pass, counted on real parts of the DiT.

The activation model of ``training.estimates``: saved-tensor hooks on one real block of each
kind (SD3.5 Medium: dual-attention, plain, last; the final layer; the adapter) at full width,
run on the CPU under bf16 autocast as the trainer runs, with PyTorch's SDPA attention as
ComfyUI uses it on NVIDIA GPUs. Three small token counts give per part
``a + bx·image_tokens + bc·text_tokens`` bytes (:func:`fit_part`), which
:func:`activation_bytes` scales to a micro-batch, with or without gradient checkpointing.
"""
from __future__ import annotations

import contextlib
from functools import lru_cache

import torch

ADAPTER_HIDDEN = 4096
LMM_DIM = 1536            # Qwen2-VL-2B's hidden size


def _comfy():
    from comfy_host.importer import import_comfy

    import_comfy()


def block_kinds(depth: int, dual: tuple) -> dict[str, int]:
    """Blocks of each kind: ``dual`` (x side with attn2), ``plain``, ``last`` (pre-only text side)."""
    return {"dual": len(dual), "plain": depth - 1 - len(dual), "last": 1}


@contextlib.contextmanager
def _pytorch_attention():
    """ComfyUI's PyTorch SDPA attention in its MMDiT (what it picks on NVIDIA GPUs; on the
    CPU it picks another implementation)."""
    import comfy.ldm.modules.attention as attention
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit

    saved = mmdit.optimized_attention
    mmdit.optimized_attention = attention.attention_pytorch
    try:
        yield
    finally:
        mmdit.optimized_attention = saved


def saved_bytes(fn, exclude=()) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of ``fn()``
    (parameters and other tensors in ``exclude`` are not counted)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def autocast_like_training():
    """bf16 autocast (on the CPU here) with ComfyUI's PyTorch attention, as the trainer runs on GPUs."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
    stack.enter_context(_pytorch_attention())
    return stack


class _Blocks(torch.nn.Module):
    """A holder with ``joint_blocks`` so that ``training.dit.add_lora`` finds the block."""

    def __init__(self, block):
        super().__init__()
        self.joint_blocks = torch.nn.ModuleList([block])


def _new_part(kind: str, hidden: int, lora_rank: int):
    """One real part at this width (zero weights: the values do not change what is kept)."""
    _comfy()
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import FinalLayer, JointBlock

    from training.dit import add_lora

    ops = comfy.ops.disable_weight_init
    if kind == "final":
        part = FinalLayer(hidden, 2, 16, dtype=torch.float32, operations=ops)
    elif kind == "adapter":
        from dream_engine_core.adapter import Adapter, AdapterSpec

        part = Adapter(AdapterSpec.direct(hidden, LMM_DIM, ADAPTER_HIDDEN))
    else:
        part = JointBlock(hidden, hidden // 64, mlp_ratio=4.0, qkv_bias=True, attn_mode="torch",
                          pre_only=kind == "last", qk_norm="rms", x_block_self_attn=kind == "dual",
                          dtype=torch.float32, operations=ops)
    with torch.no_grad():
        for p in part.parameters():
            p.zero_()
    if kind != "adapter":  # the DiT is frozen; the LoRA and the adapter train
        part.requires_grad_(False)
        if lora_rank:
            add_lora(_Blocks(part), lora_rank)
    return part


def part_saved_bytes(part, kind: str, hidden: int, n_image: int, n_text: int) -> int:
    """Saved bytes of one part for one sample with these token counts, its inputs as the
    trainer's autocast makes them: the image stream fp32 (patch embedding + the fp32
    position table), the text stream, the vector and the LMM states bf16. The inputs count
    (a block keeps its own), the vector ``c`` once per forward, not per block."""
    x = torch.zeros(1, n_image, hidden, requires_grad=True)
    ctx = torch.zeros(1, n_text, hidden, dtype=torch.bfloat16, requires_grad=True)
    c = torch.zeros(1, hidden, dtype=torch.bfloat16, requires_grad=True)
    h = torch.zeros(1, n_text, LMM_DIM)

    def run():
        with autocast_like_training():
            if kind == "final":
                part(x, c)
            elif kind == "adapter":
                part(h, None, "mean")
            else:
                part(ctx, x, c=c, use_checkpoint=False)
    return saved_bytes(run, exclude=list(part.parameters()) + [c])


# the token counts (image, text) the per-part model is fitted on
FIT_TOKENS = ((32, 8), (64, 8), (32, 16))


@lru_cache(maxsize=None)
def fit_part(kind: str, hidden: int, lora_rank: int = 0) -> tuple[float, float, float]:
    """``(a, bx, bc)``: saved bytes = a + bx·image tokens + bc·text tokens, from three runs."""
    part = _new_part(kind, hidden, lora_rank)
    (x0, c0), (x1, _), (_, c1) = FIT_TOKENS
    m = [part_saved_bytes(part, kind, hidden, nx, nc) for nx, nc in FIT_TOKENS]
    bx = (m[1] - m[0]) / (x1 - x0)
    bc = (m[2] - m[0]) / (c1 - c0)
    return m[0] - bx * x0 - bc * c0, bx, bc


def activation_bytes(depth: int, dual: tuple, lora_rank: int, micro_batch: int, groups: int,
                     checkpointing: bool, n_image: int, n_text: int, adapter: bool = True) -> float:
    """Bytes kept for the backward pass of one micro-batch in ``groups`` DiT forwards (blocks,
    final layer and, with ``adapter``, the adapter), plus the gradients of the two streams in
    flight during the backward pass."""
    hidden = 64 * depth
    counts = {k: n for k, n in block_kinds(depth, dual).items() if n}
    fit = {k: fit_part(k, hidden, lora_rank) for k in counts}
    fit["final"] = fit_part("final", hidden)

    def sample(k, nx=n_image, nc=n_text):
        return fit[k][1] * nx + fit[k][2] * nc

    head = groups * fit["final"][0] + micro_batch * sample("final", nc=0)
    if adapter:
        fa = fit_part("adapter", hidden)
        head += groups * fa[0] + micro_batch * fa[2] * n_text
    streams = micro_batch * hidden * (4 * n_image + 2 * n_text)  # fp32 image stream, bf16 text stream
    if checkpointing:  # each block keeps its inputs; one block of one forward is recomputed at a time
        blocks = sum(counts.values()) * streams + max(fit[k][0] + micro_batch / groups * sample(k) for k in counts)
    else:
        blocks = sum(n * (groups * fit[k][0] + micro_batch * sample(k)) for k, n in counts.items())
    return blocks + head + 2 * streams
