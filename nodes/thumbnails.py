"""The workflow thumbnails where the frontend's template browser asks for them, on every
ComfyUI version.

The browser asks for ``/api/workflow_templates/<pack folder>/<name>.jpg``. ComfyUI up to
0.3.x serves the pack's whole ``example_workflows/`` folder there; newer servers answer
that path only for ``.json`` files (their custom-node manager's template route), so the
pictures went missing. The pack therefore registers its own GET route for exactly the thumbnails it
ships. Routes a custom node adds at import come first in the server's table, so this one
answers before the core route that refuses non-JSON files; where ComfyUI still serves the
folder, both give the same file.
"""
from __future__ import annotations

import logging
import os
import re
import sys

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(PACK_DIR, "example_workflows")
_SAFE = re.compile(r"[A-Za-z0-9._-]+")
_registered: set[str] = set()


def thumbnail_names() -> set[str]:
    """The shipped thumbnails (``example_workflows/<name>.jpg``), by name."""
    if not os.path.isdir(EXAMPLES):
        return set()
    return {n[:-4] for n in os.listdir(EXAMPLES) if n.endswith(".jpg") and _SAFE.fullmatch(n[:-4])}


def register_thumbnail_route() -> bool:
    """Add ``GET /workflow_templates/<pack folder>/{name}.jpg`` (and, through the
    server, its ``/api`` twin) to the running ComfyUI server. Returns False where there
    is no server (the pack imported outside ComfyUI's ``main.py``) or the folder name
    cannot be a URL path segment; registering twice is a no-op."""
    srv = sys.modules.get("server")  # ComfyUI's server module, imported before custom nodes
    instance = getattr(getattr(srv, "PromptServer", None), "instance", None)
    module = os.path.basename(PACK_DIR)
    if instance is None or not _SAFE.fullmatch(module) or module in _registered:
        return False
    from aiohttp import web

    names = thumbnail_names()

    async def thumbnail(request):
        name = request.match_info["name"]
        if name not in names:
            raise web.HTTPNotFound()
        return web.FileResponse(os.path.join(EXAMPLES, name + ".jpg"))

    instance.routes.get(f"/workflow_templates/{module}/{{name}}.jpg")(thumbnail)
    _registered.add(module)
    logging.debug("Dream Engine: %d workflow thumbnails served for %s", len(names), module)
    return True
