"""Figure 8: cancel latency on a 10-image prompt and the cost of the interrupt hooks.

The check is ComfyUI's: a flag read under a lock, raising when set. A timer thread
sets the flag at fractions of one encode's duration; latency is the time from
setting it to the encode raising. Measured with the hooks between layers and
blocks (``dream_engine_core/interrupt.py``) and with checks between stages only
(``interrupt.between_stages_only``), and the encode time with the hooks (flag never set).
"""
from __future__ import annotations

import contextlib
import threading
import time

import torch

from ..measure import peak_rss, stats
from .encode import load_engine, prompt_and_images


class Interrupted(Exception):
    pass


class Flag:
    """What ``comfy.model_management.throw_exception_if_processing_interrupted`` reads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.is_set = False

    def set(self, value: bool = True) -> None:
        with self.lock:
            self.is_set = value

    def check(self) -> None:
        with self.lock:
            if self.is_set:
                self.is_set = False
                raise Interrupted


def de_cancel(args: dict) -> dict:
    from dream_engine_core.engine import EncodeOptions
    from dream_engine_core.interrupt import between_stages_only, interrupt_modules

    torch.manual_seed(0)
    eng, load_s = load_engine(args)
    n = int(args.get("n_images", 10))
    prompt, images = prompt_and_images(eng, dict(args, prompt=f"images{n}"))
    opts = EncodeOptions(**args.get("options", {}))
    flag = Flag()

    def encode():
        return eng.encode(prompt, images, options=opts, check_interrupt=flag.check)

    calls = []

    def counted():
        calls.append(1)
        flag.check()

    pos, neg = eng.encode(prompt, images, options=opts, check_interrupt=counted)  # warm-up, counts the checks
    res = {"load_s": load_s, "n_images": n, "threads": torch.get_num_threads(),
           "cond_tokens": int(pos.tokens.shape[1]), "uncond_tokens": int(neg.tokens.shape[1]),
           "hook_points": len(interrupt_modules(eng.encoder.model)), "checks_per_encode": len(calls)}
    times = []
    for _ in range(int(args.get("repeats", 2))):
        t = time.perf_counter()
        encode()
        times.append(time.perf_counter() - t)
    res["encode_s"] = stats(times)
    res["check_s"] = _check_cost(flag)
    res["hook_cost"] = res["check_s"] * res["checks_per_encode"] / res["encode_s"]["median"]
    fractions, duration = args.get("fractions", [0.25, 0.5, 0.75]), res["encode_s"]["median"]
    lat = {"hooked": _latencies(encode, flag, fractions, duration, contextlib.nullcontext),
           "stages_only": _latencies(encode, flag, fractions, duration, between_stages_only)}
    res["cancel_latency_s"] = {k: stats(v) if v else None for k, v in lat.items()}
    res["peak_rss"] = peak_rss()
    return res


def _check_cost(flag: Flag, k: int = 20000) -> float:
    """One check through a registered forward pre-hook, in seconds. The hooks' cost is
    measured directly: an A/B of whole encodes drowns it in noise."""
    probe = torch.nn.Identity()
    x = torch.zeros(1)
    h = probe.register_forward_pre_hook(lambda _m, _a: flag.check())
    t = time.perf_counter()
    for _ in range(k):
        probe(x)
    with_hook = (time.perf_counter() - t) / k
    h.remove()
    t = time.perf_counter()
    for _ in range(k):
        probe(x)
    return with_hook - (time.perf_counter() - t) / k


def _latencies(encode, flag: Flag, fractions: list, duration: float, mode) -> list[float]:
    """Seconds from setting the flag (at ``fraction · duration`` into an encode) to the encode
    raising, for each fraction; ``mode()`` is the context the encodes run in."""
    out = []
    for f in fractions:
        flag.set(False)
        when = {}

        def fire():
            flag.set()
            when["t"] = time.perf_counter()

        timer = threading.Timer(f * duration, fire)
        timer.start()
        try:
            with mode():
                encode()
            done = None  # finished before the flag was read
        except Interrupted:
            done = time.perf_counter()
        timer.join()
        flag.set(False)
        if done is not None and "t" in when:
            out.append(done - when["t"])
    return out
