"""The miniature's curve points (``python -m miniature.pipeline --fraction F --depth D``):
a variant of a scale trains for a share of its steps with matching EMA horizons, and is
never shipped over the embedded default."""
from __future__ import annotations

import pytest


def test_fraction_scales_every_trainer_and_its_ema_horizon():
    from miniature.pipeline import SCALES, variant

    full = SCALES["full"]
    quarter = variant("full", 0.25)
    for k in ("lmm_steps", "pre_steps", "s1_steps", "s2_steps"):
        assert getattr(quarter, k) == round(getattr(full, k) / 4), k
    # the same share of each run is averaged: horizon 1/(1-d) shrinks with the steps
    for (name, d), (name_q, d_q) in zip(full.ema, quarter.ema):
        assert name == name_q and 1 / (1 - d_q) == pytest.approx(0.25 / (1 - d), rel=1e-3)
    assert quarter.vae_steps == 0 and quarter.depth == full.depth and quarter.n_base == full.n_base
    assert variant("full", 1.0, depth=4).depth == 4 and variant("full", 1.0, depth=4).pre_steps == full.pre_steps


@pytest.mark.parametrize("args, needle", [(["--fraction", "0"], "(0, 4]"), (["--depth", "12"], "1 to 8"),
                                          (["--fraction", "0.5", "--ship"], "not shipped")])
def test_curve_points_refuse_what_they_cannot_be(args, needle, capsys, tmp_path):
    from miniature.pipeline import main

    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path), *args])
    assert e.value.code == 2 and needle in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any work
