"""Reading the release: where its files are (:func:`locate`) and their tensors
(:class:`ShardReader`, :class:`ReleaseTensors`).

The release keeps its weights in ``transformer/``: ``config.json``,
``diffusion_pytorch_model.bin.index.json`` and pickle shards; safetensors shards are read
too. Pickles are opened only here, with ``torch.load(weights_only=True, mmap=True)``: no code
is executed and tensors are memory-mapped. Safetensors shards are checked
(``dream_engine_core.weights.check_safetensors``) before they are opened.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from dream_engine_core.weights import check_safetensors

from ..weights import ST_DTYPES

from . import ConversionError

WEIGHT_FILES = (".bin", ".safetensors", ".pt", ".pth")
# what the pack implements of the combined model's constructor arguments
# (QwenVLSD3_DirectMap_Transformer2DModel in the official code)
EXPECTED_CONFIG = {"linear_alignment": False, "lmm_output_layer_index": -1, "do_lmm_post_norm": False}


def is_safetensors(path: str) -> bool:
    return path.endswith(".safetensors")


def st_dtype(code: str) -> torch.dtype:
    """``"F32"`` → ``torch.float32`` (safetensors' dtype names)."""
    return {v: k for k, v in ST_DTYPES.items()}[code]


def st_shapes(path: str) -> dict[str, tuple[list, str]]:
    """key → (shape, dtype name) from a safetensors file's header."""
    return {k: (v["shape"], v["dtype"]) for k, v in check_safetensors(path).items() if k != "__metadata__"}


class ShardReader:
    """Holds one shard open at a time: safetensors lazily, pickles with weights_only + mmap.
    Leaving ``with ShardReader() as shards:`` closes the open shard."""

    loads = 0  # pickle shards opened (the --list test counts them)

    def __init__(self):
        self.path = None
        self.obj = None

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def open(self, path: str) -> "ShardReader":
        if path != self.path:
            self.close()
            self.obj = self._safetensors(path) if is_safetensors(path) else self._pickle(path)
            self.path = path
        return self

    @staticmethod
    def _safetensors(path: str):
        from safetensors import safe_open

        check_safetensors(path)
        return safe_open(path, framework="pt")

    @staticmethod
    def _pickle(path: str) -> dict:
        ShardReader.loads += 1
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]  # as the release's demo accepts
        if not isinstance(obj, dict):
            raise ConversionError(f"{path} does not hold a state dict")
        return obj

    def keys(self) -> list[str]:
        return list(self.obj.keys())

    def meta(self, key: str) -> tuple[tuple, torch.dtype]:
        if is_safetensors(self.path):
            sl = self.obj.get_slice(key)
            return tuple(sl.get_shape()), st_dtype(sl.get_dtype())
        t = self.obj[key]
        return tuple(t.shape), t.dtype

    def get(self, key: str) -> torch.Tensor:
        return self.obj.get_tensor(key) if is_safetensors(self.path) else self.obj[key]

    def close(self) -> None:
        self.obj = None
        self.path = None


@dataclass
class Release:
    """Where the release's files are."""
    weights: dict[str, str]            # key → shard path
    missing_shards: list[str]
    index: str | None
    config_path: str | None
    config: dict | None = None
    notes: list[str] = field(default_factory=list)


def locate(src: str, need_shards: bool = True) -> Release:
    """The release from its repository root, its ``transformer/`` folder, its index file
    or a single weights file. ``need_shards=False`` reads only the index."""
    index, single = _weights_source(src)
    folder = os.path.dirname(os.path.abspath(index or single))
    rel = _with_config(Release({}, [], index, None), folder)
    if single:
        with ShardReader() as shards:
            rel.weights = dict.fromkeys(shards.open(single).keys(), single)
        return rel
    wm = _weight_map(index)
    rel.weights = {k: os.path.join(folder, s) for k, s in wm.items()}
    rel.missing_shards = sorted({s for s in wm.values() if not os.path.isfile(os.path.join(folder, s))})
    if need_shards and rel.missing_shards:
        raise ConversionError(f"the index {index} names shards that are missing: {', '.join(rel.missing_shards)} "
                              f"(download them all)")
    return rel


def _weights_source(src: str) -> tuple[str | None, str | None]:
    """(index file, None) or (None, the single weights file)."""
    if os.path.isdir(src) and os.path.isdir(os.path.join(src, "transformer")) and \
            not any(f.endswith(".index.json") for f in os.listdir(src)):
        src = os.path.join(src, "transformer")
    if os.path.isfile(src):
        return (src, None) if src.endswith(".json") else (None, src)
    if not os.path.isdir(src):
        raise ConversionError(f"release not found: {src}")
    idx = sorted(f for f in os.listdir(src) if f.endswith(".index.json"))
    if len(idx) > 1:
        raise ConversionError(f"{src} holds several index files ({', '.join(idx)}); pass the one to convert")
    if idx:
        return os.path.join(src, idx[0]), None
    files = sorted(f for f in os.listdir(src) if f.endswith(WEIGHT_FILES))
    if len(files) != 1:
        raise ConversionError(f"{src} has no *.index.json and not exactly one weights file ({files}); "
                              f"pass the release's repository root, its transformer/ folder or the index")
    return None, os.path.join(src, files[0])


def _weight_map(index: str) -> dict[str, str]:
    """The release index's ``weight_map`` (key → shard file name)."""
    try:
        with open(index) as f:
            wm = json.load(f).get("weight_map")
    except (OSError, ValueError, AttributeError) as e:
        raise ConversionError(f"the index {index} is unreadable ({e}); download it again") from None
    if not isinstance(wm, dict) or not wm:
        raise ConversionError(f"the index {index} has no weight_map; download it again")
    return wm


def _with_config(rel: Release, folder: str) -> Release:
    """The release's ``config.json`` (optional), and notes where it differs from what the pack implements."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return rel
    rel.config_path = path
    with open(path) as f:
        rel.config = json.load(f)
    for k, want in EXPECTED_CONFIG.items():
        if k in rel.config and rel.config[k] != want:
            rel.notes.append(f"config.json sets {k} = {rel.config[k]!r}; the pack implements {want!r} "
                             f"(the released demo's values), so outputs may differ from the release")
    return rel


def describe_config(rel: Release) -> list[str]:
    if not rel.config_path:
        return ["config.json: not present next to the weights (not needed for conversion)"]
    shown = ", ".join(f"{k}={v!r}" for k, v in rel.config.items())
    return [f"config.json ({rel.config_path}): {shown or 'empty'}"] + [f"note: {n}" for n in rel.notes]


class ReleaseTensors:
    """The release's tensors by key (``tensors(key)``), read through one :class:`ShardReader`;
    ``meta[key]`` is (shape, dtype), read from every shard once up front."""

    def __init__(self, rel: Release, shards: ShardReader):
        self.where = rel.weights
        self.shards = shards
        self.meta = {}
        for shard in sorted(set(self.where.values())):
            shards.open(shard)
            self.meta.update({k: shards.meta(k) for k in shards.keys() if self.where.get(k) == shard})
        for k in self.where:
            if k not in self.meta:
                raise ConversionError(f"the index names {k} in {os.path.basename(self.where[k])}, "
                                      f"which does not hold it")

    def __call__(self, key: str) -> torch.Tensor:
        return self.shards.open(self.where[key]).get(key)

    def in_shard_order(self, targets: list) -> list:
        """``targets`` sorted shard by shard, so each shard is opened once (mostly)."""
        return sorted(targets, key=lambda t: (self.where[t.base], t.key))
