"""Dream Engine for ComfyUI: interleaved text-image conditioning of SD3.5.

ComfyUI entry point (V3): ``comfy_entrypoint`` returns the extension with the
pack's nodes. No ``NODE_CLASS_MAPPINGS`` is exported on purpose: ComfyUI would
use it and never call ``comfy_entrypoint``.
"""
from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
