"""Dream Engine core: interleaved text-image prompts → SD3.5 conditioning.

Pure torch + transformers + safetensors; never imports ComfyUI.
"""
from .compat import check_transformers, ensure_torchvision_importable

ensure_torchvision_importable()
check_transformers()

__version__ = "0.1.0"
