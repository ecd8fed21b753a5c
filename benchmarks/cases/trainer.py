"""Figure 7: one stage-2 step of ``training.train.Trainer`` (small config) against the bare
forward + backward of the same module on the same prepared batch, and samples/s of the
unmodified training loop (data loading and LMM encoding on)."""
from __future__ import annotations

import csv
import os
import statistics

from ..measure import peak_rss, timeit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FOLDER = os.path.join(ROOT, "build", "bench", "trainer")


def trainer(args: dict) -> dict:
    from comfy_host.importer import import_comfy

    import_comfy()
    from miniature.training_set import build_tiny_training_set

    paths = build_tiny_training_set(FOLDER, n_records=16, depth=args.get("depth", 2), image_size=64)
    steps = 4 if args.get("quick", False) else 10
    tr, groups = _fixed_batch_run(_config(paths, "run_fixed", steps))
    step = _step_times(tr)
    bare = _bare_forward_backward(tr, groups, repeats=max(3, len(step)))
    from training.train import Trainer

    tr2 = Trainer(_config(paths, "run_data", steps)).setup()  # the unmodified loop: data loading and LMM on
    tr2.train()
    full = _step_times(tr2)
    return {"config": {k: v for k, v in tr.config_dict().items() if k in
                       ("stage", "train_dit", "lora_rank", "adapter_hidden", "resolution", "batch", "micro_batch",
                        "workers", "precision")},
            "dit_depth": args.get("depth", 2), "step_s": statistics.median(step), "step_all": step,
            "bare_s": bare["median"], "bare": bare, "ratio": statistics.median(step) / bare["median"],
            "step_with_data_s": statistics.median(full), "step_with_data_all": full,
            "samples_per_s": tr.cfg.batch / statistics.median(full), "peak_rss": peak_rss()}


def _config(paths: dict, run: str, steps: int):
    from training.train import TrainConfig

    return TrainConfig(manifest=paths["manifest"], lmm=paths["lmm"], dit=paths["dit"], vae=paths["vae"],
                       out=os.path.join(FOLDER, run), stage=2, adapter_hidden=256, resolution=64, lmm_short_side=56,
                       batch=2, micro_batch=2, lora_rank=8, ckpt_every=0, progress=False, warmup=0.0, steps=steps,
                       workers=0)


def _fixed_batch_run(cfg):
    """The trainer's own loop with its data step replaced by one fixed prepared batch."""
    from training import data as D
    from training.train import Trainer

    tr = Trainer(cfg).setup()
    loader, _ = D.make_loader(tr.records, tr.cfg.resolution, 0, tr.cfg.batch, tr.cfg.micro_batch, 0, 1, 0,
                              tr.steps, 0, False, False)
    groups = tr.prepare(next(iter(loader)), fixed=True)
    tr.prepare = lambda items, fixed=False: groups
    tr.train()
    return tr, groups


def _bare_forward_backward(tr, groups, repeats: int) -> dict:
    """The same module's forward + backward on the same batch, nothing else."""
    def bare():
        for p in tr.params:
            p.grad = None
        with tr.autocast():
            s, _ = tr.module(groups)
        (s / tr.cfg.batch).backward()
    return timeit(bare, repeats=repeats, min_warmup=2)


def _step_times(tr) -> list[float]:
    with open(os.path.join(tr.cfg.out, "log.csv")) as f:
        sps = [float(r["samples_per_s"]) for r in csv.DictReader(f)]
    return [tr.cfg.batch / x for x in sps][2:]  # the first steps warm up
