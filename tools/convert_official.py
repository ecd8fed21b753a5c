"""Convert the official Dream Engine release into the safetensors files the pack loads.

The release (``leonardPKU/DreamEngine-ObjectFusion``) keeps its weights in
``transformer/``: ``config.json``, ``diffusion_pytorch_model.bin.index.json`` and pickle
shards (``diffusion_pytorch_model-0000k-of-0000n.bin``; safetensors shards are read
too). The converter accepts the repository root, the ``transformer/`` folder or the
index file. Pickles are opened only by its reader (``tools/release/reader.py``), with
``torch.load(weights_only=True, mmap=True)`` — no code is executed and tensors are
memory-mapped; one shard is open at a time and one output tensor is built at a time.
Where each key goes is one table (``tools/release/plan.py``).

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
    applies (strength 1.0; ``tools/release/dit_lora.py``);
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
import os
import re
import resource
import sys

import torch

from dream_engine_core.errors import DreamEngineError
from dream_engine_core.lmm_folder import tensor_files
from tools.release import ConversionError
from tools.release.dit_lora import StockBase, plan_lora_form
from tools.release.plan import Plan, plan
from tools.release.reader import ReleaseTensors, ShardReader, describe_config, is_safetensors, locate, st_shapes
from tools.release.writers import (METADATA, stream, target_entries, write_adapter, write_lmm_folder,
                                   write_table)

DTYPES = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LMM_NAME = "DreamEngine-Qwen2-VL-2B"


def convert(src: str, out_dir: str, lmm_base: str | None, name: str = "dream_engine",
            dtype: str = "keep", lora_alpha: float | None = None, progress: bool = True,
            print_table: bool = True, dit_base: str | None = None, dit_form: str | None = None,
            lmm_name: str = LMM_NAME) -> dict[str, str]:
    """Convert the release at ``src``. Returns the paths written (and ``peak_rss_mb``).

    Everything is checked, and the DiT compared with ``dit_base`` in the LoRA form, before
    the first file is written."""
    dit_form = _dit_form(dit_base, dit_form)
    rel = locate(src)
    p = plan(list(rel.weights), lora_alpha)
    _check_release(p, lmm_base)
    base = StockBase(dit_base) if dit_form == "lora" else None
    notes = describe_config(rel)
    with ShardReader() as shards:
        tensors = ReleaseTensors(rel, shards)
        lmm = target_entries(tensors.in_shard_order(p.of("lmm")), tensors, DTYPES[dtype])
        dit = _dit_file(p, tensors, base, DTYPES[dtype], notes)
        written = _write(output_paths(out_dir, name, lmm_name), p, tensors, lmm, dit, lmm_base, lmm_name, progress)
    written["table"] = write_table(os.path.join(out_dir, f"{name}_conversion.tsv"), p.rows)
    written["peak_rss_mb"] = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"  # Linux: KiB
    if print_table:
        _report(p, notes, written)
    return written


def _dit_form(dit_base: str | None, dit_form: str | None) -> str:
    dit_form = dit_form or ("lora" if dit_base else "merged")
    if dit_form not in ("lora", "merged"):
        raise ConversionError(f"--dit-form must be 'lora' or 'merged', got {dit_form!r}")
    if dit_form == "lora" and not dit_base:
        raise ConversionError("--dit-form lora needs --dit-base: the stock SD3.5 Large file the LoRA applies to")
    return dit_form


def _check_release(p: Plan, lmm_base: str | None) -> None:
    """Refuse, before anything is written, a release with unmapped keys or no adapter, and a
    missing or incomplete ``lmm_base``."""
    if p.unmapped:
        raise ConversionError(f"{len(p.unmapped)} key(s) of the release are not mapped by any rule, so nothing "
                              f"was written (a key is never dropped silently):\n  " + "\n  ".join(p.unmapped[:100]))
    if len(p.of("adapter")) != 8:
        raise ConversionError("the release lacks the adapter: expected input_embeds_align_mlp.{0,2}.{weight,bias} "
                              "and condition_embeds_align_mlp.{0,2}.{weight,bias}, found "
                              + ", ".join(t.key for t in p.of("adapter")))
    if not lmm_base:
        raise ConversionError("--lmm-base is required: the release holds the LMM weights but not its config, "
                              "tokenizer and processor files; point it at the stock Qwen2-VL-2B-Instruct folder")
    if not os.path.isfile(os.path.join(lmm_base, "config.json")):
        raise ConversionError(f"--lmm-base {lmm_base} has no config.json (expected the Qwen2-VL-2B-Instruct folder)")
    _check_lmm_complete(p, lmm_base)


def _check_lmm_complete(p: Plan, lmm_base: str) -> None:
    """The release's LMM must hold every tensor of the stock model (none is taken from the stock folder)."""
    stock, have = tensor_files(lmm_base), {t.key for t in p.of("lmm")}
    if not stock or not have:
        return
    norm = {re.sub(r"^model\.language_model\.", "model.", re.sub(r"^model\.visual\.", "visual.", k)) for k in stock}
    missing = sorted(norm - have - {"lm_head.weight"})
    if missing:
        raise ConversionError(f"the release's LMM lacks {len(missing)} tensor(s) of the stock model in {lmm_base}: "
                              + ", ".join(missing[:20]))


def _dit_file(p: Plan, tensors: ReleaseTensors, base: StockBase | None, out_dtype, notes: list[str]):
    """The DiT file to write, ``(kind, entries, metadata)``, or None when the release holds no DiT.
    In the LoRA form (``base`` given) the comparison with the base replaces the DiT's rows of
    the table and adds its notes."""
    dit = tensors.in_shard_order(p.of("dit"))
    if not dit:
        return None
    if base is None:
        return "dit", target_entries(dit, tensors, out_dtype), METADATA
    form = plan_lora_form(dit, base, tensors, out_dtype)
    p.rows = [r for r in p.rows if not r[0].startswith("dit.")] + form.rows
    notes += form.notes
    return "dit_lora", form.entries, dict(METADATA, format="dream_engine.sd3_lora", key_form="diffusers_sd3+comfy_diff",
                                          base_model=os.path.basename(base.path))


def output_paths(out_dir: str, name: str, lmm_name: str) -> dict[str, str]:
    """The names the shipped workflows load (scripts/build_workflows.py)."""
    return {"adapter": os.path.join(out_dir, "dream_engine", f"{name}_direct_map.safetensors"),
            "dit": os.path.join(out_dir, "diffusion_models", f"{name}_sd35_large.safetensors"),
            "dit_lora": os.path.join(out_dir, "loras", f"{name}_sd35_large_lora.safetensors"),
            "lmm": os.path.join(out_dir, "LLM", lmm_name)}


def _write(paths: dict, p: Plan, tensors: ReleaseTensors, lmm: list, dit_file: tuple | None, lmm_base: str,
           lmm_name: str, progress: bool) -> dict[str, str]:
    """The LMM first (the adapter records its fingerprint), then the DiT, then the adapter."""
    from tqdm import tqdm

    adapter = p.of("adapter")
    total = len(lmm) + (len(dit_file[1]) if dit_file else 0) + len(adapter)
    written = {}
    with tqdm(total=total, desc="converting", unit="tensor", disable=not progress) as bar:
        if lmm:
            written["lmm"] = write_lmm_folder(paths["lmm"], lmm, lmm_base, bar.update)
        if dit_file:
            kind, entries, metadata = dit_file
            written[kind] = stream(paths[kind], entries, metadata, bar.update)
        written["adapter"] = write_adapter(paths["adapter"], adapter, tensors,
                                           written.get("lmm", lmm_base), lmm_name, bar.update)
    return written


# ---------------------------------------------------------------- what is printed
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


def groups_report(p: Plan) -> list[str]:
    """One line per key group that a release may or may not hold."""
    dit, lmm = p.of("dit"), p.of("lmm")
    extra = [t.key for t in dit if t.key.startswith(("pos_embed.", "context_embedder."))]
    return [f"adapter: {len(p.of('adapter'))} of 8 tensors",
            f"dit: {len(dit)} tensors, LoRA on {sum(t.kind == 'merge' for t in dit)} projections",
            f"lmm: {len(lmm)} tensors, LoRA on {sum(t.kind == 'merge' for t in lmm)} projections",
            "dit pos_embed / context_embedder tensors in the release: " + (", ".join(sorted(extra)) or "none")
            + " (with --dit-base, the ones that differ from it are listed above)"]


def _report(p: Plan, notes: list[str], written: dict) -> None:
    from dream_engine_core.weights import read_metadata

    for line in notes:
        print(line)
    show_table(p.rows)
    print(summary(p.rows))
    for line in groups_report(p):
        print(line)
    for k in ("adapter", "lmm", "dit", "dit_lora", "table"):
        if k in written:
            print(f"{k}: {written[k]}")
    md = read_metadata(written["adapter"])
    print(f"adapter's LMM fingerprint: {md['lmm_fingerprint']} ({md['lmm_folder']})")
    print(f"peak RSS: {written['peak_rss_mb']} MB")


def list_release(src: str, out=None) -> int:
    """The dry run: the table from the index (and safetensors shard headers) alone; no
    tensor is loaded. Returns the exit status: 0 all mapped and present, 2 a key is
    unmapped, 3 shards are missing."""
    out = out or sys.stdout
    rel = locate(src, need_shards=False)
    p = plan(list(rel.weights))
    shapes = {}
    for shard in sorted(set(rel.weights.values())):
        if is_safetensors(shard) and os.path.isfile(shard):
            shapes.update(st_shapes(shard))
    for line in describe_config(rel):
        print(line, file=out)
    show_table(p.rows + [(k, "UNMAPPED: no rule maps this key") for k in p.unmapped], shapes, out)
    print(summary(p.rows) + f", {len(p.unmapped)} unmapped", file=out)
    for line in groups_report(p):
        print(line, file=out)
    if p.unmapped:
        print(f"{len(p.unmapped)} key(s) are not mapped by any rule; the conversion would refuse this release",
              file=sys.stderr)
        return 2
    if rel.missing_shards:
        print(f"{len(rel.missing_shards)} shard(s) named by the index are not present: "
              + ", ".join(rel.missing_shards), file=sys.stderr)
        return 3
    return 0


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
    except (ConversionError, DreamEngineError) as e:  # the pack's own errors (a broken file) too
        print(f"conversion failed: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
