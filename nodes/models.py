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


def lmm_folder_path(name: str) -> str:
    bases = folder_paths.get_folder_paths(LMM_FOLDER)
    for base in bases:
        p = os.path.join(base, *name.split("/"))
        if os.path.isdir(p):
            return p
    raise FileNotFoundError(
        f"LMM folder {name!r} not found in the LLM model folder(s) {bases}; put the HF-format "
        f"Qwen2-VL-2B-Instruct folder there (config.json, preprocessor_config.json, tokenizer_config.json, "
        f"tokenizer.json, model.safetensors or its shards with model.safetensors.index.json)")


def adapter_files() -> list[str]:
    return folder_paths.get_filename_list(ADAPTER_FOLDER)


def adapter_path(name: str) -> str:
    p = folder_paths.get_full_path(ADAPTER_FOLDER, name)
    if p is None:
        raise FileNotFoundError(
            f"adapter {name!r} not found in the dream_engine model folder(s) "
            f"{folder_paths.get_folder_paths(ADAPTER_FOLDER)}; put the adapter .safetensors file there")
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
