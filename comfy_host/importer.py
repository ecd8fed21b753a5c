"""Import the real ComfyUI host in-process (trainers, tests, benchmarks, model builders).

ComfyUI is not an installable package: its folder must be on ``sys.path``. The
folder is found from ``$COMFYUI_PATH``, else the copy ``scripts/setup_env.sh``
installs at ``.venv/comfyui``. Argument parsing is enabled with ``--cpu`` only
when no accelerator is present, as ComfyUI's own ``main.py`` would parse it.
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def comfyui_path() -> str:
    path = os.environ.get("COMFYUI_PATH") or os.path.join(ROOT, ".venv", "comfyui")
    if not os.path.isfile(os.path.join(path, "comfy", "model_management.py")):
        raise RuntimeError(f"ComfyUI not found at {path}: run `make setup` (installs it into .venv/comfyui) "
                           f"or set COMFYUI_PATH to your ComfyUI folder")
    return path


def import_comfy(cpu: bool | None = None):
    """Make ``import comfy`` work and return the ``comfy.model_management`` module."""
    if "comfy.model_management" in sys.modules:
        return sys.modules["comfy.model_management"]
    import dream_engine_core  # noqa: F401  (torchvision import fix)
    import torch

    path = comfyui_path()
    if path not in sys.path:
        sys.path.insert(0, path)
    if cpu is None:
        cpu = not torch.cuda.is_available()
    argv = sys.argv
    sys.argv = [argv[0]] + (["--cpu"] if cpu else [])
    try:
        import comfy.options
        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401
        import comfy.model_management as mm
    finally:
        sys.argv = argv
    return mm
