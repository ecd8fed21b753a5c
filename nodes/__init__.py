"""ComfyUI nodes of Dream Engine (V3 schema): thin glue over ``dream_engine_core``.

Node ids are stable (saved workflows refer to them); inputs are only ever added
at the end.
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .engine import InterleavedConditioning, LoadDreamEngine
from .models import register_folders
from .segments import BlendRatio, ImageSegment
from .thumbnails import register_thumbnail_route

register_folders()
NODES = [LoadDreamEngine, InterleavedConditioning, ImageSegment, BlendRatio]


class DreamEngineExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


def comfy_entrypoint() -> DreamEngineExtension:
    register_folders()
    register_thumbnail_route()
    return DreamEngineExtension()
