"""The LMM's linear layers on the CPU: oneDNN, with the language model's weights kept packed.

A prompt is a few dozen tokens, so each linear layer of the language model multiplies a
short matrix by a large weight. On the CPU, PyTorch's ``F.linear`` re-lays the weight out
for its matrix library on every call (oneDNN for bf16, MKL for fp32), and at a few dozen
rows that re-layout costs about as much as the product itself. oneDNN's linear operator
(``torch.ops.mkldnn._linear_pointwise``) also takes a weight already in its blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``, the layout PyTorch's own compiler keeps for
frozen CPU models); this module keeps that packed copy of each language-model layer between
prompts and makes it again whenever the weight is replaced, moved, cast or edited in place
(a weight created under inference mode, as ComfyUI loads models, keeps no version counter:
after editing one of those in place, call :func:`release`; the pack never does).

Paths, by ``DREAM_ENGINE_CPU_LINEAR`` (read at each load):

* ``packed`` (default): the language model's layers (and the adapter's, see
  ``dream_engine_core/engine.py``) multiply by their packed weight (fp32, and bf16 where the
  CPU computes bf16 natively); the vision tower's layers take the ``onednn`` path. The packed copies are made on the first CPU encode and
  cost as much memory as those weights (:func:`packed_bytes`); a layer is left unpacked,
  with a warning, when less memory than that is free.
* ``onednn``: no copy kept: fp32 inputs of at most :data:`MAX_ROWS` rows through oneDNN
  from the plain weight, ``F.linear`` above.
* ``blas``: ``F.linear`` everywhere, as transformers ships.

Anything else (a GPU, fp16, bf16 without native support, autograd) runs ``F.linear``.
Numerics: a packed product gave the same bits as plain oneDNN on a prompt's tokens (a
single row, the pooled vector, may round differently); against ``F.linear`` it differs by
rounding in fp32 (another summation order: about 5e-6 on unit-scale outputs,
inside the 1e-5 the fidelity tests allow) and not at all in bf16 on the CPUs measured
(``docs/performance.md``). ``DREAM_ENGINE_CPU_LINEAR=blas`` gives transformers' own path.
"""
from __future__ import annotations

import collections
import functools
import logging
import os

import torch
import torch.nn.functional as F

from .errors import OptionError

log = logging.getLogger("dream_engine")

#: the ``DREAM_ENGINE_CPU_LINEAR`` values, the default first
MODES = ("packed", "onednn", "blas")

#: unpacked oneDNN (``onednn`` path, the vision tower) up to this many rows (tokens × batch)
MAX_ROWS = 256

#: memory left free after packing a layer (bytes)
HEADROOM = 1 << 30

#: how often each path ran, by name ("packed", "onednn", "linear"), how many packed copies were
#: made ("pack") and how often memory refused one ("refused"); tests count these
calls: collections.Counter = collections.Counter()

_warned: set = set()


def mode(path: str | None = None) -> str:
    """``path``, or else ``DREAM_ENGINE_CPU_LINEAR``, checked."""
    m = path if path is not None else os.environ.get("DREAM_ENGINE_CPU_LINEAR", MODES[0])
    m = m.strip().lower() or MODES[0]
    if m not in MODES:
        raise OptionError(f"DREAM_ENGINE_CPU_LINEAR must be one of {', '.join(MODES)}; got {m!r}")
    return m


def available(path: str | None = None) -> bool:
    """oneDNN's linear operator is present and not switched off."""
    if mode(path) == "blas":
        return False
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.lru_cache(maxsize=None)
def bf16_native() -> bool:
    """The CPU computes bf16 (oneDNN's own test)."""
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


def packs(dt: torch.dtype) -> bool:
    """The language model's weights are kept packed for a CPU LMM in ``dt``."""
    return (available() and mode() == "packed" and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and (dt == torch.float32 or (dt == torch.bfloat16 and bf16_native())))


def path_name(dt: torch.dtype = torch.float32) -> str:
    """The CPU path in words, for the load message."""
    if packs(dt):
        return "oneDNN, the language model's weights kept packed"
    if available() and dt == torch.float32:
        return f"oneDNN up to {MAX_ROWS} rows, BLAS above"
    return "BLAS"


def cpu_path_note(dt: torch.dtype, pack_bytes: int = 0) -> tuple[str, bool]:
    """Which path the LMM takes on this CPU, said at load (never a silent slow path), and
    whether it is the slow one. ``pack_bytes``: what the packed copies will take."""
    kept = (f" (a second copy of {pack_bytes / 2 ** 30:.1f} GiB, made on the first encode; "
            f"DREAM_ENGINE_CPU_LINEAR=onednn keeps none)" if packs(dt) and pack_bytes else "")
    if dt == torch.float32:
        return f"LMM on the CPU in fp32; linear layers: {path_name(dt)}{kept}", False
    if dt == torch.bfloat16 and bf16_native():
        return f"LMM on the CPU in bf16 (this CPU computes bf16 natively); linear layers: {path_name(dt)}{kept}", False
    return (f"LMM on the CPU in {str(dt).replace('torch.', '')}: this CPU has no native "
            f"{'bf16' if dt == torch.bfloat16 else 'fp16'} arithmetic, so each layer converts its weights "
            f"and runs slower than fp32 (3x on a 20-word prompt, docs/performance.md); choose dtype "
            f"'default' or 'fp32' for speed"), True


def _free_memory() -> int | None:
    """Bytes of memory available to this process (None: unknown)."""
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


class OneDNNLinear(torch.nn.Linear):
    """``nn.Linear`` whose CPU inference runs through oneDNN (module docstring)."""

    #: keep this layer's weight packed (set by :func:`install` on the language model's layers)
    dream_pack = False

    def packed_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        """The packed weight for an inference input ``x`` on this path; None where ``x`` takes
        another path or there is no memory for the copy."""
        w = self.weight
        if w.device.type != "cpu":  # moved without _apply (a host setting .data): the copy is stale
            self.__dict__.pop("_dream_packed", None)
            return None
        if not (self.dream_pack and x.device.type == "cpu" and x.dtype == w.dtype
                and (w.dtype == torch.float32 or (w.dtype == torch.bfloat16 and bf16_native()))
                and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
            return None
        # an inference tensor (a weight loaded under inference mode, as ComfyUI runs nodes)
        # keeps no version counter: its storage identifies it
        key = (w.data_ptr(), 0 if w.is_inference() else w._version, w.dtype, tuple(w.shape))
        held = self.__dict__.get("_dream_packed")
        if held is not None and held[0] == key:
            return held[1]
        self.__dict__.pop("_dream_packed", None)
        need = w.numel() * w.element_size()
        free = _free_memory()
        if free is not None and free < need + HEADROOM:
            calls["refused"] += 1
            if "memory" not in _warned:
                _warned.add("memory")
                log.warning("Dream Engine: %.1f GiB free, too little to keep the LMM's weights packed; "
                            "encoding from the plain weights (slower, same results)", free / 2 ** 30)
            return None
        with torch.no_grad():
            pw = torch.ops.mkldnn._reorder_linear_weight(w.detach(), MAX_ROWS)
        calls["pack"] += 1
        self.__dict__["_dream_packed"] = (key, pw)
        return pw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        pw = self.packed_weight(x) if self.dream_pack else None
        if pw is not None:
            calls["packed"] += 1
            return torch.ops.mkldnn._linear_pointwise(x, pw, self.bias, "none", [], "")
        if (x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32
                and x.numel() <= MAX_ROWS * x.shape[-1]
                and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
            calls["onednn"] += 1
            return torch.ops.mkldnn._linear_pointwise(x, w, self.bias, "none", [], "")
        calls["linear"] += 1
        return F.linear(x, w, self.bias)

    def _apply(self, fn, *args, **kwargs):
        self.__dict__.pop("_dream_packed", None)  # moved or cast: the copy is stale
        return super()._apply(fn, *args, **kwargs)


def install(model: torch.nn.Module, pack: torch.nn.Module | None = None, path: str | None = None) -> int:
    """Route the plain ``nn.Linear`` layers of ``model`` through :class:`OneDNNLinear` (the
    same parameters and state dict: only the class changes); the layers inside ``pack`` keep
    their weights packed. ``path``: one of :data:`MODES` (default ``DREAM_ENGINE_CPU_LINEAR``).
    Returns how many layers; none where oneDNN is not available or the path is ``blas``."""
    if not available(path):
        return 0
    keep = mode(path) == "packed" and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    packed = {id(m) for m in pack.modules()} if pack is not None and keep else set()
    n = 0
    for m in model.modules():
        if type(m) is torch.nn.Linear:
            m.__class__ = OneDNNLinear
            n += 1
        if type(m) is OneDNNLinear and id(m) in packed:
            m.dream_pack = True
    return n


def packed_bytes(model: torch.nn.Module) -> int:
    """Bytes the packed copies of ``model``'s layers take, made or not."""
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
               if type(m) is OneDNNLinear and m.dream_pack)


def release(model: torch.nn.Module) -> int:
    """Drop the packed copies (made again on the next encode); returns how many."""
    n = 0
    for m in model.modules():
        if m.__dict__.pop("_dream_packed", None) is not None:
            n += 1
    return n


def uninstall(model: torch.nn.Module) -> int:
    """Undo :func:`install`; returns how many layers went back to ``nn.Linear``."""
    release(model)
    n = 0
    for m in model.modules():
        if type(m) is OneDNNLinear:
            m.__dict__.pop("dream_pack", None)
            m.__class__ = torch.nn.Linear
            n += 1
    return n
