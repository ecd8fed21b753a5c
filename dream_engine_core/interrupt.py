"""Cancel points inside the encoder's model passes.

A language-model pass or a vision-tower pass is one call that can take seconds on a
long prompt. :func:`interrupt_points` registers a forward pre-hook on every
language-model decoder layer and every vision-tower block of a Qwen2-VL model for
the duration of a ``with`` block; each hook calls ``check()``, which raises to stop
(ComfyUI's ``throw_exception_if_processing_interrupted``). An interrupt therefore
stops the pass before the next layer or block runs, and the hooks are removed
however the block ends, so the next prompt runs unhooked as before.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch


def interrupt_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers and vision blocks of a transformers Qwen2-VL model."""
    inner = model.model
    return list(inner.language_model.layers) + list(inner.visual.blocks)


@contextlib.contextmanager
def interrupt_points(model: torch.nn.Module, check: Callable[[], None] | None) -> Iterator[None]:
    """Call ``check()`` before every language-model layer and vision-tower block of
    ``model`` while inside; nothing is registered when ``check`` is ``None``."""
    if check is None:
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
