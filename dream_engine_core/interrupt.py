"""Cancel points inside the encoder's model passes.

A language-model pass or a vision-tower pass is one call that can take seconds on a
long prompt. :func:`interrupt_points` registers a forward pre-hook on every
language-model decoder layer and every vision-tower block of a Qwen2-VL model, and on
the MLP inside each (between its attention and its MLP), for the duration of a ``with``
block; each hook calls ``check()``, which raises to stop (ComfyUI's
``throw_exception_if_processing_interrupted``). An interrupt therefore stops the pass
before the next half-layer runs (a 10-image prompt's slowest layer took 0.6 s on a
2-core CPU, docs/performance.md), and the hooks are removed however the block ends, so
the next prompt runs unhooked as before.

:func:`between_stages_only` turns the hooks off for the duration of a ``with`` block (in
the current thread or task only): checks then run only between the encoder's stages, the
comparison the cancel-latency benchmark makes.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

import torch

_LAYER_CHECKS = contextvars.ContextVar("dream_engine_layer_checks", default=True)


def interrupt_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers and vision blocks of a transformers Qwen2-VL model, and the MLP
    of each (its second half)."""
    inner = model.model
    blocks = list(inner.language_model.layers) + list(inner.visual.blocks)
    return blocks + [b.mlp for b in blocks if isinstance(getattr(b, "mlp", None), torch.nn.Module)]


@contextlib.contextmanager
def interrupt_points(model: torch.nn.Module, check: Callable[[], None] | None) -> Iterator[None]:
    """Call ``check()`` before every language-model layer and vision-tower block of
    ``model``, and before each one's MLP, while inside; nothing is registered when ``check`` is ``None`` or inside
    :func:`between_stages_only`."""
    if check is None or not _LAYER_CHECKS.get():
        yield
        return

    def hook(_module, _args):
        check()

    handles = [m.register_forward_pre_hook(hook) for m in interrupt_modules(model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def between_stages_only() -> Iterator[None]:
    """While inside, :func:`interrupt_points` registers no hook: an interrupt is seen only
    between the encoder's stages."""
    token = _LAYER_CHECKS.set(False)
    try:
        yield
    finally:
        _LAYER_CHECKS.reset(token)
