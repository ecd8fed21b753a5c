"""Environment checks and the few transformers calls whose API differs across versions.

Nothing here raises at import: ComfyUI shows a pack that fails at import as
"IMPORT FAILED" with no hint, so the version check runs when a model is first
loaded (:func:`require_transformers`, called by ``LMMEncoder.from_folder``).

* transformers: supported from :data:`TRANSFORMERS_MIN` (4.57) on, tested through
  :data:`TRANSFORMERS_TESTED_MAX`. Below the floor (or not installed) the first load
  raises :class:`DependencyError` naming the command that fixes it; above the tested
  range a warning is logged once and the load goes on.
* Shims for the Qwen2-VL calls that changed between 4.57 and 5.x; each returns the
  same values on both (the vision tower's merged output, the M-RoPE positions).
* torchvision: transformers and ComfyUI import it when it is installed. A
  torchvision wheel built for another torch (for example a CUDA build next to a
  CPU torch) fails at import with ``operator torchvision::nms does not exist``.
  Only in that case, the two operator schemas its Python side registers fakes
  for are defined so that the import succeeds; its compiled operators stay
  unavailable, and nothing in this pack uses them.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import re
import sys

import torch

from .errors import DependencyError

log = logging.getLogger("dream_engine")

_TORCHVISION_LIB = None
#: oldest supported transformers (major, minor) and the newest release tested.
TRANSFORMERS_MIN = (4, 57)
TRANSFORMERS_TESTED_MAX = (5, 25)
TRANSFORMERS_REQUIREMENT = "transformers>=4.57"
_warned_untested = False


def install_hint(requirement: str) -> str:
    return (f"install it into the Python that runs ComfyUI: {sys.executable} -m pip install \"{requirement}\" "
            f"(or `pip install -r requirements.txt` in the Dream Engine folder)")


def parse_version(version: str) -> tuple[int, int, int]:
    """``"4.57.6"`` → ``(4, 57, 6)``; pre-release and local suffixes are ignored."""
    nums = [int(m) for m in re.findall(r"\d+", version.split("+")[0])[:3]]
    return tuple(nums + [0] * (3 - len(nums)))  # type: ignore[return-value]


def transformers_version() -> str | None:
    """The installed transformers version, or None when it cannot be imported."""
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


def require_transformers() -> str:
    """Check transformers before a model is loaded; return its version.

    Raises :class:`DependencyError` when it is missing or older than
    :data:`TRANSFORMERS_MIN`; logs a warning (once) when it is newer than the
    newest tested release.
    """
    global _warned_untested
    try:
        import transformers
    except ImportError as e:
        raise DependencyError(f"Dream Engine needs the transformers package, which cannot be imported ({e}); "
                              + install_hint(TRANSFORMERS_REQUIREMENT)) from e
    found = transformers.__version__
    if parse_version(found)[:2] < TRANSFORMERS_MIN:
        raise DependencyError(f"Dream Engine needs {TRANSFORMERS_REQUIREMENT} (found transformers {found}); "
                              + install_hint(TRANSFORMERS_REQUIREMENT))
    if parse_version(found)[:2] > TRANSFORMERS_TESTED_MAX and not _warned_untested:
        _warned_untested = True
        log.warning("Dream Engine was tested with transformers %d.%d to %d.%d; found %s, which may work "
                    "(report problems with this version)", *TRANSFORMERS_MIN, *TRANSFORMERS_TESTED_MAX, found)
    return found


def load_processor(folder: str):
    """The Qwen2-VL processor (tokenizer + image processor) from a local folder.

    transformers 5 saves ``extra_special_tokens`` in ``tokenizer_config.json`` as a
    list of token strings; 4.57 expects a name → token mapping there and fails on
    the list. On 4.x that list is passed as ``additional_special_tokens`` (what 4.x
    calls it; the tokens and their ids come from ``tokenizer.json`` either way).
    """
    from transformers import AutoProcessor

    kw = {}
    if parse_version(transformers_version() or "0")[0] < 5:
        try:
            with open(os.path.join(folder, "tokenizer_config.json")) as f:
                extra = json.load(f).get("extra_special_tokens")
        except (OSError, ValueError):
            extra = None
        if isinstance(extra, list):
            kw = {"extra_special_tokens": {}, "additional_special_tokens": extra}
    return AutoProcessor.from_pretrained(folder, local_files_only=True, **kw)


def load_qwen2vl(folder: str, dtype: torch.dtype, attn_implementation: str = "sdpa"):
    """``Qwen2VLForConditionalGeneration`` from a local folder, on any supported transformers.

    transformers 5 saves the text model's rotary settings as ``rope_parameters``;
    4.57 reads only ``rope_scaling`` + ``rope_theta`` and would build the model
    without M-RoPE sections. On 4.x a folder written by 5.x gets those two fields
    from its ``rope_parameters`` (the same values, so the same model). The original
    Qwen2-VL-2B-Instruct ``config.json`` has ``rope_scaling`` and loads unchanged.

    The load runs outside inference mode (ComfyUI executes nodes inside it): 4.57
    would otherwise create the weights as inference tensors, which have no version
    counter (the encoder's text cache reads it).
    """
    with torch.inference_mode(False):  # ComfyUI runs nodes in inference mode
        return _load_qwen2vl(folder, dtype, attn_implementation)


def _load_qwen2vl(folder: str, dtype: torch.dtype, attn_implementation: str):
    from transformers import AutoConfig, Qwen2VLForConditionalGeneration

    kw = {}
    if parse_version(transformers_version() or "0")[0] < 5:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        text = getattr(config, "text_config", None) or config
        rp = getattr(text, "rope_parameters", None)
        if getattr(text, "rope_scaling", None) is None and isinstance(rp, dict) and "mrope_section" in rp:
            text.rope_theta = float(rp.get("rope_theta", text.rope_theta))
            text.rope_scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
            text.rope_scaling.setdefault("rope_type", "default")
            text.rope_scaling["type"] = text.rope_scaling["rope_type"]
        kw["config"] = config
    return Qwen2VLForConditionalGeneration.from_pretrained(
        folder, local_files_only=True, dtype=dtype, use_safetensors=True, attn_implementation=attn_implementation,
        **kw)


def image_size_kwargs(min_pixels: int, max_pixels: int) -> dict:
    """Keyword arguments that bound an image's pixel count in the Qwen2-VL image processor.

    transformers 5 takes ``size={"shortest_edge": min, "longest_edge": max}`` (and
    deprecates ``min_pixels``/``max_pixels``). In 4.57 the processor's own
    ``min_pixels``/``max_pixels`` from ``preprocessor_config.json`` override ``size``,
    so there the bounds are passed under those names.
    """
    if parse_version(transformers_version() or "0")[0] < 5:
        return {"min_pixels": int(min_pixels), "max_pixels": int(max_pixels)}
    return {"size": {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}}


def vision_merged(visual, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """The Qwen2-VL vision tower's merged output (the embeddings spliced into the input).

    transformers 5 returns a ``BaseModelOutputWithPooling`` whose ``pooler_output``
    is the merger's output; 4.57 returns that tensor itself.
    """
    out = visual(pixel_values, grid_thw=grid_thw)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _rope_takes_token_types(inner) -> bool:
    return "mm_token_type_ids" in inspect.signature(inner.get_rope_index).parameters


def rope_index(inner, input_ids: torch.Tensor, image_token_id: int, image_grid_thw: torch.Tensor,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """M-RoPE positions ``[3, B, L]`` from Qwen2-VL's own ``get_rope_index``.

    transformers 5 takes the per-token modality (1 on image tokens) as its second
    argument; 4.57 finds the images from the ``<|vision_start|>`` token that precedes
    each one. Both give the same positions on real tokens.
    """
    if _rope_takes_token_types(inner):
        mm_types = (input_ids == image_token_id).int()
        pos, _ = inner.get_rope_index(input_ids, mm_types, image_grid_thw=image_grid_thw,
                                      attention_mask=attention_mask)
    else:
        pos, _ = inner.get_rope_index(input_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask)
    return pos


def ensure_torchvision_importable() -> bool:
    """Make ``import torchvision`` work; return True when the fallback was needed."""
    global _TORCHVISION_LIB
    try:
        import torchvision  # noqa: F401
        return False
    except ImportError:
        return False  # not installed: transformers then does without it
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    if _TORCHVISION_LIB is None:
        _TORCHVISION_LIB = torch.library.Library("torchvision", "DEF")
        _TORCHVISION_LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_LIB.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision  # noqa: F401
    return True
