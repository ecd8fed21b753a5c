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
* AdamW, linear warm-up + cosine (``training/schedule.py``), grad clipping, bf16 autocast on devices that
  support it, gradient accumulation, gradient checkpointing, optional EMA;
* every random draw of a sample comes from a generator seeded by (seed, epoch,
  index): DDP with P processes × batch b equals 1 process × batch P·b, and a resumed
  run equals an uninterrupted one;
* DDP or FSDP (``--parallel``); checkpoints are ``torch.distributed.checkpoint``
  folders (``training/checkpoint.py``), ``--resume auto`` continues the latest;
* at the end the adapter (``OUT/adapter.safetensors``) and, in stage 2, the LoRA
  (``OUT/lora.safetensors``) are exported (``training/export.py``).

Settings and flags: ``training/config.py``; data: ``training/data.py``; the DiT:
``training/dit.py``; ``--cache``: ``training/cache.py``; logs: ``training/runlog.py``;
``--val-every``: ``training/validate.py``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from dataclasses import asdict

import torch

from dream_engine_core.adapter import Adapter, AdapterSpec, dit_base_name
from dream_engine_core.prompt import build_task_inputs
from dream_engine_core.weights import load_adapter

from . import checkpoint as ckpt
from . import data as D
from . import dit as DT
from .cache import FrozenCache
from .config import TrainConfig, config_from_args
from .export import export_run
from .runlog import RunLog
from .schedule import warmup_cosine, warmup_steps
from .validate import save_render

__all__ = ["TrainConfig", "Trainer", "main"]


# ---------------------------------------------------------------- distributed
def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) as ``torchrun`` sets them."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), \
        int(os.environ.get("LOCAL_RANK", "0"))


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
        adapter = self._adapter(dit)
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
            from torch.distributed.fsdp import fully_shard

            for blk in dit.joint_blocks:
                fully_shard(blk)
            fully_shard(self.module)
        self.names = [n for n, p in self.module.named_parameters() if p.requires_grad]
        self.params = [p for n, p in self.module.named_parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, warmup_cosine(self.steps,
                                                                              warmup_steps(self.steps, c.warmup)))
        self.ema = [p.detach().float().clone() for p in self.params] if c.ema > 0 else None
        self.step = 0
        self.cache = FrozenCache() if c.cache else None
        path = ckpt.find_resume(self.ckpt_dir(), self.resume)
        if path:
            self.load_checkpoint(path)
        self.wrapped = self.module
        if self.world > 1 and not fsdp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.wrapped = DDP(self.module, device_ids=[self.local] if self.device.type == "cuda" else None)
        return self

    def _adapter(self, dit):
        """The adapter this run trains: a new one of the run's layout, or ``--adapter-init``
        checked against it (same layout, made for this base); trainable."""
        c = self.cfg
        hidden = DT.dit_hidden(dit)
        base = DT.base_of(dit)  # recorded in the adapter: Load Dream Engine refuses it on another base
        if c.map_kind == "direct":
            spec = AdapterSpec.direct(hidden, lmm_dim=self.encoder.hidden_size, hidden_dim=c.adapter_hidden,
                                      lmm=os.path.basename(os.path.normpath(c.lmm)), dit=base)
        else:
            ctx, y = dit.context_embedder, dit.y_embedder
            spec = AdapterSpec.standard(lmm_dim=self.encoder.hidden_size, hidden_dim=c.adapter_hidden,
                                        token_dim=ctx.in_features, pooled_dim=y.mlp[0].in_features,
                                        lmm=os.path.basename(os.path.normpath(c.lmm)), dit=base)
        if c.adapter_init:
            adapter = load_adapter(c.adapter_init, lmm_dim=self.encoder.hidden_size).float()
            if adapter.spec.dit and adapter.spec.dit != base:
                raise ValueError(f"--adapter-init {c.adapter_init} was made for {dit_base_name(adapter.spec.dit)}, "
                                 f"but --dit {c.dit} is {dit_base_name(base)}; start from the stage-1 adapter "
                                 f"trained on this base")
            if adapter.spec.expected_shapes() != spec.expected_shapes():
                raise ValueError(f"--adapter-init {c.adapter_init} has a different layout than this run needs")
            spec = dataclasses.replace(adapter.spec, dit=base)
            adapter.spec = spec
        else:
            torch.manual_seed(c.seed)
            adapter = Adapter(spec)
        adapter.requires_grad_(True).train()
        self.spec = spec
        return adapter

    # ------------------------------------------------------------ samples
    def _drop_p(self, task):
        return float(self.cfg.cfg_dropout.get(task, 0.0))

    def prepare(self, items: list[dict], fixed: bool = False):
        """Items from the loader → groups of equal token length for the DiT."""
        c = self.cfg
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
                            "sigma": sigma})
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
                        "x0": torch.stack([s["x0"] for s in ss]).to(self.device),  # ComfyUI's VAE returns them on the CPU
                        "noise": torch.stack([s["noise"] for s in ss]),
                        "sigma": torch.tensor([s["sigma"] for s in ss], device=self.device)})
        return out

    def _latents(self, items) -> torch.Tensor:
        """Target latents (kept per record with ``--cache`` when the crop is deterministic)."""
        def encode(targets):
            return DT.encode_latents(self.vae, self.latent_format, targets.to(self.device))

        if self.cache is None or self.cfg.random_crop:
            return encode(torch.stack([it["target"] for it in items]))
        return self.cache.target_latents(items, encode)

    def _hidden(self, rec, it, inp, uncond: bool) -> torch.Tensor:
        """LMM states of one model input, ``[1, L, D]`` float."""
        c = self.cfg
        enc = self.encoder

        def run(model_input):
            prep = enc.prepare_images(it["inputs"] if model_input.images else [], c.lmm_short_side,
                                      c.lmm_min_pixels, c.lmm_max_pixels)
            return enc.encode(model_input, prep, positions=c.positions)

        if self.cache is None:
            return run(inp).hidden.float().clone()

        def run_r0():
            ti0 = build_task_inputs(rec.prompt, rec.refs(0.0), rec.task, style="training")
            return run(ti0.uncond if uncond else ti0.cond)
        return self.cache.hidden((it["index"], uncond), inp.ratios, run_r0)

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

    # ------------------------------------------------------------ checkpoints
    def ckpt_dir(self):
        return os.path.join(self.cfg.out, "checkpoints")

    def config_dict(self) -> dict:
        d = asdict(self.cfg)
        d["adapter_spec"] = self.spec.as_dict()
        return d

    def save_checkpoint(self) -> str:
        """Every process calls this (DCP writes each one's part)."""
        return ckpt.save(self.ckpt_dir(), self.step, self.module, self.opt, self.sched, self.names, self.ema,
                         self.config_dict(), self.cfg.keep_ckpts)

    def load_checkpoint(self, path: str):
        state = ckpt.read_state(path)
        old = state["config"]
        for k in ("stage", "seed", "batch", "manifest", "train_dit", "lora_rank", "map_kind", "resolution"):
            if old.get(k) != getattr(self.cfg, k):
                raise ValueError(f"cannot resume {path}: it was run with {k}={old.get(k)!r}, this run has "
                                 f"{k}={getattr(self.cfg, k)!r}")
        ckpt.load(path, self.module, self.opt, self.sched, self.names, self.ema)
        self.step = int(state["step"])
        if self.rank == 0:
            print(f"resumed from {path} at step {self.step}", file=sys.stderr)

    # ------------------------------------------------------------ training
    def train(self) -> list[float]:
        c = self.cfg
        os.makedirs(c.out, exist_ok=True)
        if self.rank == 0:
            log = RunLog(c.out, self.step)
            with open(os.path.join(c.out, "config.json"), "w") as f:
                json.dump(self.config_dict(), f, indent=2)
        loader, _ = D.make_loader(self.records, c.resolution, c.seed, c.batch, c.micro_batch, self.rank,
                                  self.world, self.step, self.steps, c.workers, c.shuffle, c.random_crop,
                                  D.bucket_keys(self.records, self.encoder.tokenizer) if c.bucket else None)
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
                   "samples_per_s": f"{c.batch / max(1e-9, time.time() - t0):.3f}", "val_loss": "",
                   **self._memory_peaks()}
            if c.val_every and self.step % c.val_every == 0 and self.rank == 0 and c.parallel != "fsdp":
                row["val_loss"] = f"{self.eval_loss():.8f}"
                save_render(self, os.path.join(c.out, "val", f"step-{self.step:08d}.png"))
            if self.rank == 0:
                if self.step % c.log_every == 0 or row["val_loss"]:
                    log.write(row)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            if c.ckpt_every and (self.step % c.ckpt_every == 0 or self.step == self.steps):
                self.save_checkpoint()
            if self.world > 1:
                import torch.distributed as dist
                dist.barrier()
            if c.debug_step_delay:
                time.sleep(c.debug_step_delay)
        bar.close()
        params = self.trained_params()  # every rank (FSDP gathers)
        if self.rank == 0:
            log.close()
            self.export(params=params)
        return losses

    def _memory_peaks(self) -> dict:
        """The CUDA allocator's peak allocated and reserved memory so far (empty elsewhere)."""
        if self.device.type != "cuda":
            return {"max_allocated_gib": "", "max_reserved_gib": ""}
        return {"max_allocated_gib": f"{torch.cuda.max_memory_allocated(self.device) / 2**30:.3f}",
                "max_reserved_gib": f"{torch.cuda.max_memory_reserved(self.device) / 2**30:.3f}"}

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
def main(argv=None):
    cfg, resume = config_from_args(argv, __doc__)
    try:
        tr = Trainer(cfg, resume=resume).setup()
    except D.ManifestError as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(2)
    losses = tr.train()
    if tr.rank == 0 and losses:
        print(f"stage {tr.cfg.stage}: {tr.step} steps, loss {losses[0]:.5f} -> {losses[-1]:.5f}; "
              f"exported to {tr.cfg.out}")
    if tr.world > 1:
        import torch.distributed as dist
        dist.barrier()  # every file is written and closed
        dist.destroy_process_group()
        # Leave without interpreter shutdown. torch's DTensor caches keep FSDP's device
        # meshes, and with them the gloo process group, alive past destroy_process_group;
        # freed during shutdown, gloo's worker threads now and then abort the process
        # ("terminate called without an active exception", exit code -6) after a run that
        # had finished and exported, and torchrun then reports the run as failed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
