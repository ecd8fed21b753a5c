"""Convert the official Dream Engine release into the safetensors files the pack loads.

The release (``leonardPKU/DreamEngine-ObjectFusion``) keeps its weights in
``transformer/``: ``config.json``, ``diffusion_pytorch_model.bin.index.json`` and pickle
shards (``diffusion_pytorch_model-0000k-of-0000n.bin``; safetensors shards are read
too). The converter accepts the repository root, the ``transformer/`` folder or the
index file. Pickles are opened **only here**, with
``torch.load(weights_only=True, mmap=True)`` — no code is executed and tensors are
memory-mapped; one shard is open at a time and one output tensor is built at a time.
This module is long (~700 lines) on purpose: it is the only code of the pack that opens
pickles, so the reader, the key plan and the writers stay together where one review
sees all of it; each part is its own section below.

The checkpoint is the release demo's combined model: ``dit.*`` (diffusers SD3 names),
``lmm.*`` (pre-4.52 Qwen2-VL names), ``input_embeds_align_mlp.*`` /
``condition_embeds_align_mlp.*`` (the adapter) and the unused ``pooled_proj.*`` /
``norm_lmm_out.weight``. Both models may carry peft LoRA (``…base_layer.weight``,
``…lora_A.default.weight``, ``…lora_B.default.weight``; the demo uses alpha = r).

    python -m tools.convert_official RELEASE --out-dir ComfyUI/models \\
        --lmm-base ComfyUI/models/LLM/Qwen2-VL-2B-Instruct \\
        --dit-base ComfyUI/models/diffusion_models/sd3.5_large.safetensors [--dtype bf16]
    python -m tools.convert_official RELEASE --list     # dry run: the key table only

writes, under ``--out-dir``:

* ``dream_engine/dream_engine_direct_map.safetensors`` — the direct-map adapter, its
  metadata holding the fingerprint of the converted LMM (``dream_engine_core.fingerprint``);
* ``LLM/DreamEngine-Qwen2-VL-2B/`` — the release's LMM with its LoRA merged:
  ``model.safetensors`` (Qwen2-VL key names) plus config, tokenizer and processor
  files copied from ``--lmm-base`` (the stock Qwen2-VL-2B-Instruct folder; the
  release lacks them);
* the DiT, in one of two forms:

  * with ``--dit-base`` (a stock SD3.5 Large diffusion-model file, ComfyUI/single-file
    layout), by default ``loras/dream_engine_sd35_large_lora.safetensors``: the
    release's difference from that base as one file ComfyUI's ``LoraLoaderModelOnly``
    applies (strength 1.0) — the release's LoRA pairs with their ``alpha`` in diffusers
    SD3 keys (``transformer.transformer_blocks.N.attn.to_q.lora_A.weight`` …) and a
    ComfyUI full-difference key (``diffusion_model.KEY.diff``) for every other tensor
    that differs from the base; nothing for tensors equal to it (compared at the base
    file's precision). It uses ComfyUI's own diffusers ↔ MMDiT key map, so ComfyUI must
    be importable: ``$COMFYUI_PATH``, or the ComfyUI this pack is installed in;
  * ``--dit-form merged`` (the default without ``--dit-base``):
    ``diffusion_models/dream_engine_sd35_large.safetensors``, the whole fine-tuned DiT
    in diffusers names with the LoRA merged (ComfyUI's "Load Diffusion Model" detects it);

* ``dream_engine_conversion.tsv`` — every release key and where it went.

Every key of the release is accounted for in that table (printed too); a key no rule
maps makes the conversion fail before anything is written. The peak resident memory
of the run is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import struct
import sys
from dataclasses import dataclass, field

import torch

from dream_engine_core.weights import ST_DTYPES, StreamingSafetensors, merge_lora

UNUSED = (re.compile(r"pooled_proj\..+"), re.compile(r"norm_lmm_out\.weight"))
ADAPTER = re.compile(r"(input_embeds_align_mlp|condition_embeds_align_mlp)\.[02]\.(weight|bias)")
LORA = re.compile(r"(.+)\.lora_([AB])\.(?:default\.)?weight")
BASE = re.compile(r"(.+)\.base_layer\.(weight|bias)")
DTYPES = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LMM_NAME = "DreamEngine-Qwen2-VL-2B"
# what the pack implements of the combined model's constructor arguments
# (QwenVLSD3_DirectMap_Transformer2DModel in the official code)
EXPECTED_CONFIG = {"linear_alignment": False, "lmm_output_layer_index": -1, "do_lmm_post_norm": False}


class ConversionError(ValueError):
    """The release holds keys no rule maps, or is incomplete."""


# ---------------------------------------------------------------- reading
def _is_safetensors(path):
    return path.endswith(".safetensors")


def _st_header(path: str) -> dict:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


class ShardReader:
    """Holds one shard open at a time: safetensors lazily, pickles with weights_only + mmap."""

    loads = 0  # pickle shards opened (the --list test counts them)

    def __init__(self):
        self.path = None
        self.obj = None

    def open(self, path):
        if path != self.path:
            self.close()
            if _is_safetensors(path):
                from safetensors import safe_open

                from dream_engine_core.weights import check_safetensors

                check_safetensors(path)
                self.obj = safe_open(path, framework="pt")
            else:
                ShardReader.loads += 1
                self.obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                if isinstance(self.obj, dict) and isinstance(self.obj.get("state_dict"), dict):
                    self.obj = self.obj["state_dict"]  # as the release's demo accepts
                if not isinstance(self.obj, dict):
                    raise ConversionError(f"{path} does not hold a state dict")
            self.path = path
        return self

    def keys(self):
        return list(self.obj.keys())

    def meta(self, key):
        if _is_safetensors(self.path):
            sl = self.obj.get_slice(key)
            return tuple(sl.get_shape()), _st_dtype(sl.get_dtype())
        t = self.obj[key]
        return tuple(t.shape), t.dtype

    def get(self, key) -> torch.Tensor:
        return self.obj.get_tensor(key) if _is_safetensors(self.path) else self.obj[key]

    def close(self):
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
    if os.path.isdir(src) and os.path.isdir(os.path.join(src, "transformer")) and \
            not any(f.endswith(".index.json") for f in os.listdir(src)):
        src = os.path.join(src, "transformer")
    index = single = None
    if os.path.isfile(src) and src.endswith(".json"):
        index = src
    elif os.path.isdir(src):
        idx = sorted(f for f in os.listdir(src) if f.endswith(".index.json"))
        if len(idx) > 1:
            raise ConversionError(f"{src} holds several index files ({', '.join(idx)}); pass the one to convert")
        if idx:
            index = os.path.join(src, idx[0])
        else:
            files = sorted(f for f in os.listdir(src) if f.endswith((".bin", ".safetensors", ".pt", ".pth")))
            if len(files) != 1:
                raise ConversionError(f"{src} has no *.index.json and not exactly one weights file ({files}); "
                                      f"pass the release's repository root, its transformer/ folder or the index")
            single = os.path.join(src, files[0])
    elif os.path.isfile(src):
        single = src
    else:
        raise ConversionError(f"release not found: {src}")
    folder = os.path.dirname(os.path.abspath(index or single))
    cfg_path = os.path.join(folder, "config.json")
    rel = Release({}, [], index, cfg_path if os.path.isfile(cfg_path) else None)
    if rel.config_path:
        with open(rel.config_path) as f:
            rel.config = json.load(f)
        for k, want in EXPECTED_CONFIG.items():
            if k in rel.config and rel.config[k] != want:
                rel.notes.append(f"config.json sets {k} = {rel.config[k]!r}; the pack implements {want!r} "
                                 f"(the released demo's values), so outputs may differ from the release")
    if single:
        r = ShardReader().open(single)
        rel.weights = {k: single for k in r.keys()}
        r.close()
        return rel
    with open(index) as f:
        wm = json.load(f).get("weight_map") or {}
    if not wm:
        raise ConversionError(f"the index {index} has no weight_map")
    rel.weights = {k: os.path.join(folder, s) for k, s in wm.items()}
    rel.missing_shards = sorted({s for s in wm.values() if not os.path.isfile(os.path.join(folder, s))})
    if need_shards and rel.missing_shards:
        raise ConversionError(f"the index {index} names shards that are missing: {', '.join(rel.missing_shards)} "
                              f"(download them all)")
    return rel


def release_shards(src: str) -> dict[str, str]:
    """key → shard path (see :func:`locate`)."""
    return locate(src).weights


def describe_config(rel: Release) -> list[str]:
    if not rel.config_path:
        return ["config.json: not present next to the weights (not needed for conversion)"]
    shown = ", ".join(f"{k}={v!r}" for k, v in rel.config.items())
    return [f"config.json ({rel.config_path}): {shown or 'empty'}"] + [f"note: {n}" for n in rel.notes]


# ---------------------------------------------------------------- planning
@dataclass
class Out:
    """One output tensor: ``sources`` (keys), combined by ``kind``."""
    file: str          # adapter / dit / lmm
    key: str
    kind: str          # copy / merge
    base: str
    lora_a: str | None = None
    lora_b: str | None = None
    alpha: float | None = None  # None: alpha = r

    def build(self, tensor) -> torch.Tensor:
        """The output tensor (LoRA merged); ``tensor(key)`` reads a release tensor."""
        w = tensor(self.base)
        if self.kind == "merge":
            w = merge_lora(w, tensor(self.lora_a), tensor(self.lora_b), self.alpha)
        return w


def _strip_peft(rest: str) -> str:
    return rest.replace("base_model.model.", "")


def plan(keys: list[str]) -> tuple[list[Out], list[tuple[str, str]], list[str]]:
    """Classify every key. Returns (outputs, table rows (key, destination), unmapped keys)."""
    outs: dict[tuple, Out] = {}
    rows, unmapped = [], []
    loras: dict[tuple, dict] = {}
    for k in keys:
        if any(p.fullmatch(k) for p in UNUSED):
            rows.append((k, "unused (not part of the released model's forward)"))
            continue
        if ADAPTER.fullmatch(k):
            outs[("adapter", k)] = Out("adapter", k, "copy", k)
            rows.append((k, f"adapter: {k}"))
            continue
        m = re.fullmatch(r"(dit|lmm)\.(.+)", k)
        if not m:
            unmapped.append(k)
            continue
        part = m.group(1)
        rest = _strip_peft(m.group(2))
        file = "dit" if part == "dit" else "lmm"
        lm = LORA.fullmatch(rest)
        if lm:
            loras.setdefault((file, lm.group(1)), {})[lm.group(2)] = k
            continue
        bm = BASE.fullmatch(rest)
        if bm:
            key = f"{bm.group(1)}.{bm.group(2)}"
            o = outs.setdefault((file, key), Out(file, key, "copy", k))
            o.base = k
            continue
        outs[(file, rest)] = Out(file, rest, "copy", k)
        rows.append((k, f"{file}: {rest}"))
    for (file, mod), ab in loras.items():
        key = f"{mod}.weight"
        o = outs.get((file, key))
        if o is None or "A" not in ab or "B" not in ab:
            unmapped += sorted(ab.values())
            continue
        o.kind, o.lora_a, o.lora_b = "merge", ab["A"], ab["B"]
        rows.append((ab["A"], f"{file}: merged into {key}"))
        rows.append((ab["B"], f"{file}: merged into {key}"))
    for o in outs.values():
        if o.base.endswith((".base_layer.weight", ".base_layer.bias")):
            rows.append((o.base, f"{o.file}: {o.key}" + (" (LoRA merged)" if o.kind == "merge" else "")))
    return list(outs.values()), rows, sorted(unmapped)


# ---------------------------------------------------------------- the DiT's difference from a stock base
def comfy_map(depth: int) -> dict:
    """diffusers SD3 key → ComfyUI MMDiT key (str), ``(key, (dim, start, size))`` for a
    slice of a fused qkv, or ``(key, None, fn)`` for a tensor stored transformed — the
    map ComfyUI's own loaders use (``comfy.utils.mmdit_to_diffusers``)."""
    _import_comfy()
    import comfy.utils

    return comfy.utils.mmdit_to_diffusers({"depth": depth})


def _import_comfy():
    """ComfyUI on ``sys.path``: ``$COMFYUI_PATH``, else the ComfyUI this pack is installed in
    (``ComfyUI/custom_nodes/<pack>``), else the development copy."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    host = os.path.dirname(os.path.dirname(here))
    if not os.environ.get("COMFYUI_PATH") and os.path.isfile(os.path.join(host, "comfy", "model_management.py")):
        os.environ["COMFYUI_PATH"] = host
    from comfy_host.importer import import_comfy

    import_comfy(cpu=True)


def _depth(keys) -> int:
    blocks = {int(m.group(1)) for k in keys for m in [re.match(r"transformer_blocks\.(\d+)\.", k)] if m}
    return max(blocks) + 1 if blocks else 0


# Tensors of ComfyUI's MMDiT state dict that are buffers, not parameters: ComfyUI's LoRA
# loader patches parameters only, so a difference there cannot go into the LoRA form.
COMFY_BUFFERS = ("pos_embed",)


class StockBase:
    """A stock SD3.5 diffusion-model file in ComfyUI's single-file layout (``sd3.5_large.safetensors``,
    with or without the ``model.diffusion_model.`` prefix)."""

    def __init__(self, path: str):
        if not os.path.isfile(path) or not _is_safetensors(path):
            raise ConversionError(f"--dit-base {path}: not a .safetensors file (give the stock "
                                  f"sd3.5_large.safetensors from models/diffusion_models or models/checkpoints)")
        self.path = path
        self.header = _st_header(path)
        with open(path, "rb") as f:
            self.data_start = 8 + struct.unpack("<Q", f.read(8))[0]
        keys = list(self.header)
        self.prefix = next((p for p in ("model.diffusion_model.", "diffusion_model.")
                            if any(k.startswith(p) for k in keys)), "")
        self.keys = {k[len(self.prefix):] for k in keys if k.startswith(self.prefix)}
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
        dt = _st_dtype(h["dtype"])
        return torch.frombuffer(buf, dtype=dt).reshape(h["shape"]) if buf else torch.empty(h["shape"], dtype=dt)


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


def plan_lora_form(dit_outs: list, cmap: dict, base: StockBase, tensor) -> tuple[list, list, list[str]]:
    """Compare the release's DiT with the stock base, one ComfyUI tensor at a time.

    Returns (entries, rows, notes): ``entries`` are ``(name, (where, key), fn)``, ``fn()``
    giving the tensor to write and ``(where, key)`` the tensor whose shape it has
    (``release``/``base``/``scalar``); ``rows`` the table lines for the DiT keys."""
    groups: dict[str, list] = {}
    rows, notes, entries = [], [], []
    for o in dit_outs:
        target = cmap.get(o.key)
        if target is None:
            raise ConversionError(f"release key dit.{o.key} has no counterpart in SD3.5's ComfyUI layout; "
                                  f"convert with --dit-form merged")
        ck = target if isinstance(target, str) else target[0]
        if ck not in base.keys:
            raise ConversionError(f"release key dit.{o.key} maps to {ck}, which the base {base.path} lacks: "
                                  f"is it SD3.5 Large?")
        groups.setdefault(ck, []).append((o, target))
    n_lora = n_diff = n_same = 0
    differing = []
    for ck, members in groups.items():  # in the release's shard order
        stock = base.get(ck)
        unmerged = _assemble(stock, [(t, tensor(o.base)) for o, t in members])
        same = torch.equal(unmerged.to(stock.dtype), stock)
        del unmerged
        loras = [(o, t) for o, t in members if o.kind == "merge"]
        if same:
            for o, _ in loras:
                stem = "transformer." + o.key[:-len(".weight")]
                alpha = float(o.alpha if o.alpha is not None else tensor(o.lora_a).shape[0])
                entries.append((f"{stem}.lora_A.weight", ("release", o.lora_a), (lambda o=o: tensor(o.lora_a))))
                entries.append((f"{stem}.lora_B.weight", ("release", o.lora_b), (lambda o=o: tensor(o.lora_b))))
                entries.append((f"{stem}.alpha", ("scalar", None), (lambda a=alpha: torch.tensor(a))))
                rows += [(o.lora_a, f"dit LoRA: {stem}.lora_A.weight"), (o.lora_b, f"dit LoRA: {stem}.lora_B.weight")]
                n_lora += 1
            for o, _ in members:
                rows.append((o.base, "dit: equal to the base (not written)" if o.kind != "merge"
                             else "dit: equal to the base (its LoRA is written)"))
            n_same += len(members) - len(loras)
            continue
        if ck in COMFY_BUFFERS:
            raise ConversionError(f"release tensor(s) {', '.join('dit.' + o.key for o, _ in members)} differ from the "
                                  f"base, but {ck} is a buffer of ComfyUI's MMDiT, which its LoRA loader does not "
                                  f"patch; convert with --dit-form merged")
        x = "diffusion_model." + (ck[:-len(".weight")] if ck.endswith(".weight") else ck)

        def diff(ck=ck, members=members):
            st = base.get(ck)
            return _assemble(st, [(t, o.build(tensor)) for o, t in members]) - st.float()
        entries.append((f"{x}.diff", ("base", ck), diff))
        for o, _ in members:
            rows.append((o.base, f"dit: differs from the base → {x}.diff"))
            if o.kind == "merge":
                rows += [(o.lora_a, f"dit: merged into {x}.diff"), (o.lora_b, f"dit: merged into {x}.diff")]
        differing.append(ck)
        n_diff += 1
    if not entries:
        notes.append("the release's DiT equals the base: the LoRA file is empty (applying it changes nothing)")
    untouched = len(base.keys - set(groups))
    notes.append(f"DiT vs base: {n_lora} LoRA pairs, {n_diff} full differences, {n_same} release tensors equal "
                 f"to the base (not written), {untouched} base tensors the release does not hold (kept)")
    if differing:
        notes.append("DiT tensors that differ from the base (full differences): " + ", ".join(differing[:20])
                     + (f" … ({len(differing)} in all)" if len(differing) > 20 else ""))
    if n_diff > max(8, len(groups) // 4):
        notes.append(f"warning: {n_diff} of {len(groups)} DiT tensors differ from {os.path.basename(base.path)}; "
                     f"is it the stock SD3.5 Large at full precision (bf16/fp16, not fp8 or another fine-tune)? "
                     f"The file is still exact, only large")
    return entries, rows, notes


# ---------------------------------------------------------------- converting
LMM_COPY_SKIP = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json", ".msgpack", ".h5")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def show_table(rows, shapes=None, out=None):
    out = out or sys.stdout
    rows = sorted(rows)
    width = min(80, max((len(k) for k, _ in rows), default=10))
    print(f"{'release key':<{width}}  destination", file=out)
    for k, d in rows:
        extra = f"  {list(shapes[k][0])} {str(shapes[k][1]).replace('torch.', '')}" if shapes and k in shapes else ""
        print(f"{k:<{width}}  {d}{extra}", file=out)


def summary(rows) -> str:
    return f"{len(rows)} keys: " + ", ".join(f"{sum(1 for _, d in rows if d.startswith(p))} {p}"
                                            for p in ("adapter", "dit", "lmm", "unused"))


def list_release(src: str, out=None) -> int:
    """The dry run: the table from the index (and safetensors shard headers) alone; no
    tensor is loaded. Returns the exit status: 0 all mapped and present, 2 a key is
    unmapped, 3 shards are missing."""
    out = out or sys.stdout
    rel = locate(src, need_shards=False)
    outs, rows, unmapped = plan(list(rel.weights))
    shapes = {}
    for shard in sorted(set(rel.weights.values())):
        if _is_safetensors(shard) and os.path.isfile(shard):
            for k, v in _st_header(shard).items():
                shapes[k] = (v["shape"], v["dtype"])
    for line in describe_config(rel):
        print(line, file=out)
    show_table(rows + [(k, "UNMAPPED: no rule maps this key") for k in unmapped], shapes, out)
    print(summary(rows) + f", {len(unmapped)} unmapped", file=out)
    for line in groups_report(outs):
        print(line, file=out)
    if unmapped:
        print(f"{len(unmapped)} key(s) are not mapped by any rule; the conversion would refuse this release",
              file=sys.stderr)
        return 2
    if rel.missing_shards:
        print(f"{len(rel.missing_shards)} shard(s) named by the index are not present: "
              + ", ".join(rel.missing_shards), file=sys.stderr)
        return 3
    return 0


def groups_report(outs) -> list[str]:
    """One line per key group that a release may or may not hold."""
    dit = [o for o in outs if o.file == "dit"]
    lmm = [o for o in outs if o.file == "lmm"]
    lines = [f"adapter: {sum(1 for o in outs if o.file == 'adapter')} of 8 tensors",
             f"dit: {len(dit)} tensors, LoRA on {sum(o.kind == 'merge' for o in dit)} projections",
             f"lmm: {len(lmm)} tensors, LoRA on {sum(o.kind == 'merge' for o in lmm)} projections"]
    extra = [o.key for o in dit if o.key.startswith(("pos_embed.", "context_embedder."))]
    lines.append("dit pos_embed / context_embedder tensors in the release: " + (", ".join(sorted(extra)) or "none")
                 + " (with --dit-base, the ones that differ from it are listed above)")
    return lines


def convert(src: str, out_dir: str, lmm_base: str | None, name: str = "dream_engine",
            dtype: str = "keep", lora_alpha: float | None = None, progress: bool = True,
            print_table: bool = True, dit_base: str | None = None, dit_form: str | None = None,
            lmm_name: str = LMM_NAME) -> dict[str, str]:
    """Convert the release at ``src``. Returns the paths written (and ``peak_rss_mb``)."""
    from tqdm import tqdm

    from dream_engine_core.adapter import Adapter, AdapterSpec
    from dream_engine_core.weights import save_adapter

    dit_form = dit_form or ("lora" if dit_base else "merged")
    if dit_form not in ("lora", "merged"):
        raise ConversionError(f"--dit-form must be 'lora' or 'merged', got {dit_form!r}")
    if dit_form == "lora" and not dit_base:
        raise ConversionError("--dit-form lora needs --dit-base: the stock SD3.5 Large file the LoRA applies to")
    out_dtype = DTYPES[dtype]
    rel = locate(src)
    key_shard = rel.weights
    outs, rows, unmapped = plan(list(key_shard))
    if unmapped:
        raise ConversionError(f"{len(unmapped)} key(s) of the release are not mapped by any rule, so nothing was "
                              f"written (a key is never dropped silently):\n  " + "\n  ".join(unmapped[:100]))
    for o in outs:
        if o.kind == "merge":
            o.alpha = lora_alpha
    by_file = {f: [o for o in outs if o.file == f] for f in ("adapter", "dit", "lmm")}
    if len(by_file["adapter"]) != 8:
        raise ConversionError("the release lacks the adapter: expected input_embeds_align_mlp.{0,2}.{weight,bias} "
                              "and condition_embeds_align_mlp.{0,2}.{weight,bias}, found "
                              + ", ".join(o.key for o in by_file["adapter"]))
    if not lmm_base:
        raise ConversionError("--lmm-base is required: the release holds the LMM weights but not its config, "
                              "tokenizer and processor files; point it at the stock Qwen2-VL-2B-Instruct folder")
    if not os.path.isfile(os.path.join(lmm_base, "config.json")):
        raise ConversionError(f"--lmm-base {lmm_base} has no config.json (expected the Qwen2-VL-2B-Instruct folder)")
    _check_lmm_complete(by_file["lmm"], lmm_base)
    base = StockBase(dit_base) if dit_form == "lora" else None
    notes = describe_config(rel)

    reader = ShardReader()
    meta = {}
    for shard in sorted(set(key_shard.values())):
        reader.open(shard)
        for k in reader.keys():
            if key_shard.get(k) == shard:
                meta[k] = reader.meta(k)
    reader.close()
    for k in key_shard:
        if k not in meta:
            raise ConversionError(f"the index names {k} in {os.path.basename(key_shard[k])}, which does not hold it")

    def tensor(key):
        return reader.open(key_shard[key]).get(key)

    def order(os_):  # shard by shard, so each shard is opened once (mostly)
        return sorted(os_, key=lambda o: (key_shard[o.base], o.key))

    paths = {
        # the names the shipped workflows load (scripts/build_workflows.py)
        "adapter": os.path.join(out_dir, "dream_engine", f"{name}_direct_map.safetensors"),
        "dit": os.path.join(out_dir, "diffusion_models", f"{name}_sd35_large.safetensors"),
        "dit_lora": os.path.join(out_dir, "loras", f"{name}_sd35_large_lora.safetensors"),
        "lmm": os.path.join(out_dir, "LLM", lmm_name),
    }
    total = sum(len(v) for v in by_file.values())
    bar = tqdm(total=total, desc="converting", unit="tensor", disable=not progress)
    written = {}
    md = {"format": "pt", "source": "official Dream Engine release (converted by tools.convert_official)"}

    def stream(path, entries):
        """entries: (name, dtype, shape, fn)."""
        with StreamingSafetensors(path, [(n, d, s) for n, d, s, _ in entries], md) as w:
            for n, _, _, fn in entries:
                w.write(n, fn())
                bar.update(1)

    def out_dt(dt):
        return out_dtype if (out_dtype and dt.is_floating_point) else dt

    if dit_form == "lora" and by_file["dit"]:  # compare with the base before writing anything
        cmap = comfy_map(_depth(o.key for o in by_file["dit"]))
        entries, dit_rows, dit_notes = plan_lora_form(order(by_file["dit"]), cmap, base, tensor)
        reader.close()
        rows = [r for r in rows if not r[0].startswith("dit.")] + dit_rows
        notes += dit_notes
    # LMM (first: the adapter records its fingerprint)
    lmm_entries = [(o.key, out_dt(meta[o.base][1]), meta[o.base][0], (lambda o=o: o.build(tensor)))
                   for o in order(by_file["lmm"])]
    if lmm_entries:
        stream(os.path.join(paths["lmm"], "model.safetensors"), lmm_entries)
        for f in sorted(os.listdir(lmm_base)):
            p = os.path.join(lmm_base, f)
            if os.path.isfile(p) and not f.endswith(LMM_COPY_SKIP):
                shutil.copyfile(p, os.path.join(paths["lmm"], f))
        written["lmm"] = paths["lmm"]
    # DiT
    if dit_form == "merged" and by_file["dit"]:
        stream(paths["dit"], [(o.key, out_dt(meta[o.base][1]), meta[o.base][0], (lambda o=o: o.build(tensor)))
                              for o in order(by_file["dit"])])
        written["dit"] = paths["dit"]
    elif dit_form == "lora" and by_file["dit"]:
        planned = []
        for n, (where, key), fn in entries:
            if where == "scalar":
                planned.append((n, torch.float32, (), fn))
            elif where == "base":
                planned.append((n, out_dtype or torch.float32, base.shape(key), fn))
            else:
                planned.append((n, out_dt(meta[key][1]), meta[key][0], fn))
        bar.total = len(by_file["lmm"]) + len(planned) + 8
        md_lora = dict(md, format="dream_engine.sd3_lora", key_form="diffusers_sd3+comfy_diff",
                       base_model=os.path.basename(dit_base))
        with StreamingSafetensors(paths["dit_lora"], [(n, d, s) for n, d, s, _ in planned], md_lora) as w:
            for n, _, _, fn in planned:
                w.write(n, fn())
                bar.update(1)
        written["dit_lora"] = paths["dit_lora"]
    reader.close()
    # adapter
    sd = {}
    for o in by_file["adapter"]:
        sd[o.key] = o.build(tensor).float()
        bar.update(1)
    reader.close()
    h, i = sd["input_embeds_align_mlp.0.weight"].shape
    spec = AdapterSpec("direct", lmm_dim=i, hidden_dim=h, token_dim=sd["input_embeds_align_mlp.2.weight"].shape[0],
                       pooled_dim=sd["condition_embeds_align_mlp.2.weight"].shape[0], lmm=lmm_name)
    adapter = Adapter(spec)
    adapter.load_state_dict(sd)
    save_adapter(paths["adapter"], adapter, {"source": "official Dream Engine release (converted)",
                                             "converter": "tools.convert_official"},
                 lmm_folder=paths["lmm"] if lmm_entries else lmm_base)
    written["adapter"] = paths["adapter"]
    bar.close()
    # the table
    table = os.path.join(out_dir, f"{name}_conversion.tsv")
    rows = sorted(rows)
    with open(table, "w") as f:
        f.write("release key\tdestination\n")
        for k, d in rows:
            f.write(f"{k}\t{d}\n")
    written["table"] = table
    written["peak_rss_mb"] = f"{_peak_rss_mb():.0f}"
    if print_table:
        for line in notes:
            print(line)
        show_table(rows)
        print(summary(rows))
        for line in groups_report(outs):
            print(line)
        for p in ("adapter", "lmm", "dit", "dit_lora", "table"):
            if p in written:
                print(f"{p}: {written[p]}")
        from dream_engine_core.weights import read_metadata

        md_a = read_metadata(paths["adapter"])
        print(f"adapter's LMM fingerprint: {md_a['lmm_fingerprint']} ({md_a['lmm_folder']})")
        print(f"peak RSS: {written['peak_rss_mb']} MB")
    return written


def _check_lmm_complete(lmm_outs, lmm_base: str) -> None:
    """The release's LMM must hold every tensor of the stock model (none is taken from the stock folder)."""
    idx = os.path.join(lmm_base, "model.safetensors.index.json")
    if os.path.isfile(idx):
        with open(idx) as f:
            stock = set(json.load(f)["weight_map"])
    else:
        stock = set()
        for fn in os.listdir(lmm_base):
            if fn.endswith(".safetensors"):
                stock |= set(_st_header(os.path.join(lmm_base, fn)))
    if not stock or not lmm_outs:
        return
    norm = {re.sub(r"^model\.language_model\.", "model.", re.sub(r"^model\.visual\.", "visual.", k)) for k in stock}
    have = {o.key for o in lmm_outs}
    missing = sorted(norm - have - {"lm_head.weight"})
    if missing:
        raise ConversionError(f"the release's LMM lacks {len(missing)} tensor(s) of the stock model in {lmm_base}: "
                              + ", ".join(missing[:20]))


def _st_dtype(s: str) -> torch.dtype:
    return {v: k for k, v in ST_DTYPES.items()}[s]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.convert_official", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("release", help="the release: its repository root, its transformer/ folder, its "
                                    "*.index.json, or one weights file")
    ap.add_argument("--list", action="store_true",
                    help="dry run: print every key and its destination from the index alone (no tensor is "
                         "loaded); exit 2 if a key is unmapped, 3 if shards are missing")
    ap.add_argument("--out-dir", help="a ComfyUI models folder (dream_engine/, LLM/, loras/ or diffusion_models/)")
    ap.add_argument("--lmm-base", help="the stock Qwen2-VL-2B-Instruct folder (config, tokenizer, processor)")
    ap.add_argument("--dit-base", help="the stock SD3.5 Large diffusion-model file (sd3.5_large.safetensors): the "
                                       "DiT is written as a LoRA for it (loras/NAME_sd35_large_lora.safetensors)")
    ap.add_argument("--dit-form", choices=("lora", "merged"), default=None,
                    help="lora (default with --dit-base) or merged: the whole DiT "
                         "(diffusion_models/NAME_sd35_large.safetensors, the default without --dit-base)")
    ap.add_argument("--name", default="dream_engine", help="file-name stem of the outputs (default: the names the shipped workflows load)")
    ap.add_argument("--lmm-name", default=LMM_NAME, help=f"the converted LMM folder's name (default {LMM_NAME})")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="keep",
                    help="dtype of the DiT and LMM files (the release is fp32; bf16 halves the size)")
    ap.add_argument("--lora-alpha", type=float, default=None,
                    help="alpha of LoRA found in the release (default: alpha = r, as the release's demo)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    try:
        if a.list:
            raise SystemExit(list_release(a.release))
        if not a.out_dir:
            ap.error("--out-dir is required (or --list for a dry run)")
        convert(a.release, a.out_dir, a.lmm_base, a.name, a.dtype, a.lora_alpha, progress=not a.no_progress,
                dit_base=a.dit_base, dit_form=a.dit_form, lmm_name=a.lmm_name)
    except ConversionError as e:
        print(f"conversion failed: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
