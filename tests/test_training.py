"""Trainer tests on tiny same-architecture models: a real learning signal in both
stages, resume after SIGKILL, DDP (2 gloo processes) against 1 process, and manifest
validation that names the line and field."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

pytestmark = pytest.mark.training  # runs a trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, comfy):
    from miniature.training_set import build_tiny_training_set

    return build_tiny_training_set(str(tmp_path_factory.mktemp("tiny_train")), n_records=8)


def _cfg(tiny, out, **kw):
    from training.train import TrainConfig

    base = dict(manifest=tiny["manifest"], lmm=tiny["lmm"], dit=tiny["dit"], vae=tiny["vae"], out=str(out),
                adapter_hidden=64, resolution=32, lmm_short_side=56, batch=4, micro_batch=2, lora_rank=4,
                ckpt_every=0, progress=False, val_n=8, warmup=0.0)
    base.update(kw)
    return TrainConfig(**base)


def _cli(tiny, out, **kw):
    args = ["--manifest", tiny["manifest"], "--lmm", tiny["lmm"], "--dit", tiny["dit"], "--vae", tiny["vae"],
            "--out", str(out), "--adapter-hidden", "64", "--resolution", "32", "--lmm-short-side", "56",
            "--lora-rank", "4", "--no-progress", "--warmup", "0"]
    for k, v in kw.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    return args


def _log_losses(out) -> dict[int, float]:
    with open(os.path.join(out, "log.csv")) as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


# ---------------------------------------------------------------- learning signal
@pytest.mark.parametrize("stage", [1, 2])
def test_stage_lowers_loss_on_fixed_set(tiny, tmp_path, stage):
    from training.train import Trainer

    tr = Trainer(_cfg(tiny, tmp_path / f"s{stage}", stage=stage, steps=16, lr=2e-3, random_crop=False,
                      cfg_dropout={t: 0.0 for t in ("generate", "reconstruct", "edit", "fuse")},
                      val_every=16 if stage == 1 else 0, val_steps=2)).setup()
    dit_before = {k: v.clone() for k, v in tr.module.dit.state_dict().items() if "lora_" not in k}
    before = tr.eval_loss()
    losses = tr.train()
    after = tr.eval_loss()
    print(f"stage {stage}: fixed-set loss {before:.4f} -> {after:.4f} "
          f"(train loss {losses[0]:.4f} -> {losses[-1]:.4f})")
    assert after < 0.9 * before, (before, after)
    # only the adapter (stage 1) or adapter + LoRA (stage 2) trained; the DiT's own weights did not move
    names = tr.names
    assert all(n.startswith("adapter.") or ("lora_" in n and stage == 2) for n in names)
    assert any("lora_" in n for n in names) == (stage == 2)
    for k, v in tr.module.dit.state_dict().items():
        if "lora_" not in k:
            assert torch.equal(v, dit_before[k]), k
    assert os.path.isfile(tmp_path / f"s{stage}" / "adapter.safetensors")
    assert os.path.isfile(tmp_path / f"s{stage}" / "lora.safetensors") == (stage == 2)
    if stage == 1:  # --val-every: the render and the fixed-set loss of the last step
        assert os.path.isfile(tmp_path / "s1" / "val" / "step-00000016.png")
        with open(tmp_path / "s1" / "log.csv") as f:
            assert abs(float(list(csv.DictReader(f))[-1]["val_loss"]) - after) < 1e-6


# ---------------------------------------------------------------- resume after SIGKILL
def test_resume_after_sigkill_matches_uninterrupted(tiny, tmp_path):
    from training.train import Trainer

    steps = 6
    ref = Trainer(_cfg(tiny, tmp_path / "ref", stage=2, steps=steps, lr=1e-3, ema=0.9)).setup().train()

    out = tmp_path / "killed"
    cmd = [PY, "-m", "training.train", "--stage", "2"] + _cli(tiny, out, steps=steps, lr=1e-3, ema=0.9, batch=4,
                                                            micro_batch=2, ckpt_every=2, keep_ckpts=5,
                                                            debug_step_delay=1.5)
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ck = out / "checkpoints" / "step-00000004" / "state.json"
    t0 = time.time()
    while not ck.exists() and p.poll() is None and time.time() - t0 < 240:
        time.sleep(0.1)
    assert p.poll() is None, "the run ended before it could be killed: " + p.stderr.read().decode()[-2000:]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p.stderr.close()
    assert not (out / "adapter.safetensors").exists()
    # only complete checkpoints carry a final name
    from training.checkpoint import is_checkpoint

    assert all(is_checkpoint(str(x)) for x in (out / "checkpoints").glob("step-*"))

    r = subprocess.run([PY, "-m", "training.train", "--stage", "2", "--resume", "auto"] +
                       _cli(tiny, out, steps=steps, lr=1e-3, ema=0.9, batch=4, micro_batch=2, ckpt_every=2,
                            keep_ckpts=5), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr
    got = _log_losses(out)
    assert sorted(got) == list(range(1, steps + 1))
    diff = max(abs(got[s + 1] - ref[s]) for s in range(steps))
    print(f"resume after SIGKILL: max |loss difference| over {steps} steps = {diff:.3e}")
    assert diff < 1e-5, (got, ref)
    # the exported files equal the uninterrupted run's (EMA weights)
    from safetensors.torch import load_file

    for name in ("adapter.safetensors", "lora.safetensors"):
        a, b = load_file(str(out / name)), load_file(str(tmp_path / "ref" / name))
        assert a.keys() == b.keys()
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    # python -m training.export on the last checkpoint writes the files the run exported
    r = subprocess.run([PY, "-m", "training.export", "--checkpoint", str(out / "checkpoints" / "step-00000006"),
                        "--adapter", str(tmp_path / "x_adapter.safetensors"),
                        "--lora", str(tmp_path / "x_lora.safetensors")], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("adapter", "lora"):
        a, b = load_file(str(tmp_path / f"x_{name}.safetensors")), load_file(str(out / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


# ---------------------------------------------------------------- DDP
def test_ddp_two_processes_match_one_process_double_batch(tiny, tmp_path):
    from training.train import Trainer

    steps = 4
    single = Trainer(_cfg(tiny, tmp_path / "one", stage=2, steps=steps, lr=1e-3, batch=4, micro_batch=4)).setup()
    one = single.train()
    out = tmp_path / "ddp"
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "training.train",
           "--stage", "2"] + _cli(tiny, out, steps=steps, lr=1e-3, batch=4, micro_batch=2, ckpt_every=0)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    two = _log_losses(out)
    diff = max(abs(two[s + 1] - one[s]) for s in range(steps))
    from safetensors.torch import load_file

    a, b = load_file(str(out / "lora.safetensors")), single.trained_params()
    from training.export import lora_from_params

    b = lora_from_params(b, 4)
    wdiff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"DDP 2x2 vs 1x4: max |loss difference| = {diff:.3e}, max |LoRA weight difference| = {wdiff:.3e}")
    assert diff < 1e-4 * max(1.0, abs(one[0])), (two, one)
    assert wdiff < 1e-4


# ---------------------------------------------------------------- manifests
def _write(tmp_path, lines):
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def test_bad_manifest_reports_line_and_field(tmp_path):
    from PIL import Image

    from training.data import ManifestError, load_manifest

    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    lines = [
        json.dumps({"task": "t2i", "prompt": "a red square", "target": "ok.png"}),           # 1 fine
        "# a comment",                                                                        # 2 skipped
        json.dumps({"task": "t2i", "prompt": "x", "target": "missing.png"}),                 # 3 missing file
        json.dumps({"task": "edit", "images": ["ok.png"], "prompt": "red", "target": "broken.png"}),  # 4 unreadable
        json.dumps({"task": "fuse", "images": ["ok.png"], "names": ["a"], "prompt": "[b] on grass",
                    "target": "ok.png"}),                                                     # 5 absent image ref
        json.dumps({"task": "t2i", "prompt": "see [image 2]", "images": ["ok.png"], "target": "ok.png"}),  # 6
        "{not json",                                                                          # 7
        json.dumps({"task": "paint", "target": "ok.png"}),                                     # 8 bad task
        json.dumps({"task": "reconstruct", "images": [], "target": "ok.png"}),                 # 9 no image
        json.dumps({"task": "t2i", "prompt": "a", "target": "ok.png", "ratio": 2}),            # 10 bad ratio
        json.dumps({"task": "edit", "images": ["ok.png"], "prompt": "x"}),                     # 11 no target
    ]
    with pytest.raises(ManifestError) as ei:
        load_manifest(_write(tmp_path, lines))
    got = {(ln, fld) for ln, fld, _ in ei.value.problems}
    msg = str(ei.value)
    print(msg)
    expected = {(3, "target"), (4, "target"), (5, "prompt"), (6, "prompt"), (7, "(line)"), (8, "task"),
                (9, "images"), (10, "ratio"), (11, "target")}
    assert got == expected, got
    assert "m.jsonl:3: field 'target': file not found" in msg
    assert "m.jsonl:4: field 'target': unreadable image" in msg
    assert "[b]" in msg and "[image 2]" in msg
    # the good record alone loads, with its path resolved relative to the manifest
    recs = load_manifest(_write(tmp_path, lines[:2]))
    assert len(recs) == 1 and recs[0].target == str(tmp_path / "ok.png") and recs[0].task == "generate"


def test_cli_reports_bad_manifest_without_traceback(tmp_path, tiny):
    bad = _write(tmp_path, [json.dumps({"task": "t2i", "prompt": "x", "target": "nope.png"})])
    r = subprocess.run([PY, "-m", "training.train", "--manifest", bad, "--lmm", tiny["lmm"], "--dit", tiny["dit"],
                        "--vae", tiny["vae"], "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert "m.jsonl:1: field 'target': file not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_sampler_shards_are_a_partition_of_the_global_order():
    from training.data import ResumableSampler

    n, gb = 10, 4
    single = list(ResumableSampler(n, gb, 0, 1, seed=3, max_steps=5))
    shards = [list(ResumableSampler(n, gb, r, 2, seed=3, max_steps=5)) for r in range(2)]
    merged = [k for s in range(5) for r in range(2) for k in shards[r][s * 2:(s + 1) * 2]]
    assert merged == single
    resumed = list(ResumableSampler(n, gb, 0, 1, seed=3, start_step=3, max_steps=5))
    assert resumed == single[12:]


def test_bucketed_sampler_fills_batches_from_one_length_and_resumes():
    from collections import Counter

    from training.data import ResumableSampler

    n, gb, steps = 103, 8, 12
    keys = [(5 + i % 3, 0) if i < 90 else (20 + i, 1) for i in range(n)]  # 3 common lengths + 13 odd ones
    full = list(ResumableSampler(n, gb, 0, 1, seed=3, max_steps=steps, bucket_keys=keys))
    batches = [[i for _, i in full[s * gb:(s + 1) * gb]] for s in range(steps)]
    kinds = Counter(len({keys[i] for i in b}) for b in batches)
    # per epoch (12 steps): 90 records of 3 lengths fill 9 one-length batches, the rest 4
    # mixed ones; of those 13 batches the 12 first in the shuffled order run
    assert kinds[1] >= 8, kinds
    epoch0 = [i for e, i in full if e == 0]
    assert len(epoch0) == len(set(epoch0)) == (n // gb) * gb  # each record at most once per epoch
    resumed = list(ResumableSampler(n, gb, 0, 1, seed=3, start_step=7, max_steps=steps, bucket_keys=keys))
    assert resumed == full[7 * gb:]
    shards = [list(ResumableSampler(n, gb, r, 2, seed=3, max_steps=steps, bucket_keys=keys)) for r in range(2)]
    assert [k for s in range(steps) for r in range(2) for k in shards[r][s * 4:(s + 1) * 4]] == full
    plain = list(ResumableSampler(n, gb, 0, 1, seed=3, max_steps=steps))
    assert plain != full
