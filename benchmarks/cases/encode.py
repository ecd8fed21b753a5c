"""Figures 2, 3 and 6: a Dream Engine encode timed against the floor of its work
(``model_builders/flops.py``), beside plain transformers' forward on the same tokens, and its
scaling with images and resolution."""
from __future__ import annotations

import contextlib

import torch

from ..measure import calibrate, current_rss, peak_rss, timeit


def load_engine(args: dict):
    """The random-weight Dream Engine the run built; returns it and its load time."""
    import time

    from dream_engine_core.engine import DreamEngine

    dtype = getattr(torch, args.get("dtype", "bfloat16"))
    t = time.perf_counter()
    eng = DreamEngine.load(args["lmm_folder"], args["adapter"], dtype=dtype)
    return eng, time.perf_counter() - t


def prompt_and_images(eng, spec: dict):
    """``spec["prompt"]``: ``20w``, ``tokensN`` (N tokens) or ``imagesN`` (N test images)."""
    from ..prompts import PROMPT_20, image_prompt, long_prompt, test_image

    kind = spec["prompt"]
    if kind == "20w":
        return PROMPT_20, []
    if kind.startswith("tokens"):
        return long_prompt(int(kind[6:]), _token_counter(eng)), []
    if kind.startswith("images"):
        n = int(kind[6:])
        w, h = spec.get("image_size", (512, 512))
        return image_prompt(n), [test_image(i, w, h) for i in range(n)]
    raise ValueError(f"unknown benchmark prompt {kind!r} (20w, tokensN or imagesN)")


def _token_counter(eng):
    from dream_engine_core.prompt import build_task_inputs

    def count(prompt):
        ti = build_task_inputs(prompt, [], "generate", "inference")
        return eng.encoder.token_count(ti.cond, eng.encoder.prepare_images([]))
    return count


def _variants(prompt: str, tokenizer, n: int = 16) -> list:
    """``n`` prompts of the same token count: the last word swapped for another word that
    is one token of the (real Qwen2) vocabulary, as the last word is. Timed repeats cycle
    through them, so that no repeat re-encodes the previous one's conditional input (the
    encoder remembers text-only inputs)."""
    from ..prompts import WORDS

    def one_token(w):
        return len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1

    head, _, last = prompt.rpartition(" ")
    if not head or "[" in last or not one_token(last):
        return [prompt] * n
    words = [w for w in WORDS if w.isalpha() and w.islower() and w != last and one_token(w)]
    return [f"{head} {words[i % len(words)]}" for i in range(n)]


@contextlib.contextmanager
def no_text_cache(enc):
    """The encoder without its text cache (every pass computed) while inside."""
    size = enc.text_cache_size
    enc.text_cache_size = 0
    try:
        yield
    finally:
        enc.text_cache_size = size


def _work(eng, prompt, images, opts, pos, neg) -> dict:
    """The prompt's tokens, image patches and the cost of its passes (every pass, and the required ones)."""
    from dream_engine_core.prompt import ImageRef, build_task_inputs

    from model_builders.flops import encode_cost, required_cost

    enc = eng.encoder
    prep = enc.prepare_images(images, opts.short_side, opts.min_pixels, opts.max_pixels)
    patches = [int(g.prod()) for g in prep.grid_thw] if prep.grid_thw is not None else []
    esize = torch.tensor([], dtype=enc.dtype).element_size()
    n_pos, n_neg = pos.tokens.shape[1], neg.tokens.shape[1]
    ti = build_task_inputs(prompt, [ImageRef() for _ in images], "generate", opts.style)
    uncond_constant = not ti.uncond.images  # text only: the same negative for every prompt
    return {"cond_tokens": int(n_pos), "uncond_tokens": int(n_neg), "image_tokens": list(prep.tokens_per_image),
            "patches": patches, "cost": encode_cost(enc.model.config, eng.adapter.spec, n_pos, n_neg, patches,
                                                    esize=esize),
            "required_cost": required_cost(enc.model.config, eng.adapter.spec, n_pos, n_neg, patches,
                                           uncond_constant, esize=esize),
            "uncond_constant": uncond_constant, "_prep": prep, "_inputs": ti, "_esize": esize}


def measure(eng, prompt, images, opts, repeats, breakdown=True, warm=(2, 6), size="full",
            no_cache_repeats=0, peer=False) -> dict:
    """Time ``eng.encode`` (prompt variants of the same token count, a calibration after each
    repeat); optionally without the text cache, beside plain transformers, and per part."""
    pos, neg = eng.encode(prompt, images, options=opts)
    out = _work(eng, prompt, images, opts, pos, neg)
    prep, ti, esize = out.pop("_prep"), out.pop("_inputs"), out.pop("_esize")
    variants = _variants(prompt, eng.encoder.tokenizer)
    counter = iter(range(10 ** 9))

    def run():
        c, _ = eng.encode(variants[next(counter) % len(variants)], images, options=opts)
        assert c.tokens.shape[1] == pos.tokens.shape[1], "a prompt variant changed the token count"

    out["time"] = timeit(run, repeats=repeats, min_warmup=warm[0], max_warmup=warm[1], between=lambda: calibrate(size))
    if peer and not images:
        from model_builders.flops import lm_only_cost

        out["peer"] = _peer_forward(eng, variants, opts, out["cond_tokens"], repeats, warm, size)
        out["peer"]["cost"] = lm_only_cost(eng.encoder.model.config, out["cond_tokens"], esize=esize)
    cache = getattr(eng.encoder, "text_cache_size", None)
    out["text_cache_size"] = cache
    if no_cache_repeats and cache:
        with no_text_cache(eng.encoder):
            out["time_no_cache"] = timeit(run, repeats=no_cache_repeats, min_warmup=1, max_warmup=2,
                                          between=lambda: calibrate(size))
    if breakdown:
        with no_text_cache(eng.encoder) if cache else contextlib.nullcontext():
            out["parts"] = _parts(eng, images, opts, prep, ti, max(2, repeats // 2))
    return out


def _parts(eng, images, opts, prep, ti, repeats: int) -> dict:
    """Where the time goes: the same calls encode makes, every pass computed."""
    enc = eng.encoder

    def prepare():
        return enc.prepare_images(images, opts.short_side, opts.min_pixels, opts.max_pixels)
    parts = {"prepare_images": timeit(prepare, repeats=repeats, min_warmup=1)}
    if images:
        def vision():
            p = prepare()
            p.features = None
            enc.vision_features(p)
        vis = timeit(vision, repeats=repeats, min_warmup=1)
        vis["median"] -= parts["prepare_images"]["median"]
        parts["vision"] = vis
    enc.vision_features(prep)
    parts["lm_cond"] = timeit(lambda: enc.encode(ti.cond, prep), repeats=repeats, min_warmup=1)
    parts["lm_uncond"] = timeit(lambda: enc.encode(ti.uncond, prep), repeats=repeats, min_warmup=1)
    sc = enc.encode(ti.cond, prep)
    parts["adapter"] = timeit(lambda: eng._adapt(sc, opts, "generate"), repeats=repeats, min_warmup=1)
    return {k: {"median": v["median"], "min": v["min"]} for k, v in parts.items()}


def _peer_forward(eng, variants, opts, n_tokens, repeats, warm, size) -> dict:
    """Plain transformers on the same prompt: tokenize the text the pack feeds the model and
    call the language model's forward, as anyone could write it in ten lines
    (``model.model.language_model(input_ids=ids).last_hidden_state``). It runs on the same
    loaded weights (the pack's model is transformers' own ``Qwen2VLForConditionalGeneration``
    from ``from_pretrained``, its linear layers put back to ``nn.Linear`` while it runs and the
    packed copies dropped), with the same prompt variants."""
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

    eng.set_cpu_linear("blas")  # transformers' nn.Linear as it ships, not the pack's CPU path
    try:
        t = timeit(forward, repeats=repeats, min_warmup=warm[0], max_warmup=warm[1], between=lambda: calibrate(size))
    finally:
        eng.set_cpu_linear()
    return {"tokens": n_tokens, "call": "model.model.language_model(input_ids=ids).last_hidden_state", "time": t}


def de_encode(args: dict) -> dict:
    """One encode case of figure 2 (or 3): load, then :func:`measure`."""
    from dream_engine_core.engine import EncodeOptions

    torch.manual_seed(0)
    eng, load_s = load_engine(args)
    res = {"load_s": load_s, "rss_after_load": current_rss(), "threads": torch.get_num_threads()}
    prompt, images = prompt_and_images(eng, args)
    opts = EncodeOptions(**args.get("options", {}))
    res.update(measure(eng, prompt, images, opts, args.get("repeats", 5), args.get("breakdown", True),
                       size=args.get("size", "full"), no_cache_repeats=args.get("no_cache_repeats", 0),
                       peer=args.get("peer", False)))
    res["prompt_words"] = len(prompt.split())
    res["prompt_text"] = prompt
    res["peak_rss"] = peak_rss()
    return res


def de_scaling(args: dict) -> dict:
    """Encode time against the number of images and against max_pixels (one process)."""
    from dream_engine_core.engine import EncodeOptions

    from ..prompts import image_prompt, test_image

    eng, load_s = load_engine(args)
    rep = args.get("repeats", 3)
    res = {"load_s": load_s, "images": [], "resolution": []}
    for n in args.get("n_images", [0, 1, 2, 3, 4]):
        m = measure(eng, image_prompt(n), [test_image(i) for i in range(n)], EncodeOptions(), rep, False, warm=(1, 3))
        res["images"].append(dict(m, n_images=n))
    w, h = args.get("res_image", (1344, 1344))
    for mp in args.get("max_pixels", []):
        opts = EncodeOptions(short_side=None, max_pixels=int(mp))
        m = measure(eng, image_prompt(1), [test_image(7, w, h)], opts, rep, False, warm=(1, 3))
        res["resolution"].append(dict(m, max_pixels=int(mp)))
    res["peak_rss"] = peak_rss()
    return res
