"""The LMM folder: every file checked before transformers reads it.

An HF-format Qwen2-VL folder (the hub layout, transformers 5's ``save_pretrained``
layout, or the folder ``tools/convert_official.py`` writes) is checked file by file,
in the order transformers reads them, and the first problem is raised as one
:class:`LMMFolderError` that names the file, what is wrong and what to do — the style
of :func:`dream_engine_core.weights.check_safetensors`, which checks the weights:

* presence: ``config.json``; ``preprocessor_config.json`` or ``processor_config.json``
  with its ``image_processor`` settings; ``tokenizer.json`` or ``vocab.json`` +
  ``merges.txt``; ``model.safetensors`` or ``model.safetensors.index.json`` with every
  shard it names (all missing files are named at once);
* ``config.json``: a JSON object of ``model_type`` ``qwen2_vl`` with a ``vision_config``
  and the text model's sizes (at the top level, as the hub has them, or in
  ``text_config``, as transformers 5 writes them); without them transformers would build
  a model of its default size and refuse the weights with a size-mismatch error;
* the tokenizer files, ``tokenizer_config.json`` (optional), the image-processor settings;
* the index (``weight_map``: tensor name → shard file of this folder; every tensor in
  the shard that the index names) and every weight file, with ``check_safetensors``.

This module is the one place that reads ``model.safetensors.index.json``
(:func:`read_weight_map`, :func:`weight_files`, :func:`tensor_files`). A folder that passed is remembered by
the names, sizes and modification times of its files, so re-queuing a prompt does not
parse a large ``tokenizer.json`` again.
"""
from __future__ import annotations

import json
import os

from .errors import LMMFolderError
from .weights import WeightsError, check_safetensors

INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
#: the text model's sizes; transformers' defaults for them are another model's
TEXT_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "vocab_size")
#: the vision tower's sizes (``hidden_size`` is the width its merger writes into the text model)
VISION_SIZES = ("depth", "embed_dim", "num_heads", "hidden_size")
#: image-processor field → the vision_config field it must equal (transformers' default when absent)
PATCH_FIELDS = {"patch_size": ("patch_size", 14), "temporal_patch_size": ("temporal_patch_size", 2),
                "merge_size": ("spatial_merge_size", 2)}
WEIGHT_FIX = "re-download the LMM folder (or re-export it with the tool that wrote it)"
COPY_FIX = ("copy {name} again from the model's folder (Qwen2-VL-2B-Instruct as published; the converter "
            "copies it from --lmm-base)")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

_passed: dict[str, tuple] = {}


def _fix(name: str) -> str:
    return COPY_FIX.format(name=name)


def _read_text(path: str, fix: str = "") -> str:
    """The file as text; empty or non-UTF-8 files are errors naming the file and ``fix``
    (by default: copy the file again)."""
    fix = fix or _fix(os.path.basename(path))
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        what = "empty (0 bytes)" if not raw else "empty (whitespace only)"
        raise LMMFolderError(f"{path} is {what}; {fix}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LMMFolderError(f"{path} is not UTF-8 text (byte {e.start}); {fix}") from None


def _read_json_object(path: str, fix: str = "") -> dict:
    """The file's JSON object, or an error naming the file and ``fix``."""
    fix = fix or _fix(os.path.basename(path))
    text = _read_text(path, fix)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LMMFolderError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                             f"{fix}") from None
    if not isinstance(data, dict):
        raise LMMFolderError(f"{path} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def _has_image_processor_config(folder: str, have: set) -> bool:
    """The image-processor settings ``from_pretrained`` reads: ``preprocessor_config.json``
    (hub layout), or the ``image_processor`` entry of ``processor_config.json`` (the layout
    transformers 5's ``save_pretrained`` writes). Contents are checked later."""
    if "preprocessor_config.json" in have:
        return True
    if "processor_config.json" in have:
        try:
            with open(os.path.join(folder, "processor_config.json"), encoding="utf-8") as f:
                return isinstance(json.load(f).get("image_processor"), dict)
        except (OSError, ValueError, AttributeError):
            return True  # present but broken: _check_processor names what is wrong with it
    return False


def read_weight_map(folder: str) -> dict[str, str]:
    """``weight_map`` of the folder's ``model.safetensors.index.json``: tensor name → shard
    file name, checked (a JSON object whose ``weight_map`` maps names to plain file names
    inside the folder)."""
    path = os.path.join(folder, INDEX)
    index = _read_json_object(path, WEIGHT_FIX)
    wm = index.get("weight_map")
    if not isinstance(wm, dict) or not wm:
        raise LMMFolderError(f"{path} has no weight_map (tensor name → shard file); {WEIGHT_FIX}")
    for key, shard in wm.items():
        if (not isinstance(shard, str) or not shard or os.path.basename(shard) != shard
                or shard in (".", "..") or "\\" in shard):
            raise LMMFolderError(f"{path} maps {key!r} to {shard!r}, which is not a file name in this folder; "
                                 f"{WEIGHT_FIX}")
    return wm


def weight_files(folder: str) -> list[str]:
    """The folder's safetensors weight files: the shards its index names, or ``model.safetensors``."""
    if os.path.isfile(os.path.join(folder, INDEX)):
        return sorted(set(read_weight_map(folder).values()))
    return ["model.safetensors"]


def tensor_files(folder: str) -> dict[str, str]:
    """Tensor name → path of the safetensors file that holds it: from the index when the
    folder has one, else from the headers of its ``*.safetensors`` files (each checked);
    empty when it holds none."""
    if os.path.isfile(os.path.join(folder, INDEX)):
        return {k: os.path.join(folder, v) for k, v in read_weight_map(folder).items()}
    out = {}
    for fn in sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")) if os.path.isdir(folder) else []:
        path = os.path.join(folder, fn)
        out.update(dict.fromkeys((k for k in check_safetensors(path, WEIGHT_FIX) if k != "__metadata__"), path))
    return out


def _missing(folder: str, have: set) -> list[str]:
    missing = [] if "config.json" in have else ["config.json"]
    if not _has_image_processor_config(folder, have):
        missing.append("preprocessor_config.json (or processor_config.json with its image_processor settings)")
    if not any(all(f in have for f in group) for group in TOKENIZER_FILES):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if INDEX in have:
        missing += [s for s in weight_files(folder) if s not in have]
    elif "model.safetensors" not in have:
        pickles = sorted(f for f in have if f.endswith(PICKLE_SUFFIXES))
        if pickles:
            missing.append("model.safetensors (found only pickled weights " + ", ".join(pickles) +
                           ", which are never opened: convert them to safetensors, e.g. with "
                           "`python -m tools.convert_official`)")
        else:
            missing.append(f"model.safetensors or {INDEX} with its shards")
    return missing


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _check_config(folder: str) -> dict:
    """``config.json``: a Qwen2-VL config with the sizes transformers needs. Returns it."""
    path = os.path.join(folder, "config.json")
    cfg = _read_json_object(path)
    mt = cfg.get("model_type")
    if mt != "qwen2_vl":
        what = "no model_type" if mt is None else f"a {mt!r} model"
        raise LMMFolderError(f"{path} describes {what}; Dream Engine needs Qwen2-VL (model_type 'qwen2_vl', "
                             f"Qwen2-VL-2B-Instruct): put that model's folder in models/LLM")
    vision = cfg.get("vision_config")
    if not isinstance(vision, dict):
        raise LMMFolderError(f"{path} has no vision_config (the vision tower's sizes): transformers would build "
                             f"a default-size vision tower that does not fit the weights; {_fix('config.json')}")
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    bad = [k for k in TEXT_SIZES if not _positive_int(text.get(k, cfg.get(k)))]
    bad += [f"vision_config.{k}" for k in VISION_SIZES if not _positive_int(vision.get(k))]
    if bad:
        raise LMMFolderError(f"{path} lacks the model sizes {', '.join(bad)} (each a positive integer): "
                             f"transformers would build a model of its default size that does not fit the "
                             f"weights; {_fix('config.json')}")
    hidden = text.get("hidden_size", cfg.get("hidden_size"))
    if vision["hidden_size"] != hidden:
        raise LMMFolderError(f"{path}: vision_config.hidden_size ({vision['hidden_size']}) differs from the text "
                             f"model's hidden_size ({hidden}); the vision tower's output cannot enter the text "
                             f"model; {_fix('config.json')}")
    return cfg


def _check_tokenizer(folder: str, have: set) -> None:
    if "tokenizer.json" in have:
        path = os.path.join(folder, "tokenizer.json")
        tok = _read_json_object(path)
        model = tok.get("model")
        if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict) or not model["vocab"]:
            raise LMMFolderError(f"{path} has no tokenizer model with a vocabulary ('model': {{'vocab': …}}); "
                                 f"{_fix('tokenizer.json')}")
    if "vocab.json" in have:
        path = os.path.join(folder, "vocab.json")
        vocab = _read_json_object(path)
        if not vocab or not all(_positive_int(i) or i == 0 and not isinstance(i, bool) for i in vocab.values()):
            raise LMMFolderError(f"{path} is not a vocabulary (token → id, ids non-negative integers); "
                                 f"{_fix('vocab.json')}")
    if "merges.txt" in have:
        path = os.path.join(folder, "merges.txt")
        for n, line in enumerate(_read_text(path).splitlines(), 1):
            if line.strip() and not line.startswith("#version") and len(line.split(" ")) != 2:
                raise LMMFolderError(f"{path}: line {n} is not a merge (two tokens separated by one space); "
                                     f"{_fix('merges.txt')}")
    if "tokenizer_config.json" in have:
        _read_json_object(os.path.join(folder, "tokenizer_config.json"))


def _check_image_processor(path: str, settings: dict, vision: dict, where: str = "") -> None:
    fix = _fix(os.path.basename(path))
    kind = settings.get("image_processor_type")
    if kind is not None and not (isinstance(kind, str) and kind.startswith("Qwen2VLImageProcessor")):
        raise LMMFolderError(f"{path}: {where}image_processor_type is {kind!r}; Qwen2-VL needs "
                             f"Qwen2VLImageProcessor; {fix}")
    for field, (vfield, default) in PATCH_FIELDS.items():
        if field in settings:
            v, want = settings[field], vision.get(vfield, default)
            if not _positive_int(v) or v != want:
                raise LMMFolderError(f"{path}: {where}{field} is {v!r}, but the model's vision_config.{vfield} is "
                                     f"{want}; the image patches would not fit the vision tower; {fix}")
    for field in ("image_mean", "image_std"):
        v = settings.get(field)
        if v is not None and not (isinstance(v, list) and len(v) == 3
                                  and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise LMMFolderError(f"{path}: {where}{field} is {v!r}; it must be three numbers (R, G, B); {fix}")
    pixels = {k: settings[k] for k in ("min_pixels", "max_pixels") if settings.get(k) is not None}
    size = settings.get("size")
    if isinstance(size, dict):
        pixels.update({"size.shortest_edge": size["shortest_edge"]} if "shortest_edge" in size else {})
        pixels.update({"size.longest_edge": size["longest_edge"]} if "longest_edge" in size else {})
    elif size is not None:
        pixels["size"] = size
    for k, v in pixels.items():
        if not _positive_int(v):
            raise LMMFolderError(f"{path}: {where}{k} is {v!r}; it must be a positive number of pixels; {fix}")
    lo = pixels.get("min_pixels", pixels.get("size.shortest_edge"))
    hi = pixels.get("max_pixels", pixels.get("size.longest_edge"))
    if lo is not None and hi is not None and lo > hi:
        raise LMMFolderError(f"{path}: {where}the pixel bounds are reversed (min {lo} > max {hi}); {fix}")


def _check_processor(folder: str, have: set, cfg: dict) -> None:
    vision = cfg["vision_config"]
    if "preprocessor_config.json" in have:
        path = os.path.join(folder, "preprocessor_config.json")
        _check_image_processor(path, _read_json_object(path), vision)
    if "processor_config.json" in have:
        path = os.path.join(folder, "processor_config.json")
        proc = _read_json_object(path)
        if isinstance(proc.get("image_processor"), dict):
            _check_image_processor(path, proc["image_processor"], vision, "image_processor.")


def _check_weights(folder: str, have: set) -> None:
    headers = {f: check_safetensors(os.path.join(folder, f), WEIGHT_FIX) for f in weight_files(folder)}
    if INDEX not in have:
        return
    for key, shard in read_weight_map(folder).items():
        if key not in headers[shard]:
            raise LMMFolderError(f"{os.path.join(folder, INDEX)} maps {key!r} to {shard}, which does not hold it "
                                 f"(the index and the shards come from different downloads); {WEIGHT_FIX}")


def _signature(folder: str) -> tuple:
    out = []
    with os.scandir(folder) as it:
        for e in it:
            try:
                st = e.stat()
            except OSError:
                continue
            out.append((e.name, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


def check_lmm_folder(folder: str) -> None:
    """Raise :class:`LMMFolderError` (or, for a weight file, :class:`WeightsError`) for the
    first problem of the folder; every missing file is named at once.

    Accepts the layouts ``from_pretrained`` loads: the hub layout
    (``preprocessor_config.json``) and the transformers-5 layout (``processor_config.json``
    with the image-processor settings nested in it); ``tokenizer.json`` or ``vocab.json`` +
    ``merges.txt``; ``model.safetensors`` or ``model.safetensors.index.json`` with every
    shard it lists. ``tokenizer_config.json`` is optional, as for ``from_pretrained``.
    """
    if not os.path.isdir(folder):
        raise LMMFolderError(f"LMM folder not found: {folder} (expected an HF-format Qwen2-VL-2B-Instruct folder)")
    key = os.path.realpath(folder)
    sig = _signature(folder)
    if _passed.get(key) == sig:
        return
    have = {name for name, _, _ in sig}
    missing = _missing(folder, have)
    if missing:
        raise LMMFolderError(f"the LMM folder {folder} is incomplete; missing: " + "; ".join(missing) +
                             ". Copy the whole Qwen2-VL-2B-Instruct folder (config, tokenizer, "
                             "preprocessor config and safetensors weights) there.")
    cfg = _check_config(folder)
    _check_tokenizer(folder, have)
    _check_processor(folder, have, cfg)
    _check_weights(folder, have)
    _passed[key] = sig


__all__ = ["LMMFolderError", "WeightsError", "check_lmm_folder", "read_weight_map", "tensor_files", "weight_files"]
