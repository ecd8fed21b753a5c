"""Convert the official Dream Engine release into the safetensors files the pack loads.

The release (``leonardPKU/DreamEngine-ObjectFusion``) is one combined checkpoint in
pickle shards (``diffusion_pytorch_model-0000k-of-0000n.bin`` + ``….bin.index.json``;
safetensors shards are read too). Pickles are opened **only here**, with
``torch.load(weights_only=True, mmap=True)`` — no code is executed and tensors are
memory-mapped, so memory stays bounded (one output tensor at a time).

    python -m tools.convert_official RELEASE_DIR --lmm-base models/LLM/Qwen2-VL-2B-Instruct \\
        --out-dir ComfyUI/models [--dtype bf16] [--name dream_engine]

writes

* ``dream_engine/NAME.safetensors`` — the direct-map adapter (``input_embeds_align_mlp``,
  ``condition_embeds_align_mlp``) with the pack's adapter metadata;
* ``diffusion_models/NAME_dit.safetensors`` — the fine-tuned SD3.5 DiT in diffusers
  names (``dit.`` stripped), which ComfyUI's "Load Diffusion Model" detects and
  converts itself; peft LoRA (``base_layer`` / ``lora_A.default`` / ``lora_B.default``)
  is merged with scale ``alpha / r``;
* ``LLM/NAME-Qwen2-VL/`` — the LMM as an HF Qwen2-VL folder: ``model.safetensors`` in
  the key names transformers itself writes for Qwen2-VL (``model.layers…``,
  ``visual…``; LoRA merged) plus config, tokenizer and processor files copied from
  ``--lmm-base`` (the stock Qwen2-VL-2B-Instruct folder; the release lacks them).

Every key of the release is accounted for in a table (printed, and written to
``NAME_conversion.tsv``): where it went, merged into which weight, or deliberately
unused (``pooled_proj.*``, ``norm_lmm_out.weight``: not used by the released model's
forward). A key no rule maps makes the conversion fail before anything is written.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass

import torch

UNUSED = (re.compile(r"pooled_proj\..+"), re.compile(r"norm_lmm_out\.weight"))
ADAPTER = re.compile(r"(input_embeds_align_mlp|condition_embeds_align_mlp)\.[02]\.(weight|bias)")
LORA = re.compile(r"(.+)\.lora_([AB])\.(?:default\.)?weight")
BASE = re.compile(r"(.+)\.base_layer\.(weight|bias)")
DTYPES = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}


class ConversionError(ValueError):
    """The release holds keys no rule maps, or is incomplete."""


# ---------------------------------------------------------------- reading
def _is_safetensors(path):
    return path.endswith(".safetensors")


class ShardReader:
    """Opens one shard at a time: safetensors lazily, pickles with weights_only + mmap."""

    def __init__(self):
        self.path = None
        self.obj = None

    def open(self, path):
        if path != self.path:
            self.close()
            if _is_safetensors(path):
                from safetensors import safe_open

                self.obj = safe_open(path, framework="pt")
            else:
                self.obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                if not isinstance(self.obj, dict):
                    raise ConversionError(f"{path} does not hold a state dict")
            self.path = path
        return self

    def keys(self):
        return list(self.obj.keys())

    def meta(self, key):
        if _is_safetensors(self.path):
            sl = self.obj.get_slice(key)
            return tuple(sl.get_shape()), sl.get_dtype()
        t = self.obj[key]
        return tuple(t.shape), t.dtype

    def get(self, key) -> torch.Tensor:
        return self.obj.get_tensor(key) if _is_safetensors(self.path) else self.obj[key]

    def close(self):
        self.obj = None
        self.path = None


def release_shards(src: str) -> dict[str, str]:
    """key → shard path, from an index (``*.index.json``) or a single weights file."""
    if os.path.isfile(src) and src.endswith(".json"):
        index = src
    elif os.path.isdir(src):
        idx = sorted(f for f in os.listdir(src) if f.endswith(".index.json"))
        if idx:
            index = os.path.join(src, idx[0])
        else:
            files = sorted(f for f in os.listdir(src) if f.endswith((".bin", ".safetensors", ".pt", ".pth")))
            if len(files) != 1:
                raise ConversionError(f"{src} has no *.index.json and not exactly one weights file ({files})")
            src = os.path.join(src, files[0])
            index = None
    else:
        index = None
    if index is None:
        if not os.path.isfile(src):
            raise ConversionError(f"release not found: {src}")
        r = ShardReader().open(src)
        keys = r.keys()
        r.close()
        return {k: src for k in keys}
    with open(index) as f:
        wm = json.load(f)["weight_map"]
    root = os.path.dirname(os.path.abspath(index))
    missing = sorted({s for s in wm.values() if not os.path.isfile(os.path.join(root, s))})
    if missing:
        raise ConversionError(f"the index {index} names shards that are missing: {', '.join(missing)}")
    return {k: os.path.join(root, s) for k, s in wm.items()}


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


# ---------------------------------------------------------------- streaming safetensors writer
class StreamingSafetensors:
    """Write a safetensors file tensor by tensor: the header (names, dtypes, shapes,
    offsets) is known up front, so only one tensor is in memory at a time."""

    def __init__(self, path: str, entries: list[tuple[str, torch.dtype, tuple]], metadata: dict | None = None):
        self.path = path
        header, off = {}, 0
        self.sizes = {}
        for name, dt, shape in entries:
            n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dt).element_size()
            header[name] = {"dtype": ST_DTYPES[dt], "shape": list(shape), "data_offsets": [off, off + n]}
            self.sizes[name] = (dt, tuple(shape), n)
            off += n
        if metadata:
            header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.order = [e[0] for e in entries]
        self.next = 0
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
        self.f = os.fdopen(fd, "wb")
        self.f.write(struct.pack("<Q", len(raw)))
        self.f.write(raw)

    def write(self, name: str, t: torch.Tensor):
        if self.order[self.next] != name:
            raise RuntimeError(f"tensor {name} written out of order (expected {self.order[self.next]})")
        dt, shape, n = self.sizes[name]
        t = t.detach().to("cpu", dt).contiguous()
        if tuple(t.shape) != shape:
            raise RuntimeError(f"{name}: shape {tuple(t.shape)} != planned {shape}")
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        assert len(data) == n
        self.f.write(data)
        self.next += 1

    def close(self):
        if self.next != len(self.order):
            raise RuntimeError(f"{self.path}: {len(self.order) - self.next} tensors were not written")
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self):
        try:
            self.f.close()
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)


# ---------------------------------------------------------------- converting
LMM_COPY_SKIP = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json", ".msgpack", ".h5")


def convert(src: str, out_dir: str, lmm_base: str | None, name: str = "dream_engine",
            dtype: str = "keep", lora_alpha: float | None = None, progress: bool = True,
            print_table: bool = True) -> dict[str, str]:
    """Convert the release at ``src``. Returns the paths written."""
    from tqdm import tqdm

    from dream_engine_core.adapter import Adapter, AdapterSpec
    from dream_engine_core.weights import save_adapter

    out_dtype = DTYPES[dtype]
    key_shard = release_shards(src)
    outs, rows, unmapped = plan(list(key_shard))
    if unmapped:
        raise ConversionError(f"{len(unmapped)} key(s) of the release are not mapped by any rule, so nothing was "
                              f"written (a key is never dropped silently):\n  " + "\n  ".join(unmapped[:100]))
    by_file = {f: [o for o in outs if o.file == f] for f in ("adapter", "dit", "lmm")}
    if len(by_file["adapter"]) != 8:
        raise ConversionError("the release lacks the adapter: expected input_embeds_align_mlp.{0,2}.{weight,bias} "
                              "and condition_embeds_align_mlp.{0,2}.{weight,bias}, found "
                              + ", ".join(o.key for o in by_file["adapter"]))
    if by_file["lmm"] and not lmm_base:
        raise ConversionError("--lmm-base is required: the release holds the LMM weights but not its config, "
                              "tokenizer and processor files; point it at the stock Qwen2-VL-2B-Instruct folder")
    if lmm_base and not os.path.isfile(os.path.join(lmm_base, "config.json")):
        raise ConversionError(f"--lmm-base {lmm_base} has no config.json (expected the Qwen2-VL-2B-Instruct folder)")

    reader = ShardReader()
    # shapes/dtypes of every source (metadata only; mmap reads no data)
    meta = {}
    for shard in sorted(set(key_shard.values())):
        reader.open(shard)
        for k in reader.keys():
            if key_shard.get(k) == shard:
                meta[k] = reader.meta(k)
    reader.close()

    def tensor(key):
        return reader.open(key_shard[key]).get(key)

    def build(o: Out) -> torch.Tensor:
        w = tensor(o.base)
        if o.kind == "merge":
            a, b = tensor(o.lora_a).float(), tensor(o.lora_b).float()
            r = a.shape[0]
            scale = (lora_alpha if lora_alpha is not None else r) / r
            w = (w.float() + scale * (b @ a)).to(w.dtype)
        return w

    def order(os_):  # shard by shard, so each shard is opened once (mostly)
        return sorted(os_, key=lambda o: (key_shard[o.base], o.key))

    paths = {
        # the names the shipped workflows load (scripts/build_workflows.py)
        "adapter": os.path.join(out_dir, "dream_engine", f"{name}_direct_map.safetensors"),
        "dit": os.path.join(out_dir, "diffusion_models", f"{name}_sd35_large.safetensors"),
        "lmm": os.path.join(out_dir, "LLM", f"Qwen2-VL-2B-Instruct-{name}"),
    }
    total = sum(len(v) for v in by_file.values())
    bar = tqdm(total=total, desc="converting", unit="tensor", disable=not progress)
    written = {}
    # adapter
    sd = {}
    for o in by_file["adapter"]:
        sd[o.key] = build(o).float()
        bar.update(1)
    h, i = sd["input_embeds_align_mlp.0.weight"].shape
    spec = AdapterSpec("direct", lmm_dim=i, hidden_dim=h, token_dim=sd["input_embeds_align_mlp.2.weight"].shape[0],
                       pooled_dim=sd["condition_embeds_align_mlp.2.weight"].shape[0], lmm="Qwen2-VL-2B-Instruct")
    adapter = Adapter(spec)
    adapter.load_state_dict(sd)
    save_adapter(paths["adapter"], adapter, {"source": "official Dream Engine release (converted)",
                                             "converter": "tools.convert_official"})
    written["adapter"] = paths["adapter"]
    # DiT and LMM, streamed
    for part, path in (("dit", paths["dit"]), ("lmm", os.path.join(paths["lmm"], "model.safetensors"))):
        os_ = order(by_file[part])
        if not os_:
            continue
        entries = []
        for o in os_:
            shape, dt = meta[o.base]
            dt = dt if isinstance(dt, torch.dtype) else _st_dtype(dt)
            entries.append((o.key, out_dtype if (out_dtype and dt.is_floating_point) else dt, shape))
        md = {"format": "pt", "source": "official Dream Engine release (converted)"}
        w = StreamingSafetensors(path, entries, md)
        try:
            for o in os_:
                w.write(o.key, build(o))
                bar.update(1)
            w.close()
        except BaseException:
            w.abort()
            raise
        written[part] = path if part == "dit" else paths["lmm"]
    reader.close()
    bar.close()
    if by_file["lmm"]:
        for f in sorted(os.listdir(lmm_base)):
            p = os.path.join(lmm_base, f)
            if os.path.isfile(p) and not f.endswith(LMM_COPY_SKIP):
                shutil.copy2(p, os.path.join(paths["lmm"], f))
    # the table
    dest = {"adapter": written.get("adapter"), "dit": written.get("dit"), "lmm": written.get("lmm")}
    table = os.path.join(out_dir, f"{name}_conversion.tsv")
    rows = sorted(rows)
    with open(table, "w") as f:
        f.write("release key\tdestination\n")
        for k, d in rows:
            f.write(f"{k}\t{d}\n")
    if print_table:
        width = min(80, max(len(k) for k, _ in rows))
        print(f"{'release key':<{width}}  destination")
        for k, d in rows:
            print(f"{k:<{width}}  {d}")
        print(f"{len(rows)} keys: " + ", ".join(f"{sum(1 for _, d in rows if d.startswith(p))} {p}"
                                                 for p in ("adapter", "dit", "lmm", "unused")))
        for p, v in dest.items():
            if v:
                print(f"{p}: {v}")
        print(f"table: {table}")
    written["table"] = table
    return written


def _st_dtype(s: str) -> torch.dtype:
    return {v: k for k, v in ST_DTYPES.items()}[s]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.convert_official", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("release", help="the release folder (index + shards), its *.index.json, or one weights file")
    ap.add_argument("--out-dir", required=True, help="a ComfyUI models folder (dream_engine/, diffusion_models/, LLM/)")
    ap.add_argument("--lmm-base", help="the stock Qwen2-VL-2B-Instruct folder (config, tokenizer, processor)")
    ap.add_argument("--name", default="dream_engine", help="file-name stem of the outputs (default: the names the shipped workflows load)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="keep",
                    help="dtype of the DiT and LMM files (the release is fp32; bf16 halves the size)")
    ap.add_argument("--lora-alpha", type=float, default=None,
                    help="alpha of LoRA found in the release (default: alpha = r, as the release's demo)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    try:
        convert(a.release, a.out_dir, a.lmm_base, a.name, a.dtype, a.lora_alpha, progress=not a.no_progress)
    except ConversionError as e:
        print(f"conversion failed: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
