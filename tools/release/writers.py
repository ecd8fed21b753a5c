"""The files the conversion writes: safetensors streamed one tensor at a time (:func:`stream`:
the LMM folder, the merged DiT, the DiT's LoRA form), the adapter and the key table."""
from __future__ import annotations

import os
import shutil
from typing import Callable, NamedTuple

import torch

from ..weights import StreamingSafetensors

SOURCE = "official Dream Engine release (converted by tools.convert_official)"
METADATA = {"format": "pt", "source": SOURCE}
# files of the stock LMM folder not copied into the converted one (its weights are the release's)
LMM_COPY_SKIP = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json", ".msgpack", ".h5")


class Entry(NamedTuple):
    """One tensor of a streamed file: its name, dtype and shape, and ``make()`` building it."""
    name: str
    dtype: torch.dtype
    shape: tuple
    make: Callable[[], torch.Tensor]


def stream(path: str, entries: list[Entry], metadata: dict, progress: Callable[[int], object]) -> str:
    """Write ``entries`` in order, one tensor in memory at a time."""
    with StreamingSafetensors(path, [(e.name, e.dtype, e.shape) for e in entries], metadata) as w:
        for e in entries:
            w.write(e.name, e.make())
            progress(1)
    return path


def cast(dtype: torch.dtype, out_dtype: torch.dtype | None) -> torch.dtype:
    """A release tensor's dtype in the output: ``out_dtype`` (``--dtype``) for floating tensors, if given."""
    return out_dtype if (out_dtype and dtype.is_floating_point) else dtype


def target_entries(targets: list, tensors, out_dtype: torch.dtype | None) -> list[Entry]:
    """The plan's ``targets`` (LoRA merged) as entries, read from ``tensors``
    (``tools.release.reader.ReleaseTensors``); float32 where the plan keeps them so."""
    return [Entry(t.key, cast(tensors.meta[t.base][1], torch.float32 if t.fp32 else out_dtype),
                  tensors.meta[t.base][0], lambda t=t: t.build(tensors)) for t in targets]


def write_lmm_folder(folder: str, entries: list[Entry], lmm_base: str, progress) -> str:
    """``model.safetensors`` (the release's LMM) plus config, tokenizer and processor files of ``lmm_base``."""
    stream(os.path.join(folder, "model.safetensors"), entries, METADATA, progress)
    for f in sorted(os.listdir(lmm_base)):
        p = os.path.join(lmm_base, f)
        if os.path.isfile(p) and not f.endswith(LMM_COPY_SKIP):
            shutil.copyfile(p, os.path.join(folder, f))
    return folder


def write_adapter(path: str, targets: list, tensors, lmm_folder: str, lmm_name: str, progress) -> str:
    """The direct-map adapter, recording the fingerprint of ``lmm_folder``; float32, as its family
    in the plan says (``Adapter`` holds float32 parameters)."""
    from dream_engine_core.adapter import Adapter, AdapterSpec
    from dream_engine_core.weights import save_adapter

    sd = {}
    for t in targets:
        sd[t.key] = t.build(tensors).float()
        progress(1)
    h, i = sd["input_embeds_align_mlp.0.weight"].shape
    spec = AdapterSpec("direct", lmm_dim=i, hidden_dim=h, token_dim=sd["input_embeds_align_mlp.2.weight"].shape[0],
                       pooled_dim=sd["condition_embeds_align_mlp.2.weight"].shape[0], lmm=lmm_name)
    adapter = Adapter(spec)
    adapter.load_state_dict(sd)
    save_adapter(path, adapter, {"source": "official Dream Engine release (converted)",
                                 "converter": "tools.convert_official"}, lmm_folder=lmm_folder)
    return path


def write_table(path: str, rows: list[tuple[str, str]]) -> str:
    """Every release key and where it went, tab-separated."""
    with open(path, "w") as f:
        f.write("release key\tdestination\n")
        for k, d in sorted(rows):
            f.write(f"{k}\t{d}\n")
    return path
