"""ImageSegment and BlendRatio: the images of an interleaved prompt.

A ``DREAM_SEGMENTS`` value is an immutable chain (a tuple) of :class:`Segment`.
Each ImageSegment appends one image to the chain it receives; BlendRatio sets the
visual blend ``r`` of the last segment of the chain (or of all of them). Nodes
never modify a chain they receive: ComfyUI caches node outputs and shares them.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..dream_engine_core.errors import ImageInputError, OptionError, PromptError, WiringError
from ..dream_engine_core.prompt import ImageRef, check_ratio

Segments = io.Custom("DREAM_SEGMENTS")
CATEGORY = "conditioning/dream_engine"
NEUTRAL_FILL = 0.5  # mid grey, the colour outside a segment's mask


def search_aliases(*aliases: str) -> dict:
    """``search_aliases=[…]`` for ``io.Schema`` on hosts whose schema has the field (newer
    ComfyUI: the node search also matches these words); nothing on hosts without it
    (0.3.75's ``Schema`` would refuse the keyword)."""
    return {"search_aliases": list(aliases)} if "search_aliases" in {f.name for f in fields(io.Schema)} else {}


@dataclass(frozen=True)
class Segment:
    image: torch.Tensor   # [H, W, 3] in [0, 1], CPU
    name: str | None = None
    ratio: float = 0.0

    def ref(self) -> ImageRef:
        return ImageRef(self.name, self.ratio)


def select_frame(image: torch.Tensor, frame: int) -> torch.Tensor:
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise ImageInputError(f"ImageSegment expects an IMAGE batch [B, H, W, C]; got shape {list(image.shape)}: "
                              f"connect an IMAGE output (e.g. Load Image)")
    if not 0 <= frame < image.shape[0]:
        raise ImageInputError(f"frame {frame} does not exist: the image batch has {image.shape[0]} frame(s) "
                              f"(frames count from 0)")
    return image[frame]


def apply_mask(img: torch.Tensor, mask: torch.Tensor, frame: int) -> torch.Tensor:
    """Crop ``img [H, W, C]`` to the bounding box of ``mask > 0.5`` and fill the
    pixels of that box outside the mask with mid grey."""
    m = mask
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ImageInputError(f"the MASK must be [B, H, W] or [H, W]; got shape {list(mask.shape)}: connect a "
                              f"MASK output (e.g. Load Image's)")
    m = m[min(frame, m.shape[0] - 1)].float().to(img.device)
    h, w = img.shape[0], img.shape[1]
    if tuple(m.shape) != (h, w):  # e.g. LoadImage's 64×64 placeholder or another resolution
        m = F.interpolate(m[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    keep = m > 0.5
    if not bool(keep.any()):
        raise ImageInputError("the MASK selects no pixel (no value above 0.5); paint the region to keep, "
                              "or disconnect the mask to use the whole image")
    ys = torch.nonzero(keep.any(dim=1)).flatten()
    xs = torch.nonzero(keep.any(dim=0)).flatten()
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    crop = img[y0:y1, x0:x1]
    k = keep[y0:y1, x0:x1, None]
    return torch.where(k, crop, torch.full_like(crop, NEUTRAL_FILL))


class ImageSegment(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamEngineImageSegment",
            display_name="Dream Engine Image Segment",
            category=CATEGORY,
            **search_aliases("reference image", "image prompt", "multi image", "interleaved", "add image",
                             "qwen2-vl image"),
            description="Adds one image to a Dream Engine prompt. Chain segments to give a prompt any "
                        "number of images: the first is [image 1], the next [image 2], and so on; a "
                        "named segment can also be written as [name].",
            inputs=[
                io.Image.Input("image", tooltip="The image; the frame below is taken from a batch."),
                io.String.Input("name", default="", tooltip="Optional name, referenced in the prompt as [name] "
                                "(fuse: the object's name, required). No square brackets."),
                io.Int.Input("frame", default=0, min=0, max=4095,
                             tooltip="Which image of the batch to use (0 = the first)."),
                Segments.Input("segments", optional=True,
                               tooltip="Segments before this one (chain them for several images)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional region: the image is cropped to the box around mask > 0.5 "
                                      "and pixels outside the mask are filled with mid grey."),
            ],
            outputs=[Segments.Output("chain", display_name="segments")],
        )

    @classmethod
    def execute(cls, image, name="", frame=0, segments=None, mask=None) -> io.NodeOutput:
        ref = ImageRef(name or None)  # validates the name
        img = select_frame(image, int(frame)).detach().float().cpu()
        if mask is not None:
            img = apply_mask(img, mask.detach().cpu(), int(frame))
        chain = tuple(segments or ()) + (Segment(img.contiguous(), ref.name, 0.0),)
        names = [s.name.lower() for s in chain if s.name]
        if len(names) != len(set(names)):
            raise PromptError(f"two image segments are named {ref.name!r}; give each segment its own name", "names")
        return io.NodeOutput(chain)


class BlendRatio(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamEngineBlendRatio",
            display_name="Dream Engine Blend Ratio",
            category=CATEGORY,
            **search_aliases("visual blend", "image strength", "reference strength", "image weight",
                             "reference image"),
            description="Sets the visual blend r of a segment: on the image's tokens the LMM's output is "
                        "mixed with the vision tower's features, (1 - r)·LMM + r·ViT. r = 0 means no blend "
                        "(the released model's default); larger r keeps more of the image's appearance.",
            inputs=[
                Segments.Input("segments", tooltip="The chain whose last segment (or all segments) gets r."),
                io.Float.Input("ratio", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="The blend r, 0 (no blend) to 1 (vision features only)."),
                io.Combo.Input("apply_to", options=["last", "all"], default="last",
                               tooltip="last: the segment just before this node; all: every segment so far."),
            ],
            outputs=[Segments.Output("chain", display_name="segments")],
        )

    @classmethod
    def execute(cls, segments, ratio=0.5, apply_to="last") -> io.NodeOutput:
        chain = tuple(segments or ())
        if not chain:
            raise WiringError("BlendRatio got no segment; connect an Image Segment first")
        r = check_ratio(ratio)
        if apply_to == "all":
            out = tuple(replace(s, ratio=r) for s in chain)
        elif apply_to == "last":
            out = chain[:-1] + (replace(chain[-1], ratio=r),)
        else:
            raise OptionError(f"apply_to must be 'last' or 'all', got {apply_to!r}")
        return io.NodeOutput(out)
