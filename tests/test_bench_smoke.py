"""Smoke run of the benchmark harness at tiny size (figures 1 and 2, one repeat), with figure 2's
floor of the required work and its plain-transformers peer."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.heavy  # the benchmark harness, one long check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_harness_tiny(tmp_path):
    out = tmp_path / "results"
    p = subprocess.run([sys.executable, "-m", "benchmarks.run", "--size", "tiny", "--quick", "--figures", "1,2",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "| fig | measure | value | target | status |" in p.stdout
    summary = json.loads((out / "tiny-quick-summary.json").read_text())
    assert set(summary["figures"]) == {"1", "2"}
    fig2 = json.loads((out / "tiny-quick-fig2.json").read_text())
    assert not fig2.get("not_measured"), fig2.get("not_measured")
    for case in fig2["cases"]:
        assert case["seconds"] > 0 and case["floor_s"] > 0 and case["flops"] > 0
        assert case["target_ratio"] == 1.5 and isinstance(case["met"], bool)
        assert case["cond_tokens"] > case["uncond_tokens"] > 0
    assert fig2["cases"][2]["image_tokens"] == [144, 144]  # two 512² images at the release's 336 short side
    for case in fig2["cases"]:
        # the negative is constant text: the floor counts one language-model pass, not two
        assert case["uncond_constant"] and "lm_uncond" not in case["cost_parts"]
        assert case["flops"] < case["all_passes"]["flops"] and case["floor_s"] <= case["all_passes"]["floor_s"]
    for case in fig2["cases"][:2]:  # text prompts: plain transformers beside the pack, same tokens
        peer = case["plain_transformers"]
        assert peer["tokens"] == case["cond_tokens"] and peer["seconds"] > 0 and peer["floor_s"] > 0
    assert fig2["cases"][2]["plain_transformers"] is None
