"""Model folders and the Dream Engine handle that travels between nodes.

Folders (registered with ComfyUI's ``folder_paths``, keeping any paths a user or
``extra_model_paths.yaml`` already set):

* ``LLM``: HF-format LMM folders (a community convention), e.g.
  ``models/LLM/Qwen2-VL-2B-Instruct/``;
* ``dream_engine``: adapter ``.safetensors`` files, e.g.
  ``models/dream_engine/dream_engine_direct_map.safetensors``.
"""
from __future__ import annotations

import os

import folder_paths
import torch

from ..dream_engine_core.errors import ModelNameError

LMM_FOLDER = "LLM"
ADAPTER_FOLDER = "dream_engine"


def register_folders() -> None:
    for name, ext in ((LMM_FOLDER, {"folder"}), (ADAPTER_FOLDER, {".safetensors"})):
        default = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            paths, exts = folder_paths.folder_names_and_paths[name]
            paths = list(paths)
            if default not in paths:
                paths.append(default)
            folder_paths.folder_names_and_paths[name] = (paths, set(exts) | ext)
        else:
            folder_paths.folder_names_and_paths[name] = ([default], ext)


def lmm_folders() -> list[str]:
    """HF-format model folders under every ``LLM`` path: each folder holding a
    ``config.json``, up to two levels deep (``LLM/Qwen2-VL-2B-Instruct`` or
    ``LLM/Qwen/Qwen2-VL-2B-Instruct``). An immediate sub-folder without one is listed
    too, so that loading it reports exactly which files are missing."""
    out = set()
    for base in folder_paths.get_folder_paths(LMM_FOLDER):
        if not os.path.isdir(base):
            continue
        for d in sorted(os.listdir(base)):
            p = os.path.join(base, d)
            if not os.path.isdir(p) or d.startswith("."):
                continue
            nested = [s for s in sorted(os.listdir(p))
                      if os.path.isfile(os.path.join(p, s, "config.json"))]
            if os.path.isfile(os.path.join(p, "config.json")) or not nested:
                out.add(d)
            out.update(f"{d}/{s}" for s in nested)
    return sorted(out)


LMM_FILES_HINT = ("put the HF-format Qwen2-VL folder there (for the official release the converter's "
                  "DreamEngine-Qwen2-VL-2B: config.json, preprocessor_config.json, tokenizer.json, "
                  "model.safetensors or its shards with model.safetensors.index.json)")


def _is_path_like(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return (not name or os.path.isabs(name) or "\\" in name or "\x00" in name or ".." in parts
            or "." in parts or "" in parts or "%" in name)


def _inside(base: str, path: str) -> bool:
    """``path`` lies lexically inside ``base`` (symlinks inside are not resolved: see
    :func:`lmm_folder_path`)."""
    base, path = os.path.normpath(os.path.abspath(base)), os.path.normpath(os.path.abspath(path))
    return os.path.commonpath([base, path]) == base and path != base


def lmm_folder_path(name: str) -> str:
    """The folder of an LMM name, confined to the registered ``LLM`` folders.

    The rule: a name is valid only if it is one of :func:`lmm_folders` — a folder
    listed directly in (or one level below) a registered ``LLM`` folder. Names are
    folder names, never paths: absolute paths, ``..`` or ``.`` components, empty
    components, backslashes and ``%`` escapes are refused before any look-up, and the
    joined path must lie inside the registered folder. A registered folder that is
    itself a symlink, and a model folder inside it that is a symlink (a user's own
    link to where the weights live), are followed: links inside the model folders
    are placed by whoever owns the machine, which a prompt cannot do.
    """
    bases = folder_paths.get_folder_paths(LMM_FOLDER)
    if not isinstance(name, str) or _is_path_like(name):
        raise ModelNameError(f"LMM name {name!r} is not a folder name: names are folders inside the LLM model "
                             f"folder(s) {bases} (no absolute paths, '..', backslashes or % escapes); pick one "
                             f"from the list")
    if name in lmm_folders():
        for base in bases:
            p = os.path.join(base, *name.split("/"))
            if _inside(base, p) and os.path.isdir(p):
                return p
    raise ModelNameError(f"LMM folder {name!r} not found in the LLM model folder(s) {bases}; {LMM_FILES_HINT}")


def adapter_files() -> list[str]:
    return folder_paths.get_filename_list(ADAPTER_FOLDER)


def adapter_path(name: str) -> str:
    """The file of an adapter name: one of :func:`adapter_files` (ComfyUI's listing of
    the ``dream_engine`` folders), so that no name leaves them."""
    bases = folder_paths.get_folder_paths(ADAPTER_FOLDER)
    p = folder_paths.get_full_path(ADAPTER_FOLDER, name) if name in adapter_files() else None
    if p is None or not any(_inside(b, p) for b in bases):
        raise ModelNameError(f"adapter {name!r} not found in the dream_engine model folder(s) {bases}; "
                             f"put the adapter .safetensors file there and pick it from the list")
    return p


class DreamEngineModule(torch.nn.Module):
    """The LMM and the adapter as one module, so ComfyUI's model management moves
    both together (``ModelPatcher`` wraps this)."""

    def __init__(self, lmm: torch.nn.Module, adapter: torch.nn.Module):
        super().__init__()
        self.lmm = lmm
        self.adapter = adapter


class DreamEngineHandle:
    """What the ``DREAM_ENGINE`` socket carries: the core engine and the
    ``ModelPatcher`` that ComfyUI's model management loads and offloads."""

    def __init__(self, engine, patcher, lmm_name: str, adapter_name: str):
        self.engine = engine
        self.patcher = patcher
        self.lmm_name = lmm_name
        self.adapter_name = adapter_name

    @property
    def map_kind(self) -> str:
        return self.engine.map_kind

    def __repr__(self):
        return (f"DreamEngine(lmm={self.lmm_name!r}, adapter={self.adapter_name!r}, map={self.map_kind}, "
                f"dtype={self.engine.encoder.dtype})")
