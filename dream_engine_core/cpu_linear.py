"""The LMM's linear layers on the CPU: oneDNN for prompt-sized inputs.

A prompt is a few dozen tokens, so each linear layer of the language model multiplies a
short matrix by a large weight. On the CPU, PyTorch sends ``F.linear`` to its BLAS library
(MKL in the official wheels); oneDNN's ``torch.ops.mkldnn._linear_pointwise`` computes the
same product from the same fp32 weights, with no copy and no re-layout kept between calls,
and was faster for few rows on the CPUs measured (``docs/performance.md``). For many rows
(an image's patches in the vision tower) BLAS was as fast or faster, so a layer keeps
``F.linear`` above :data:`MAX_ROWS` rows.

The two paths differ by rounding only (another summation order: about 5e-6 at most on
unit-scale outputs, inside the 1e-5 that the fidelity tests allow). Only fp32 inputs on the
CPU without autograd take the oneDNN path; anything else (the model moved to a GPU by
ComfyUI's memory manager, bf16 or fp16 weights, training) runs ``F.linear`` as before.
``DREAM_ENGINE_CPU_LINEAR=blas`` keeps every layer on ``F.linear``.
"""
from __future__ import annotations

import collections
import os

import torch
import torch.nn.functional as F

#: above this many rows (tokens × batch) a layer uses ``F.linear`` (BLAS)
MAX_ROWS = 256

#: how often each path ran, by name ("onednn", "linear"); tests count these
calls: collections.Counter = collections.Counter()


def available() -> bool:
    """oneDNN's linear operator is present and not switched off."""
    if os.environ.get("DREAM_ENGINE_CPU_LINEAR", "").lower() == "blas":
        return False
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def path_name() -> str:
    """The CPU path in words, for the load message."""
    return f"oneDNN up to {MAX_ROWS} rows, BLAS above" if available() else "BLAS"


def cpu_path_note(dt: torch.dtype) -> tuple[str, bool]:
    """Which path the LMM takes on this CPU, said at load (never a silent slow path), and
    whether it is the slow one."""
    if dt == torch.float32:
        return f"LMM on the CPU in fp32; linear layers: {path_name()}", False
    native = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()
    if dt == torch.bfloat16 and native:
        return "LMM on the CPU in bf16 (this CPU computes bf16 natively)", False
    return (f"LMM on the CPU in {str(dt).replace('torch.', '')}: this CPU has no native "
            f"{'bf16' if dt == torch.bfloat16 else 'fp16'} arithmetic, so each layer converts its weights "
            f"and runs slower than fp32 (3x on a 20-word prompt, docs/performance.md); choose dtype "
            f"'default' or 'fp32' for speed"), True


class OneDNNLinear(torch.nn.Linear):
    """``nn.Linear`` whose CPU fp32 inference on few rows runs through oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32
                and x.numel() <= MAX_ROWS * x.shape[-1]
                and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
            calls["onednn"] += 1
            return torch.ops.mkldnn._linear_pointwise(x, w, self.bias, "none", [], "")
        calls["linear"] += 1
        return F.linear(x, w, self.bias)


def install(model: torch.nn.Module) -> int:
    """Route the plain ``nn.Linear`` layers of ``model`` through :class:`OneDNNLinear` (the
    same parameters and state dict: only the class changes); returns how many layers. None
    where oneDNN is not available or ``DREAM_ENGINE_CPU_LINEAR=blas``."""
    if not available():
        return 0
    n = 0
    for m in model.modules():
        if type(m) is torch.nn.Linear:
            m.__class__ = OneDNNLinear
            n += 1
    return n


def uninstall(model: torch.nn.Module) -> int:
    """Undo :func:`install`; returns how many layers went back to ``nn.Linear``."""
    n = 0
    for m in model.modules():
        if type(m) is OneDNNLinear:
            m.__class__ = torch.nn.Linear
            n += 1
    return n
