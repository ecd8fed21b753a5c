"""The trainer's settings (:class:`TrainConfig`) and its command line, one flag per field."""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields

from dream_engine_core.encoder import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, DEFAULT_SHORT_SIDE
from dream_engine_core.prompt import TASKS

from .data import TASK_ALIASES
from .dit import DEFAULT_LORA_TARGETS


@dataclass
class TrainConfig:
    manifest: str = ""
    lmm: str = ""
    dit: str = ""
    vae: str = ""
    out: str = "runs/dream_engine"
    stage: int = 1
    # adapter
    map_kind: str = "direct"          # direct (release) or standard (unmodified SD3.5 consumes it)
    adapter_hidden: int = 4096
    adapter_init: str | None = None   # start from an adapter file (stage 2 from stage 1)
    pooling: str = "mean"
    # DiT
    train_dit: str = "auto"           # auto (stage 1: none, stage 2: lora), none, lora, full
    lora_rank: int = 32
    lora_alpha: float | None = None   # default: = rank
    lora_targets: tuple = DEFAULT_LORA_TARGETS
    gradient_checkpointing: bool = False
    # data
    resolution: int = 512
    random_crop: bool = True
    shuffle: bool = True
    lmm_short_side: int = DEFAULT_SHORT_SIDE     # the LMM's image handling, as the ComfyUI nodes
    lmm_min_pixels: int = DEFAULT_MIN_PIXELS
    lmm_max_pixels: int = DEFAULT_MAX_PIXELS
    positions: str = "mrope"
    workers: int = 0
    cache: bool = False               # keep each record's LMM output and target latent in memory (frozen models)
    bucket: bool = False              # batch records of equal token length together (fewer, larger DiT forwards)
    # objective
    cfg_dropout: dict = field(default_factory=lambda: {t: 0.1 for t in TASKS})
    blend: str = "random"             # random: r ~ U(0, 1) per sample; record: the record's ratio (default 0)
    target: str = "velocity"          # velocity (ε − x₀) or x0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    # optimisation
    steps: int | None = None          # default: one epoch
    epochs: float = 1.0
    batch: int = 128                  # global batch (all processes, all accumulation steps)
    micro_batch: int = 1              # per process and forward pass
    lr: float | None = None           # default 1e-4 (stage 1) / 5e-5 (stage 2)
    warmup: float = 0.05              # fraction of the steps
    weight_decay: float = 1e-4
    betas: tuple = (0.9, 0.999)
    grad_clip: float = 1.0
    precision: str = "auto"           # auto (bf16 where supported), bf16, fp32
    ema: float = 0.0                  # EMA decay; 0 = off
    seed: int = 0
    parallel: str = "ddp"             # ddp or fsdp (shards the DiT's joint blocks)
    # bookkeeping
    ckpt_every: int = 500
    keep_ckpts: int = 3
    log_every: int = 1
    val_every: int = 0
    val_prompt: str = "a photo of a cat"
    val_steps: int = 28
    val_guidance: float = 3.5
    val_n: int = 8                    # records in the fixed validation-loss set
    progress: bool = True
    debug_step_delay: float = 0.0     # test hook: seconds to sleep after each step

    def resolved(self) -> "TrainConfig":
        c = TrainConfig(**asdict(self))
        if c.train_dit == "auto":
            c.train_dit = "lora" if c.stage == 2 else "none"
        if c.lr is None:
            c.lr = 1e-4 if c.stage == 1 else 5e-5
        if c.lora_alpha is None:
            c.lora_alpha = float(c.lora_rank)
        c.lora_targets = tuple(c.lora_targets)
        c.betas = tuple(c.betas)
        if c.stage not in (1, 2):
            raise ValueError("--stage must be 1 or 2")
        checks = {"map_kind": ("direct", "standard"), "train_dit": ("none", "lora", "full"),
                  "blend": ("random", "record"), "target": ("velocity", "x0"), "precision": ("auto", "bf16", "fp32"),
                  "parallel": ("ddp", "fsdp")}
        for k, allowed in checks.items():
            if getattr(c, k) not in allowed:
                raise ValueError(f"{k} must be one of {allowed}, got {getattr(c, k)!r}")
        if c.stage == 1 and c.train_dit != "none":
            raise ValueError("stage 1 trains the adapter only; use --stage 2 to train the DiT")
        return c



def build_parser(description: str = "") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.train", description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TrainConfig()
    ap.add_argument("--stage", type=int, choices=(1, 2), default=1)
    ap.add_argument("--manifest", required=True, help="JSONL manifest (see docs/training.md)")
    ap.add_argument("--lmm", required=True, help="Qwen2-VL-2B-Instruct folder (HF format, safetensors)")
    ap.add_argument("--dit", required=True, help="SD3.5 diffusion-model safetensors (ComfyUI's models/diffusion_models)")
    ap.add_argument("--vae", required=True, help="the matching VAE safetensors (ComfyUI's models/vae)")
    ap.add_argument("--out", required=True, help="run folder: checkpoints, logs, exported files")
    ap.add_argument("--resume", default=None, help="'auto' (latest checkpoint in OUT, if any) or a checkpoint path")
    for f in fields(TrainConfig):
        if f.name in ("manifest", "lmm", "dit", "vae", "out", "stage", "cfg_dropout"):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(d, f.name)
        if isinstance(default, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, tuple):
            typ = float if f.name == "betas" else str
            ap.add_argument(flag, type=lambda s, typ=typ: tuple(typ(x) for x in s.split(",")),
                            default=default, help=f"comma-separated (default {','.join(map(str, default))})")
        elif f.name in ("lr", "lora_alpha"):
            ap.add_argument(flag, type=float, default=default)
        elif f.name in ("steps",):
            ap.add_argument(flag, type=int, default=default)
        elif f.name == "adapter_init":
            ap.add_argument(flag, default=default)
        else:
            ap.add_argument(flag, type=type(default), default=default)
    ap.add_argument("--cfg-dropout", default="0.1",
                    help="CFG dropout: one probability for every task, or per task, e.g. "
                         "'generate=0.1,edit=0.05,fuse=0.1,reconstruct=0.1'")
    return ap


def parse_dropout(s: str) -> dict:
    if "=" not in s:
        return {t: float(s) for t in TASKS}
    out = {t: 0.1 for t in TASKS}
    for part in s.split(","):
        k, v = part.split("=")
        k = TASK_ALIASES.get(k.strip(), k.strip())
        if k not in TASKS:
            raise SystemExit(f"--cfg-dropout: unknown task {k!r} (tasks: {', '.join(TASKS)})")
        out[k] = float(v)
    return out


def config_from_args(argv=None, description: str = "") -> tuple[TrainConfig, str | None]:
    """``(config, resume)`` from the command line."""
    a = build_parser(description).parse_args(argv)
    kw = {f.name: getattr(a, f.name) for f in fields(TrainConfig) if f.name != "cfg_dropout"}
    return TrainConfig(**kw, cfg_dropout=parse_dropout(a.cfg_dropout)), a.resume
