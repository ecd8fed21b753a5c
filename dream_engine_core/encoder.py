"""Qwen2-VL encoder: model input → last-layer hidden states, with the visual blend.

The model and its processor are loaded from a local folder only (no network, no
remote code). For one model input the encoder

1. prepares each image exactly as the release did (:func:`release_resize`): torchvision's
   ``transforms.Resize(short_side, BILINEAR)`` (336), then ``qwen_vl_utils.fetch_image``
   (multiples of 28 within its own pixel bounds), then the Qwen2-VL image processor
   (PIL backend, as the release's transformers) within ``[min_pixels, max_pixels]``
   (``max_pixels = 512·28·28`` as the release);
2. expands each vision placeholder to the image's patch tokens and tokenizes;
3. runs the vision tower once for all distinct images and splices its merged output
   into the token embeddings (as Qwen2-VL's own forward does);
4. runs the language model (M-RoPE positions from Qwen2-VL's ``get_rope_index``,
   or plain 1-D positions for parity with the release) and takes the last hidden
   state after the final norm (the release's ``hidden_states[-1]``);
5. blends, on each image's own pad-token positions only,
   ``h = (1 − r)·h_LLM + r·h_ViT`` with that image's ``r``.

The language model is called directly, so no vocabulary logits are computed.

Padding: by default every input keeps its natural length (training saw no pad
tokens). ``pad_to`` left-pads with the tokenizer's pad token ``<|endoftext|>``
(the Qwen2-VL tokenizer pads on the **left**) and never truncates. Real tokens never
attend to pad tokens, so their states do not depend on the padding; what a pad
position's own state is depends on how the library treats a query row whose keys are
all masked, and ``pad_rows`` chooses it explicitly (:data:`PAD_ROWS`):

* ``"attention_free"`` — transformers 5.x (and 4.57) with SDPA: the masked row's
  attention output is zero, so each pad state is the pad token's embedding carried
  through the layers' MLPs alone: one vector, whatever its position or context.
  Computed here once per model (:meth:`LMMEncoder.pad_state`), the real tokens in one
  unpadded pass; the same on every device.
* ``"attend_all"`` — transformers 4.49 with SDPA on CUDA (how the release's demo ran):
  ``AttentionMaskConverter._unmask_unattended`` lets a fully masked row attend to every
  token (pads, and real tokens before and after it) by score; positions as 4.49's
  ``get_rope_index`` gives them (1 on every pad). Run as one padded pass with that
  4-D mask.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from . import cpu_linear
from .compat import (image_size_kwargs, install_hint, load_processor, load_qwen2vl, require_transformers, rope_index,
                     vision_merged)
from .errors import DependencyError, ImageInputError, OptionError
from .prompt import IMG, ModelInput
from .lmm_folder import LMMFolderError, check_lmm_folder  # noqa: F401 - LMMFolderError re-exported

POSITIONS = ("mrope", "1d")
PAD_ROWS = ("attention_free", "attend_all")
DEFAULT_SHORT_SIDE = 336
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 512 * 28 * 28
#: the largest long-side / short-side ratio Qwen2-VL's processors accept
MAX_ASPECT_RATIO = 200


def attend_all_mask(mask: torch.Tensor) -> torch.Tensor | None:
    """``[B, 1, L, L]`` boolean attention mask (True = attend) of a left-padded batch as
    transformers 4.49 gives SDPA on CUDA: causal over real keys for real queries, and
    every key for a pad query (``_unmask_unattended``). ``None`` without padding."""
    if bool(mask.all()):
        return None
    L = mask.shape[-1]
    real = mask.bool()
    causal = torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
    m = causal[None] & real[:, None, :]
    return (m | ~real[:, :, None])[:, None]


def blend(h: torch.Tensor, f: torch.Tensor, r: float) -> torch.Tensor:
    """The visual blend of one image's pad-token states: ``(1 − r)·h_LLM + r·h_ViT``."""
    return (1 - r) * h + r * f.to(h.dtype)


def to_pil(image) -> Image.Image:
    """Accept a PIL image, or an array/tensor ``[H, W, 3]`` (or ``[1, H, W, 3]``) in [0, 1]."""
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ImageInputError("an image has zero size; connect a non-empty image")
        if image.mode not in ("RGB", "L", "RGBA", "P"):
            raise ImageInputError(f"image mode {image.mode} is not supported; convert it to RGB")
        return image.convert("RGB")
    t = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3:
        raise ImageInputError(f"an image must be [height, width, 3]; got shape {list(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ImageInputError(f"an image has zero size {list(t.shape)}; connect a non-empty image")
    if t.shape[2] != 3:
        raise ImageInputError(f"an image must have 3 colour channels (RGB), got {t.shape[2]}; "
                              f"convert it to RGB (drop alpha, expand grey) first")
    t = t.float()
    if not torch.isfinite(t).all():
        raise ImageInputError("an image contains NaN or infinite values; check the node that produced it")
    arr = (t.clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(arr, "RGB")


def image_size_label(index: int, img: Image.Image) -> str:
    return f"image {index + 1} ({img.width}×{img.height})"


def check_aspect_ratio(img: Image.Image, index: int = 0) -> None:
    """Qwen2-VL accepts long/short ≤ 200; refuse before any resize (the release's chain would
    first upscale the image to a 336-px short side)."""
    ratio = max(img.size) / min(img.size)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageInputError(f"{image_size_label(index, img)} has aspect ratio {ratio:.1f}; Qwen2-VL accepts at "
                              f"most {MAX_ASPECT_RATIO}. Crop or pad the image before connecting it.")


def resize_short_side(img: Image.Image, short_side: int | None) -> Image.Image:
    """The release's first step: torchvision ``transforms.Resize(short_side, BILINEAR)`` (on a
    PIL image: PIL's bilinear resize with antialiasing; the long side is truncated as
    torchvision computes it). ``short_side`` 0/None: unchanged."""
    if not short_side:
        return img
    from torchvision.transforms import InterpolationMode, Resize

    return Resize(int(short_side), interpolation=InterpolationMode.BILINEAR)(img)


def fit_to_patches(img: Image.Image) -> Image.Image:
    """The release's second step: ``qwen_vl_utils.fetch_image`` (height and width snapped to
    multiples of 28 within its own pixel bounds, then a PIL resize)."""
    try:
        from qwen_vl_utils import fetch_image
    except ImportError as e:
        raise DependencyError(f"Dream Engine prepares images with qwen-vl-utils, as the released model did, and "
                              f"cannot import it ({e}); " + install_hint("qwen-vl-utils>=0.0.14,<0.1")) from e
    return fetch_image({"image": img})


def release_resize(img: Image.Image, short_side: int | None = DEFAULT_SHORT_SIDE, index: int = 0) -> Image.Image:
    """Both resizes of the release's chain, before the Qwen2-VL image processor."""
    check_aspect_ratio(img, index)
    try:
        out = fit_to_patches(resize_short_side(img, short_side))
    except ValueError as e:  # qwen_vl_utils' own aspect-ratio check after the first resize
        raise ImageInputError(f"{image_size_label(index, img)} cannot be prepared: {e} (Qwen2-VL's limit is "
                              f"{MAX_ASPECT_RATIO}; crop or pad the image)") from e
    ratio = max(out.size) / min(out.size)
    if ratio > MAX_ASPECT_RATIO:  # rounding to 28-px units pushed a ratio just under 200 over it
        raise ImageInputError(f"{image_size_label(index, img)}: after the release's resizing ({out.width}×"
                              f"{out.height}) its aspect ratio is {ratio:.2f}, beyond Qwen2-VL's limit "
                              f"{MAX_ASPECT_RATIO}. Crop or pad the image a little.")
    return out


def pil_image_processor(image_processor):
    """The image processor on transformers' PIL backend (the release's transformers had only
    that one; the torchvision backend gives slightly different pixel values)."""
    import transformers

    name = type(image_processor).__name__
    # transformers 5: ``…ImageProcessorPil`` is the PIL backend; 4.57: the slow ``…ImageProcessor``
    # is, and ``AutoProcessor`` loads the torchvision ``…ImageProcessorFast`` by default
    for cand in (name.removesuffix("Pil") + "Pil", name.removesuffix("Fast")):
        pil_cls = getattr(transformers, cand, None)
        if pil_cls is not None:
            if isinstance(image_processor, pil_cls):
                return image_processor
            return pil_cls.from_dict(image_processor.to_dict())
    return image_processor


@dataclass
class EncodedStates:
    """LMM output for one model input."""

    hidden: torch.Tensor            # [1, L, D] last-layer states (blended)
    attention_mask: torch.Tensor    # [1, L]  1 = real token, 0 = pad
    input_ids: torch.Tensor         # [1, L]
    text: str
    image_spans: list = field(default_factory=list)  # (start, end) token positions per placeholder
    ratios: list = field(default_factory=list)
    vision: list = field(default_factory=list)       # merged vision features per placeholder


@dataclass
class PreparedImages:
    """The distinct images of a prompt, processed once and shared by cond and uncond."""

    pixel_values: torch.Tensor | None
    grid_thw: torch.Tensor | None
    tokens_per_image: list
    features: list | None = None  # merged vision features per image, filled on first use

    @property
    def encoded_sizes(self) -> list:
        """(width, height) in pixels of each image as the vision tower saw it."""
        if self.grid_thw is None:
            return []
        return [(int(w) * 14, int(h) * 14) for _, h, w in self.grid_thw.tolist()]


class LMMEncoder:
    #: how many text-only inputs to remember (0 = off). The unconditional input of a
    #: text-only prompt ("Generate Image: ") is the same for every prompt, so remembering
    #: it saves one language-model pass per encode; outputs are bit-identical.
    text_cache_size = 8

    def __init__(self, model, processor, folder: str = ""):
        self._text_cache: OrderedDict = OrderedDict()
        self.model = model
        #: linear layers routed through oneDNN on the CPU, the language model's with packed
        #: weights (dream_engine_core/cpu_linear.py)
        self.cpu_linear_layers = cpu_linear.install(model, pack=model.model.language_model)
        processor.image_processor = pil_image_processor(processor.image_processor)
        self.processor = processor
        self.image_processor = processor.image_processor
        self.tokenizer = processor.tokenizer
        self.folder = folder
        cfg = model.config
        self.image_token_id = cfg.image_token_id
        self.hidden_size = cfg.text_config.hidden_size
        self.merge = cfg.vision_config.spatial_merge_size
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_folder(cls, folder: str, dtype: torch.dtype = torch.float32, device="cpu",
                    attn_implementation: str = "sdpa") -> "LMMEncoder":
        require_transformers()
        check_lmm_folder(folder)  # every file, the weights included, before transformers opens it
        processor = load_processor(folder)
        model = load_qwen2vl(folder, dtype, attn_implementation)
        model.to(device).eval().requires_grad_(False)
        return cls(model, processor, folder)

    @property
    def device(self) -> torch.device:
        return self.model.model.language_model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.model.language_model.embed_tokens.weight.dtype

    # ------------------------------------------------------------------ images
    def prepare_images(self, images: list, short_side: int | None = DEFAULT_SHORT_SIDE,
                       min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS) -> PreparedImages:
        if not images:
            return PreparedImages(None, None, [])
        if min_pixels <= 0 or max_pixels < min_pixels:
            raise ImageInputError(f"need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
        pil = [to_pil(im) for im in images]
        for i, im in enumerate(pil):  # every image is checked before any is resized
            check_aspect_ratio(im, i)
        pil = [release_resize(im, short_side, i) for i, im in enumerate(pil)]
        try:
            out = self.image_processor(
                images=pil, return_tensors="pt", **image_size_kwargs(min_pixels, max_pixels))
        except ValueError as e:
            raise ImageInputError(f"the Qwen2-VL image processor refused an image ({e}); sizes after the "
                                  f"release's resizing: " + ", ".join(f"{p.width}×{p.height}" for p in pil)) from e
        grid = out["image_grid_thw"]
        per = (grid.prod(-1) // self.merge ** 2).tolist()
        return PreparedImages(out["pixel_values"], grid, per)

    @torch.inference_mode()
    def vision_features(self, prep: PreparedImages) -> list:
        """Merged vision-tower output per image (the embeddings spliced into the input)."""
        if prep.features is None:
            if prep.pixel_values is None:
                prep.features = []
            else:
                visual = self.model.model.visual
                px = prep.pixel_values.to(self.device, visual.dtype)
                feats = vision_merged(visual, px, prep.grid_thw.to(self.device))
                prep.features = list(torch.split(feats.to(self.dtype), prep.tokens_per_image))
        return prep.features

    # ------------------------------------------------------------------ text
    def tokenize(self, inp: ModelInput, prep: PreparedImages, pad_to: int | None = None):
        """Token ids with each placeholder expanded to its image's patch tokens."""
        pieces = inp.text.split(IMG)
        ids: list[int] = []
        spans = []
        start_tok = self.tokenizer.convert_tokens_to_ids("<|vision_start|>")
        end_tok = self.tokenizer.convert_tokens_to_ids("<|vision_end|>")
        for k, piece in enumerate(pieces):
            if piece:
                ids += self.tokenizer(piece, add_special_tokens=False)["input_ids"]
            if k < len(inp.images):
                n = prep.tokens_per_image[inp.images[k]]
                ids.append(start_tok)
                spans.append((len(ids), len(ids) + n))
                ids += [self.image_token_id] * n
                ids.append(end_tok)
        n_pad = max(0, (pad_to or 0) - len(ids))
        mask = [0] * n_pad + [1] * len(ids)
        ids = [self.pad_token_id] * n_pad + ids
        spans = [(s + n_pad, e + n_pad) for s, e in spans]
        return torch.tensor([ids]), torch.tensor([mask]), spans

    def token_count(self, inp: ModelInput, prep: PreparedImages) -> int:
        return self.tokenize(inp, prep)[0].shape[1]

    # ------------------------------------------------------------------ forward
    def _weights_key(self) -> tuple:
        """Changes whenever the language model's weights are replaced, moved, cast or
        edited in place (a parameter's version counter counts in-place writes)."""
        lm = self.model.model.language_model
        ps = (lm.embed_tokens.weight, lm.layers[0].self_attn.q_proj.weight, lm.layers[-1].mlp.down_proj.weight,
              lm.norm.weight)
        return tuple((p.data_ptr(), p.dtype, str(p.device), p._version) for p in ps)

    @torch.inference_mode()
    def encode(self, inp: ModelInput, prep: PreparedImages, pad_to: int | None = None,
               positions: str = "mrope", pad_rows: str = "attention_free") -> EncodedStates:
        """Last-layer states of one model input, left-padded to ``pad_to`` tokens (never
        truncated) with pad states as ``pad_rows`` says (module docstring)."""
        if positions not in POSITIONS:
            raise OptionError(f"positions must be one of {POSITIONS}, got {positions!r}")
        if pad_rows not in PAD_ROWS:
            raise OptionError(f"pad_rows must be one of {PAD_ROWS}, got {pad_rows!r}")
        key = None
        if not inp.images and self.text_cache_size > 0 and not self.model.training:
            key = (inp.text, pad_to, positions, pad_rows, self._weights_key())
            hit = self._text_cache.get(key)
            if hit is not None:
                self._text_cache.move_to_end(key)
                return replace(hit, hidden=hit.hidden.clone(), attention_mask=hit.attention_mask.clone(),
                               input_ids=hit.input_ids.clone())
        n_pad = max(0, pad_to - self.token_count(inp, prep)) if pad_to else 0
        if n_pad and pad_rows == "attention_free":
            st = self._prepend_pad_states(self._encode(inp, prep, None, positions), n_pad)
        else:
            st = self._encode(inp, prep, pad_to, positions)
        if key is not None:
            self._text_cache[key] = replace(st, hidden=st.hidden.clone())
            while len(self._text_cache) > self.text_cache_size:
                self._text_cache.popitem(last=False)
        return st

    @torch.inference_mode()
    def pad_state(self) -> torch.Tensor:
        """``[D]``: the last-layer state of a pad position whose attention output is zero in
        every layer (``pad_rows="attention_free"``): the pad token's embedding through each
        decoder layer's residual MLP (``h + mlp(post_attention_layernorm(h))``; the attention
        projection ``o_proj`` has no bias, so a zero attention output adds nothing), then the
        final norm. Cached until the weights change."""
        key = self._weights_key()
        if getattr(self, "_pad_state", (None, None))[0] != key:
            lm = self.model.model.language_model
            h = lm.embed_tokens(torch.tensor([[self.pad_token_id]], device=self.device))
            for layer in lm.layers:
                if getattr(layer.self_attn.o_proj, "bias", None) is not None:
                    raise OptionError("this LMM's attention output projection has a bias, so its pad states "
                                      "are not defined by pad_rows='attention_free'; use padding 'natural'")
                h = h + layer.mlp(layer.post_attention_layernorm(h))
            self._pad_state = (key, lm.norm(h)[0, 0])
        return self._pad_state[1]

    def _prepend_pad_states(self, st: EncodedStates, n_pad: int) -> EncodedStates:
        """``n_pad`` pad positions (``pad_rows="attention_free"``) left of an unpadded input's states."""
        pad_id = torch.full((1, n_pad), self.pad_token_id, dtype=st.input_ids.dtype, device=st.input_ids.device)
        pads = self.pad_state().to(st.hidden.dtype).expand(1, n_pad, -1)
        return EncodedStates(torch.cat([pads, st.hidden], 1),
                             torch.cat([torch.zeros_like(pad_id), st.attention_mask], 1),
                             torch.cat([pad_id, st.input_ids], 1), st.text,
                             [(s + n_pad, e + n_pad) for s, e in st.image_spans], st.ratios, st.vision)

    def _positions(self, inp: ModelInput, prep: PreparedImages, ids: torch.Tensor, mask: torch.Tensor,
                   positions: str) -> torch.Tensor | None:
        """Position ids ``[3, 1, L]`` (``None``: the language model's own ``0…L−1``).

        ``1d``: ``0…L−1`` on every dimension. ``mrope``: Qwen2-VL's ``get_rope_index``; on a
        padded input, as transformers 4.49 computes them for the release's padded batch:
        real tokens from 0, and 1 on every pad position (text-only: ``cumsum(mask) − 1``)."""
        dev = ids.device
        padded = bool((mask == 0).any())
        if positions == "1d":
            return torch.arange(ids.shape[1], device=dev).view(1, 1, -1).expand(3, 1, -1)
        if inp.images:
            grid = torch.stack([prep.grid_thw[i] for i in inp.images]).to(dev)
            pos = rope_index(self.model.model, ids, self.image_token_id, grid, attention_mask=mask if padded else None)
        elif padded:
            pos = (mask.long().cumsum(-1) - 1).view(1, 1, -1).expand(3, 1, -1)
        else:
            return None
        return pos.masked_fill(mask.view(1, 1, -1) == 0, 1) if padded else pos

    def _encode(self, inp: ModelInput, prep: PreparedImages, pad_to: int | None, positions: str) -> EncodedStates:
        inner = self.model.model
        ids, mask, spans = self.tokenize(inp, prep, pad_to)
        dev = self.device
        ids, mask = ids.to(dev), mask.to(dev)
        embeds = inner.get_input_embeddings()(ids)
        vis = []
        if inp.images:
            feats = self.vision_features(prep)
            vis = [feats[i] for i in inp.images]
            embeds = embeds.clone()
            for (s, e), f in zip(spans, vis):
                embeds[0, s:e] = f.to(embeds.dtype)
        pos = self._positions(inp, prep, ids, mask, positions)
        out = inner.language_model(inputs_embeds=embeds, attention_mask=attend_all_mask(mask),
                                   position_ids=pos, use_cache=False)
        hidden = out.last_hidden_state
        if any(r > 0 for r in inp.ratios):
            hidden = hidden.clone()
            for (s, e), f, r in zip(spans, vis, inp.ratios):
                if r > 0:
                    hidden[0, s:e] = blend(hidden[0, s:e], f, r)
        return EncodedStates(hidden, mask, ids, inp.text, spans, list(inp.ratios), vis)
