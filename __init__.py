"""Dream Engine for ComfyUI: interleaved text-image conditioning of SD3.5.

ComfyUI entry point (V3): ``comfy_entrypoint`` returns the extension with the
pack's nodes. No ``NODE_CLASS_MAPPINGS`` is exported on purpose: ComfyUI would
use it and never call ``comfy_entrypoint``.

Outside ComfyUI (e.g. pytest collecting this folder as a package) there is no
``comfy_api`` to import, and nothing is registered.
"""
import importlib.util

# The frontend extension (web/dream_engine.js) shows on the conditioning node what the model saw.
WEB_DIRECTORY = "./web"

if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
