"""The miniature's VAE trainer: ComfyUI's TAESD, trained on shapes, loaded by ComfyUI."""
import random

import pytest
import torch

pytestmark = pytest.mark.training  # runs a trainer


def test_short_vae_run_learns_and_loads_in_comfy(comfy, tmp_path):
    from miniature.vae import SD3_SCALE, SD3_SHIFT, shapes_batch, train_vae
    import comfy.sd
    import comfy.utils
    import comfy.latent_formats

    out = str(tmp_path / "vae.safetensors")
    r = train_vae(out, steps=25, batch=4, log_every=25, progress=False, eval_n=8, decoder_steps=10)
    first, last = r["history"][0][1], r["history"][-1][1]
    assert last < 0.5 * first, r["history"]
    sd = comfy.utils.load_torch_file(out, safe_load=True)
    vae = comfy.sd.VAE(sd=sd)
    assert vae.latent_channels == 16
    x = shapes_batch(random.Random(5), 4, 64)  # [-1, 1]
    with torch.inference_mode():
        z = vae.encode((x.permute(0, 2, 3, 1) + 1) / 2)
        # calibrated so that SD3's latent format gives roughly unit-variance latents
        zin = comfy.latent_formats.SD3().process_in(z)
        assert 0.3 < float(zin.std()) < 3.0 and abs(float(zin.mean())) < 1.0
        img = vae.decode(z)
    assert img.shape == (4, 64, 64, 3) and torch.isfinite(img).all()
    assert SD3_SCALE == comfy.latent_formats.SD3().scale_factor and SD3_SHIFT == comfy.latent_formats.SD3().shift_factor


def test_decoder_finetune_keeps_the_latent_space(comfy, tmp_path):
    """The whole-image decoder fine-tune after the crop training changes the decoder
    only: encoder and latent calibration stay bit-identical (what the DiT was trained
    on), and the fixed-set reconstruction error does not rise."""
    from safetensors.torch import load_file

    from miniature.vae import train_vae

    kw = dict(steps=20, batch=4, log_every=20, progress=False, eval_n=8)
    a = train_vae(str(tmp_path / "a.safetensors"), decoder_steps=0, **kw)
    b = train_vae(str(tmp_path / "b.safetensors"), decoder_steps=15, **kw)
    sa, sb = load_file(a["path"]), load_file(b["path"])
    assert sa.keys() == sb.keys()
    for k in (k for k in sa if not k.startswith("taesd_decoder.")):  # encoder, vae_scale, vae_shift
        assert torch.equal(sa[k], sb[k]), k
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if k.startswith("taesd_decoder.")), "decoder untouched"
    assert b["history"][-1][0] == 35 and b["history"][-1][1] <= a["history"][-1][1] * 1.05, (a["history"], b["history"])
