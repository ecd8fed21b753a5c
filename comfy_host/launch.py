"""Start the real ComfyUI server (its own ``main.py``, unchanged) with the one environment
fix the pack's core makes; arguments go to ``main.py``:

    .venv/bin/python comfy_host/launch.py --cpu --listen 127.0.0.1 --port 8188 \
        --disable-auto-launch --base-directory DIR

ComfyUI's ``main.py`` imports torchvision before custom nodes load; on a CPU torch with
the registry's CUDA torchvision that import fails unless
``dream_engine_core.compat.ensure_torchvision_importable`` has run first. This file is run
by path (``comfy_host.server.ComfyServer`` does, and so does
``scripts/user_install_driver.py`` in a user's ComfyUI), so it needs nothing of this
repository on ``sys.path``: it loads the core from the folder beside it under a private
name, and the server process imports nothing else of the repository (the pack is loaded
by ComfyUI from ``custom_nodes``, exactly as a user's ComfyUI loads it).

The ComfyUI folder is ``$COMFYUI_PATH`` or ``.venv/comfyui``.
"""
from __future__ import annotations

import importlib.util
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_torchvision_importable() -> None:
    """Run the core's torchvision fix: the core's package (``dream_engine_core``: standard library
    and torch at import) is loaded under a private name, whose import runs the fix, so that no
    package of this repository becomes importable under its own name."""
    core = os.path.join(ROOT, "dream_engine_core")
    spec = importlib.util.spec_from_file_location("_dream_engine_launch_core", os.path.join(core, "__init__.py"),
                                                  submodule_search_locations=[core])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # keeps the operator library the fix may define alive
    spec.loader.exec_module(module)


def needs_torchvision_fix() -> bool:
    """Only a CPU build of torch (``+cpu``) beside the registry's CUDA torchvision needs the fix.
    Decided from the installed version, without importing torch: on a CUDA machine ``main.py``
    must import torch itself, after its ``cuda_malloc`` has chosen the CUDA allocator (torch
    imported first fails CUDA start-up: "Allocator backend parsed at runtime != ... at load time")."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "+cpu" in version("torch")
    except PackageNotFoundError:
        return False


def main() -> None:
    comfy = os.environ.get("COMFYUI_PATH") or os.path.join(ROOT, ".venv", "comfyui")
    main_py = os.path.join(comfy, "main.py")
    if not os.path.isfile(main_py):
        sys.exit(f"ComfyUI not found at {comfy}: run `make setup` or set COMFYUI_PATH")
    if needs_torchvision_fix():
        make_torchvision_importable()
    # main.py imports its siblings (server, nodes, comfy ...) from its own folder: neither this
    # file's folder (comfy_host/server.py) nor the repository root (nodes/) may shadow them.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) not in (here, ROOT)]
    sys.path.insert(0, comfy)
    os.chdir(comfy)
    sys.argv = [main_py] + sys.argv[1:]
    runpy.run_path(main_py, run_name="__main__")


if __name__ == "__main__":
    main()
