"""Shared fixtures: small same-architecture models built once per session."""
from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile

import pytest
import torch

import dream_engine_core  # noqa: F401
from model_builders.qwen2vl import LMMSize, Qwen2VocabMissing, build_tiny_adapter, build_tiny_qwen2vl

TINY = LMMSize()


def pytest_collection_modifyitems(config, items):
    """A test that takes a ``server`` fixture (the real ComfyUI server) is marked ``server``,
    so ``make test-fast`` leaves it out (pyproject.toml lists the markers)."""
    for item in items:
        if "server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def tiny_lmm_dir(tmp_path_factory) -> str:
    return build_tiny_qwen2vl(str(tmp_path_factory.mktemp("lmm") / "tiny-Qwen2-VL"), TINY, seed=0)


@pytest.fixture(scope="session")
def real_vocab_lmm_dir(tmp_path_factory) -> str:
    """A tiny Qwen2-VL with the real Qwen2 vocabulary (installed by scripts/setup_env.sh).
    Fails, never skips, when set-up did not install it."""
    try:
        return build_tiny_qwen2vl(str(tmp_path_factory.mktemp("lmm") / "tiny-Qwen2-VL-real-vocab"), TINY, seed=0,
                                  real_vocab=True)
    except Qwen2VocabMissing as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def real_vocab_engine(real_vocab_lmm_dir, tiny_adapter_path):
    from dream_engine_core.engine import DreamEngine

    return DreamEngine.load(real_vocab_lmm_dir, tiny_adapter_path, dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_adapter_path(tmp_path_factory) -> str:
    p = str(tmp_path_factory.mktemp("adapter") / "direct.safetensors")
    build_tiny_adapter(p, lmm_dim=TINY.hidden_size, kind="direct", token_dim=128, hidden_dim=96, seed=0)
    return p


@pytest.fixture(scope="session")
def engine(tiny_lmm_dir, tiny_adapter_path):
    from dream_engine_core.engine import DreamEngine

    return DreamEngine.load(tiny_lmm_dir, tiny_adapter_path, dtype=torch.float32)


@pytest.fixture(scope="session")
def comfy():
    """The real ComfyUI host imported in-process (CPU)."""
    from comfy_host.importer import import_comfy

    return import_comfy()


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK = "dream_engine_pack_under_test"
_SHARED: dict = {}


def shared_server():
    """One real ComfyUI server for the whole test session, started on first use: the pack in
    ``custom_nodes`` and the small model set in ``models`` (built once); stopped at exit
    (its folder kept when ``DREAM_ENGINE_KEEP_SERVER_DIR=1``)."""
    import comfy_host as host

    server = _SHARED.get("server")
    if server is not None and server.alive():
        return server
    if "base" not in _SHARED:
        base = _SHARED["base"] = tempfile.mkdtemp(prefix="dream-engine-comfy-")
        host.prepare_base_dir(base, small_model_set(os.path.join(base, "small_models")))
        atexit.register(_stop_shared_server)
    server = _SHARED["server"] = host.ComfyServer(_SHARED["base"]).start()
    return server


def small_model_set(folder: str) -> str:
    """The small random-weight model set of ``make demo --random-models``
    (``model_builders.comfy_formats.build_demo_models``), built in ``folder`` once."""
    import comfy_host as host
    from model_builders.comfy_formats import build_demo_models

    host.import_comfy()
    build_demo_models(folder)
    return folder


def _stop_shared_server():
    server = _SHARED.pop("server", None)
    if server is not None:
        server.stop()
    if os.environ.get("DREAM_ENGINE_KEEP_SERVER_DIR") != "1":
        shutil.rmtree(_SHARED["base"], ignore_errors=True)


def load_pack():
    """The pack loaded as a package under its own name, as ComfyUI loads custom nodes
    (ComfyUI's own ``nodes`` module takes the plain name)."""
    if PACK not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK, os.path.join(ROOT, "__init__.py"),
                                                      submodule_search_locations=[ROOT])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = mod
        spec.loader.exec_module(mod)
    return sys.modules[PACK]


def pack_module(name: str):
    """A submodule of the loaded pack, e.g. ``pack_module("nodes.engine")``."""
    return sys.modules[f"{PACK}.{name}"]


@pytest.fixture(scope="module")
def pack(comfy):
    return load_pack()


# The small model set registered with the in-process host's folders, and its DiT.
@pytest.fixture(scope="module")
def models(pack, tmp_path_factory):
    import folder_paths
    from model_builders.comfy_formats import build_demo_models

    d = str(tmp_path_factory.mktemp("models"))
    build_demo_models(d)
    for name in ("LLM", "dream_engine", "diffusion_models"):
        folder_paths.add_model_folder_path(name, os.path.join(d, name))
    return d


@pytest.fixture(scope="module")
def dit(models):
    import comfy.sd

    return comfy.sd.load_diffusion_model(os.path.join(models, "diffusion_models", "dream_engine_tiny_sd35.safetensors"))


def comfy_nodes_module():
    """ComfyUI's own top-level ``nodes.py`` (not the pack's ``nodes/`` package)."""
    from comfy_host.importer import comfyui_path

    path = os.path.join(comfyui_path(), "nodes.py")
    mod = sys.modules.get("nodes")
    if mod is not None and os.path.abspath(getattr(mod, "__file__", "") or "") == path:
        return mod
    if mod is not None:
        pytest.skip("another module named 'nodes' is imported; ComfyUI's nodes.py cannot be loaded")
    spec = importlib.util.spec_from_file_location("nodes", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["nodes"] = mod
    spec.loader.exec_module(mod)
    return mod
