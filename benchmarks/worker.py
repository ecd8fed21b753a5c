"""One benchmark case in a fresh process: ``python -m benchmarks.worker CASE JSON_ARGS``.

Every case runs in its own interpreter so that its peak RSS (``ru_maxrss``) is its
own and no case warms another's caches. The result is printed as one line
``RESULT {json}`` on stdout. The cases share their model loading and measuring
helpers, so they live in this one file (~600 lines), each a ``case_*`` function.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

T_START = time.time()  # wall clock at interpreter start of this module (cold-load cases)

import torch  # noqa: E402


# ---------------------------------------------------------------- helpers
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


_CAL: dict = {}


def timeit(fn, repeats: int = 5, min_warmup: int = 2, max_warmup: int = 6, settle: float = 0.10,
           between=None) -> dict:
    """Warm up until two consecutive runs agree within ``settle`` (at least ``min_warmup``
    runs, at most ``max_warmup``), then time ``repeats`` runs."""
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


# ---------------------------------------------------------------- figure 1
def case_hardware(args: dict) -> dict:
    """Matmul throughput at the encoder's shapes (bf16 and fp32) and copy bandwidth."""
    repeats = args.get("repeats", 5)
    shapes = args.get("shapes")
    res = {"threads": torch.get_num_threads(), "matmul": []}
    for name, m, k, n in shapes:
        for dt in (torch.bfloat16, torch.float32):
            a = torch.randn(m, k).to(dt)
            w = torch.randn(n, k).to(dt)  # nn.Linear layout: y = a @ w.T
            inner = max(1, int(2e9 // (2 * m * k * n)))  # ~2 GFLOP per timed call

            def f():
                for _ in range(inner):
                    torch.nn.functional.linear(a, w)
            s = timeit(f, repeats=repeats)
            fl = 2 * m * k * n * inner
            res["matmul"].append({"name": name, "m": m, "k": k, "n": n, "dtype": str(dt).replace("torch.", ""),
                                  "tflops": fl / s["median"] / 1e12, "tflops_max": fl / s["min"] / 1e12,
                                  "tflops_min": fl / s["max"] / 1e12})
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


# ---------------------------------------------------------------- Dream Engine
def _engine(args):
    import dream_engine_core  # noqa: F401
    from dream_engine_core.engine import DreamEngine

    dtype = getattr(torch, args.get("dtype", "bfloat16"))
    t = time.perf_counter()
    eng = DreamEngine.load(args["lmm_folder"], args["adapter"], dtype=dtype)
    return eng, time.perf_counter() - t


def _count_fn(eng):
    from dream_engine_core.prompt import build_task_inputs

    def count(prompt):
        ti = build_task_inputs(prompt, [], "generate", "inference")
        return eng.encoder.token_count(ti.cond, eng.encoder.prepare_images([]))
    return count


def _prompt_and_images(eng, spec: dict):
    from .prompts import PROMPT_20, image_prompt, long_prompt, test_image

    kind = spec["prompt"]
    if kind == "20w":
        return PROMPT_20, []
    if kind.startswith("tokens"):
        return long_prompt(int(kind[6:]), _count_fn(eng)), []
    if kind.startswith("images"):
        n = int(kind[6:])
        w, h = spec.get("image_size", (512, 512))
        return image_prompt(n), [test_image(i, w, h) for i in range(n)]
    raise ValueError(kind)


def _variants(prompt: str, tokenizer, n: int = 16) -> list:
    """``n`` prompts of the same token count: the last word swapped for another word that
    is one token of the (real Qwen2) vocabulary, as the last word is. Timed repeats cycle
    through them, so that no repeat re-encodes the previous one's conditional input (the
    encoder remembers text-only inputs)."""
    from .prompts import WORDS

    def one_token(w):
        return len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1

    head, _, last = prompt.rpartition(" ")
    if not head or "[" in last or not one_token(last):
        return [prompt] * n
    words = [w for w in WORDS if w.isalpha() and w.islower() and w != last and one_token(w)]
    return [f"{head} {words[i % len(words)]}" for i in range(n)]


def _de_measure(eng, prompt, images, opts, repeats, breakdown=True, warm=(2, 6), size="full",
                no_cache_repeats=0, peer=False) -> dict:
    from dream_engine_core.prompt import ImageRef, build_task_inputs

    from .flops import encode_cost, lm_only_cost, required_cost

    enc = eng.encoder
    pos, neg = eng.encode(prompt, images, options=opts)
    prep = enc.prepare_images(images, opts.short_side, opts.min_pixels, opts.max_pixels)
    patches = [int(g.prod()) for g in prep.grid_thw] if prep.grid_thw is not None else []
    esize = torch.tensor([], dtype=enc.dtype).element_size()
    cost = encode_cost(enc.model.config, eng.adapter.spec, pos.tokens.shape[1], neg.tokens.shape[1], patches,
                       esize=esize)
    ti = build_task_inputs(prompt, [ImageRef() for _ in images], "generate", opts.style)
    uncond_constant = not ti.uncond.images  # text only: the same negative for every prompt
    required = required_cost(enc.model.config, eng.adapter.spec, pos.tokens.shape[1], neg.tokens.shape[1],
                             patches, uncond_constant, esize=esize)
    variants = _variants(prompt, enc.tokenizer)
    counter = iter(range(10 ** 9))

    def run():
        p = variants[next(counter) % len(variants)]
        c, u = eng.encode(p, images, options=opts)
        assert c.tokens.shape[1] == pos.tokens.shape[1], "a prompt variant changed the token count"

    out = {"cond_tokens": int(pos.tokens.shape[1]), "uncond_tokens": int(neg.tokens.shape[1]),
           "image_tokens": list(prep.tokens_per_image), "patches": patches, "cost": cost,
           "required_cost": required, "uncond_constant": uncond_constant,
           "time": timeit(run, repeats=repeats, min_warmup=warm[0], max_warmup=warm[1],
                          between=lambda: calibrate(size))}
    if peer and not images:
        out["peer"] = _peer_forward(eng, variants, opts, int(pos.tokens.shape[1]), repeats, warm, size)
        out["peer"]["cost"] = lm_only_cost(enc.model.config, int(pos.tokens.shape[1]), esize=esize)
    cache = getattr(enc, "text_cache_size", None)
    out["text_cache_size"] = cache
    if no_cache_repeats and cache:
        enc.text_cache_size = 0
        out["time_no_cache"] = timeit(run, repeats=no_cache_repeats, min_warmup=1, max_warmup=2,
                                      between=lambda: calibrate(size))
        enc.text_cache_size = cache
    if breakdown:  # where the time goes (the same calls encode makes, every pass computed)
        if cache:
            enc.text_cache_size = 0
        r = max(2, repeats // 2)
        parts = {"prepare_images": timeit(lambda: enc.prepare_images(images, opts.short_side, opts.min_pixels,
                                                                      opts.max_pixels), repeats=r, min_warmup=1)}
        if images:
            def vis():
                p = enc.prepare_images(images, opts.short_side, opts.min_pixels, opts.max_pixels)
                p.features = None
                enc.vision_features(p)
            vis_t = timeit(vis, repeats=r, min_warmup=1)
            vis_t["median"] -= parts["prepare_images"]["median"]
            parts["vision"] = vis_t
        enc.vision_features(prep)
        parts["lm_cond"] = timeit(lambda: enc.encode(ti.cond, prep), repeats=r, min_warmup=1)
        parts["lm_uncond"] = timeit(lambda: enc.encode(ti.uncond, prep), repeats=r, min_warmup=1)
        sc = enc.encode(ti.cond, prep)
        parts["adapter"] = timeit(lambda: eng._adapt(sc, opts, "generate"), repeats=r, min_warmup=1)
        out["parts"] = {k: {"median": v["median"], "min": v["min"]} for k, v in parts.items()}
        if cache:
            enc.text_cache_size = cache
    return out


def _peer_forward(eng, variants, opts, n_tokens, repeats, warm, size) -> dict:
    """Plain transformers on the same prompt: tokenize the text the pack feeds the model and
    call the language model's forward, as anyone could write it in ten lines
    (``model.model.language_model(input_ids=ids).last_hidden_state``). It runs on the same
    loaded weights (the pack's model is transformers' own ``Qwen2VLForConditionalGeneration``
    from ``from_pretrained``), with the same prompt variants."""
    from dream_engine_core.prompt import build_task_inputs

    lm = eng.encoder.model.model.language_model
    tok = eng.encoder.tokenizer
    texts = [build_task_inputs(p, [], "generate", opts.style).cond.text for p in variants]
    counter = iter(range(10 ** 9))

    def forward():
        ids = tok(texts[next(counter) % len(texts)], return_tensors="pt").input_ids
        with torch.inference_mode():
            h = lm(input_ids=ids).last_hidden_state
        assert h.shape[1] == n_tokens, f"plain transformers saw {h.shape[1]} tokens, the pack {n_tokens}"

    return {"tokens": n_tokens, "call": "model.model.language_model(input_ids=ids).last_hidden_state",
            "time": timeit(forward, repeats=repeats, min_warmup=warm[0], max_warmup=warm[1],
                           between=lambda: calibrate(size))}


def case_de_encode(args: dict) -> dict:
    from dream_engine_core.engine import EncodeOptions

    torch.manual_seed(0)
    eng, load_s = _engine(args)
    res = {"load_s": load_s, "rss_after_load": current_rss(), "threads": torch.get_num_threads()}
    prompt, images = _prompt_and_images(eng, args)
    opts = EncodeOptions(**args.get("options", {}))
    res.update(_de_measure(eng, prompt, images, opts, args.get("repeats", 5), args.get("breakdown", True),
                           size=args.get("size", "full"), no_cache_repeats=args.get("no_cache_repeats", 0),
                           peer=args.get("peer", False)))
    res["prompt_words"] = len(prompt.split())
    res["prompt_text"] = prompt
    res["peak_rss"] = peak_rss()
    return res


def case_de_cancel(args: dict) -> dict:
    """Cancel latency on a 10-image prompt and the cost of the interrupt hooks.

    The check is ComfyUI's: a flag read under a lock, raising when set. A timer thread
    sets the flag at fractions of one encode's duration; latency is the time from
    setting it to the encode raising. Measured with the hooks between layers and
    blocks (dream_engine_core/interrupt.py) and with checks between stages only (the
    hooks disabled), and the encode time with and without the hooks (flag never set).
    """
    import threading

    import dream_engine_core.engine as E
    from dream_engine_core.engine import EncodeOptions

    torch.manual_seed(0)
    eng, load_s = _engine(args)
    n = int(args.get("n_images", 10))
    args = dict(args, prompt=f"images{n}")
    prompt, images = _prompt_and_images(eng, args)
    opts = EncodeOptions(**args.get("options", {}))
    lock, flag = threading.Lock(), {"set": False}

    class Interrupted(Exception):
        pass

    def check():  # what comfy.model_management.throw_exception_if_processing_interrupted does
        with lock:
            if flag["set"]:
                flag["set"] = False
                raise Interrupted

    hooked_points = E.interrupt_points

    @__import__("contextlib").contextmanager
    def no_points(model, check):
        yield

    def encode():
        return eng.encode(prompt, images, options=opts, check_interrupt=check)

    res = {"load_s": load_s, "n_images": n, "threads": torch.get_num_threads()}
    calls = [0]

    def counted():
        calls[0] += 1
        check()

    pos, neg = eng.encode(prompt, images, options=opts, check_interrupt=counted)  # warm-up, counts the checks
    res["cond_tokens"], res["uncond_tokens"] = int(pos.tokens.shape[1]), int(neg.tokens.shape[1])
    res["hook_points"] = len(__import__("dream_engine_core.interrupt", fromlist=["x"]).interrupt_modules(
        eng.encoder.model))
    res["checks_per_encode"] = calls[0]
    times = []
    for _ in range(int(args.get("repeats", 2))):
        t = time.perf_counter()
        encode()
        times.append(time.perf_counter() - t)
    res["encode_s"] = stats(times)
    # The hooks' cost, measured directly (an A/B of whole encodes drowns it in noise):
    # one check through a registered pre-hook, times the checks of one encode.
    probe = torch.nn.Identity()
    x = torch.zeros(1)
    k = 20000
    h = probe.register_forward_pre_hook(lambda _m, _a: check())
    t = time.perf_counter()
    for _ in range(k):
        probe(x)
    with_hook = (time.perf_counter() - t) / k
    h.remove()
    t = time.perf_counter()
    for _ in range(k):
        probe(x)
    bare = (time.perf_counter() - t) / k
    res["check_s"] = with_hook - bare
    res["hook_cost"] = res["check_s"] * calls[0] / res["encode_s"]["median"]
    duration = res["encode_s"]["median"]
    fractions = args.get("fractions", [0.25, 0.5, 0.75])
    lat = {"hooked": [], "stages_only": []}
    for mode, points in (("hooked", hooked_points), ("stages_only", no_points)):
        E.interrupt_points = points
        for f in fractions:
            flag["set"] = False
            when = {}

            def fire():
                with lock:
                    flag["set"] = True
                when["t"] = time.perf_counter()

            timer = threading.Timer(f * duration, fire)
            timer.start()
            try:
                encode()
                done = None  # finished before the flag was read
            except Interrupted:
                done = time.perf_counter()
            timer.join()
            flag["set"] = False
            if done is not None and "t" in when:
                lat[mode].append(done - when["t"])
    E.interrupt_points = hooked_points
    res["cancel_latency_s"] = {k: stats(v) if v else None for k, v in lat.items()}
    res["peak_rss"] = peak_rss()
    return res


def case_de_scaling(args: dict) -> dict:
    """Encode time against the number of images and against max_pixels (one process)."""
    from dream_engine_core.engine import EncodeOptions

    from .prompts import image_prompt, test_image

    eng, load_s = _engine(args)
    rep = args.get("repeats", 3)
    res = {"load_s": load_s, "images": [], "resolution": []}
    for n in args.get("n_images", [0, 1, 2, 3, 4]):
        m = _de_measure(eng, image_prompt(n), [test_image(i) for i in range(n)], EncodeOptions(), rep, False, warm=(1, 3))
        m["n_images"] = n
        res["images"].append(m)
    for mp in args.get("max_pixels", []):
        opts = EncodeOptions(short_side=None, max_pixels=int(mp))
        w, h = args.get("res_image", (1344, 1344))
        m = _de_measure(eng, image_prompt(1), [test_image(7, w, h)], opts, rep, False, warm=(1, 3))
        m["max_pixels"] = int(mp)
        res["resolution"].append(m)
    res["peak_rss"] = peak_rss()
    return res


# ---------------------------------------------------------------- ComfyUI TripleCLIP
def _load_tripleclip(paths: list):
    from comfy_host.importer import import_comfy

    import_comfy()
    import comfy.sd

    t = time.perf_counter()
    clip = comfy.sd.load_clip(ckpt_paths=paths, clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)  # as TripleCLIPLoader
    return clip, time.perf_counter() - t


def _clip_encode(clip, text):
    tokens = clip.tokenize(text)  # CLIPTextEncode.encode
    return clip.encode_from_tokens_scheduled(tokens), tokens


def case_clip_encode(args: dict) -> dict:
    """TripleCLIPLoader + CLIPTextEncode on each text; peak RSS is read after the first
    text (the comparison of figure 3), before any longer one runs."""
    from .prompts import PROMPT_20

    clip, load_s = _load_tripleclip(args["clip_paths"])
    res = {"load_s": load_s, "rss_after_load": current_rss(), "threads": torch.get_num_threads(), "texts": []}
    for k, text in enumerate(args["texts"]):
        text = PROMPT_20 if text == "20w" else text
        with torch.inference_mode():
            cond, tokens = _clip_encode(clip, text)
            r = {"tokens": {kk: sum(len(c) for c in v) for kk, v in tokens.items()},
                 "cond_shape": list(cond[0][0].shape),
                 "time": timeit(lambda: _clip_encode(clip, text), repeats=args.get("repeats", [3])[k],
                                min_warmup=2 if k == 0 else 1, max_warmup=3, between=calibrate)}
        r["peak_rss"] = peak_rss()
        res["texts"].append(r)
    res["weight_dtypes"] = sorted({str(p.dtype) for p in clip.cond_stage_model.parameters()})
    res["peak_rss"] = res["texts"][0]["peak_rss"]
    return res


# ---------------------------------------------------------------- cold load (figure 4)
def case_cold_de(args: dict) -> dict:
    """From an empty process to the first conditioning: imports, load, first encode."""
    t_import = time.time()
    from dream_engine_core.engine import EncodeOptions

    from .prompts import PROMPT_20

    t0 = time.time()
    eng, load_s = _engine(args)
    t1 = time.time()
    with torch.inference_mode():
        eng.encode(PROMPT_20, [], options=EncodeOptions())
    t2 = time.time()
    return {"t_module": T_START, "t_imports_done": t0, "t_import_start": t_import, "load_s": t1 - t0,
            "first_encode_s": t2 - t1, "t_done": t2, "peak_rss": peak_rss()}


def case_cold_clip(args: dict) -> dict:
    from .prompts import PROMPT_20

    from comfy_host.importer import import_comfy

    import_comfy()
    import comfy.sd  # noqa: F401

    t0 = time.time()
    clip, load_s = _load_tripleclip(args["clip_paths"])
    t1 = time.time()
    with torch.inference_mode():
        _clip_encode(clip, PROMPT_20)
    t2 = time.time()
    return {"t_module": T_START, "t_imports_done": t0, "load_s": t1 - t0, "first_encode_s": t2 - t1,
            "t_done": t2, "peak_rss": peak_rss()}



# ---------------------------------------------------------------- figure 5: the real server
def case_server_cache(args: dict) -> dict:
    """Queue a text-to-image workflow on the real ComfyUI server (small models), then
    re-queue it with only the seed changed; count encoder calls from the server log."""
    import re
    import uuid

    import comfy_host as host
    from model_builders.comfy_formats import build_demo_models

    base = os.path.join(host.ROOT, "build", "bench", "server")
    host.import_comfy()
    build_demo_models(os.path.join(base, "small_models"))
    host.prepare_base_dir(base, os.path.join(base, "small_models"))
    srv = host.ComfyServer(base).start()
    try:
        def encodes():
            return re.findall(r"Dream Engine: encoded .*?([0-9.]+)s\s*$", srv.log_text(), re.M)

        def t2i(text, seed):
            p = host.configure(host.small_model_profile(host.load_api("1_text_to_image.json"), size=128),
                               text=text, seed=seed, steps=4)
            return p, host.nodes_of(p, "DreamEngineInterleavedConditioning")[0]

        text = f"a yellow circle left of a red square {uuid.uuid4().hex[:6]}"
        n0 = len(encodes())
        p1, cond = t2i(text, 1)
        t = time.perf_counter()
        a = srv.run(p1)
        first = time.perf_counter() - t
        n1 = len(encodes())
        p2, _ = t2i(text, 2)
        t = time.perf_counter()
        b = srv.run(p2)
        second = time.perf_counter() - t
        n2 = len(encodes())
        cached = host.status_messages(b, "execution_cached")
        cached = cached[0]["nodes"] if cached else []
        times = encodes()
        return {"status": [a["status"]["status_str"], b["status"]["status_str"]],
                "encoder_calls_first": n1 - n0, "encoder_calls_requeue": n2 - n1,
                "encode_node_s": float(times[-1]) if times else None,
                "conditioning_node_cached_on_requeue": cond in cached, "cached_nodes": cached,
                "first_prompt_s": first, "requeue_prompt_s": second, "server_rss": srv.rss_bytes(),
                "models": "small same-architecture models (comfy_host.base_dir); the count, not the speed, is the figure"}
    finally:
        srv.stop()


# ---------------------------------------------------------------- figure 7: trainer
def case_trainer(args: dict) -> dict:
    """One stage-2 step of training.train.Trainer (small config) against the bare
    forward+backward of the same module on the same prepared batch, and samples/s of
    the unmodified training loop (data loading and LMM encoding on)."""
    import csv

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from comfy_host.importer import import_comfy

    import_comfy()
    from miniature.training_set import build_tiny_training_set
    from training.train import Trainer, TrainConfig

    quick = args.get("quick", False)
    folder = os.path.join(root, "build", "bench", "trainer")
    paths = build_tiny_training_set(folder, n_records=16, depth=args.get("depth", 2), image_size=64)
    steps = 4 if quick else 10

    def cfg(out, **kw):
        base = dict(manifest=paths["manifest"], lmm=paths["lmm"], dit=paths["dit"], vae=paths["vae"], out=out,
                    stage=2, adapter_hidden=256, resolution=64, lmm_short_side=56, batch=2, micro_batch=2,
                    lora_rank=8, ckpt_every=0, progress=False, warmup=0.0, steps=steps, workers=0)
        base.update(kw)
        return TrainConfig(**base)

    def step_times(tr):
        with open(os.path.join(tr.cfg.out, "log.csv")) as f:
            sps = [float(r["samples_per_s"]) for r in csv.DictReader(f)]
        return [tr.cfg.batch / x for x in sps][2:]  # the first steps warm up

    # (1) the trainer's own loop with the data step replaced by one fixed prepared batch
    tr = Trainer(cfg(os.path.join(folder, "run_fixed"))).setup()
    loader_items = None
    from training import data as D

    loader, _ = D.make_loader(tr.records, tr.cfg.resolution, 0, tr.cfg.batch, tr.cfg.micro_batch, 0, 1, 0,
                              tr.steps, 0, False, False)
    loader_items = next(iter(loader))
    groups = tr.prepare(loader_items, fixed=True)
    tr.prepare = lambda items, fixed=False: groups
    tr.train()
    step = step_times(tr)

    # (2) bare forward + backward of the same module on the same batch
    mod = tr.module

    def bare():
        for p in tr.params:
            p.grad = None
        with tr.autocast():
            s, _ = mod(groups)
        (s / tr.cfg.batch).backward()
    bare_t = timeit(bare, repeats=max(3, len(step)), min_warmup=2)

    # (3) the unmodified loop: data loading and LMM encoding on
    tr2 = Trainer(cfg(os.path.join(folder, "run_data"))).setup()
    tr2.train()
    full = step_times(tr2)
    return {"config": {k: v for k, v in tr.config_dict().items() if k in
                       ("stage", "train_dit", "lora_rank", "adapter_hidden", "resolution", "batch", "micro_batch",
                        "workers", "precision")},
            "dit_depth": args.get("depth", 2), "step_s": statistics.median(step), "step_all": step,
            "bare_s": bare_t["median"], "bare": bare_t, "ratio": statistics.median(step) / bare_t["median"],
            "step_with_data_s": statistics.median(full), "step_with_data_all": full,
            "samples_per_s": tr.cfg.batch / statistics.median(full), "peak_rss": peak_rss()}

CASES = {k[5:]: v for k, v in globals().items() if k.startswith("case_")}


def main():
    case, args = sys.argv[1], json.loads(sys.argv[2])
    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    out = CASES[case](args)
    sys.stdout.write("RESULT " + json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)  # do not spend the parent's clock on interpreter teardown


if __name__ == "__main__":
    main()
