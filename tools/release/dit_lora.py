"""The DiT as one LoRA file for a stock SD3.5 Large (``--dit-base``), for ComfyUI's
``LoraLoaderModelOnly`` at strength 1.0.

The release's DiT is compared with the base one ComfyUI tensor at a time (ComfyUI's own
diffusers ↔ MMDiT key map, so ComfyUI must be importable: ``$COMFYUI_PATH``, or the
ComfyUI this pack is installed in). Tensors equal to the base (at the base file's
precision) are not written, but the release's LoRA pairs on them are, with their
``alpha``, in diffusers SD3 keys (``transformer.transformer_blocks.N.attn.to_q.lora_A.weight``
…); every other tensor that differs is written as a full difference
(``diffusion_model.KEY.diff``).
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field

import torch

from dream_engine_core.weights import check_safetensors

from . import ConversionError
from .plan import Target
from .reader import is_safetensors, st_dtype
from .writers import Entry, cast

# Tensors of ComfyUI's MMDiT state dict that are buffers, not parameters: ComfyUI's LoRA
# loader patches parameters only, so a difference there cannot go into the LoRA form.
COMFY_BUFFERS = ("pos_embed",)


class StockBase:
    """A stock SD3.5 diffusion-model file in ComfyUI's single-file layout (``sd3.5_large.safetensors``,
    with or without the ``model.diffusion_model.`` prefix)."""

    def __init__(self, path: str):
        if not os.path.isfile(path) or not is_safetensors(path):
            raise ConversionError(f"--dit-base {path}: not a .safetensors file (give the stock "
                                  f"sd3.5_large.safetensors from models/diffusion_models or models/checkpoints)")
        self.path = path
        self.header = {k: v for k, v in check_safetensors(path).items() if k != "__metadata__"}
        with open(path, "rb") as f:
            self.data_start = 8 + struct.unpack("<Q", f.read(8))[0]
        self.prefix = next((p for p in ("model.diffusion_model.", "diffusion_model.")
                            if any(k.startswith(p) for k in self.header)), "")
        self.keys = {k[len(self.prefix):] for k in self.header if k.startswith(self.prefix)}
        if "joint_blocks.0.x_block.attn.qkv.weight" not in self.keys:
            raise ConversionError(f"--dit-base {path} is not an SD3.5 diffusion model in ComfyUI's single-file "
                                  f"layout (no joint_blocks.0.x_block.attn.qkv.weight)")

    def shape(self, key: str) -> tuple:
        return tuple(self.header[self.prefix + key]["shape"])

    def get(self, key: str) -> torch.Tensor:
        """One tensor, read with a plain file read (not a memory map, whose touched pages would
        stay resident for the whole run)."""
        h = self.header[self.prefix + key]
        start, end = h["data_offsets"]
        buf = bytearray(end - start)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + start)
            f.readinto(buf)
        dt = st_dtype(h["dtype"])
        return torch.frombuffer(buf, dtype=dt).reshape(h["shape"]) if buf else torch.empty(h["shape"], dtype=dt)


def comfy_map(depth: int) -> dict:
    """diffusers SD3 key → ComfyUI MMDiT key (str), ``(key, (dim, start, size))`` for a
    slice of a fused qkv, or ``(key, None, fn)`` for a tensor stored transformed — the
    map ComfyUI's own loaders use (``comfy.utils.mmdit_to_diffusers``)."""
    _import_comfy()
    import comfy.utils

    return comfy.utils.mmdit_to_diffusers({"depth": depth})


def _import_comfy() -> None:
    """ComfyUI on ``sys.path``: ``$COMFYUI_PATH``, else the ComfyUI this pack is installed in
    (``ComfyUI/custom_nodes/<pack>``), else the development copy."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    host = os.path.dirname(os.path.dirname(here))
    if not os.environ.get("COMFYUI_PATH") and os.path.isfile(os.path.join(host, "comfy", "model_management.py")):
        os.environ["COMFYUI_PATH"] = host
    from comfy_host.importer import import_comfy

    import_comfy(cpu=True)


def depth(keys) -> int:
    blocks = {int(m.group(1)) for k in keys for m in [re.match(r"transformer_blocks\.(\d+)\.", k)] if m}
    return max(blocks) + 1 if blocks else 0


def _assemble(stock: torch.Tensor, parts: list[tuple[tuple | str, torch.Tensor]]) -> torch.Tensor:
    """The ComfyUI tensor that results from placing release tensors (diffusers names) over ``stock``."""
    out = stock.float().clone()
    for target, t in parts:
        t = t.float()
        if isinstance(target, str):
            out = t.clone()
        elif target[1] is None:
            out = target[2](t)
        else:
            dim, start, size = target[1]
            out.narrow(dim, start, size).copy_(t)
    return out


@dataclass
class LoraForm:
    """What the LoRA-form file holds: its entries, the table rows of the DiT keys, notes."""
    entries: list[Entry] = field(default_factory=list)
    rows: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_lora: int = 0
    n_same: int = 0
    differing: list[str] = field(default_factory=list)


def plan_lora_form(dit: list[Target], base: StockBase, tensors, out_dtype) -> LoraForm:
    """Compare the release's DiT (``dit``, in shard order) with ``base``, one ComfyUI tensor at a
    time; ``tensors`` (``tools.release.reader.ReleaseTensors``) reads the release."""
    groups = _by_comfy_key(dit, comfy_map(depth(t.key for t in dit)), base)
    form = LoraForm()
    for ck, members in groups.items():  # in the release's shard order
        stock = base.get(ck)
        same = torch.equal(_assemble(stock, [(p, tensors(t.base)) for t, p in members]).to(stock.dtype), stock)
        if same:
            _keep_loras(form, [t for t, _ in members], tensors, out_dtype)
        else:
            _full_difference(form, ck, members, base, tensors, out_dtype)
    form.notes = _notes(form, groups, base)
    return form


def _by_comfy_key(dit: list[Target], cmap: dict, base: StockBase) -> dict[str, list]:
    """ComfyUI key → the release targets (with their place in it) that make it up."""
    groups: dict[str, list] = {}
    for t in dit:
        place = cmap.get(t.key)
        if place is None:
            raise ConversionError(f"release key dit.{t.key} has no counterpart in SD3.5's ComfyUI layout; "
                                  f"convert with --dit-form merged")
        ck = place if isinstance(place, str) else place[0]
        if ck not in base.keys:
            raise ConversionError(f"release key dit.{t.key} maps to {ck}, which the base {base.path} lacks: "
                                  f"is it SD3.5 Large?")
        groups.setdefault(ck, []).append((t, place))
    return groups


def _keep_loras(form: LoraForm, members: list[Target], tensors, out_dtype) -> None:
    """Base tensors equal to the stock ones: only their LoRA pairs (and alpha) are written."""
    for t in members:
        if t.kind != "merge":
            form.rows.append((t.base, "dit: equal to the base (not written)"))
            form.n_same += 1
            continue
        stem = "transformer." + t.key[:-len(".weight")]
        alpha = float(t.alpha if t.alpha is not None else tensors.meta[t.lora_a][0][0])
        for ab, key in (("A", t.lora_a), ("B", t.lora_b)):
            shape, dtype = tensors.meta[key]
            form.entries.append(Entry(f"{stem}.lora_{ab}.weight", cast(dtype, out_dtype), shape,
                                      lambda key=key: tensors(key)))
            form.rows.append((key, f"dit LoRA: {stem}.lora_{ab}.weight"))
        form.entries.append(Entry(f"{stem}.alpha", torch.float32, (), lambda a=alpha: torch.tensor(a)))
        form.rows.append((t.base, "dit: equal to the base (its LoRA is written)"))
        form.n_lora += 1


def _full_difference(form: LoraForm, ck: str, members: list, base: StockBase, tensors, out_dtype) -> None:
    """A ComfyUI tensor the release changed: written whole, as its difference from the base."""
    if ck in COMFY_BUFFERS:
        raise ConversionError(f"release tensor(s) {', '.join('dit.' + t.key for t, _ in members)} differ from the "
                              f"base, but {ck} is a buffer of ComfyUI's MMDiT, which its LoRA loader does not "
                              f"patch; convert with --dit-form merged")
    x = "diffusion_model." + (ck[:-len(".weight")] if ck.endswith(".weight") else ck)

    def diff() -> torch.Tensor:
        st = base.get(ck)
        return _assemble(st, [(p, t.build(tensors)) for t, p in members]) - st.float()
    form.entries.append(Entry(f"{x}.diff", out_dtype or torch.float32, base.shape(ck), diff))
    for t, _ in members:
        form.rows.append((t.base, f"dit: differs from the base → {x}.diff"))
        if t.kind == "merge":
            form.rows += [(t.lora_a, f"dit: merged into {x}.diff"), (t.lora_b, f"dit: merged into {x}.diff")]
    form.differing.append(ck)


def _notes(form: LoraForm, groups: dict, base: StockBase) -> list[str]:
    n_diff, differing = len(form.differing), form.differing
    notes = [] if form.entries else [
        "the release's DiT equals the base: the LoRA file is empty (applying it changes nothing)"]
    notes.append(f"DiT vs base: {form.n_lora} LoRA pairs, {n_diff} full differences, {form.n_same} release tensors "
                 f"equal to the base (not written), {len(base.keys - set(groups))} base tensors the release does "
                 f"not hold (kept)")
    if differing:
        notes.append("DiT tensors that differ from the base (full differences): " + ", ".join(differing[:20])
                     + (f" … ({n_diff} in all)" if n_diff > 20 else ""))
    if n_diff > max(8, len(groups) // 4):
        notes.append(f"warning: {n_diff} of {len(groups)} DiT tensors differ from {os.path.basename(base.path)}; "
                     f"is it the stock SD3.5 Large at full precision (bf16/fp16, not fp8 or another fine-tune)? "
                     f"The file is still exact, only large")
    return notes
