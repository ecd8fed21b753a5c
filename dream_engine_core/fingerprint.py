"""A fingerprint of an LMM's weights, recorded in every adapter the pack writes.

An adapter is trained on the hidden states of one particular LMM. The official
release's LMM is *not* the stock Qwen2-VL-2B-Instruct (its attention projections
carry a trained LoRA), so pairing its adapter with the stock model runs silently
with the wrong conditioning. The fingerprint lets ``LoadDreamEngine`` refuse such a
pair.

What is hashed (version ``fp1``), cheap enough for every load:

* the language model's **first and last decoder layers**, their attention
  projections ``self_attn.{q,k,v,o}_proj.weight`` — the tensors the release's LoRA
  changes (layer names are normalised, so the pre-4.52 ``model.layers.N`` and the
  newer ``model.language_model.layers.N`` spellings of the same weights agree);
* each tensor's normalised name and shape, then its values **rounded to bfloat16**
  (so an fp32 and a bf16 copy of the same weights give the same fingerprint);
* SHA-256, shown as ``fp1-`` + the first 16 hex digits.

Only those eight tensors are read, from the folder's safetensors files
(``model.safetensors`` or the shards named by ``model.safetensors.index.json``) with
``safe_open``; the model is never built. For Qwen2-VL-2B this reads about 40 MB.

Adapter metadata keys: ``lmm_fingerprint`` (the value above) and ``lmm_folder`` (the
name of the folder it was computed from, for error messages).
"""
from __future__ import annotations

import hashlib
import os
import re

import torch

from .errors import FingerprintError
from .lmm_folder import tensor_files

VERSION = "fp1"
META_FINGERPRINT = "lmm_fingerprint"
META_FOLDER = "lmm_folder"
_ATTN = re.compile(r"^(?:model\.)?(?:language_model\.)?(?:model\.)?layers\.(\d+)\.self_attn\.([qkvo])_proj\.weight$")


def _weight_files(folder: str) -> dict[str, str]:
    """key → safetensors file of an HF model folder."""
    files = tensor_files(folder)
    if not files:
        raise FingerprintError(f"{folder} holds no .safetensors weights to fingerprint")
    return files


def fingerprinted_tensors(keys) -> dict[str, str]:
    """The tensors hashed, as {normalised name: key in the file}, for a list of keys."""
    layers: dict[int, dict[str, str]] = {}
    for k in keys:
        m = _ATTN.match(k)
        if m:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = k
    if not layers:
        raise FingerprintError("no decoder attention projections (layers.N.self_attn.{q,k,v,o}_proj.weight) found")
    first, last = min(layers), max(layers)
    out = {}
    for i in sorted({first, last}):
        for p in "qkvo":
            if p in layers[i]:
                out[f"layers.{i}.self_attn.{p}_proj.weight"] = layers[i][p]
    return out


def lmm_fingerprint(folder: str) -> str:
    """The fingerprint of the LMM weights in ``folder`` (see the module docstring)."""
    from safetensors import safe_open

    files = _weight_files(folder)
    chosen = fingerprinted_tensors(files)
    h = hashlib.sha256(VERSION.encode())
    for name in sorted(chosen):
        key = chosen[name]
        with safe_open(files[key], framework="pt") as f:
            t = f.get_tensor(key)
        h.update(f"{name}:{list(t.shape)}".encode())
        h.update(t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
    return f"{VERSION}-{h.hexdigest()[:16]}"


def fingerprint_metadata(folder: str) -> dict[str, str]:
    """The adapter metadata entries for an adapter made with the LMM in ``folder``."""
    return {META_FINGERPRINT: lmm_fingerprint(folder), META_FOLDER: os.path.basename(os.path.normpath(folder))}


def check_pair(adapter_metadata: dict, adapter_name: str, folder: str) -> str | None:
    """Compare an adapter's recorded fingerprint with the LMM folder.

    Returns ``None`` when they match, a one-line warning when the adapter records no
    fingerprint; raises :class:`FingerprintError` naming both folders and the fix on a mismatch."""
    want = adapter_metadata.get(META_FINGERPRINT)
    if not want:
        return (f"adapter {adapter_name} records no LMM fingerprint, so it cannot be checked against the LMM "
                f"{os.path.basename(os.path.normpath(folder))!r}; stamp it with "
                f"`python -m tools.fingerprint_adapter ADAPTER LMM_FOLDER`")
    have = lmm_fingerprint(folder)
    if have != want:
        made = adapter_metadata.get(META_FOLDER, "an unnamed LMM folder")
        raise FingerprintError(
            f"adapter {adapter_name} was made with the LMM folder {made!r} (fingerprint {want}), but the selected "
            f"LMM folder {os.path.basename(os.path.normpath(folder))!r} holds different weights (fingerprint "
            f"{have}). Select the LMM the adapter was made with (for the official release: the "
            f"'DreamEngine-Qwen2-VL-2B' folder written by `python -m tools.convert_official`, not the stock "
            f"Qwen2-VL-2B-Instruct), or set fingerprint_check to 'ignore' if you know the pair is right.")
    return None
