"""The Dream Engine: interleaved prompt → (positive, negative) conditioning.

prompt (templates, CFG input) → encoder (Qwen2-VL, visual blend) → adapter →
:class:`Conditioning`, a plain result the ComfyUI nodes wrap as ``CONDITIONING``.

Positive and negative keep their own natural lengths by default. ComfyUI's SD3
model wraps the tokens in ``CONDRegular``, which batches cond and uncond only when
their shapes are equal and otherwise runs them as separate forward passes, so
different lengths are sampled exactly (no padding, no repetition).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from .adapter import Adapter, POOLINGS
from .encoder import (DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, DEFAULT_SHORT_SIDE, EncodedStates,
                      LMMEncoder, to_pil)
from .interrupt import interrupt_points
from .prompt import ImageRef, TaskInputs, build_task_inputs
from .weights import check_adapter_lmm, load_adapter

PADDINGS = ("natural", "reference")
REFERENCE_LENGTH = 77


@dataclass
class Conditioning:
    """One side of CFG: what the DiT consumes, and where it came from."""

    tokens: torch.Tensor          # [B, L, token_dim]
    pooled: torch.Tensor          # [B, pooled_dim]
    attention_mask: torch.Tensor  # [B, L]
    text: str                     # the exact text fed to the LMM (placeholders unexpanded)
    image_spans: list = field(default_factory=list)  # (start, end) token positions per placeholder
    image_indices: list = field(default_factory=list)  # which prompt image each placeholder is
    ratios: list = field(default_factory=list)       # blend ratio per placeholder
    map_kind: str = "direct"
    task: str = "generate"

    @property
    def provenance(self) -> dict:
        return {"text": self.text, "image_spans": [list(s) for s in self.image_spans],
                "image_indices": list(self.image_indices), "ratios": list(self.ratios),
                "map_kind": self.map_kind, "task": self.task, "length": int(self.tokens.shape[1])}


@dataclass
class EncodeOptions:
    padding: str = "natural"      # "natural" (training, default) or "reference" (release inference)
    pooling: str = "mean"         # "mean" (release: every position) or "masked_mean"
    positions: str = "mrope"      # "mrope" (correct) or "1d" (parity with the release's transformers)
    short_side: int | None = DEFAULT_SHORT_SIDE
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    style: str = "inference"

    def __post_init__(self):
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")


def reference_padding(task: str, cond_len: int, cond_has_images: bool) -> tuple[int | None, int | None]:
    """Pad lengths (cond, uncond) of the release's inference (never truncating).

    generate, text only: both to 77; generate with images: cond natural, the
    text-only uncond to 77; edit and reconstruct: both to 77; fuse: cond natural,
    uncond to the cond's length.
    """
    if task in ("edit", "reconstruct"):
        return REFERENCE_LENGTH, REFERENCE_LENGTH
    if task == "fuse":
        return None, cond_len
    if cond_has_images:
        return None, REFERENCE_LENGTH
    return REFERENCE_LENGTH, REFERENCE_LENGTH


class DreamEngine:
    """An LMM encoder plus an adapter. Holds no per-prompt state."""

    def __init__(self, encoder: LMMEncoder, adapter: Adapter, adapter_name: str = "the adapter"):
        check_adapter_lmm(adapter.spec, encoder.hidden_size, adapter_name)
        self.encoder = encoder
        self.adapter = adapter

    @classmethod
    def load(cls, lmm_folder: str, adapter_path: str, dtype=torch.float32, device="cpu") -> "DreamEngine":
        adapter = load_adapter(adapter_path, dtype=dtype, device=device)
        encoder = LMMEncoder.from_folder(lmm_folder, dtype=dtype, device=device)
        return cls(encoder, adapter, os.path.basename(adapter_path))

    @property
    def map_kind(self) -> str:
        return self.adapter.spec.kind

    def _adapt(self, st: EncodedStates, opts: EncodeOptions, task: str) -> Conditioning:
        w = self.adapter.input_embeds_align_mlp[0].weight
        tokens, pooled = self.adapter(st.hidden.to(w.dtype), st.attention_mask, opts.pooling)
        return Conditioning(tokens, pooled, st.attention_mask, st.text, st.image_spans,
                            [], st.ratios, self.map_kind, task)

    @torch.inference_mode()
    def encode(self, prompt: str, images: list | None = None, refs: list[ImageRef] | None = None,
               task: str = "generate", options: EncodeOptions | None = None,
               progress: Callable[[int, int], None] | None = None,
               check_interrupt: Callable[[], None] | None = None) -> tuple[Conditioning, Conditioning]:
        """Encode a prompt and its images into (positive, negative).

        ``images``: PIL images or ``[H, W, 3]`` tensors in [0, 1]; ``refs``: the name and
        blend ratio of each image (defaults: unnamed, r = 0). Everything is validated
        before any model runs. ``progress(done, total)`` is called after each stage and
        ``check_interrupt()`` before each stage and before every language-model layer and
        vision-tower block (:func:`~.interrupt.interrupt_points`); it may raise to stop.
        """
        opts = options or EncodeOptions()
        images = list(images or [])
        refs = list(refs) if refs is not None else [ImageRef() for _ in images]
        if len(refs) != len(images):
            raise ValueError(f"{len(images)} images but {len(refs)} image references")
        ti: TaskInputs = build_task_inputs(prompt, refs, task, opts.style)
        for im in images:  # validate every image before any compute
            to_pil(im)
        total = 5
        done = 0

        def step():
            nonlocal done
            done += 1
            if progress:
                progress(done, total)

        def interrupt():
            if check_interrupt:
                check_interrupt()

        enc = self.encoder
        with interrupt_points(enc.model, check_interrupt):
            return self._encode_stages(ti, images, opts, task, step, interrupt)

    def _encode_stages(self, ti: TaskInputs, images: list, opts: EncodeOptions, task: str, step, interrupt):
        enc = self.encoder
        interrupt()
        prep = enc.prepare_images(images, opts.short_side, opts.min_pixels, opts.max_pixels)
        step()
        interrupt()
        enc.vision_features(prep)
        step()
        pad_c = pad_u = None
        if opts.padding == "reference":
            pad_c, pad_u = reference_padding(task, enc.token_count(ti.cond, prep), bool(ti.cond.images))
        interrupt()
        sc = enc.encode(ti.cond, prep, pad_c, opts.positions)
        step()
        interrupt()
        su = enc.encode(ti.uncond, prep, pad_u, opts.positions)
        step()
        interrupt()
        pos, neg = self._adapt(sc, opts, task), self._adapt(su, opts, task)
        pos.image_indices, neg.image_indices = list(ti.cond.images), list(ti.uncond.images)
        step()
        return pos, neg
