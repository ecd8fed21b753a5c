"""Distributed checkpoints: 2 gloo processes under ``torchrun``, DDP and FSDP, on the
SD3.5-Large layout and on the SD3.5-Medium layout (dual-attention blocks, their LoRA).

The run is SIGKILLed (every process) after its step-2 checkpoint, resumed with
``--resume auto``, and its loss curve and exported files must equal those of the
same run left uninterrupted."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.test_training import PY, ROOT, _cli, _log_losses, tiny  # noqa: F401  (fixture)

pytestmark = pytest.mark.training  # runs a trainer

STEPS = 4


@pytest.fixture(scope="module")
def medium_tiny(tmp_path_factory, comfy):
    """The tiny training set with its DiT in SD3.5-Medium layout."""
    from model_builders.comfy_formats import TINY_MEDIUM
    from miniature.training_set import build_tiny_training_set

    return build_tiny_training_set(str(tmp_path_factory.mktemp("medium_train")), n_records=8, **TINY_MEDIUM)


def _kill_tree(pid: int):
    """SIGKILL torchrun and its workers (they run in sessions of their own)."""
    procs = _children(pid)
    for q in procs + [pid]:
        try:
            os.kill(q, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            for c in f.read().split():
                out += [int(c)] + _children(int(c))
    return out


def _torchrun(tiny, out, parallel, *extra, **kw):  # noqa: F811
    return [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "training.train",
            "--stage", "2", *extra] + _cli(tiny, out, steps=STEPS, lr=1e-3, ema=0.9, batch=4, micro_batch=1,
                                           ckpt_every=2, keep_ckpts=0, parallel=parallel, **kw)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
@pytest.mark.parametrize("layout", ["large", "medium"])
def test_sigkill_and_resume_equals_uninterrupted(request, tmp_path, layout, parallel):
    tiny = request.getfixturevalue("tiny" if layout == "large" else "medium_tiny")  # noqa: F811
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = tmp_path / "ref"
    r = subprocess.run(_torchrun(tiny, ref, parallel), cwd=ROOT, capture_output=True, text=True, timeout=400,
                       env=env)
    assert r.returncode == 0, r.stderr[-4000:]

    out = tmp_path / "killed"
    p = subprocess.Popen(_torchrun(tiny, out, parallel, debug_step_delay=3), cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    ck = out / "checkpoints" / "step-00000002" / "state.json"
    t0 = time.time()
    while not ck.exists() and p.poll() is None and time.time() - t0 < 300:
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be killed: " + p.stderr.read().decode()[-3000:]
    _kill_tree(p.pid)
    p.wait()
    p.stderr.close()
    assert not (out / "adapter.safetensors").exists()
    killed_at = max(_log_losses(out))
    assert killed_at < STEPS

    r = subprocess.run(_torchrun(tiny, out, parallel, "--resume", "auto"), cwd=ROOT, capture_output=True,
                       text=True, timeout=400, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "resumed from" in r.stderr and "step-00000002" in r.stderr
    got, want = _log_losses(out), _log_losses(ref)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    diff = max(abs(got[s] - want[s]) for s in want)
    print(f"{layout} {parallel}: killed after step {killed_at}, resumed at 2; max |loss difference| over {STEPS} steps "
          f"= {diff:.3e}")
    assert diff < 1e-6, (got, want)
    from safetensors.torch import load_file

    for name in ("adapter.safetensors", "lora.safetensors"):  # EMA weights
        a, b = load_file(str(out / name)), load_file(str(ref / name))
        assert a.keys() == b.keys()
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6, name
    # the Medium layout's dual-attention block carries its LoRA through the resume
    assert any(".attn2." in k for k in a) == (layout == "medium")
