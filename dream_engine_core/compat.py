"""Environment checks done once at import.

* transformers must be a 5.x release (the Qwen2-VL API this pack calls).
* torchvision: transformers and ComfyUI import it when it is installed. A
  torchvision wheel built for another torch (for example a CUDA build next to a
  CPU torch) fails at import with ``operator torchvision::nms does not exist``.
  Only in that case, the two operator schemas its Python side registers fakes
  for are defined so that the import succeeds; its compiled operators stay
  unavailable, and nothing in this pack uses them.
"""
from __future__ import annotations

import sys

import torch

_TORCHVISION_LIB = None
TRANSFORMERS_RANGE = (5, 6)


def check_transformers() -> None:
    import transformers

    major = int(transformers.__version__.split(".")[0])
    if not TRANSFORMERS_RANGE[0] <= major < TRANSFORMERS_RANGE[1]:
        raise ImportError(
            f"Dream Engine needs transformers>={TRANSFORMERS_RANGE[0]},<{TRANSFORMERS_RANGE[1]} "
            f"(found {transformers.__version__}); run: pip install 'transformers>=5,<6'")


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
