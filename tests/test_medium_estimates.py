"""The SD3.5-Medium training estimates (``training/estimates.py``, ``training/activations.py``):
the per-block activation model predicts what autograd really keeps, and docs/training.md shows
the module's tables."""
from __future__ import annotations

import os
import re

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.heavy  # a DiT built and run under the FLOP counter
def test_medium_activation_model_is_linear_in_the_tokens(comfy):
    """A fourth token count is predicted by the three-point fit, for each part kind."""
    from training.activations import _new_part, fit_part, part_saved_bytes

    for kind, rank in (("dual", 0), ("dual", 4), ("plain", 0), ("last", 0), ("final", 0), ("adapter", 0)):
        a, bx, bc = fit_part(kind, 256, rank)
        got = part_saved_bytes(_new_part(kind, 256, rank), kind, 256, 100, 44)
        assert got == pytest.approx(a + bx * 100 + bc * 44, abs=64), kind


@pytest.mark.heavy  # a DiT built and run under the FLOP counter
@pytest.mark.parametrize("rank", [0, 4])
def test_medium_activation_model_adds_up_to_a_whole_dit(comfy, rank):
    """Summed over a Medium-layout DiT's blocks and final layer, the per-part fits predict the
    bytes autograd keeps for a real forward of the whole ComfyUI MMDiT (direct map, bf16
    autocast), for stage 1 (frozen) and stage 2 (LoRA): never below it and within 1 % (the
    first block's image stream needs no gradient, so it keeps a little less than the others)."""
    from model_builders.comfy_formats import new_mmdit
    from training.dit import add_lora, direct_map
    from training.activations import activation_bytes, autocast_like_training, saved_bytes

    depth, dual = 4, (0, 1)
    hidden = 64 * depth
    dit = new_mmdit(depth, 96, 80, 48, dual_attention_blocks=dual)
    with torch.no_grad():
        for p in dit.parameters():
            p.zero_()
    dit.requires_grad_(False)
    if rank:
        add_lora(dit, rank)
    for side, n_text, batch in ((16, 24, 1), (24, 40, 2)):
        x = torch.zeros(batch, 16, side, side)
        ctx = torch.zeros(batch, n_text, hidden, dtype=torch.bfloat16, requires_grad=True)
        y = torch.zeros(batch, hidden, dtype=torch.bfloat16, requires_grad=True)

        def run():
            with direct_map(dit), autocast_like_training():
                dit(x, torch.full((batch,), 500.0), y=y, context=ctx)

        got = saved_bytes(run, exclude=list(dit.parameters()))
        n_image = (side // 2) ** 2
        in_flight = 2 * batch * hidden * (4 * n_image + 2 * n_text)  # gradients, not saved tensors
        want = activation_bytes(depth, dual, rank, batch, 1, False, n_image, n_text, adapter=False) - in_flight
        print(f"rank {rank}, {n_image}+{n_text} tokens ×{batch}: kept {got / 2**20:.2f} MiB, "
              f"estimated {want / 2**20:.2f} MiB")
        assert 0 <= want / got - 1 < 0.01, (got, want)


@pytest.mark.heavy  # every table of the estimates computed again
def test_medium_estimates_in_docs_are_the_module_output(comfy):
    """docs/training.md's Medium tables are what ``python -m training.estimates`` prints now,
    and the plan is consistent: every row fits its GPU, the 24 GB rows need gradient
    checkpointing, and the micro-batches fill the recipe's global batch."""
    from training.estimates import GIB, HEADROOM, RECIPE, plan, report

    with open(os.path.join(ROOT, "docs", "training.md")) as f:
        doc = f.read()
    m = re.search(r"<!-- training\.estimates: begin[^>]*-->\n(.*?)\n<!-- training\.estimates: end -->", doc, re.S)
    assert m, "docs/training.md has no generated estimates block"
    assert m.group(1).strip() == report("medium").strip(), \
        "docs/training.md's estimates are stale: paste the output of `python -m training.estimates`"
    for e in plan("medium"):
        assert e["fits"] and e["gib"]["peak"] * GIB <= HEADROOM * (24 if "24 GB" in e["setup"] else 80) * GIB
        assert e["gpus"] * e["micro_batch"] * e["accumulation"] == RECIPE[e["stage"]].batch
        assert e["checkpointing"] == ("24 GB" in e["setup"]), e
