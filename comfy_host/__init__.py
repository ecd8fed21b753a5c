"""The real ComfyUI host, for everything outside ComfyUI that needs it: ``make demo``,
the thumbnails, the miniature's evaluation, the benchmarks and the tests.

* :mod:`.importer` — import ComfyUI in-process (``import_comfy``);
* :mod:`.base_dir` — lay out a ComfyUI base directory with this pack in ``custom_nodes``;
* :mod:`.server` — start the real server (through ``launch.py``, run by path) and queue
  prompts over HTTP;
* :mod:`.workflows` — the shipped workflows and :func:`~.workflows.configure`, the one
  way their widget values are changed.

The pack itself never imports this package.
"""
from .base_dir import EXAMPLE_IMAGES, PACK_NAME, ROOT, prepare_base_dir, write_example_images
from .importer import comfyui_path, import_comfy
from .server import ComfyServer, PromptRejected, ServerError, execution_error, free_port, status_messages
from .workflows import (SMALL, WORKFLOWS, api_twin, apply_profile, configure, load_api, nodes_of,
                        small_model_profile, workflow_files)
