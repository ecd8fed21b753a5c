"""transformers versions: the check at first load, and the same states on 4.57 and 5.x.

The cross-version test runs the encoder on the embedded miniature LMM in this
process and, in a subprocess, on the oldest supported transformers (the folder
``scripts/test_oldest_transformers.sh`` installs, prepended to ``PYTHONPATH``),
and compares the two.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
import transformers

from dream_engine_core import compat
from dream_engine_core.compat import DependencyError, parse_version, require_transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLDEST = os.environ.get("DREAM_ENGINE_OLDEST_TRANSFORMERS", os.path.join(ROOT, ".venv", "tf457"))
LMM = os.path.join(ROOT, "miniature", "models", "LLM", "Qwen2-VL-miniature")


def test_parse_version():
    assert parse_version("4.57.6") == (4, 57, 6)
    assert parse_version("5.0.0rc1") == (5, 0, 0)
    assert parse_version("5.24.0.dev0+abc") == (5, 24, 0)


def test_installed_version_passes():
    assert require_transformers() == transformers.__version__


def _installed():
    return sys.modules["transformers"]  # the module require_transformers imports


def test_too_old_names_the_install_command(monkeypatch):
    monkeypatch.setattr(_installed(), "__version__", "4.50.3")
    with pytest.raises(DependencyError) as e:
        require_transformers()
    msg = str(e.value)
    assert "transformers>=4.57" in msg and "found transformers 4.50.3" in msg
    assert f"{sys.executable} -m pip install" in msg and "requirements.txt" in msg


def test_newer_than_tested_warns_once_and_loads(monkeypatch, caplog):
    monkeypatch.setattr(_installed(), "__version__", "6.1.0")
    monkeypatch.setattr(compat, "_warned_untested", False)
    with caplog.at_level(logging.WARNING, logger="dream_engine"):
        assert require_transformers() == "6.1.0"
        assert require_transformers() == "6.1.0"
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "found 6.1.0" in caplog.records[0].getMessage()


ENCODE = r"""
import sys, torch
from PIL import Image
import numpy as np
import dream_engine_core
from dream_engine_core.engine import DreamEngine, EncodeOptions
from dream_engine_core.encoder import LMMEncoder
from dream_engine_core.prompt import ImageRef, build_task_inputs
import transformers
enc = LMMEncoder.from_folder(sys.argv[1])
rng = np.random.default_rng(0)
ims = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB") for w, h in ((100, 80), (60, 90))]
out = {}
# natural length; left-padded (the attention mask reaches get_rope_index); images bounded by max_pixels
for name, text, n, pad in (("text", "a blue square left of a red circle", 0, None),
                           ("fuse", "[a] on top of [b]", 2, 80), ("fuse_natural", "[b] left of [a]", 2, None)):
    ti = build_task_inputs(text, [ImageRef(c) for c in "ab"][:n])
    prep = enc.prepare_images(ims[:n], short_side=112, max_pixels=12 * 28 * 28)
    st = enc.encode(ti.cond, prep, pad_to=pad)
    out[name] = st.hidden[:, st.attention_mask[0] == 1].contiguous()  # real tokens only
    out[name + "_ids"] = st.input_ids.contiguous()
    if n:
        out[name + "_px"] = prep.pixel_values.contiguous()
from safetensors.torch import save_file
save_file(out, sys.argv[2], metadata={"transformers": transformers.__version__})
"""


def _encode(tmp_path, name: str, pythonpath: str | None) -> tuple[dict, str]:
    from safetensors import safe_open

    path = str(tmp_path / f"{name}.safetensors")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, ROOT) if p)
    subprocess.run([sys.executable, "-c", ENCODE, LMM, path], check=True, env=env, cwd=ROOT, timeout=600)
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()["transformers"]


@pytest.mark.heavy  # the encoder in a second process on the oldest transformers
@pytest.mark.skipif(not os.path.isdir(os.path.join(OLDEST, "transformers")),
                    reason="oldest supported transformers not installed (scripts/test_oldest_transformers.sh)")
def test_same_states_on_oldest_and_installed_transformers(tmp_path):
    if parse_version(transformers.__version__)[0] < 5:
        pytest.skip("this run is on the oldest version itself; the 5.x run compares against it")
    new, v_new = _encode(tmp_path, "new", None)
    old, v_old = _encode(tmp_path, "old", OLDEST)
    assert parse_version(v_old)[:2] == compat.TRANSFORMERS_MIN and parse_version(v_new)[0] >= 5
    assert new.keys() == old.keys()
    for k in new:
        if k.endswith(("_ids", "_px")):
            assert torch.equal(new[k], old[k]), k
        else:
            torch.testing.assert_close(new[k], old[k], rtol=1e-5, atol=1e-5, msg=k)
