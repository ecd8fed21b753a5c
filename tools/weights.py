"""Weight writing that only the tooling uses (the converter, the trainers, the model
builders): safetensors written one tensor at a time, and the LoRA merge. The pack's
runtime reads and checks weights with ``dream_engine_core/weights.py``, which also writes
adapters (``save_adapter``) and small files atomically (``atomic_save``).
"""
from __future__ import annotations

import json
import os
import struct

import torch

from dream_engine_core.weights import temp_next_to, usual_permissions

ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):
        ST_DTYPES[getattr(torch, _name)] = _code


class StreamingSafetensors:
    """Write a safetensors file tensor by tensor, for files larger than memory.

    The header (names, dtypes, shapes, offsets) is given up front, so only the tensor
    being written is in memory. Tensors must be written in the order given; each is
    cast to its planned dtype. Like ``dream_engine_core.weights.atomic_save``, the file is written under a
    temporary name and renamed on :meth:`close` (``with`` closes it, or removes the
    temporary file on an error), and gets the usual permissions.

        with StreamingSafetensors(path, [(name, dtype, shape), ...], metadata) as w:
            for name, ... : w.write(name, tensor)
    """

    def __init__(self, path: str, entries: list[tuple[str, torch.dtype, tuple]], metadata: dict | None = None):
        self.path = path
        header, off = {}, 0
        self.sizes = {}
        for name, dt, shape in entries:
            n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dt).element_size()
            header[name] = {"dtype": ST_DTYPES[dt], "shape": [int(s) for s in shape], "data_offsets": [off, off + n]}
            self.sizes[name] = (dt, tuple(int(s) for s in shape), n)
            off += n
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.order = [e[0] for e in entries]
        self.next = 0
        self.bytes = 8 + len(raw) + off
        self.tmp = temp_next_to(path)
        self.f = open(self.tmp, "wb")
        self.f.write(struct.pack("<Q", len(raw)))
        self.f.write(raw)

    def write(self, name: str, t: torch.Tensor) -> None:
        if self.next >= len(self.order) or self.order[self.next] != name:
            expected = self.order[self.next] if self.next < len(self.order) else "nothing"
            raise RuntimeError(f"tensor {name} written out of order (expected {expected})")
        dt, shape, n = self.sizes[name]
        t = t.detach().to("cpu", dt).contiguous()
        if tuple(t.shape) != shape:
            raise RuntimeError(f"{name}: shape {tuple(t.shape)} != planned {shape}")
        if n:
            data = memoryview(t.view(torch.uint8).numpy()) if t.dim() else t.reshape(1).view(torch.uint8).numpy().tobytes()
            self.f.write(data)
        self.next += 1

    def close(self) -> None:
        if self.next != len(self.order):
            raise RuntimeError(f"{self.path}: {len(self.order) - self.next} tensors were not written")
        self.f.close()
        usual_permissions(self.tmp)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def merge_lora(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, alpha: float | None = None,
               strength: float = 1.0, scale: float | None = None) -> torch.Tensor:
    """``weight + strength · (alpha / r) · B @ A`` in fp32, returned in ``weight``'s dtype
    (``r`` = rows of A; ``alpha`` defaults to ``r``, as peft's and ComfyUI's LoRA do
    without an alpha; ``scale`` replaces ``strength · alpha / r``, e.g. peft's
    ``scaling``). The one LoRA merge of this repository (converter, trainers, tests)."""
    if scale is None:
        r = lora_a.shape[0]
        scale = strength * ((float(alpha) if alpha is not None else r) / r)
    return (weight.float() + scale * (lora_b.float() @ lora_a.float())).to(weight.dtype)
