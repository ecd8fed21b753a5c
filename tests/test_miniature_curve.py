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


def test_curve_gathers_runs_into_the_docs_table(tmp_path, capsys):
    """A run's scores.json becomes a point of miniature/curve.json, and its figures reach the
    table rendered into docs/miniature.md; a folder without a finished run is refused."""
    import json
    import os
    import shutil
    from dataclasses import asdict

    from miniature.curve import main
    from miniature.pipeline import SHIP_DIR, variant
    from scripts.docs_tables import curve_table

    run = tmp_path / "miniature-f0.25-d3"
    run.mkdir()
    shutil.copy(os.path.join(SHIP_DIR, "scores.json"), run / "scores.json")
    data = json.loads((run / "scores.json").read_text())
    data["settings"], data["cores"] = asdict(variant("full", 0.25)), 1
    data["scores"]["artist"]["overall"], data["scores"]["artist"]["fusion"] = 0.4321, 0.125
    (run / "scores.json").write_text(json.dumps(data))
    out = tmp_path / "curve.json"
    assert main([str(run), "--out", str(out)]) == 0
    (p,) = json.loads(out.read_text())["points"]
    assert p["fraction"] == 0.25 and p["steps"]["pre_steps"] == 2000 and not p["vae_trained"]
    _, table = curve_table(str(out))
    row = next(line for line in table.splitlines() if line.startswith("| miniature-f0.25-d3"))
    assert "(0.25×)" in row and "**0.43**" in row and row.endswith("| 0.12 |") and "on 1 core |" in row

    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nothing-here"), "--out", str(out)])
    assert e.value.code == 2 and "finished pipeline run" in capsys.readouterr().err
