"""Export a training run to the files ComfyUI loads.

* adapter → ``dream_engine_core.weights.save_adapter`` (records the fingerprint of the
  run's LMM folder when it is present; safetensors with the
  adapter metadata the pack's ``LoadDreamEngine`` node reads);
* DiT LoRA → diffusers SD3 key form with alpha
  (``transformer.transformer_blocks.N.attn.to_q.lora_A.weight``, ``…lora_B.weight``,
  ``….alpha``), mapped by ComfyUI's ``LoraLoaderModelOnly`` onto its fused qkv;
* a fully trained DiT (``--train-dit full``) → the ComfyUI MMDiT layout of the base
  file with the trained tensors replaced (loads with "Load Diffusion Model").

Every file is written atomically (temporary file + rename).

    python -m training.export --checkpoint runs/stage2/checkpoints/step-00001000 \\
        --out-dir ComfyUI/models        # writes dream_engine/NAME.safetensors and loras/NAME_lora.safetensors
"""
from __future__ import annotations

import argparse
import json
import os
import re

import torch
from safetensors import safe_open

from dream_engine_core.adapter import Adapter, AdapterSpec
from dream_engine_core.weights import atomic_save, check_safetensors, save_adapter

from .checkpoint import read_params
from .dit import _TO_DIFFUSERS

_LORA_PARAM = re.compile(r"(?:dit\.)?joint_blocks\.(\d+)\.(.+)\.lora_([AB])\.default\.weight")


def lora_from_params(params: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """peft LoRA parameters of the (qkv-split) MMDiT → diffusers SD3 LoRA keys with alpha."""
    out = {}
    for name, t in params.items():
        m = _LORA_PARAM.fullmatch(name)
        if not m:
            continue
        inner = m.group(2).replace(".base_layer", "")
        if inner not in _TO_DIFFUSERS:
            raise ValueError(f"LoRA parameter {name} has no diffusers SD3 name")
        stem = f"transformer.transformer_blocks.{m.group(1)}.{_TO_DIFFUSERS[inner]}"
        out[f"{stem}.lora_{m.group(3)}.weight"] = t.detach().float().cpu().contiguous()
        out[f"{stem}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return out


def save_lora(path: str, params: dict[str, torch.Tensor], rank: int, alpha: float, extra: dict | None = None,
              base: str = "") -> str:
    """``base``: the SD3 base the LoRA was trained on (``dream_engine_core.adapter.DIT_BASES``)."""
    sd = lora_from_params(params, alpha)
    if not sd:
        raise ValueError("no LoRA parameters to export")
    md = {"format": "dream_engine.sd3_lora", "key_form": "diffusers_sd3", "lora_rank": str(rank),
          "lora_alpha": str(float(alpha)), "base_model": base or "sd3.5"}
    md.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()})
    atomic_save(sd, path, md)
    return path


def adapter_from_params(params: dict[str, torch.Tensor], spec: AdapterSpec) -> Adapter:
    sd = {k[len("adapter."):]: v.float() for k, v in params.items() if k.startswith("adapter.")}
    a = Adapter(spec)
    a.load_state_dict(sd)
    return a


def full_dit_from_params(base_path: str, params: dict[str, torch.Tensor], out_path: str, extra: dict | None = None):
    """Base DiT file with the fully trained tensors replaced (ComfyUI MMDiT layout)."""
    check_safetensors(base_path)
    with safe_open(base_path, framework="pt") as f:
        keys = list(f.keys())
        prefix = ""
        for p in ("model.diffusion_model.", "diffusion_model."):
            if any(k.startswith(p) for k in keys):
                prefix = p
        sd = {k: f.get_tensor(k) for k in keys}
    n = 0
    for name, t in params.items():
        if not name.startswith("dit."):
            continue
        key = prefix + name[len("dit."):]
        if key not in sd:
            raise ValueError(f"trained tensor {name} is not in the base DiT {base_path} (key {key})")
        sd[key] = t.detach().to(sd[key].dtype).cpu()
        n += 1
    atomic_save(sd, out_path, {k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()})
    return n


def read_checkpoint(path: str, use_ema: bool = True) -> tuple[dict, dict]:
    """``(params, state)`` from a trainer checkpoint folder (EMA weights when present and wanted)."""
    return read_params(path, use_ema)


def export_run(params: dict, cfg: dict, adapter_path: str | None, lora_path: str | None,
               dit_path: str | None = None, step: int | None = None) -> dict:
    """Write the run's adapter (and LoRA / full DiT) for ComfyUI. Returns the paths written."""
    spec = AdapterSpec(**cfg["adapter_spec"])
    info = {"trainer": "dream_engine.training", "stage": cfg["stage"], "step": step,
            "seed": cfg["seed"], "manifest": os.path.basename(cfg["manifest"])}
    out = {}
    if adapter_path:
        save_adapter(adapter_path, adapter_from_params(params, spec), {"training": info},
                     lmm_folder=cfg["lmm"] if os.path.isdir(cfg.get("lmm") or "") else None)
        out["adapter"] = adapter_path
    if lora_path and any("lora_" in k for k in params):
        save_lora(lora_path, params, cfg["lora_rank"], cfg["lora_alpha"] or cfg["lora_rank"], {"training": info},
                  base=spec.dit)
        out["lora"] = lora_path
    if dit_path and cfg.get("train_dit") == "full":
        full_dit_from_params(cfg["dit"], params, dit_path, {"training": info})
        out["dit"] = dit_path
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a trainer checkpoint folder (OUT/checkpoints/step-NNNNNNNN)")
    ap.add_argument("--adapter", help="adapter output path")
    ap.add_argument("--lora", help="LoRA output path (stage 2)")
    ap.add_argument("--dit", help="full DiT output path (--train-dit full runs)")
    ap.add_argument("--out-dir", help="a ComfyUI models folder: writes dream_engine/, loras/, diffusion_models/")
    ap.add_argument("--name", default="dream_engine_trained")
    ap.add_argument("--no-ema", action="store_true", help="export the raw weights even if the run kept an EMA")
    a = ap.parse_args(argv)
    try:
        params, state = read_checkpoint(a.checkpoint, use_ema=not a.no_ema)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if a.out_dir:
        a.adapter = a.adapter or os.path.join(a.out_dir, "dream_engine", f"{a.name}.safetensors")
        a.lora = a.lora or os.path.join(a.out_dir, "loras", f"{a.name}_lora.safetensors")
        a.dit = a.dit or os.path.join(a.out_dir, "diffusion_models", f"{a.name}_dit.safetensors")
    out = export_run(params, state["config"], a.adapter, a.lora, a.dit, state["step"])
    for k, v in out.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
