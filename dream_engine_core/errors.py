"""The pack's errors: one family, each saying what is wrong and what to do.

Every error the pack raises (``nodes/``, ``dream_engine_core/``) is a
:class:`DreamEngineError`. Each class also derives from the builtin its callers catch
(``ValueError``, ``FileNotFoundError``, ``RuntimeError``), so ``except ValueError`` goes on
working.

ComfyUI shows an error's type as ``module.QualName`` of its class. A custom node
pack is imported under its file-system path, so a class defined in
``dream_engine_core/prompt.py`` would be shown as
``/…/custom_nodes/<pack folder>.dream_engine_core.prompt.PromptError``. Every
subclass of :class:`DreamEngineError` reports the module ``dream_engine`` instead
(``dream_engine.PromptError``), wherever the pack is installed.

The modules that raise an error also export it under their own name (e.g.
``dream_engine_core.prompt.PromptError``).
"""
from __future__ import annotations

MODULE = "dream_engine"


class DreamEngineError(Exception):
    """An error of the pack whose message says what is wrong and how to fix it."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__module__ = MODULE


DreamEngineError.__module__ = MODULE


# ---------------------------------------------------------------- what the user wrote or chose
class PromptError(DreamEngineError, ValueError):
    """The prompt or its images cannot form a model input; the message says how to fix it.

    ``field`` names the input at fault: ``"prompt"``, ``"names"`` (the images' names),
    ``"images"`` (their number), ``"ratio"``, ``"task"`` or ``"style"``."""

    def __init__(self, message: str, field: str = "prompt"):
        super().__init__(message)
        self.field = field


class ImageInputError(DreamEngineError, ValueError):
    """An image or mask cannot be used (empty, wrong shape or channel count, NaN …)."""


class OptionError(DreamEngineError, ValueError):
    """A setting (a node's widget value or a function's argument) outside the values it takes;
    the message lists them."""


# ---------------------------------------------------------------- the model files
class WeightsError(DreamEngineError, ValueError):
    """A weight file is missing, not safetensors, or does not match what is expected."""


class LMMFolderError(DreamEngineError, FileNotFoundError):
    """The LMM folder is missing, incomplete, holds another model, or one of its files is broken."""


class ModelNameError(DreamEngineError, FileNotFoundError):
    """A model name that is not one of the files or folders listed for its input."""


class FingerprintError(DreamEngineError, ValueError):
    """The LMM folder holds no weights to fingerprint, or the adapter was made with another LMM."""


# ---------------------------------------------------------------- the graph
class AdapterMismatch(DreamEngineError, ValueError):
    """An adapter's output widths do not fit the SD3 MODEL it is loaded onto."""


class AdapterBaseMismatch(AdapterMismatch):
    """An adapter made for one SD3 base (e.g. SD3.5 Large) meets another (e.g. SD3.5 Medium)."""


class WiringError(DreamEngineError, ValueError):
    """The graph connects inputs that do not belong together (a MODEL that is not SD3.5, a
    sampler's MODEL and CONDITIONING from different loaders, a node without its input)."""


# ---------------------------------------------------------------- the environment
class DependencyError(DreamEngineError, RuntimeError):
    """A package the pack needs is missing or too old; the message says what to install."""
