"""Measuring inside a benchmark worker: memory, timed repeats, and the calibration burst
paired with each repeat on a shared CPU."""
from __future__ import annotations

import resource
import statistics
import time

import torch


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def stats(xs: list) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs), "all": xs}


_CAL: dict = {}


def calibrate(size: str = "full") -> dict:
    """A short burst of the encoder's main matmul (bf16) and a copy, to measure what the
    CPU gives *right now* — on a shared machine the available compute changes from one
    second to the next, so each timed repeat is paired with one of these."""
    m, k, n, cb = (300, 1536, 8960, 1 << 28) if size == "full" else (64, 64, 128, 1 << 22)
    a, w = _CAL.get(size) or _CAL.setdefault(size, (torch.randn(m, k).to(torch.bfloat16),
                                                      torch.randn(n, k).to(torch.bfloat16)))[:2]
    src = torch.ones(cb, dtype=torch.uint8)
    dst = torch.empty_like(src)
    reps = max(1, int(4e9 // (2 * m * k * n)))
    torch.nn.functional.linear(a, w)
    t = time.perf_counter()
    for _ in range(reps):
        torch.nn.functional.linear(a, w)
    tf = (time.perf_counter() - t)
    dst.copy_(src)
    t = time.perf_counter()
    dst.copy_(src)
    tc = time.perf_counter() - t
    return {"tflops": 2 * m * k * n * reps / tf / 1e12, "gbps": 2 * cb / tc / 1e9}


def timeit(fn, repeats: int = 5, min_warmup: int = 2, max_warmup: int = 6, settle: float = 0.10,
           between=None) -> dict:
    """Warm up until two consecutive runs agree within ``settle`` (at least ``min_warmup``
    runs, at most ``max_warmup``), then time ``repeats`` runs; ``between()`` (a calibration)
    after each."""
    warm = []
    for i in range(max_warmup):
        t = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t)
        if i + 1 >= min_warmup and (min_warmup < 2 or abs(warm[-1] - warm[-2]) <= settle * min(warm[-1], warm[-2])):
            break
    xs, cal = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
        if between is not None:
            cal.append(between())
    out = stats(xs)
    out["warmup"] = warm
    if cal:
        out["calibration"] = cal
    return out
