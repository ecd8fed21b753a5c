"""The LMM's CPU linear layers through oneDNN (dream_engine_core/cpu_linear.py): the same
conditioning as F.linear within rounding, the language model's packed weights made once and
made again when the weights change, the paths counted, and the ways out of it."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import pack_module
from dream_engine_core import cpu_linear
from dream_engine_core.engine import DreamEngine, EncodeOptions
from dream_engine_core.prompt import ImageRef

pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="this torch has no oneDNN linear operator")


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (112, 140, 3), dtype=np.uint8))


def _encode(eng: DreamEngine, short_side: int):
    """A 2-image fuse prompt: at short side 56 every layer sees at most 256 rows; at 336 (the
    release's) the vision tower sees 720 patches per image and the language model 400 tokens."""
    return eng.encode("the [hat] on the head of the [cat]", images=[_image(1), _image(2)],
                      refs=[ImageRef(name="hat", ratio=0.5), ImageRef(name="cat", ratio=0.0)], task="fuse",
                      options=EncodeOptions(short_side=short_side))


@pytest.fixture(scope="module")
def fresh_engine(tiny_lmm_dir, tiny_adapter_path):
    return DreamEngine.load(tiny_lmm_dir, tiny_adapter_path, dtype=torch.float32)


def _counts(eng):
    """oneDNN layers of the language model, the vision tower and the adapter."""
    inner = eng.encoder.model.model
    return tuple(sum(type(m) is cpu_linear.OneDNNLinear for m in part.modules())
                 for part in (inner.language_model, inner.visual, eng.adapter))


def _delta(c0):
    return {k: v - c0.get(k, 0) for k, v in cpu_linear.calls.items() if v != c0.get(k, 0)}


def _assert_close(got, want):
    for a, b in zip(got, want):
        assert a.tokens.shape == b.tokens.shape
        assert (a.tokens - b.tokens).abs().max().item() <= 1e-5 * max(b.tokens.abs().max().item(), 1.0)
        assert (a.pooled - b.pooled).abs().max().item() <= 1e-5 * max(b.pooled.abs().max().item(), 1.0)


def test_oneDNN_layers_give_the_blas_conditioning(fresh_engine):
    eng = fresh_engine
    n = eng.encoder.cpu_linear_layers
    assert n > 0 and n == sum(type(m) is cpu_linear.OneDNNLinear for m in eng.encoder.model.modules())
    n_lm, n_vis, n_ad = _counts(eng)
    assert n_lm > 0 and n_vis > 0 and n_ad > 0
    assert cpu_linear.packed_bytes(eng.encoder.model) == sum(
        m.weight.numel() * 4 for m in eng.encoder.model.model.language_model.modules()
        if isinstance(m, torch.nn.Linear))
    c0 = dict(cpu_linear.calls)
    small = _encode(eng, 56)
    d = _delta(c0)
    assert d.get("packed", 0) >= n_lm + n_ad  # the language model's and the adapter's layers
    assert d.get("onednn", 0) >= n_vis  # the vision tower's, every one at most 256 rows
    assert "linear" not in d
    c1 = dict(cpu_linear.calls)
    large = _encode(eng, 336)
    d = _delta(c1)
    assert d.get("linear", 0) >= n_vis  # 720 patches: F.linear in the vision tower
    assert d.get("packed", 0) >= n_lm and "pack" not in d  # 400 tokens: packed still, the copies kept
    c2 = dict(cpu_linear.calls)
    try:
        assert eng.set_cpu_linear("blas") == 0
        plain = [_encode(eng, 56), _encode(eng, 336)]
        assert dict(cpu_linear.calls) == c2  # no layer of ours ran
    finally:
        assert eng.set_cpu_linear() == n
    for got, want in zip([small, large], plain):
        _assert_close(got, want)


def test_packed_weights_give_the_tokens_of_unpacked_oneDNN(fresh_engine, monkeypatch):
    eng = fresh_engine
    model, lm = eng.encoder.model, eng.encoder.model.model.language_model
    packed = _encode(eng, 56)
    monkeypatch.setenv("DREAM_ENGINE_CPU_LINEAR", "onednn")
    try:
        assert eng.set_cpu_linear() == eng.encoder.cpu_linear_layers > 0
        assert cpu_linear.packed_bytes(model) == 0 and cpu_linear.packed_bytes(eng.adapter) == 0  # no copy
        c0 = dict(cpu_linear.calls)
        unpacked = _encode(eng, 56)
        assert "packed" not in _delta(c0) and "pack" not in _delta(c0)
    finally:
        monkeypatch.delenv("DREAM_ENGINE_CPU_LINEAR")
        eng.set_cpu_linear()
    assert cpu_linear.packed_bytes(lm) > 0
    for a, b in zip(packed, unpacked):  # the tokens' bits; the pooled vector (one row) within rounding
        assert torch.equal(a.tokens, b.tokens)
    _assert_close(packed, unpacked)


def test_packed_copies_follow_the_weights():
    lin = torch.nn.Sequential(torch.nn.Linear(32, 16))
    ref = torch.nn.Linear(32, 16)
    ref.load_state_dict(lin[0].state_dict())
    assert cpu_linear.install(lin, pack=lin) == 1
    x = torch.randn(1, 5, 32)
    c0 = dict(cpu_linear.calls)
    with torch.no_grad():
        for _ in range(3):  # one copy, used three times
            torch.testing.assert_close(lin(x), ref(x), rtol=0, atol=1e-5)
        assert _delta(c0) == {"pack": 1, "packed": 3}
        lin[0].weight.mul_(2)  # edited in place: made again
        ref.weight.mul_(2)
        torch.testing.assert_close(lin(x), ref(x), rtol=0, atol=1e-5)
        assert _delta(c0) == {"pack": 2, "packed": 4}
        lin.to(torch.float64)  # cast: dropped; float64 is not a packed dtype
        assert "_dream_packed" not in lin[0].__dict__
        lin(x.double())
        assert _delta(c0) == {"pack": 2, "packed": 4, "linear": 1}
        lin.to(torch.float32)
        lin(x)
        assert _delta(c0) == {"pack": 3, "packed": 5, "linear": 1}
        assert cpu_linear.release(lin) == 1 and cpu_linear.release(lin) == 0
        lin[0].weight = torch.nn.Parameter(ref.weight.detach().clone())  # replaced: made again
        lin(x)
        assert _delta(c0) == {"pack": 4, "packed": 6, "linear": 1}


def test_too_little_memory_encodes_from_the_plain_weights(monkeypatch, caplog):
    lin = torch.nn.Linear(32, 16)
    assert cpu_linear.install(lin, pack=lin) == 1
    monkeypatch.setattr(cpu_linear, "_free_memory", lambda: cpu_linear.HEADROOM)  # less than the copy needs
    monkeypatch.setattr(cpu_linear, "_warned", set())
    x = torch.randn(5, 32)
    c0 = dict(cpu_linear.calls)
    with caplog.at_level(logging.WARNING, logger="dream_engine"), torch.no_grad():
        want = torch.nn.functional.linear(x, lin.weight, lin.bias)
        torch.testing.assert_close(lin(x), want, rtol=0, atol=1e-5)
        lin(x)
    assert _delta(c0) == {"refused": 2, "onednn": 2}
    assert sum("too little to keep the LMM's weights packed" in r.message for r in caplog.records) == 1


def test_an_unknown_path_is_refused(monkeypatch):
    from dream_engine_core.errors import OptionError

    monkeypatch.setenv("DREAM_ENGINE_CPU_LINEAR", "fast")
    with pytest.raises(OptionError, match="DREAM_ENGINE_CPU_LINEAR must be one of packed, onednn, blas"):
        cpu_linear.install(torch.nn.Linear(4, 4))


def test_many_rows_and_autograd_take_F_linear(monkeypatch):
    lin = torch.nn.Linear(16, 8)
    ref = torch.nn.Linear(16, 8)
    ref.load_state_dict(lin.state_dict())
    assert cpu_linear.install(lin) == 1  # a bare Linear is its own only module
    x = torch.randn(3, 5, 16)
    c0 = dict(cpu_linear.calls)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), ref(x), rtol=0, atol=1e-5)
    assert cpu_linear.calls["onednn"] == c0.get("onednn", 0) + 1
    monkeypatch.setattr(cpu_linear, "MAX_ROWS", 14)  # 15 rows: above
    with torch.no_grad():
        torch.testing.assert_close(lin(x), ref(x), rtol=0, atol=0)
    assert cpu_linear.calls["linear"] == c0.get("linear", 0) + 1
    monkeypatch.setattr(cpu_linear, "MAX_ROWS", 256)
    xg = x.clone().requires_grad_(True)
    lin(xg).sum().backward()  # training keeps autograd's own path
    assert cpu_linear.calls["linear"] == c0.get("linear", 0) + 2
    torch.testing.assert_close(xg.grad, ref.weight.sum(0).expand_as(x).detach(), rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # bf16 weights: F.linear
        lin.to(torch.bfloat16)(x.bfloat16())
    assert cpu_linear.calls["linear"] == c0.get("linear", 0) + 3


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("DREAM_ENGINE_CPU_LINEAR", "blas")
    assert not cpu_linear.available()
    assert cpu_linear.path_name() == "BLAS"
    assert cpu_linear.install(torch.nn.Sequential(torch.nn.Linear(4, 4))) == 0


def test_load_says_which_path_the_cpu_takes(pack, monkeypatch):
    note = pack_module("nodes.engine").cpu_path_note
    text, slow = note(torch.float32, 3 << 30)
    assert not slow and "kept packed (a second copy of 3.0 GiB" in text
    monkeypatch.setenv("DREAM_ENGINE_CPU_LINEAR", "onednn")
    text, slow = note(torch.float32, 3 << 30)
    assert not slow and f"oneDNN up to {cpu_linear.MAX_ROWS} rows" in text and "copy" not in text
    monkeypatch.delenv("DREAM_ENGINE_CPU_LINEAR")
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    text, slow = note(torch.bfloat16)
    assert slow is (not native)
    assert ("no native bf16" in text) is (not native) and ("'fp32'" in text) is (not native)
    assert note(torch.float16)[1] is True


def test_the_ab_benchmark_puts_the_layers_back(fresh_engine):
    from benchmarks.cpu_linear_ab import ab

    eng = fresh_engine
    n = eng.encoder.cpu_linear_layers
    r = ab(eng, "a red circle left of a blue square", [], repeats=1)
    assert sum(type(m) is cpu_linear.OneDNNLinear for m in eng.encoder.model.modules()) == n
    assert cpu_linear.packed_bytes(eng.encoder.model) > 0 and cpu_linear.packed_bytes(eng.adapter) > 0
    assert all(len(v) == 1 for v in r["seconds"].values()) and set(r["seconds"]) == {"packed", "onednn", "blas"}
    assert r["max_abs_diff"]["blas"] == 0
    assert max(r["max_abs_diff"].values()) <= 1e-5 * max(r["max_abs"], 1.0)


def test_weights_loaded_under_inference_mode_are_packed():
    """ComfyUI runs nodes under inference mode, so the adapter it loads has inference
    tensors, which keep no version counter: the copy is keyed on their storage."""
    with torch.inference_mode():
        lin = torch.nn.Linear(32, 16)
    assert lin.weight.is_inference()
    assert cpu_linear.install(lin, pack=lin) == 1
    x = torch.randn(5, 32)
    c0 = dict(cpu_linear.calls)
    with torch.inference_mode():
        want = torch.nn.functional.linear(x, lin.weight, lin.bias)
        for _ in range(2):
            torch.testing.assert_close(lin(x), want, rtol=0, atol=1e-5)
    assert _delta(c0) == {"pack": 1, "packed": 2}
