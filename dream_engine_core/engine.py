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

from . import cpu_linear
from .adapter import Adapter, POOLINGS
from .encoder import (DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, DEFAULT_SHORT_SIDE, EncodedStates,
                      LMMEncoder, check_aspect_ratio, to_pil)
from .errors import OptionError, PromptError
from .interrupt import interrupt_points
from .prompt import IMG, ImageRef, TaskInputs, build_task_inputs
from .weights import check_adapter_lmm, load_adapter

#: ``natural``: no padding (as trained). ``reference``: the release's inference padding
#: (:func:`reference_padding`) with pad states as transformers 5.x computes them;
#: ``reference_4.49_gpu``: the same padding with pad states as transformers 4.49 computed
#: them with SDPA on CUDA (encoder module docstring, ``pad_rows``).
PADDINGS = ("natural", "reference", "reference_4.49_gpu")
PAD_ROWS_OF = {"natural": "attention_free", "reference": "attention_free", "reference_4.49_gpu": "attend_all"}
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
    image_sizes: list = field(default_factory=list)   # (width, height) the vision tower saw, per placeholder
    source_sizes: list = field(default_factory=list)  # (width, height) of the image as given, per placeholder

    @property
    def image_tokens(self) -> list:
        """Number of image tokens of each placeholder."""
        return [e - s for s, e in self.image_spans]

    @property
    def provenance(self) -> dict:
        return {"text": self.text, "image_spans": [list(s) for s in self.image_spans],
                "image_indices": list(self.image_indices), "ratios": list(self.ratios),
                "image_sizes": [list(s) for s in self.image_sizes],
                "source_sizes": [list(s) for s in self.source_sizes],
                "image_tokens": self.image_tokens,
                "map_kind": self.map_kind, "task": self.task, "length": int(self.tokens.shape[1]),
                "real_tokens": int(self.attention_mask.sum())}

    def compact_text(self) -> str:
        """The text fed to the LMM with each image placeholder shown as
        ``<image N: W×H → T tokens>`` (N: the prompt's image number, W×H: the size the vision
        tower saw)."""
        parts = self.text.split(IMG)
        out = [parts[0]]
        for k, piece in enumerate(parts[1:]):
            (w, h), n = self.image_sizes[k], self.image_tokens[k]
            out.append(f"<image {self.image_indices[k] + 1}: {w}×{h} → {n} tokens>" + piece)
        return "".join(out)


def describe(pos: Conditioning, neg: Conditioning) -> str:
    """What the model saw, as lines of text: both LMM inputs (placeholders compact), each
    image's size as given and as encoded, its tokens and r, and the token counts."""
    lines = [f"positive: {pos.compact_text()!r}", f"negative: {neg.compact_text()!r}"]
    seen = {}
    for c in (pos, neg):
        for k, i in enumerate(c.image_indices):
            seen.setdefault(i, (c.source_sizes[k], c.image_sizes[k], c.image_tokens[k], c.ratios[k]))
    for i in sorted(seen):
        (sw, sh), (w, h), n, r = seen[i]
        lines.append(f"image {i + 1}: {sw}×{sh} → encoded {w}×{h}, {n} tokens, r={r:g}")
    for name, c in (("positive", pos), ("negative", neg)):
        real = int(c.attention_mask.sum())
        pad = int(c.tokens.shape[1]) - real
        img = sum(c.image_tokens)
        lines.append(f"{name} tokens: {int(c.tokens.shape[1])} ({img} image, {real - img} text"
                     + (f", {pad} pad" if pad else "") + ")")
    return "\n".join(lines)


@dataclass
class EncodeOptions:
    padding: str = "natural"      # "natural" (training, default), "reference" or "reference_4.49_gpu" (PADDINGS)
    pooling: str = "mean"         # "mean" (release: every position) or "masked_mean"
    positions: str = "mrope"      # "mrope" (Qwen2-VL's, what the release computes on transformers >= 4.49) or "1d"
    short_side: int | None = DEFAULT_SHORT_SIDE
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    style: str = "inference"

    def __post_init__(self):
        if self.padding not in PADDINGS:
            raise OptionError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.pooling not in POOLINGS:
            raise OptionError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")


def reference_padding(task: str, cond_len: int, cond_has_images: bool) -> tuple[int | None, int | None]:
    """Pad lengths (cond, uncond) of the release's inference, never truncating.

    The release's ``cfg_predict`` (``pipeline_qwen_vl_stable_diffusion_3.py``) pads with the
    processor (``padding="max_length"``, ``max_length=max_sequence_length``, default 77) and
    concatenates both inputs into one batch, so it runs only when both come out the same
    length. This is that call with the smallest ``max_sequence_length`` ≥ 77 that neither
    truncates nor fails (the default 77 whenever that runs):

    * generate, text only, and edit / reconstruct: both to ``max(77, cond_len)`` (the
      release at 77 truncates a longer text prompt, and cannot run a longer image prompt);
    * fuse (the release computes the length itself) and generate with images: the
      positive keeps its length, the negative is padded to it.
    """
    if task == "fuse" or (task == "generate" and cond_has_images):
        return None, cond_len
    n = max(REFERENCE_LENGTH, cond_len)
    return n, n


class DreamEngine:
    """An LMM encoder plus an adapter. Holds no per-prompt state."""

    def __init__(self, encoder: LMMEncoder, adapter: Adapter, adapter_name: str = "the adapter"):
        check_adapter_lmm(adapter.spec, encoder.hidden_size, adapter_name)
        self.encoder = encoder
        self.adapter = adapter
        #: the adapter's layers keep packed CPU weights too (dream_engine_core/cpu_linear.py)
        cpu_linear.install(adapter, pack=adapter)

    def set_cpu_linear(self, path: str | None = None) -> int:
        """Put the LMM's and the adapter's linear layers on CPU path ``path`` (one of
        ``cpu_linear.MODES``; default ``DREAM_ENGINE_CPU_LINEAR``); returns the LMM's layer
        count on oneDNN. Packed copies of the previous path are dropped."""
        cpu_linear.mode(path)  # an unknown path is refused before anything changes
        model = self.encoder.model
        cpu_linear.uninstall(model)
        cpu_linear.uninstall(self.adapter)
        self.encoder.cpu_linear_layers = cpu_linear.install(model, pack=model.model.language_model, path=path)
        cpu_linear.install(self.adapter, pack=self.adapter, path=path)
        return self.encoder.cpu_linear_layers

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
            raise PromptError(f"{len(images)} images but {len(refs)} image references; pass one reference per "
                              f"image, or none (each image then gets a default one)", "images")
        ti: TaskInputs = build_task_inputs(prompt, refs, task, opts.style)
        sources = []
        for i, im in enumerate(images):  # validate every image before any compute
            pil = to_pil(im)
            check_aspect_ratio(pil, i)
            sources.append(pil.size)
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
            return self._encode_stages(ti, images, sources, opts, task, step, interrupt)

    def _encode_stages(self, ti: TaskInputs, images: list, sources: list, opts: EncodeOptions, task: str, step,
                       interrupt):
        enc = self.encoder
        interrupt()
        prep = enc.prepare_images(images, opts.short_side, opts.min_pixels, opts.max_pixels)
        step()
        interrupt()
        enc.vision_features(prep)
        step()
        pad_c = pad_u = None
        if opts.padding != "natural":
            pad_c, pad_u = reference_padding(task, enc.token_count(ti.cond, prep), bool(ti.cond.images))
        rows = PAD_ROWS_OF[opts.padding]
        interrupt()
        sc = enc.encode(ti.cond, prep, pad_c, opts.positions, rows)
        step()
        interrupt()
        su = enc.encode(ti.uncond, prep, pad_u, opts.positions, rows)
        step()
        interrupt()
        pos, neg = self._adapt(sc, opts, task), self._adapt(su, opts, task)
        sizes = prep.encoded_sizes
        for c, mi in ((pos, ti.cond), (neg, ti.uncond)):
            c.image_indices = list(mi.images)
            c.image_sizes = [sizes[i] for i in mi.images]
            c.source_sizes = [sources[i] for i in mi.images]
        step()
        return pos, neg
