"""Dream Engine core: interleaved text-image prompts → SD3.5 conditioning.

Pure torch + transformers + safetensors; never imports ComfyUI. Importing it never
fails on a missing or unsupported transformers: that is checked when a model is
first loaded (``compat.require_transformers``), so the nodes still register.
"""
from .compat import ensure_torchvision_importable

ensure_torchvision_importable()

__version__ = "0.1.0"
