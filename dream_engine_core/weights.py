"""Safetensors I/O for the pack's weights: checked loads, adapters with metadata.

Only safetensors are read or written. A file that is not safetensors (a pickle
``.bin``/``.pt``/``.ckpt``) is refused with an error that names the converter. Writers that
only the tools use (the streaming writer, the LoRA merge) are in ``tools/weights.py``.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .adapter import Adapter, AdapterSpec
from .errors import WeightsError

FORMAT_NAME = "dream_engine.adapter"
FORMAT_VERSION = "1"
CONVERT_HINT = ("convert it with `python -m tools.convert_official` (the release) "
                "or re-export it with the pack's trainers")


REDOWNLOAD_HINT = "re-download the file (or re-export it with the tool that wrote it)"
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def check_safetensors(path: str, fix: str = REDOWNLOAD_HINT) -> dict:
    """The one check of a safetensors file before anything opens it; returns its header.

    Raises :class:`WeightsError` naming the file, what is wrong and ``fix`` when the
    file is missing, is empty, is not safetensors (e.g. a pickle under a ``.safetensors``
    name), has an unreadable header, or is truncated or padded (every tensor's data
    offsets must lie inside the file and cover its data exactly, as safetensors
    requires). Reads only the header.
    """
    if not os.path.isfile(path):
        raise WeightsError(f"weight file not found: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise WeightsError(f"{path} is empty (0 bytes); {fix}")
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        first = f.read(1)
        if len(head) < 8 or n < 2 or n > _MAX_HEADER or first != b"{":
            raise WeightsError(f"{path} is not a safetensors file: pickled weights (.bin, .pt, .ckpt) are never "
                               f"opened here, {CONVERT_HINT}; if it should be safetensors, {fix}")
        if size < 8 + n:
            raise WeightsError(f"{path} is truncated: expected at least {8 + n} bytes (its header alone), "
                               f"found {size}; {fix}")
        raw = first + f.read(n - 1)
    header, end, problem = _read_header(raw)
    if problem:
        raise WeightsError(f"{path}: the safetensors header is unreadable ({problem}); {fix}")
    expected = 8 + n + end
    if size < expected:
        raise WeightsError(f"{path} is truncated: expected {expected} bytes, found {size}; {fix}")
    if size > expected:
        raise WeightsError(f"{path} is corrupt: its header describes {expected} bytes, but the file has {size} "
                           f"(data appended or the header damaged); {fix}")
    return header


def _read_header(raw: bytes) -> tuple[dict | None, int, str]:
    """The parsed header, the end offset of its tensors' data, and what is wrong with it
    (empty when nothing is: the header is what safetensors writes)."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        return None, 0, str(err)
    if not isinstance(header, dict):
        return None, 0, "the header is not a JSON object"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            b, e = (int(x) for x in info["data_offsets"])
            shape = [int(d) for d in info["shape"]]
            dtype = str(info["dtype"])
        except (ValueError, KeyError, TypeError) as err:
            return None, 0, str(err)
        if not 0 <= b <= e or any(d < 0 for d in shape):
            return None, 0, f"tensor {name!r} has offsets {[b, e]} and shape {shape}"
        item = _DTYPE_BYTES.get(dtype)
        numel = 1
        for d in shape:
            numel *= d
        if item is not None and e - b != numel * item:
            return None, 0, f"tensor {name!r} ({dtype} {shape}) needs {numel * item} bytes, its offsets give {e - b}"
        end = max(end, e)
    return header, end, ""


def check_adapter_lmm(spec: AdapterSpec, lmm_hidden: int, adapter: str) -> None:
    """The adapter ↔ LMM width check (one owner): ``adapter`` names the adapter."""
    if spec.lmm_dim != lmm_hidden:
        raise WeightsError(f"adapter {adapter} expects {spec.lmm_dim}-d LMM states (made for {spec.lmm}), "
                           f"but the loaded LMM has hidden size {lmm_hidden}: pick the adapter that matches "
                           f"the LMM (Qwen2-VL-2B-Instruct: 1536)")


def usual_permissions(path: str) -> None:
    """``mkstemp`` creates 0600; give a written file the permissions ``open`` would (0666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def temp_next_to(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
    os.close(fd)
    return tmp


def atomic_save(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file via a temporary file in the same folder and a rename,
    so that a crash never leaves a half-written file under the final name."""
    tmp = temp_next_to(path)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        usual_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_metadata(path: str) -> dict[str, str]:
    check_safetensors(path)
    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


def adapter_metadata(spec: AdapterSpec, extra: dict | None = None) -> dict[str, str]:
    md = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "map_kind": spec.kind,
        "lmm_dim": str(spec.lmm_dim),
        "hidden_dim": str(spec.hidden_dim),
        "token_dim": str(spec.token_dim),
        "pooled_dim": str(spec.pooled_dim),
        "lmm": spec.lmm,
    }
    if spec.dit:
        md["dit_base"] = spec.dit
    for k, v in (extra or {}).items():
        md[k] = v if isinstance(v, str) else json.dumps(v)
    return md


def save_adapter(path: str, adapter: Adapter, extra_metadata: dict | None = None, *,
                 lmm_folder: str | None = None) -> None:
    """Write an adapter with its metadata. ``lmm_folder``: the HF folder of the LMM the
    adapter was made with; its fingerprint (``dream_engine_core.fingerprint``) is recorded
    so that ``LoadDreamEngine`` can refuse a different LMM."""
    md = adapter_metadata(adapter.spec, extra_metadata)
    if lmm_folder is not None:
        from .fingerprint import fingerprint_metadata

        md.update(fingerprint_metadata(lmm_folder))
    atomic_save(adapter.state_dict(), path, md)


def spec_from_file(path: str) -> AdapterSpec:
    """The adapter's spec from its metadata, or inferred from its shapes (a file
    written by another tool without our metadata)."""
    md = read_metadata(path)
    if md.get("format") == FORMAT_NAME:
        if md.get("format_version") != FORMAT_VERSION:
            raise WeightsError(f"{path}: adapter format version {md.get('format_version')} is not supported "
                               f"(this pack reads version {FORMAT_VERSION}); update the pack")
        return AdapterSpec(kind=md["map_kind"], lmm_dim=int(md["lmm_dim"]), hidden_dim=int(md["hidden_dim"]),
                           token_dim=int(md["token_dim"]), pooled_dim=int(md["pooled_dim"]),
                           lmm=md.get("lmm", "unknown"), dit=md.get("dit_base", ""))
    with safe_open(path, framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    try:
        h, i = shapes["input_embeds_align_mlp.0.weight"]
        t = shapes["input_embeds_align_mlp.2.weight"][0]
        p = shapes["condition_embeds_align_mlp.2.weight"][0]
    except KeyError as e:
        raise WeightsError(f"{path} has no Dream Engine adapter metadata and lacks key {e.args[0]}; "
                           f"expected keys: {sorted(AdapterSpec().expected_shapes())}") from None
    kind = "standard" if (t, p) == (4096, 2048) else "direct"
    return AdapterSpec(kind=kind, lmm_dim=i, hidden_dim=h, token_dim=t, pooled_dim=p, lmm="unknown")


def check_state_dict(sd_shapes: dict[str, tuple], expected: dict[str, tuple], what: str) -> None:
    """Raise one error listing missing keys, unexpected keys and wrong shapes."""
    missing = sorted(set(expected) - set(sd_shapes))
    unexpected = sorted(set(sd_shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(sd_shapes) if tuple(sd_shapes[k]) != tuple(expected[k]))
    if missing or unexpected or wrong:
        lines = [f"{what} does not match the expected layout:"]
        if missing:
            lines.append("  missing keys: " + ", ".join(f"{k} {list(expected[k])}" for k in missing))
        if unexpected:
            lines.append("  unexpected keys: " + ", ".join(unexpected))
        if wrong:
            lines.append("  wrong shapes: " + ", ".join(
                f"{k} is {list(sd_shapes[k])}, expected {list(expected[k])}" for k in wrong))
        raise WeightsError("\n".join(lines))


def load_adapter(path: str, lmm_dim: int | None = None, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> Adapter:
    """Load and validate an adapter (its spec is ``.spec``). ``lmm_dim``: the hidden
    width of the LMM it will run on, checked by :func:`check_adapter_lmm`."""
    spec = spec_from_file(path)
    if lmm_dim is not None:
        check_adapter_lmm(spec, lmm_dim, os.path.basename(path))
    with safe_open(path, framework="pt", device="cpu") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    check_state_dict({k: tuple(v.shape) for k, v in sd.items()}, spec.expected_shapes(),
                     f"adapter {os.path.basename(path)}")
    adapter = Adapter(spec)
    adapter.load_state_dict(sd)
    return adapter.to(device=device, dtype=dtype).eval().requires_grad_(False)
