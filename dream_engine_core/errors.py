"""The base of the pack's own exceptions, with a short, stable type name.

ComfyUI shows an error's type as ``module.QualName`` of its class. A custom node
pack is imported under its file-system path, so a class defined in
``dream_engine_core/prompt.py`` would be shown as
``/…/custom_nodes/<pack folder>.dream_engine_core.prompt.PromptError``. Every
subclass of :class:`DreamEngineError` reports the module ``dream_engine`` instead
(``dream_engine.PromptError``), wherever the pack is installed.
"""
from __future__ import annotations

MODULE = "dream_engine"


class DreamEngineError(Exception):
    """An error of the pack whose message says what is wrong and how to fix it."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__module__ = MODULE


DreamEngineError.__module__ = MODULE
