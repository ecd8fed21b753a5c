"""Images reach the LMM exactly as in the release.

The oracle is the release's own chain, called as the release called it: torchvision
``transforms.Resize(336, BILINEAR)``, then ``qwen_vl_utils.process_vision_info``, then the
Qwen2-VL processor built with ``max_pixels=512*28*28`` (on transformers' PIL backend, the
only one the release's transformers had). The pack's ``LMMEncoder.prepare_images`` must give
the same number of image tokens and the same pixel values for every size of the sweep.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dream_engine_core.encoder import MAX_ASPECT_RATIO, ImageInputError, LMMEncoder
from dream_engine_core.engine import EncodeOptions
from dream_engine_core.prompt import IMG, ImageRef

RELEASE_MAX_PIXELS = 512 * 28 * 28


def sweep_sizes() -> list[tuple[int, int]]:
    """(width, height): 1×N and N×1, aspect ratios up to 200, sizes around 28-px
    boundaries, and random sizes."""
    sizes = []
    for n in (1, 2, 3, 13, 27, 28, 29, 56, 57, 100, 150, 199, 200):
        sizes += [(1, n), (n, 1)]
    for short, ratio in ((2, 200), (3, 199), (5, 150), (7, 120), (10, 100), (17, 60), (30, 40), (64, 20),
                         (120, 12), (250, 7)):
        sizes += [(short, short * ratio), (short * ratio, short)]
    for a in (27, 28, 29, 55, 56, 57, 83, 84, 85, 335, 336, 337, 447, 448, 449):
        for b in (28, 336, 449):
            sizes.append((a, b))
    sizes += [(1305, 1362), (985, 576), (4000, 30), (30, 4000), (1024, 1024), (1920, 1080), (1080, 1920),
              (640, 480), (512, 768), (1199, 336), (1200, 336), (1201, 336), (336, 1195), (336, 1197)]
    rng = np.random.default_rng(14)
    while len(sizes) < 170:
        s = int(rng.integers(1, 1500))
        r = float(np.exp(rng.uniform(0, np.log(MAX_ASPECT_RATIO))))
        w, h = s, max(1, int(s * r))
        if rng.random() < 0.5:
            w, h = h, w
        if max(w, h) <= 6000 and max(w, h) / min(w, h) <= MAX_ASPECT_RATIO:
            sizes.append((w, h))
    return list(dict.fromkeys(sizes))


def random_image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    # smooth content plus noise: resampling filters differ visibly on both
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 7 + yy * 3) % 256, (xx * 2 + yy * 11) % 256, (xx * yy) % 256], -1)
    noise = rng.integers(0, 64, (h, w, 3))
    return Image.fromarray(((base + noise) % 256).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def release_chain(tiny_lmm_dir):
    """The release's chain, with the real libraries."""
    from qwen_vl_utils import process_vision_info
    from torchvision import transforms
    from transformers import AutoImageProcessor, AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_lmm_dir, max_pixels=RELEASE_MAX_PIXELS, local_files_only=True)
    proc.image_processor = AutoImageProcessor.from_pretrained(tiny_lmm_dir, max_pixels=RELEASE_MAX_PIXELS,
                                                             backend="pil", local_files_only=True)
    resize = transforms.Resize(336, interpolation=transforms.InterpolationMode.BILINEAR)
    pad_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def run(img: Image.Image):
        msgs = [{"role": "user", "content": [{"type": "image", "image": resize(img)},
                                             {"type": "text", "text": "a photo"}]}]
        images, _ = process_vision_info(msgs)
        out = proc(text=[IMG + "a photo"], images=images, return_tensors="pt")
        return int((out["input_ids"] == pad_id).sum()), out["pixel_values"], out["image_grid_thw"][0]

    return run


@pytest.mark.heavy  # 150 image sizes through both chains
@pytest.mark.filterwarnings("ignore:Passing `min_pixels`:FutureWarning")  # the release passes max_pixels
def test_sweep_matches_the_release_chain(engine, release_chain):
    enc: LMMEncoder = engine.encoder
    sizes = sweep_sizes()
    assert len(sizes) >= 150
    agree, refused, max_diff = 0, 0, 0.0
    for k, (w, h) in enumerate(sizes):
        im = random_image(w, h, k)
        try:
            n_ref, px_ref, grid_ref = release_chain(im)
        except ValueError as e:  # the release's chain itself refuses it (aspect ratio after rounding)
            with pytest.raises(ImageInputError, match=r"image 1 \(%d×%d\)" % (w, h)):
                enc.prepare_images([im])
            assert "200" in str(e)
            refused += 1
            continue
        prep = enc.prepare_images([im])
        assert prep.tokens_per_image == [n_ref], f"{w}×{h}: {prep.tokens_per_image[0]} tokens, release {n_ref}"
        assert prep.grid_thw[0].tolist() == grid_ref.tolist(), f"{w}×{h}"
        assert prep.encoded_sizes == [(int(grid_ref[2]) * 14, int(grid_ref[1]) * 14)]
        diff = float((prep.pixel_values - px_ref).abs().max())
        assert diff <= 1e-6, f"{w}×{h}: pixel values differ by {diff}"
        agree += 1
        max_diff = max(max_diff, diff)
    print(f"\nsweep: {len(sizes)} sizes, {agree} token counts and grids equal to the release chain, "
          f"{refused} refused by both, max pixel difference {max_diff:g}")
    assert agree >= 150


@pytest.mark.parametrize("size", [(1, 201), (201, 1), (3, 700), (1000, 4)])
def test_aspect_ratio_beyond_the_limit_is_refused_before_any_resize(engine, size, monkeypatch):
    import dream_engine_core.encoder as encoder

    def no_resize(*a, **k):
        raise AssertionError("resized before the aspect-ratio check")

    monkeypatch.setattr(encoder, "resize_short_side", no_resize)
    good = random_image(64, 48, 0)
    bad = random_image(*size, 1)
    with pytest.raises(ImageInputError) as ei:
        engine.encoder.prepare_images([good, bad])
    msg = str(ei.value)
    assert f"image 2 ({size[0]}×{size[1]})" in msg and "200" in msg
    # the engine refuses it too, before any model runs
    with pytest.raises(ImageInputError, match=r"image 2 \(%d×%d\).*200" % size):
        engine.encode("[a] and [b]", [good, bad], [ImageRef("a"), ImageRef("b")])


def test_knobs_change_the_chain_as_documented(engine):
    """short_side 0 skips the first resize; max_pixels bounds the processor's output."""
    enc = engine.encoder
    im = random_image(900, 600, 3)
    release = enc.prepare_images([im])
    assert release.encoded_sizes == [(504, 336)]
    own = enc.prepare_images([im], short_side=0)  # qwen_vl_utils + processor on the image's own size
    w, h = own.encoded_sizes[0]
    assert w * h > 504 * 336 and w * h <= RELEASE_MAX_PIXELS and abs(w / h - 1.5) < 0.05
    small = enc.prepare_images([im], max_pixels=224 * 224)
    w, h = small.encoded_sizes[0]
    assert w * h <= 224 * 224 and w % 28 == 0 and h % 28 == 0
    big_min = enc.prepare_images([random_image(40, 30, 4)], short_side=0, min_pixels=112 * 112)
    w, h = big_min.encoded_sizes[0]
    assert w * h >= 112 * 112
    with pytest.raises(ImageInputError):
        enc.prepare_images([im], min_pixels=1000, max_pixels=10)


def test_encoder_uses_the_pil_backend(engine):
    assert type(engine.encoder.image_processor).__name__.endswith("Pil")
    assert EncodeOptions().max_pixels == RELEASE_MAX_PIXELS and EncodeOptions().short_side == 336
