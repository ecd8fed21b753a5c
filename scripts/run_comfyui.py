"""Start the real ComfyUI server with this pack's environment fixes.

ComfyUI's main.py imports torchvision before custom nodes load; on a CPU torch
with the registry's CUDA torchvision that import fails unless
``dream_engine_core`` has run its fix first. Usage (arguments go to main.py):

    .venv/bin/python scripts/run_comfyui.py --cpu --listen 127.0.0.1 --port 8188 \
        --disable-auto-launch --base-directory DIR

The ComfyUI folder is ``$COMFYUI_PATH`` or ``.venv/comfyui``.
"""
from __future__ import annotations

import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import dream_engine_core  # noqa: E402,F401  (torchvision import fix)


def main() -> None:
    comfy = os.environ.get("COMFYUI_PATH") or os.path.join(ROOT, ".venv", "comfyui")
    main_py = os.path.join(comfy, "main.py")
    if not os.path.isfile(main_py):
        sys.exit(f"ComfyUI not found at {comfy}: run `make setup` or set COMFYUI_PATH")
    # main.py imports its siblings (server, nodes, comfy ...) from its own folder.
    while ROOT in sys.path:  # our nodes/ folder must not shadow ComfyUI's nodes.py
        sys.path.remove(ROOT)
    sys.path.insert(0, comfy)
    os.chdir(comfy)
    sys.argv = [main_py] + sys.argv[1:]
    runpy.run_path(main_py, run_name="__main__")


if __name__ == "__main__":
    main()
