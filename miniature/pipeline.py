"""`make miniature`: a Dream Engine small enough to train on a 2-core CPU, from scratch.

    python -m miniature.pipeline                      # the full run (~1 hour on 2 cores)
    python -m miniature.pipeline --scale ci           # the shortened run CI uses (minutes)
    python -m miniature.pipeline --ship               # also copy the files into miniature/ (the embedded default)
    python -m miniature.pipeline --fraction 0.5       # a point on the score-against-steps curve (--depth: size)

Every part is the project's own code path, at miniature scale:

1. **data** — the shapes world (``miniature.shapes_world``): 64-px images, captions and
   records for the four tasks, deterministic from the seed;
2. **VAE** — ComfyUI's 16-channel TAESD trained on shapes (``miniature.vae``);
3. **LMM** — a small Qwen2-VL built by the core's builder (its tokenizer has one token per
   word of the shapes vocabulary), pretrained for a few minutes on grounded captioning of
   the shapes world (``miniature.lmm_pretrain``, standing in for Qwen2-VL's own
   pretraining), then frozen for everything after, as in the paper;
4. **pretraining** — an SD3.5-format MMDiT (ComfyUI's class) trained from scratch,
   fully, together with a direct-map adapter on text→image and reconstruction, standing
   in for SD3.5's own pretraining;
5. **stage 1** — a fresh adapter aligned to the frozen DiT (text→image and
   reconstruction, ``r ~ U(0, 1)``): the paper's alignment stage;
6. **stage 2** — LoRA on the DiT's attention projections plus the adapter on editing and
   fusion (with some replay of stage-1 data): the paper's instruction tuning;
7. **export** — the pretrained DiT (the base of stage 2) and, beside it, the stage-2 LoRA
   (applied by ``LoraLoaderModelOnly`` in the workflows, never merged) and the adapter;
8. **ShapesEval** — generated images rendered through ComfyUI's sampler on the real host
   (the shipped workflows' node graph), scored per category (``miniature.evaluate``).

Logs go to ``OUT/miniature.log`` and each trainer's ``log.csv``; scores to
``OUT/scores.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIP_DIR = os.path.join(ROOT, "miniature")
SHIPPED_VAE = os.path.join(SHIP_DIR, "models", "vae", "dream_engine_miniature_taesd.safetensors")

# One token per word for the miniature's prompts (templates and the shapes vocabulary).
VOCAB = ("Generate", "Image", "Edit", "image", "following", "Combine", "the", "objects", "and", "generate", "an",
         "Copy", "circle", "square", "triangle", "circles", "squares", "triangles", "red", "green", "blue",
         "yellow", "purple", "orange", "one", "two", "three", "four", "left", "right", "of", "above", "below",
         "make", "it", "turn", "into", "remove", "shape", "colour", "in", "put", "first", "second", "small",
         "large", "a", "top", "bottom", "centre")


@dataclass
class Scale:
    n_base: int = 12000         # records for pretraining and stage 1 (t2i + reconstruct)
    n_s2: int = 6000            # records for stage 2 (edit + fuse + replay)
    vae_steps: int = 1500       # 0: the shipped VAE, frozen (see SCALES)
    vae_decoder_steps: int = 200  # then the decoder alone on whole images (miniature/vae.py)
    # EMA decay of each trainer's weights (exported instead of the last step's): horizons of
    # about 1000, 200 and 500 steps, an eighth to a sixth of each run; 0 = off (an EMA
    # started at the initial weights still holds 0.999^1500 = 22 % of them after 1500 steps)
    ema: tuple = (("pretrain", 0.999), ("stage1", 0.995), ("stage2", 0.998))
    lmm_steps: int = 1500       # LMM pretraining (grounded captioning) before it is frozen
    pre_steps: int = 8000
    s1_steps: int = 1200
    s2_steps: int = 3000
    batch: int = 32
    depth: int = 3              # DiT blocks (hidden 64·depth)
    eval_n: int = 48            # prompts per ShapesEval category
    eval_steps: int = 20        # sampler steps


# The CI run trains the LMM alignment, the DiT from scratch and both Dream Engine stages,
# but takes the shipped VAE as its frozen autoencoder (as Dream Engine takes SD3.5's): a
# VAE trained for the minutes CI has decodes too poorly for anything to be judged —
# 600 steps (2 min) reconstruct 43 % of scenes and a DiT on it stays at chance, while
# the shipped VAE reconstructs 90 %. The VAE trainer has its own test (tests/test_vae.py).
SCALES = {
    "full": Scale(),
    "ci": Scale(n_base=600, n_s2=300, vae_steps=0, lmm_steps=150, pre_steps=1500, s1_steps=300, s2_steps=60, batch=16,
                depth=2, eval_n=24, eval_steps=12, ema=()),
}

TRAINER_STEPS = ("lmm_steps", "pre_steps", "s1_steps", "s2_steps")  # what a curve point's fraction scales
NOT_SHIPPED = "a curve point (--fraction / --depth) is not shipped: ship a run of a named scale"


def variant(scale: str, fraction: float = 1.0, depth: int | None = None) -> Scale:
    """A point on the score-against-training curve: ``scale`` with every trainer's steps
    (LMM, pretraining, stage 1, stage 2) times ``fraction``, each EMA horizon scaled with
    them (decay ``1 - (1 - d) / fraction``), and the DiT ``depth`` blocks deep. The VAE is
    the shipped one, frozen, so the points differ only in what the curve varies."""
    if not 0 < fraction <= 4:
        raise ValueError(f"--fraction {fraction}: give a share of the scale's steps in (0, 4]")
    if depth is not None and not 1 <= depth <= 8:
        raise ValueError(f"--depth {depth}: give 1 to 8 DiT blocks")
    sc = SCALES[scale]
    steps = {k: max(1, round(getattr(sc, k) * fraction)) for k in TRAINER_STEPS}
    ema = tuple((k, round(1 - (1 - d) / fraction, 6)) for k, d in sc.ema)
    return replace(sc, vae_steps=0, ema=ema, depth=depth or sc.depth, **steps)


IMAGE = 64
DEMO_PROMPT = "a blue square left of a red circle"   # what `make demo` renders on the miniature
LMM_EMBED_STD = 0.06            # random word embeddings 3× transformers' default: each word's state is dominated
                                # by the word itself rather than by the average of the words before it
# The KSampler settings the miniature is evaluated and demonstrated with (profile.json). The shipped
# workflows sample on the release's euler + normal; the miniature was trained and scored with simple.
SAMPLER, SCHEDULER = "euler", "simple"
LMM_SHORT_SIDE = 112            # 64-px images → 8×8 patches → 16 merged vision tokens each


def log(msg: str, fh=None):
    line = f"[miniature {time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if fh:
        fh.write(line + "\n")
        fh.flush()


def lmm_size():
    from model_builders.qwen2vl import LMMSize

    return LMMSize(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, mrope_section=(4, 6, 6), vision_embed_dim=64, vision_depth=2,
                   vision_heads=2, vision_mlp_ratio=2)


def trainer_cfg(out, manifest, lmm, dit, vae, sc: Scale, **kw):
    """The trainers' settings for the miniature. ``shift=3``: σ is drawn from SD3's
    logit-normal shifted like ComfyUI's SD3 sampling schedule (shift 3) — large flat
    objects survive a lot of noise, so what the prompt decides (colour, shape, place) is
    decided at σ > 0.8, which the unshifted distribution rarely visits."""
    from dream_engine_core.encoder import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
    from training.config import TrainConfig

    base = dict(manifest=manifest, lmm=lmm, dit=dit, vae=vae, out=out, resolution=IMAGE, random_crop=False,
                lmm_short_side=LMM_SHORT_SIDE, lmm_min_pixels=DEFAULT_MIN_PIXELS, lmm_max_pixels=DEFAULT_MAX_PIXELS,
                batch=sc.batch, micro_batch=sc.batch, adapter_hidden=256, cache=True, bucket=True, precision="bf16",
                ckpt_every=0, val_n=16, warmup=0.05, shift=3.0, progress=True, seed=0)
    base.update(kw)
    return TrainConfig(**base)


class _Run:
    """One pipeline run: its folder, scale and log, the phases in order, and what they
    record (seconds per phase, the fixed-set loss before and after each trainer). Every
    phase skips its work when its output already exists, so a run resumes where it
    stopped."""

    def __init__(self, out: str, scale: str, sc: Scale | None = None):
        self.out, self.scale, self.sc = out, scale, sc or SCALES[scale]
        self.fh = open(os.path.join(out, "miniature.log"), "a")
        self.timings: dict = {}
        self.losses: dict = {}  # phase → [fixed-set loss before, after]
        self.vae = os.path.join(out, "vae.safetensors")
        self.lmm = os.path.join(out, "Qwen2-VL-miniature")

    def log(self, msg: str) -> None:
        log(msg, self.fh)

    @contextlib.contextmanager
    def phase(self, name: str):
        t0 = time.time()
        self.log(f"--- {name}")
        yield
        self.timings[name] = round(time.time() - t0, 1)
        self.log(f"{name}: {self.timings[name]} s")

    def data(self) -> tuple:
        from miniature.shapes_world import write_dataset

        base_m = os.path.join(self.out, "data_base", "manifest.jsonl")
        s2_m = os.path.join(self.out, "data_s2", "manifest.jsonl")
        if not os.path.exists(base_m):
            write_dataset(os.path.dirname(base_m), self.sc.n_base, seed=1, size=IMAGE,
                          mix=(("t2i", 0.7), ("reconstruct", 0.3)))
        if not os.path.exists(s2_m):
            write_dataset(os.path.dirname(s2_m), self.sc.n_s2, seed=2, size=IMAGE,
                          mix=(("edit", 0.4), ("fuse", 0.4), ("t2i", 0.1), ("reconstruct", 0.1)))
        return base_m, s2_m

    def train_vae(self) -> None:
        from miniature.vae import train_vae

        if not os.path.exists(self.vae) and self.sc.vae_steps == 0:  # the shipped one, frozen (see SCALES)
            if not os.path.isfile(SHIPPED_VAE):
                raise FileNotFoundError(f"the {self.scale} scale starts from the shipped VAE, and {SHIPPED_VAE} is "
                                        "missing: restore it (git checkout miniature/) or run the full scale, which "
                                        "trains one")
            shutil.copyfile(SHIPPED_VAE, self.vae)
            self.log(f"vae: the shipped one, frozen ({os.path.relpath(SHIPPED_VAE, ROOT)})")
        if not os.path.exists(self.vae):
            r = train_vae(self.vae, steps=self.sc.vae_steps, batch=16, size=IMAGE, seed=0, eval_n=32,
                          decoder_steps=self.sc.vae_decoder_steps)
            self.log(f"vae mse {r['history'][0][1]:.5f} -> {r['history'][-1][1]:.5f}")

    def pretrain_lmm(self) -> None:
        from miniature.lmm_pretrain import pretrain_lmm
        from model_builders.qwen2vl import build_tiny_qwen2vl

        if os.path.exists(os.path.join(self.lmm, "model.safetensors")):
            return
        random_lmm = os.path.join(self.out, "Qwen2-VL-miniature-random")
        build_tiny_qwen2vl(random_lmm, lmm_size(), seed=0, words=VOCAB, embed_std=LMM_EMBED_STD)
        r = pretrain_lmm(random_lmm, self.lmm, steps=self.sc.lmm_steps, seed=0, size=IMAGE,
                         short_side=LMM_SHORT_SIDE, log=self.log)
        self.losses["lmm"] = [r["before"]["total"], r["after"]["total"]]

    def train(self, name: str, run_dir: str, marker: str, manifest: str, dit: str, **kw) -> None:
        """One trainer run (skipped when its output exists); logs the fixed-set loss."""
        from training.train import Trainer

        if os.path.exists(os.path.join(run_dir, marker)):
            return
        tr = Trainer(trainer_cfg(run_dir, manifest, self.lmm, dit, self.vae, self.sc, blend="random", **kw)).setup()
        before = tr.eval_loss()
        tr.train()
        self.losses[name] = [before, tr.eval_loss()]
        self.log(f"{name}: fixed-set loss {before:.4f} -> {self.losses[name][1]:.4f}")

    def export(self, pre: str, s2: str) -> dict:
        """The final files: the pretrained DiT (bf16), the VAE (fp16), the stage-2 adapter
        and LoRA, the LMM folder."""
        import torch
        from safetensors.torch import load_file

        from dream_engine_core.weights import atomic_save, read_metadata

        final = os.path.join(self.out, "final")
        os.makedirs(final, exist_ok=True)
        files = {
            "dit": os.path.join(final, "dream_engine_miniature_dit.safetensors"),
            "vae": os.path.join(final, "dream_engine_miniature_taesd.safetensors"),
            "adapter": os.path.join(final, "dream_engine_miniature_adapter.safetensors"),
            "lora": os.path.join(final, "dream_engine_miniature_lora.safetensors"),
            "lmm": os.path.join(final, "Qwen2-VL-miniature"),
        }
        info = {"miniature": json.dumps({"scale": self.scale, **asdict(self.sc)})}
        base_sd = load_file(os.path.join(pre, "dit.safetensors"))
        # shipped as users run the release: the base DiT, and the stage-2 LoRA applied by
        # LoraLoaderModelOnly in the workflows (never merged, so it is never applied twice)
        atomic_save({k: v.to(torch.bfloat16) for k, v in base_sd.items()}, files["dit"],
                    {**info, "content": "pretrained DiT (base of stage 2); the stage-2 LoRA ships separately in "
                                        "loras/ and is applied by LoraLoaderModelOnly"})
        atomic_save({k: v.to(torch.float16) if v.ndim else v for k, v in load_file(self.vae).items()}, files["vae"],
                    {**read_metadata(self.vae), **info})
        shutil.copyfile(os.path.join(s2, "adapter.safetensors"), files["adapter"])
        shutil.copyfile(os.path.join(s2, "lora.safetensors"), files["lora"])
        if os.path.exists(files["lmm"]):
            shutil.rmtree(files["lmm"])
        shutil.copytree(self.lmm, files["lmm"])
        return files


def run(out: str, scale: str = "full", ship: bool = False, skip_eval: bool = False, sc: Scale | None = None) -> dict:
    """One pipeline run at ``scale`` (or at ``sc``, a :func:`variant` of it, which is
    never shipped)."""
    if ship and sc is not None:
        raise ValueError(NOT_SHIPPED)
    from comfy_host.importer import import_comfy

    import_comfy()
    import torch

    from model_builders.comfy_formats import build_tiny_sd35

    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    r = _Run(out, scale, sc)
    sc = r.sc
    t_all = time.time()
    r.log(f"scale {scale}: {json.dumps(asdict(sc))}")
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))  # the cores this process may use
    with r.phase("data"):
        base_m, s2_m = r.data()
    with r.phase("vae"):
        r.train_vae()
    with r.phase("lmm"):
        r.pretrain_lmm()
    pre, s1, s2 = (os.path.join(out, d) for d in ("pretrain", "stage1", "stage2"))
    with r.phase("pretrain"):
        dit0 = os.path.join(out, "dit_init.safetensors")
        if not os.path.exists(dit0):
            build_tiny_sd35(dit0, depth=sc.depth, seed=0, pos_embed_max_size=16)
        r.train("pretrain", pre, "dit.safetensors", base_m, dit0, stage=2, train_dit="full", steps=sc.pre_steps,
                lr=5e-4, ema=dict(sc.ema).get("pretrain", 0.0))
    pre_dit = os.path.join(pre, "dit.safetensors")
    with r.phase("stage1"):
        r.train("stage1", s1, "adapter.safetensors", base_m, pre_dit, stage=1, steps=sc.s1_steps, lr=1e-3, seed=1,
                ema=dict(sc.ema).get("stage1", 0.0))
    with r.phase("stage2"):
        r.train("stage2", s2, "lora.safetensors", s2_m, pre_dit, stage=2, train_dit="lora", lora_rank=16,
                steps=sc.s2_steps, lr=5e-4, adapter_init=os.path.join(s1, "adapter.safetensors"), seed=2,
                ema=dict(sc.ema).get("stage2", 0.0))
    with r.phase("export"):
        files = r.export(pre, s2)
    scores = {}
    if not skip_eval:
        from miniature.evaluate import evaluate

        with r.phase("eval"):
            scores = evaluate(files, os.path.join(out, "eval"), n=sc.eval_n, steps=sc.eval_steps,
                              short_side=LMM_SHORT_SIDE, log=r.log, sampler=SAMPLER, scheduler=SCHEDULER)
    result = {"scale": scale, "settings": asdict(sc), "cores": torch.get_num_threads(), "timings_s": r.timings,
              "losses": r.losses, "total_s": round(time.time() - t_all, 1),
              "scores": scores, "files": {k: os.path.relpath(v, out) for k, v in files.items()}}
    with open(os.path.join(out, "scores.json"), "w") as f:
        json.dump(result, f, indent=2)
    r.log(f"total {result['total_s']} s; scores {json.dumps(scores.get('summary', {}))}")
    if ship:
        ship_files(files, result)
        r.log(f"shipped into {SHIP_DIR}")
    r.fh.close()
    return result


def ship_files(files: dict, result: dict) -> None:
    """Copy the final files into ``miniature/`` (a ComfyUI ``models`` layout)."""
    from miniature.evaluate import MODEL_LAYOUT

    for k, sub in MODEL_LAYOUT.items():
        dst = os.path.join(SHIP_DIR, "models", sub, os.path.basename(files[k]))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.isdir(files[k]):
            if os.path.exists(dst):
                shutil.rmtree(dst)
            shutil.copytree(files[k], dst)
        else:
            shutil.copyfile(files[k], dst)
    with open(os.path.join(SHIP_DIR, "scores.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(SHIP_DIR, "profile.json"), "w") as f:
        json.dump(profile(files, SCALES[result["scale"]]), f, indent=2)


def profile(files: dict, sc: "Scale") -> dict:
    """How the workflows run on the miniature (read by ``make demo`` and the tests):
    its file names and the settings it was trained for."""
    return {
        "unet_name": os.path.basename(files["dit"]), "vae_name": os.path.basename(files["vae"]),
        "lmm": os.path.basename(files["lmm"]), "adapter": os.path.basename(files["adapter"]),
        "lora": os.path.basename(files["lora"]), "size": IMAGE, "image_short_side": LMM_SHORT_SIDE,
        "steps": sc.eval_steps, "cfg": 3.5, "sampler": SAMPLER, "scheduler": SCHEDULER, "prompt": DEMO_PROMPT,
        "check": {"kind": "position", "objects": [["blue", "square"], ["red", "circle"]], "relation": "left of"},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="work folder (default build/miniature[-ci])")
    ap.add_argument("--scale", choices=sorted(SCALES), default="full")
    ap.add_argument("--ship", action="store_true", help="copy the final files into miniature/")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--fraction", type=float, default=None,
                    help="a point on the score-against-steps curve: every trainer's steps times this (the shipped "
                         "VAE, frozen; never shipped)")
    ap.add_argument("--depth", type=int, default=None, help="a point on the score-against-size curve: DiT blocks")
    a = ap.parse_args(argv)
    sc = None
    tag = "" if a.scale == "full" else "-" + a.scale
    if a.fraction is not None or a.depth is not None:
        fraction = 1.0 if a.fraction is None else a.fraction
        try:
            sc = variant(a.scale, fraction, a.depth)
        except ValueError as e:
            ap.error(str(e))
        if a.ship:
            ap.error(NOT_SHIPPED)
        tag += f"-f{fraction:g}-d{sc.depth}"
    out = a.out or os.path.join(ROOT, "build", "miniature" + tag)
    run(out, a.scale, a.ship, a.skip_eval, sc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
