"""Figure 1: what the CPU gives — matmul throughput at the encoder's shapes and memory bandwidth."""
from __future__ import annotations

import torch

from ..measure import timeit


def hardware(args: dict) -> dict:
    """Matmul throughput at the encoder's shapes (bf16 and fp32) and copy bandwidth."""
    repeats = args.get("repeats", 5)
    res = {"threads": torch.get_num_threads(), "matmul": []}
    for name, m, k, n in args.get("shapes"):
        for dt in (torch.bfloat16, torch.float32):
            res["matmul"].append(_matmul(name, m, k, n, dt, repeats))
    size = int(args.get("copy_bytes", 1 << 30))
    src = torch.empty(size, dtype=torch.uint8)
    src.fill_(1)
    dst = torch.empty_like(src)
    dst.fill_(0)
    s = timeit(lambda: dst.copy_(src), repeats=repeats)
    res["copy"] = {"bytes": size, "gbps": 2 * size / s["median"] / 1e9, "gbps_max": 2 * size / s["min"] / 1e9,
                   "gbps_min": 2 * size / s["max"] / 1e9}
    # read-only stream (a sum over bf16 weights-sized data), for reference
    x = torch.ones(size // 2, dtype=torch.bfloat16)
    s = timeit(lambda: x.sum(), repeats=repeats)
    res["read"] = {"bytes": size, "gbps": size / s["median"] / 1e9}
    return res


def _matmul(name: str, m: int, k: int, n: int, dt: torch.dtype, repeats: int) -> dict:
    a = torch.randn(m, k).to(dt)
    w = torch.randn(n, k).to(dt)  # nn.Linear layout: y = a @ w.T
    inner = max(1, int(2e9 // (2 * m * k * n)))  # ~2 GFLOP per timed call

    def f():
        for _ in range(inner):
            torch.nn.functional.linear(a, w)
    s = timeit(f, repeats=repeats)
    fl = 2 * m * k * n * inner
    return {"name": name, "m": m, "k": k, "n": n, "dtype": str(dt).replace("torch.", ""),
            "tflops": fl / s["median"] / 1e12, "tflops_max": fl / s["min"] / 1e12, "tflops_min": fl / s["max"] / 1e12}
