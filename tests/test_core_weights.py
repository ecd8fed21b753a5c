"""Adapter files: metadata, validation, atomic writes."""
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from dream_engine_core.adapter import Adapter, AdapterSpec
from dream_engine_core.weights import (WeightsError, atomic_save, load_adapter, read_metadata, save_adapter,
                                       spec_from_file)


def test_roundtrip_with_metadata(tmp_path):
    spec = AdapterSpec.standard(lmm_dim=32, hidden_dim=16, token_dim=24, pooled_dim=8, lmm="tiny")
    torch.manual_seed(0)
    a = Adapter(spec)
    p = str(tmp_path / "a.safetensors")
    save_adapter(p, a)
    md = read_metadata(p)
    assert md["map_kind"] == "standard" and md["lmm_dim"] == "32" and md["format_version"] == "1"
    assert md["lmm"] == "tiny"
    b = load_adapter(p, lmm_dim=32)
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    h = torch.randn(1, 5, 32)
    t, pooled = b(h)
    assert t.shape == (1, 5, 24) and pooled.shape == (1, 8)


def test_release_layout_without_metadata_is_inferred(tmp_path):
    spec = AdapterSpec.direct(dit_hidden=40, lmm_dim=12, hidden_dim=20)
    sd = Adapter(spec).state_dict()
    p = str(tmp_path / "release.safetensors")
    save_file(sd, p)
    s = spec_from_file(p)
    assert (s.kind, s.lmm_dim, s.hidden_dim, s.token_dim, s.pooled_dim) == ("direct", 12, 20, 40, 40)


def test_missing_unexpected_and_wrong_shapes_listed(tmp_path):
    spec = AdapterSpec.direct(dit_hidden=40, lmm_dim=12, hidden_dim=20)
    a = Adapter(spec)
    p = str(tmp_path / "a.safetensors")
    save_adapter(p, a)
    sd = load_file(p)
    md = read_metadata(p)
    del sd["condition_embeds_align_mlp.2.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["input_embeds_align_mlp.2.weight"] = torch.zeros(41, 20)
    save_file(sd, p, metadata=md)
    with pytest.raises(WeightsError) as e:
        load_adapter(p)
    msg = str(e.value)
    assert "missing keys: condition_embeds_align_mlp.2.bias [40]" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "input_embeds_align_mlp.2.weight is [41, 20], expected [40, 20]" in msg


def test_atomic_save_leaves_no_partial_file(tmp_path):
    p = str(tmp_path / "x.safetensors")
    atomic_save({"a": torch.ones(2)}, p)
    with pytest.raises(Exception):
        atomic_save({"a": "not a tensor"}, p)
    assert torch.equal(load_file(p)["a"], torch.ones(2))
    assert [f for f in os.listdir(tmp_path)] == ["x.safetensors"]


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_adapter(str(tmp_path / "none.safetensors"))


def test_bad_spec():
    with pytest.raises(ValueError, match="kind"):
        AdapterSpec(kind="diagonal")
