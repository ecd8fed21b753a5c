"""The LMM's CPU linear layers through oneDNN (dream_engine_core/cpu_linear.py): the same
conditioning as F.linear within rounding, the paths counted, and the ways out of it."""
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


def test_oneDNN_layers_give_the_blas_conditioning(fresh_engine):
    eng = fresh_engine
    n = eng.encoder.cpu_linear_layers
    assert n > 0 and n == sum(type(m) is cpu_linear.OneDNNLinear for m in eng.encoder.model.modules())
    c0 = dict(cpu_linear.calls)
    small = _encode(eng, 56)
    c1 = dict(cpu_linear.calls)
    assert c1.get("onednn", 0) - c0.get("onednn", 0) >= n  # every layer, the vision tower's too
    assert c1.get("linear", 0) == c0.get("linear", 0)
    large = _encode(eng, 336)
    c2 = dict(cpu_linear.calls)
    assert c2.get("linear", 0) - c1.get("linear", 0) >= n  # many rows: F.linear
    try:
        assert cpu_linear.uninstall(eng.encoder.model) == n
        plain = [_encode(eng, 56), _encode(eng, 336)]
        assert dict(cpu_linear.calls) == c2  # no layer of ours ran
    finally:
        assert cpu_linear.install(eng.encoder.model) == n
    for got, want in zip([small, large], plain):
        for a, b in zip(got, want):
            assert a.tokens.shape == b.tokens.shape
            assert (a.tokens - b.tokens).abs().max().item() <= 1e-5 * max(b.tokens.abs().max().item(), 1.0)
            assert (a.pooled - b.pooled).abs().max().item() <= 1e-5 * max(b.pooled.abs().max().item(), 1.0)
    large_plain = plain[1]
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(large, large_plain))  # same operator, same bits


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


def test_load_says_which_path_the_cpu_takes(pack):
    note = pack_module("nodes.engine").cpu_path_note
    text, slow = note(torch.float32)
    assert not slow and f"oneDNN up to {cpu_linear.MAX_ROWS} rows" in text
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
    assert len(r["seconds"]["onednn"]) == len(r["seconds"]["linear"]) == 1
    assert r["max_abs_diff"] <= 1e-5 * max(r["max_abs"], 1.0)
