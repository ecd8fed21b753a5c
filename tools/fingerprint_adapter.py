"""Stamp an adapter with the fingerprint of the LMM it was made with.

    python -m tools.fingerprint_adapter ADAPTER.safetensors LMM_FOLDER [--check]

Adds ``lmm_fingerprint`` and ``lmm_folder`` to the adapter's metadata (the hash is
described in ``dream_engine_core/fingerprint.py``); the tensors and the other metadata
are kept as they are. ``LoadDreamEngine`` then refuses the adapter with any LMM whose
weights differ. For adapters written before fingerprints existed (the pack's
converter and trainers now record it themselves). ``--check`` only compares and exits
1 on a mismatch, 3 when the adapter records no fingerprint.
"""
from __future__ import annotations

import argparse
import sys


def stamp(adapter: str, lmm_folder: str) -> dict[str, str]:
    """Rewrite ``adapter`` with the fingerprint of ``lmm_folder``; returns the added entries."""
    from safetensors import safe_open

    from dream_engine_core.fingerprint import fingerprint_metadata
    from dream_engine_core.weights import atomic_save, check_safetensors

    check_safetensors(adapter)
    with safe_open(adapter, framework="pt") as f:
        md = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    added = fingerprint_metadata(lmm_folder)
    md.update(added)
    atomic_save(tensors, adapter, md)
    return added


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.fingerprint_adapter", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapter", help="the adapter .safetensors file")
    ap.add_argument("lmm_folder", help="the HF-format LMM folder the adapter was made with")
    ap.add_argument("--check", action="store_true", help="compare only; write nothing")
    a = ap.parse_args(argv)
    if a.check:
        from dream_engine_core.fingerprint import check_pair
        from dream_engine_core.weights import read_metadata

        try:
            warning = check_pair(read_metadata(a.adapter), a.adapter, a.lmm_folder)
        except ValueError as e:
            print(e, file=sys.stderr)
            return 1
        if warning:
            print(warning, file=sys.stderr)
            return 3
        print("fingerprint matches")
        return 0
    added = stamp(a.adapter, a.lmm_folder)
    print(f"{a.adapter}: " + ", ".join(f"{k}={v}" for k, v in added.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
