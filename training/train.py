"""Stage 1 / stage 2 trainer for the Dream Engine adapter (and DiT LoRA).

    python -m training.train --stage 1 --manifest data/manifest.jsonl --lmm models/LLM/Qwen2-VL-2B-Instruct \\
        --dit models/diffusion_models/sd3.5_large.safetensors --vae models/vae/sd3.5_vae.safetensors \\
        --out runs/stage1
    torchrun --nproc_per_node 8 -m training.train --stage 2 --adapter-init runs/stage1/adapter.safetensors ...

* the LMM (Qwen2-VL) is frozen and run under no-grad through ``dream_engine_core``
  (the same templates, image handling and visual blend as the ComfyUI nodes);
* stage 1 trains the adapter only; stage 2 the adapter plus a peft LoRA on the DiT's
  attention projections (``--train-dit full`` trains the whole DiT instead);
* rectified flow as the release: σ = sigmoid(N(0, 1)), ``x_t = (1 − σ)x₀ + σε``, the
  DiT (ComfyUI's MMDiT, direct map) predicts the velocity ``ε − x₀``; loss weight 1;
  CFG dropout per task (the sample's unconditional template); ``r ~ U(0, 1)`` per
  sample with ``--blend random``;
* AdamW, linear warm-up + cosine, grad clipping, bf16 autocast on devices that
  support it, gradient accumulation, gradient checkpointing, optional EMA;
* every random draw of a sample comes from a generator seeded by (seed, epoch,
  index): DDP with P processes × batch b equals 1 process × batch P·b, and a resumed
  run equals an uninterrupted one;
* checkpoints (trainables, optimizer, scheduler, EMA, RNG, step → data position) are
  single safetensors files written atomically; ``--resume auto`` continues the latest;
* logs to ``OUT/log.csv`` (and TensorBoard when installed); ``--val-every`` renders
  the validation prompt to ``OUT/val/`` and logs the loss on a fixed set.

At the end the adapter (``OUT/adapter.safetensors``) and, in stage 2, the LoRA
(``OUT/lora.safetensors``, diffusers SD3 keys, ComfyUI's ``LoraLoaderModelOnly``)
are exported.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from safetensors import safe_open

from dream_engine_core.adapter import Adapter, AdapterSpec
from dream_engine_core.prompt import IMG, build_task_inputs
from dream_engine_core.weights import atomic_save, check_safetensors, load_adapter

from . import data as D
from . import dit as DT
from .export import export_run

CKPT_FORMAT = "dream_engine.train_checkpoint"
TASKS = ("generate", "reconstruct", "edit", "fuse")


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
    lora_targets: tuple = DT.DEFAULT_LORA_TARGETS
    gradient_checkpointing: bool = False
    # data
    resolution: int = 512
    random_crop: bool = True
    shuffle: bool = True
    lmm_short_side: int = 336
    lmm_min_pixels: int = 56 * 56
    lmm_max_pixels: int = 512 * 28 * 28
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
        for k in ("stage",):
            if getattr(c, k) not in (1, 2):
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


# ---------------------------------------------------------------- distributed
def dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def init_dist(world: int, local: int):
    import torch.distributed as dist

    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)


def all_sum(x: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


# ---------------------------------------------------------------- model
class TrainModule(torch.nn.Module):
    """Adapter + DiT; ``forward(groups)`` → sum of the per-sample losses."""

    def __init__(self, adapter: Adapter, dit, target: str, pooling: str):
        super().__init__()
        self.adapter = adapter
        self.dit = dit
        self.target = target
        self.pooling = pooling

    def forward(self, groups):
        total = 0.0
        losses = []
        for g in groups:
            tokens, pooled = self.adapter(g["hidden"], None, self.pooling)
            sigma = g["sigma"]
            s = sigma.view(-1, 1, 1, 1)
            x0, eps = g["x0"], g["noise"]
            xt = (1 - s) * x0 + s * eps
            out = self.dit(xt.to(tokens.dtype), DT.timestep(sigma), context=tokens, y=pooled).float()
            if self.target == "velocity":
                per = ((out - (eps - x0)) ** 2).flatten(1).mean(1)
            else:
                per = ((xt - s * out - x0) ** 2).flatten(1).mean(1)
            losses.append(per)
            total = total + per.sum()
        return total, torch.cat(losses) if losses else None


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor (an FSDP-sharded DTensor is gathered)."""
    t = t.detach()
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def lr_lambda(steps: int, warmup_frac: float):
    warm = max(1, int(round(steps * warmup_frac))) if warmup_frac > 0 else 0

    def f(step):
        if warm and step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    return f


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: str | None = None):
        self.cfg = cfg.resolved()
        self.rank, self.world, self.local = dist_info()
        self.resume = resume

    # ------------------------------------------------------------ setup
    def setup(self):
        c = self.cfg
        init_dist(self.world, self.local)
        self.device = torch.device(f"cuda:{self.local}" if torch.cuda.is_available() else "cpu")
        if c.precision == "auto":
            self.bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        else:
            self.bf16 = c.precision == "bf16"
        self.records = D.load_manifest(c.manifest)
        gb = c.batch
        if gb % (self.world * c.micro_batch):
            raise ValueError(f"--batch {gb} must be a multiple of processes × --micro-batch "
                             f"({self.world} × {c.micro_batch})")
        self.accum = gb // (self.world * c.micro_batch)
        spe = len(self.records) // gb
        if spe == 0:
            raise ValueError(f"the manifest has {len(self.records)} records, fewer than one batch of {gb}")
        self.steps = c.steps or max(1, int(spe * c.epochs))

        from dream_engine_core.encoder import LMMEncoder

        lmm_dtype = torch.bfloat16 if self.bf16 else torch.float32
        self.encoder = LMMEncoder.from_folder(c.lmm, dtype=lmm_dtype, device=self.device)
        self.patcher, dit = DT.load_dit(c.dit)
        self.vae, self.latent_format = DT.load_vae(c.vae)
        hidden = DT.dit_hidden(dit)
        if c.map_kind == "direct":
            spec = AdapterSpec.direct(hidden, lmm_dim=self.encoder.hidden_size, hidden_dim=c.adapter_hidden,
                                      lmm=os.path.basename(os.path.normpath(c.lmm)))
        else:
            ctx, y = dit.context_embedder, dit.y_embedder
            spec = AdapterSpec.standard(lmm_dim=self.encoder.hidden_size, hidden_dim=c.adapter_hidden,
                                        token_dim=ctx.in_features, pooled_dim=y.mlp[0].in_features,
                                        lmm=os.path.basename(os.path.normpath(c.lmm)))
        if c.adapter_init:
            adapter = load_adapter(c.adapter_init, lmm_dim=self.encoder.hidden_size).float()
            if adapter.spec.expected_shapes() != spec.expected_shapes():
                raise ValueError(f"--adapter-init {c.adapter_init} has a different layout than this run needs")
            spec = adapter.spec
        else:
            torch.manual_seed(c.seed)
            adapter = Adapter(spec)
        adapter.requires_grad_(True).train()
        self.spec = spec
        if c.map_kind == "direct":
            self._direct = DT.direct_map(dit)
            self._direct.__enter__()
        if c.train_dit == "lora":
            DT.add_lora(dit, c.lora_rank, c.lora_alpha, c.lora_targets, seed=c.seed)
        elif c.train_dit == "full":
            for n, p in dit.named_parameters():
                p.requires_grad_(True)
        if c.gradient_checkpointing:
            dit.use_checkpoint = True
        self.module = TrainModule(adapter, dit, c.target, c.pooling).to(self.device)
        fsdp = self.world > 1 and c.parallel == "fsdp"
        if fsdp:  # shard before the optimizer sees the parameters (fully_shard replaces them with DTensors)
            if self.resume and self._find_resume(self.resume):
                raise ValueError("resuming an FSDP run is not supported yet; resume it with --parallel ddp")
            from torch.distributed.fsdp import fully_shard

            for blk in dit.joint_blocks:
                fully_shard(blk)
            fully_shard(self.module)
        self.names = [n for n, p in self.module.named_parameters() if p.requires_grad]
        self.params = [p for n, p in self.module.named_parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(self.steps, c.warmup))
        self.ema = [p.detach().float().clone() for p in self.params] if c.ema > 0 else None
        self.step = 0
        if self.resume:
            path = self._find_resume(self.resume)
            if path:
                self.load_checkpoint(path)
        self.wrapped = self.module
        if self.world > 1 and not fsdp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.wrapped = DDP(self.module, device_ids=[self.local] if self.device.type == "cuda" else None)
        return self

    # ------------------------------------------------------------ samples
    def bucket_keys(self) -> list:
        """Per record: (text tokens, number of images) of its conditional input — records
        with equal keys give the DiT equal context lengths (images of one size)."""
        keys = []
        for rec in self.records:
            inp = build_task_inputs(rec.prompt, rec.refs(0.0), rec.task, style="training").cond
            n_text = sum(len(self.encoder.tokenizer(piece, add_special_tokens=False)["input_ids"])
                         for piece in inp.text.split(IMG) if piece)
            keys.append((n_text, len(inp.images)))
        return keys

    def _drop_p(self, task):
        return float(self.cfg.cfg_dropout.get(task, 0.0))

    def prepare(self, items: list[dict], fixed: bool = False):
        """Items from the loader → groups of equal token length for the DiT."""
        c = self.cfg
        enc = self.encoder
        x0 = self._latents(items)
        samples = []
        for k, it in enumerate(items):
            rec = self.records[it["index"]]
            g = D.sample_generator(c.seed, it["epoch"], it["index"], stream=0)
            u = float(torch.rand((1,), generator=g))
            r = float(torch.rand((1,), generator=g))
            sigma = D.logit_normal_sigma(g, c.logit_mean, c.logit_std, c.shift)
            noise = torch.randn(x0.shape[1:], generator=g)
            ratio = r if c.blend == "random" else rec.ratio
            ti = build_task_inputs(rec.prompt, rec.refs(ratio), rec.task, style="training")
            inp = ti.uncond if (not fixed and u < self._drop_p(rec.task)) else ti.cond
            hidden = self._hidden(rec, it, inp, inp is ti.uncond)
            samples.append({"hidden": hidden, "x0": x0[k], "noise": noise.to(self.device),
                            "sigma": sigma, "key": (it["epoch"], it["index"])})
        groups = {}
        # FSDP: every rank must run the same number of DiT forwards (each gathers the
        # shards), so each sample is its own group; otherwise equal lengths are batched
        one_each = self.world > 1 and c.parallel == "fsdp"
        for k, s in enumerate(samples):
            groups.setdefault(k if one_each else s["hidden"].shape[1], []).append(s)
        out = []
        for L in sorted(groups):
            ss = groups[L]
            out.append({"hidden": torch.cat([s["hidden"] for s in ss]).to(self.device),
                        "x0": torch.stack([s["x0"] for s in ss]),
                        "noise": torch.stack([s["noise"] for s in ss]),
                        "sigma": torch.tensor([s["sigma"] for s in ss], device=self.device)})
        return out

    def _latents(self, items) -> torch.Tensor:
        """Target latents; cached per record with ``cache`` when the crop is deterministic."""
        c = self.cfg
        if not (c.cache and not c.random_crop):
            targets = torch.stack([it["target"] for it in items])
            return DT.encode_latents(self.vae, self.latent_format, targets.to(self.device))
        cache = self.__dict__.setdefault("_latent_cache", {})
        todo = [it for it in items if it["index"] not in cache]
        if todo:
            z = DT.encode_latents(self.vae, self.latent_format,
                                  torch.stack([it["target"] for it in todo]).to(self.device))
            for it, zi in zip(todo, z):
                cache[it["index"]] = zi
        return torch.stack([cache[it["index"]] for it in items])

    def _hidden(self, rec, it, inp, uncond: bool) -> torch.Tensor:
        """LMM states of one model input, ``[1, L, D]`` float.

        With ``cache`` the frozen LMM runs once per record and side (r = 0); the blend
        ``(1 − r)·h + r·v`` is then applied to the cached states and vision features, the
        same formula the encoder applies."""
        c = self.cfg
        enc = self.encoder

        def run(model_input):
            prep = enc.prepare_images(it["inputs"] if model_input.images else [], c.lmm_short_side,
                                      c.lmm_min_pixels, c.lmm_max_pixels)
            return enc.encode(model_input, prep, positions=c.positions)

        if not c.cache:
            return run(inp).hidden.float().clone()
        cache = self.__dict__.setdefault("_lmm_cache", {})
        key = (it["index"], uncond)
        if key not in cache:
            ti0 = build_task_inputs(rec.prompt, rec.refs(0.0), rec.task, style="training")
            st = run(ti0.uncond if uncond else ti0.cond)
            cache[key] = (st.hidden.float().clone(), st.image_spans, [v.float().clone() for v in st.vision])
        h0, spans, vis = cache[key]
        if not any(r > 0 for r in inp.ratios):
            return h0
        h = h0.clone()
        for (a, b), v, r in zip(spans, vis, inp.ratios):
            if r > 0:
                h[0, a:b] = (1 - r) * h0[0, a:b] + r * v
        return h

    def autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def eval_loss(self, n: int | None = None) -> float:
        """Loss on the first ``n`` records with fixed noise/σ, centre crops, no CFG dropout."""
        n = min(n or self.cfg.val_n, len(self.records))
        ds = D.ManifestDataset(self.records, self.cfg.resolution, self.cfg.seed, random_crop=False)
        total = 0.0
        for i in range(n):
            it = ds[(-1, i)]
            groups = self.prepare([it], fixed=True)
            with self.autocast():
                s, _ = self.module(groups)
            total += float(s)
        return total / n

    @torch.no_grad()
    def render(self, prompt: str, steps: int = 28, guidance: float = 3.5, seed: int = 0, shift: float = 3.0):
        """Euler sampling of the flow with CFG (ComfyUI's SD3 schedule, shift 3) → image [1, H, W, 3]."""
        enc = self.encoder
        ti = build_task_inputs(prompt, [], "generate", style="inference")
        prep = enc.prepare_images([])
        conds = []
        for inp in (ti.cond, ti.uncond):
            h = enc.encode(inp, prep, positions=self.cfg.positions).hidden.float().clone()
            conds.append(self.module.adapter(h, None, self.cfg.pooling))
        lat = self.cfg.resolution // 8
        g = torch.Generator().manual_seed(seed)
        x = torch.randn((1, 16, lat, lat), generator=g).to(self.device)
        ts = torch.linspace(1, 0, steps + 1)
        sig = shift * ts / (1 + (shift - 1) * ts)
        for i in range(steps):
            s = sig[i].view(1).to(self.device)
            with self.autocast():
                vc = self.module.dit(x, DT.timestep(s), context=conds[0][0], y=conds[0][1]).float()
                vu = self.module.dit(x, DT.timestep(s), context=conds[1][0], y=conds[1][1]).float()
            v = vu + guidance * (vc - vu)
            x = x + (sig[i + 1] - sig[i]).item() * v
        return DT.decode_latents(self.vae, self.latent_format, x)

    # ------------------------------------------------------------ checkpoints
    def ckpt_dir(self):
        return os.path.join(self.cfg.out, "checkpoints")

    def _find_resume(self, resume: str) -> str | None:
        if resume != "auto":
            return resume
        files = sorted(glob.glob(os.path.join(self.ckpt_dir(), "step-*.safetensors")))
        return files[-1] if files else None

    def state_json(self) -> dict:
        sd = self.sched.state_dict()
        return {"step": self.step, "config": self.config_dict(),
                "scheduler": {k: v for k, v in sd.items() if k != "lr_lambdas"},
                "param_names": self.names, "world": self.world,
                "optim_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.opt.param_groups]}

    def config_dict(self) -> dict:
        d = asdict(self.cfg)
        d["adapter_spec"] = self.spec.as_dict()
        return d

    def save_checkpoint(self):
        tensors = {}
        for n, p in zip(self.names, self.params):
            tensors["param." + n] = _full(p)
        if self.ema is not None:
            for n, e in zip(self.names, self.ema):
                tensors["ema." + n] = e
        st = self.opt.state_dict()["state"]
        for i, s in st.items():
            for k, v in s.items():
                tensors[f"optim.{i}.{k}"] = _full(v) if torch.is_tensor(v) else torch.tensor(v)
        if self.rank != 0:
            return None
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        path = os.path.join(self.ckpt_dir(), f"step-{self.step:08d}.safetensors")
        atomic_save(tensors, path, {"format": CKPT_FORMAT, "state": json.dumps(self.state_json())})
        old = sorted(glob.glob(os.path.join(self.ckpt_dir(), "step-*.safetensors")))
        for p in old[:-self.cfg.keep_ckpts] if self.cfg.keep_ckpts > 0 else []:
            os.unlink(p)
        return path

    def load_checkpoint(self, path: str):
        check_safetensors(path, "resume from an earlier checkpoint (--resume PATH) or start afresh")
        with safe_open(path, framework="pt") as f:
            md = f.metadata() or {}
            if md.get("format") != CKPT_FORMAT:
                raise ValueError(f"{path} is not a Dream Engine training checkpoint")
            state = json.loads(md["state"])
            t = {k: f.get_tensor(k) for k in f.keys()}
        if state["param_names"] != self.names:
            raise ValueError(f"checkpoint {path} trains other parameters than this run "
                             f"(different stage, LoRA targets or --train-dit?)")
        old = state["config"]
        for k in ("stage", "seed", "batch", "manifest", "train_dit", "lora_rank", "map_kind", "resolution"):
            if old.get(k) != getattr(self.cfg, k):
                raise ValueError(f"cannot resume {path}: it was run with {k}={old.get(k)!r}, this run has "
                                 f"{k}={getattr(self.cfg, k)!r}")
        with torch.no_grad():
            for n, p in zip(self.names, self.params):
                p.copy_(t["param." + n])
            if self.ema is not None:
                for n, e in zip(self.names, self.ema):
                    e.copy_(t.get("ema." + n, t["param." + n]).float())
        osd = {"state": {}, "param_groups": []}
        for key, v in t.items():
            if key.startswith("optim."):
                _, i, k = key.split(".", 2)
                osd["state"].setdefault(int(i), {})[k] = v.to(self.device) if k != "step" else v
        first = 0
        for g, og in zip(self.opt.param_groups, state["optim_groups"]):
            osd["param_groups"].append({**og, "params": list(range(first, first + len(g["params"])))})
            first += len(g["params"])
        self.opt.load_state_dict(osd)
        sch = self.sched.state_dict()
        sch.update(state["scheduler"])
        self.sched.load_state_dict(sch)
        torch.set_rng_state(t["rng.torch"])
        if "rng.cuda" in t and torch.cuda.is_available():
            torch.cuda.set_rng_state(t["rng.cuda"])
        self.step = int(state["step"])
        if self.rank == 0:
            print(f"resumed from {path} at step {self.step}", file=sys.stderr)

    # ------------------------------------------------------------ logging
    def _open_log(self):
        path = os.path.join(self.cfg.out, "log.csv")
        rows = []
        if self.step > 0 and os.path.exists(path):
            with open(path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        cols = ["step", "loss", "lr", "grad_norm", "samples_per_s", "val_loss"]
        with open(path + ".tmp", "w", newline="") as f:
            w = csv.DictWriter(f, cols)
            w.writeheader()
            w.writerows(rows)
        os.replace(path + ".tmp", path)
        self._log = open(path, "a", newline="")
        self._csv = csv.DictWriter(self._log, cols)
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(os.path.join(self.cfg.out, "tb"))
        except Exception:  # noqa: BLE001 - TensorBoard is optional
            self._tb = None

    def _write_log(self, row: dict):
        self._csv.writerow(row)
        self._log.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and v != "":
                    self._tb.add_scalar(k, float(v), row["step"])

    # ------------------------------------------------------------ training
    def train(self) -> list[float]:
        c = self.cfg
        os.makedirs(c.out, exist_ok=True)
        if self.rank == 0:
            self._open_log()
            with open(os.path.join(c.out, "config.json"), "w") as f:
                json.dump(self.config_dict(), f, indent=2)
        loader, _ = D.make_loader(self.records, c.resolution, c.seed, c.batch, c.micro_batch, self.rank,
                                  self.world, self.step, self.steps, c.workers, c.shuffle, c.random_crop,
                                  self.bucket_keys() if c.bucket else None)
        from tqdm import tqdm

        bar = tqdm(total=self.steps, initial=self.step, desc=f"stage {c.stage}",
                   disable=not c.progress or self.rank != 0)
        losses = []
        it = iter(loader)
        local_batch = c.batch // self.world
        while self.step < self.steps:
            t0 = time.time()
            self.opt.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), dtype=torch.float64)
            for k in range(self.accum):
                items = next(it)
                groups = self.prepare(items)
                last = k == self.accum - 1
                sync = contextlib.nullcontext()
                if self.world > 1 and not last and hasattr(self.wrapped, "no_sync"):
                    sync = self.wrapped.no_sync()
                with sync:
                    with self.autocast():
                        s, _ = self.wrapped(groups)
                    (s / local_batch).backward()
                loss_sum += float(s.detach())
            loss = float(all_sum(loss_sum.clone(), self.world)) / c.batch
            gn = torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip) if c.grad_clip > 0 else \
                torch.tensor(float("nan"))
            lr = self.sched.get_last_lr()[0]
            self.opt.step()
            self.sched.step()
            if self.ema is not None:
                with torch.no_grad():
                    for e, p in zip(self.ema, self.params):
                        e.mul_(c.ema).add_(p.detach().float(), alpha=1 - c.ema)
            self.step += 1
            losses.append(loss)
            row = {"step": self.step, "loss": f"{loss:.8f}", "lr": f"{lr:.6g}", "grad_norm": f"{float(gn):.6g}",
                   "samples_per_s": f"{c.batch / max(1e-9, time.time() - t0):.3f}", "val_loss": ""}
            if c.val_every and self.step % c.val_every == 0 and self.rank == 0 and c.parallel != "fsdp":
                row["val_loss"] = f"{self.eval_loss():.8f}"
                self._save_render()
            if self.rank == 0:
                if self.step % c.log_every == 0 or row["val_loss"]:
                    self._write_log(row)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            if c.ckpt_every and (self.step % c.ckpt_every == 0 or self.step == self.steps):
                self.save_checkpoint()  # every rank gathers (FSDP); rank 0 writes
            if self.world > 1:
                import torch.distributed as dist
                dist.barrier()
            if c.debug_step_delay:
                time.sleep(c.debug_step_delay)
        bar.close()
        params = self.trained_params()  # every rank (FSDP gathers)
        if self.rank == 0:
            self._log.close()
            self.export(params=params)
        return losses

    def _save_render(self):
        from PIL import Image

        img = self.render(self.cfg.val_prompt, self.cfg.val_steps, self.cfg.val_guidance, seed=self.cfg.seed)
        os.makedirs(os.path.join(self.cfg.out, "val"), exist_ok=True)
        arr = (img[0].cpu().numpy() * 255).round().astype("uint8")
        Image.fromarray(arr).save(os.path.join(self.cfg.out, "val", f"step-{self.step:08d}.png"))

    def trained_params(self, use_ema: bool = True) -> dict[str, torch.Tensor]:
        src = self.ema if (use_ema and self.ema is not None) else self.params
        return {n: _full(t).float().cpu() for n, t in zip(self.names, src)}

    def export(self, use_ema: bool = True, params: dict | None = None) -> dict:
        c = self.cfg
        return export_run(params if params is not None else self.trained_params(use_ema), self.config_dict(),
                          os.path.join(c.out, "adapter.safetensors"),
                          os.path.join(c.out, "lora.safetensors") if c.train_dit == "lora" else None,
                          os.path.join(c.out, "dit.safetensors") if c.train_dit == "full" else None, self.step)


# ---------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
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
        k = D.TASK_ALIASES.get(k.strip(), k.strip())
        if k not in TASKS:
            raise SystemExit(f"--cfg-dropout: unknown task {k!r} (tasks: {', '.join(TASKS)})")
        out[k] = float(v)
    return out


def main(argv=None):
    a = build_parser().parse_args(argv)
    kw = {f.name: getattr(a, f.name) for f in fields(TrainConfig) if f.name != "cfg_dropout"}
    cfg = TrainConfig(**kw, cfg_dropout=parse_dropout(a.cfg_dropout))
    try:
        tr = Trainer(cfg, resume=a.resume).setup()
    except D.ManifestError as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(2)
    losses = tr.train()
    if tr.rank == 0 and losses:
        print(f"stage {tr.cfg.stage}: {tr.step} steps, loss {losses[0]:.5f} -> {losses[-1]:.5f}; "
              f"exported to {tr.cfg.out}")
    if tr.world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
