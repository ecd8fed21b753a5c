"""The miniature Dream Engine: the shipped default, and a shortened training run.

The shortened run (``--scale ci``) goes through the phases of ``make miniature`` —
shapes data, frozen Qwen2-VL, DiT pretraining from scratch, stage 1, stage 2, export —
and ShapesEval through the real ComfyUI server, at a size CI can afford (it takes the
shipped VAE as its frozen autoencoder; ``miniature/pipeline.py: SCALES`` says why).
"""
from __future__ import annotations

import json
import os

import pytest

pytestmark = [pytest.mark.training, pytest.mark.server]  # the shortened miniature run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "miniature")


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory, comfy):
    from miniature.pipeline import run

    return run(str(tmp_path_factory.mktemp("miniature")), "ci")


def test_every_phase_learns(ci_run):
    losses = ci_run["losses"]
    assert set(losses) == {"lmm", "pretrain", "stage1", "stage2"}
    for phase, (before, after) in losses.items():
        assert after < before, (phase, before, after)
    # pretraining from scratch must do much more than drift
    assert losses["pretrain"][1] < 0.6 * losses["pretrain"][0], losses


def test_shapes_eval_runs_on_the_real_host(ci_run):
    s = ci_run["scores"]
    cats = ("single", "colours", "two", "counting", "position", "attribution", "reconstruct_r0",
            "reconstruct_r0.5", "reconstruct_r1", "edit", "fusion")
    for c in cats:
        assert 0.0 <= s[c] <= 1.0 and s["n"][c] > 0, c
    assert s["summary"]["images"] == sum(s["n"][c] for c in cats)
    assert 0.0 <= s["colour_hit"] <= 1.0
    assert set(s["chance"]["n"]) == set(cats)


def _binom_tail(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p)."""
    from math import comb

    return sum(comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_shortened_run_beats_chance(ci_run):
    """Minutes of training from scratch must already follow the prompt's colour. Chance is
    a prompt-blind generator (random scenes of the training distribution, judged by the
    same checks): the stated colour must be present in images as often as that generator
    manages with probability < 1 % (24 prompts: 15 hits at the measured chance of 0.34;
    the run gave 17), and the exact (colour, shape) more often than it.
    Shapes, counts and relations are not learnt at this size (docs/miniature.md)."""
    s, ch = ci_run["scores"], ci_run["scores"]["chance"]
    n = s["n"]["colours"]
    hits = round(s["colour_hit"] * n)
    assert _binom_tail(hits, n, ch["colour_hit"]) < 0.01, (s["colour_hit"], "chance", ch["colour_hit"], n)
    assert s["colours"] > ch["colours"], (s["colours"], "chance", ch["colours"], n)


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHIPPED, "profile.json")), reason="no shipped miniature")
def test_shipped_miniature_is_complete_and_scored(comfy):
    import comfy.sd
    import comfy.utils

    from dream_engine_core.encoder import check_lmm_folder
    from dream_engine_core.weights import load_adapter

    with open(os.path.join(SHIPPED, "profile.json")) as f:
        prof = json.load(f)
    m = os.path.join(SHIPPED, "models")
    check_lmm_folder(os.path.join(m, "LLM", prof["lmm"]))
    ad = load_adapter(os.path.join(m, "dream_engine", prof["adapter"]))
    assert ad.spec.kind == "direct" and ad.spec.lmm_dim == 128
    dit = comfy.sd.load_diffusion_model(os.path.join(m, "diffusion_models", prof["unet_name"]))
    assert type(dit.model).__name__ == "SD3"
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(os.path.join(m, "vae", prof["vae_name"])))
    assert vae.latent_channels == 16
    assert os.path.isfile(os.path.join(m, "loras", prof["lora"]))
    with open(os.path.join(SHIPPED, "scores.json")) as f:
        scores = json.load(f)
    assert scores["scale"] == "full" and scores["scores"]["summary"]["images"] > 0


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHIPPED, "profile.json")), reason="no shipped miniature")
def test_shipped_miniature_renders_its_demo_prompt(tmp_path):
    """`make demo`'s graph on the shipped miniature, through the real server: the picture
    shows what the prompt says (ShapesEval's check), and the README shows that picture."""
    from PIL import Image

    from comfy_host import ComfyServer, apply_profile, load_api, prepare_base_dir
    from miniature.shapes_eval import check_caption, detect

    with open(os.path.join(SHIPPED, "profile.json")) as f:
        prof = json.load(f)
    base = prepare_base_dir(str(tmp_path / "base"), os.path.join(SHIPPED, "models"))
    server = ComfyServer(base).start()
    try:
        entry = server.run(apply_profile(load_api("1_text_to_image.json"), prof), timeout=600)
        img = Image.open(server.output_images(entry)[0]).convert("RGB")
    finally:
        server.stop()
    assert img.size == (prof["size"], prof["size"])
    assert check_caption(detect(img), prof["check"]), (prof["prompt"], detect(img))
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "docs/miniature_demo.png" in readme and prof["prompt"] in readme
    assert os.path.isfile(os.path.join(ROOT, "docs", "miniature_demo.png"))


def test_every_workflow_has_a_thumbnail():
    wf = os.path.join(ROOT, "example_workflows")
    names = sorted(f[:-5] for f in os.listdir(wf) if f.endswith(".json"))
    assert names
    if not os.path.isfile(os.path.join(SHIPPED, "profile.json")):
        pytest.skip("no shipped miniature (thumbnails are rendered by it)")
    from PIL import Image

    for n in names:
        im = Image.open(os.path.join(wf, n + ".jpg"))
        assert im.format == "JPEG" and im.height >= 64, n
