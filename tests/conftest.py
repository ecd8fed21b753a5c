"""Shared fixtures: small same-architecture models built once per session."""
from __future__ import annotations

import os

import pytest
import torch

import dream_engine_core  # noqa: F401
from dream_engine_core.testing import LMMSize, build_tiny_adapter, build_tiny_qwen2vl

TINY = LMMSize()


@pytest.fixture(scope="session")
def tiny_lmm_dir(tmp_path_factory) -> str:
    return build_tiny_qwen2vl(str(tmp_path_factory.mktemp("lmm") / "tiny-Qwen2-VL"), TINY, seed=0)


@pytest.fixture(scope="session")
def tiny_adapter_path(tmp_path_factory) -> str:
    p = str(tmp_path_factory.mktemp("adapter") / "direct.safetensors")
    build_tiny_adapter(p, lmm_dim=TINY.hidden_size, kind="direct", token_dim=128, hidden_dim=96, seed=0)
    return p


@pytest.fixture(scope="session")
def engine(tiny_lmm_dir, tiny_adapter_path):
    from dream_engine_core.engine import DreamEngine

    return DreamEngine.load(tiny_lmm_dir, tiny_adapter_path, dtype=torch.float32)


@pytest.fixture(scope="session")
def comfy():
    """The real ComfyUI host imported in-process (CPU)."""
    from training.host import import_comfy

    return import_comfy()
