"""Encoder and engine against a plain re-implementation on a small Qwen2-VL."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dream_engine_core.adapter import pool_tokens
from dream_engine_core.compat import image_size_kwargs
from dream_engine_core.encoder import (ImageInputError, LMMEncoder, LMMFolderError, check_lmm_folder,
                                       release_resize)
from dream_engine_core.engine import DreamEngine, EncodeOptions
from dream_engine_core.prompt import ImageRef, PromptError, build_task_inputs
from model_builders.qwen2vl import build_tiny_adapter
from dream_engine_core.weights import WeightsError, load_adapter


def img(w, h, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")


IMGS = [img(100, 80, 1), img(60, 90, 2), img(120, 120, 3)]


def reference_hidden(enc: LMMEncoder, text, images):
    """Plain transformers: processor + full model forward, last hidden state (images through
    the release's resizes first, as tests/test_image_preprocessing.py checks)."""
    proc = enc.processor
    kw = dict(text=[text], return_tensors="pt")
    if images:
        kw.update(images=[release_resize(i, 336) for i in images], **image_size_kwargs(56 * 56, 512 * 28 * 28))
    inputs = proc(**kw)
    with torch.no_grad():
        out = enc.model(**inputs, output_hidden_states=True)
    return inputs, out.hidden_states[-1]


def reference_vision(enc: LMMEncoder, inputs):
    with torch.no_grad():
        out = enc.model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 4.57 / 5


@pytest.mark.parametrize("n_images", [0, 1, 3])
def test_r0_equals_plain_transformers(engine, n_images):
    enc = engine.encoder
    rs = [ImageRef(f"im{i}") for i in range(n_images)]
    prompt = "a scene with " + " and ".join(f"[im{i}]" for i in range(n_images)) if n_images else "a red cube"
    ti = build_task_inputs(prompt, rs)
    prep = enc.prepare_images(IMGS[:n_images])
    st = enc.encode(ti.cond, prep)
    inputs, ref = reference_hidden(enc, ti.cond.text, IMGS[:n_images])
    assert torch.equal(st.input_ids, inputs["input_ids"])
    torch.testing.assert_close(st.hidden, ref, rtol=1e-5, atol=1e-5)


def test_blend_formula_on_image_positions_only(engine):
    enc = engine.encoder
    r = [0.3, 0.8]
    ti = build_task_inputs("[a] beside [b] at dusk", [ImageRef("a", r[0]), ImageRef("b", r[1])])
    ti0 = build_task_inputs("[a] beside [b] at dusk", [ImageRef("a"), ImageRef("b")])
    prep = enc.prepare_images(IMGS[:2])
    st = enc.encode(ti.cond, prep)
    inputs, h0 = reference_hidden(enc, ti0.cond.text, IMGS[:2])
    vis = reference_vision(enc, inputs)
    image_mask = inputs["input_ids"][0] == enc.image_token_id
    expected = h0.clone()
    n0 = prep.tokens_per_image[0]
    pos = torch.nonzero(image_mask).flatten()
    for k, (lo, hi) in enumerate([(0, n0), (n0, len(pos))]):
        p = pos[lo:hi]
        expected[0, p] = (1 - r[k]) * h0[0, p] + r[k] * vis[lo:hi]
    torch.testing.assert_close(st.hidden, expected, rtol=1e-5, atol=1e-5)
    # outside the image-pad positions nothing changed
    torch.testing.assert_close(st.hidden[0, ~image_mask], h0[0, ~image_mask], rtol=1e-5, atol=1e-5)
    # the spans recorded are exactly the pad positions of each image
    spans = [list(range(s, e)) for s, e in st.image_spans]
    assert spans[0] + spans[1] == pos.tolist()


def test_r1_equals_vision_features(engine):
    enc = engine.encoder
    ti = build_task_inputs("see [a]", [ImageRef("a", 1.0)])
    prep = enc.prepare_images(IMGS[:1])
    st = enc.encode(ti.cond, prep)
    inputs, _ = reference_hidden(enc, ti.cond.text, IMGS[:1])
    vis = reference_vision(enc, inputs)
    s, e = st.image_spans[0]
    torch.testing.assert_close(st.hidden[0, s:e], vis, rtol=1e-5, atol=1e-5)


def test_pooled_is_mean_and_masked_mean(real_vocab_engine):
    """Reference padding to 77 tokens of the real Qwen2 vocabulary."""
    engine = real_vocab_engine
    pos, neg = engine.encode("a red dog", options=EncodeOptions(padding="reference"))
    ad = engine.adapter
    enc = engine.encoder
    ti = build_task_inputs("a red dog", [])
    st = enc.encode(ti.uncond, enc.prepare_images([]), pad_to=77)
    assert neg.tokens.shape[1] == 77 and int(neg.attention_mask.sum()) < 77
    # the tokenizer pads on the left, with <|endoftext|>
    assert neg.attention_mask[0, 0] == 0 and neg.attention_mask[0, -1] == 1
    assert int(st.input_ids[0, 0]) == enc.pad_token_id == 151643  # <|endoftext|> of the real vocabulary
    assert enc.tokenizer.decode(st.input_ids[0][st.attention_mask[0].bool()]) == ti.uncond.text
    with torch.no_grad():
        full_mean = ad.condition_embeds_align_mlp(st.hidden.mean(dim=1))
        m = st.attention_mask[0].bool()
        masked = ad.condition_embeds_align_mlp(st.hidden[:, m].mean(dim=1))
    torch.testing.assert_close(neg.pooled, full_mean, rtol=1e-5, atol=1e-6)
    _, neg_m = engine.encode("a red dog", options=EncodeOptions(padding="reference", pooling="masked_mean"))
    torch.testing.assert_close(neg_m.pooled, masked, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(full_mean, masked)
    torch.testing.assert_close(pool_tokens(st.hidden, None, "mean"), st.hidden.mean(1))


def test_adapter_tokens_are_token_mlp(engine):
    pos, _ = engine.encode("a blue [x]", [IMGS[0]], [ImageRef("x", 0.4)])
    enc = engine.encoder
    ti = build_task_inputs("a blue [x]", [ImageRef("x", 0.4)])
    st = enc.encode(ti.cond, enc.prepare_images([IMGS[0]]))
    with torch.no_grad():
        torch.testing.assert_close(pos.tokens, engine.adapter.input_embeds_align_mlp(st.hidden))
    assert pos.provenance["ratios"] == [0.4]
    assert pos.provenance["text"] == ti.cond.text


def test_natural_lengths_differ_between_cond_and_uncond(engine):
    pos, neg = engine.encode("a small green cat sitting on a chair")
    assert pos.tokens.shape[1] > neg.tokens.shape[1]
    assert pos.attention_mask.all() and neg.attention_mask.all()


@pytest.mark.parametrize("padding", ["reference", "reference_4.49_gpu"])
def test_reference_padding_rules(real_vocab_engine, padding):
    """Both inputs come out the same length (the release concatenates them into one batch),
    the positive is never truncated, and 77 is the floor where the release pads to its
    default ``max_sequence_length`` (text generate, edit, reconstruct)."""
    engine = real_vocab_engine
    opts = EncodeOptions(padding=padding)
    nat = EncodeOptions()
    cases = [("a red dog", [], [], "generate", 77),
             ("word " * 200, [], [], "generate", None),
             ("a cat like [a]", IMGS[:1], [ImageRef("a")], "generate", None),
             ("[a] wearing [b]", IMGS[:2], [ImageRef("a"), ImageRef("b")], "fuse", None),
             ("make it red", IMGS[:1], [ImageRef()], "edit", 77),
             ("", IMGS[:1], [ImageRef()], "reconstruct", 77)]
    for prompt, imgs, refs, task, floor in cases:
        pos, neg = engine.encode(prompt, imgs, refs, task=task, options=opts)
        pos_n, neg_n = engine.encode(prompt, imgs, refs, task=task, options=nat)
        n = pos_n.tokens.shape[1]
        assert pos.tokens.shape[1] == neg.tokens.shape[1] == max(n, floor or 0), (task, prompt[:20])
        assert int(pos.attention_mask.sum()) == n and int(neg.attention_mask.sum()) == neg_n.tokens.shape[1]
        assert not neg.attention_mask.all()
        # real tokens do not see the pads: their states equal the unpadded ones
        real = pos.attention_mask[0].bool()
        torch.testing.assert_close(pos.tokens[:, real], pos_n.tokens, rtol=1e-4, atol=1e-5)


def test_pad_rows_attention_free_and_attend_all(real_vocab_engine):
    """``reference``: every pad state is one vector (zero attention output in every layer);
    ``reference_4.49_gpu``: pad states attend to every token, so they differ with the text."""
    engine = real_vocab_engine
    enc = engine.encoder
    ti = build_task_inputs("a red dog", [])
    prep = enc.prepare_images([])
    free = enc.encode(ti.uncond, prep, pad_to=77)
    allx = enc.encode(ti.uncond, prep, pad_to=77, pad_rows="attend_all")
    pads = ~free.attention_mask[0].bool()
    h = free.hidden[0, pads]
    torch.testing.assert_close(h, enc.pad_state().expand_as(h))
    real = ~pads
    torch.testing.assert_close(allx.hidden[0, real], free.hidden[0, real], rtol=1e-4, atol=1e-5)
    assert float((allx.hidden[0, pads] - h).abs().max()) > 1e-2
    a = enc.encode(ti.cond, prep, pad_to=77, pad_rows="attend_all")
    b = enc.encode(build_task_inputs("two blue birds", []).cond, prep, pad_to=77, pad_rows="attend_all")
    assert float((a.hidden[0, 0] - b.hidden[0, 0]).abs().max()) > 1e-3  # a pad state sees the text


def test_long_text_not_truncated(engine):
    prompt = "a castle on a hill " * 30
    pos, _ = engine.encode(prompt)
    ids = engine.encoder.tokenizer("Generate Image: " + prompt)["input_ids"]
    assert len(ids) > 300 and pos.tokens.shape[1] == len(ids)


def test_positions_1d_differs_with_images(engine):
    a, _ = engine.encode("see [a] now", [IMGS[1]], [ImageRef("a")])
    b, _ = engine.encode("see [a] now", [IMGS[1]], [ImageRef("a")], options=EncodeOptions(positions="1d"))
    assert a.tokens.shape == b.tokens.shape and not torch.allclose(a.tokens, b.tokens)
    t1, _ = engine.encode("text only")
    t2, _ = engine.encode("text only", options=EncodeOptions(positions="1d"))
    torch.testing.assert_close(t1.tokens, t2.tokens)


def test_deterministic(engine):
    a = engine.encode("[a] in snow", [IMGS[2]], [ImageRef("a", 0.5)])
    b = engine.encode("[a] in snow", [IMGS[2]], [ImageRef("a", 0.5)])
    for x, y in zip(a, b):
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.pooled, y.pooled)


def test_image_bounds_are_parameters(engine):
    small, _ = engine.encode("[a]", [IMGS[2]], [ImageRef("a")], options=EncodeOptions(max_pixels=56 * 56))
    big, _ = engine.encode("[a]", [IMGS[2]], [ImageRef("a")])
    assert small.tokens.shape[1] < big.tokens.shape[1]


def test_tensor_images_accepted(engine):
    t = torch.rand(1, 64, 48, 3)
    pos, _ = engine.encode("[a]", [t], [ImageRef("a")])
    assert pos.image_spans


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtypes_run(tiny_lmm_dir, tiny_adapter_path, dtype):
    e = DreamEngine.load(tiny_lmm_dir, tiny_adapter_path, dtype=dtype)
    pos, neg = e.encode("a cat like [a]", [IMGS[0]], [ImageRef("a", 0.5)])
    assert pos.tokens.dtype == dtype and torch.isfinite(pos.tokens.float()).all()
    assert neg.pooled.dtype == dtype


class CountingLM:
    def __init__(self, engine):
        self.engine, self.calls = engine, 0

    def __enter__(self):
        lm = self.engine.encoder.model.model.language_model
        self.orig = lm.forward

        def fwd(*a, **k):
            self.calls += 1
            return self.orig(*a, **k)
        lm.forward = fwd
        return self

    def __exit__(self, *exc):
        del self.engine.encoder.model.model.language_model.forward


@pytest.mark.parametrize("images,exc,needle", [
    ([Image.new("RGB", (0, 10))], ImageInputError, "zero size"),
    ([torch.zeros(0, 8, 3)], ImageInputError, "zero size"),
    ([torch.rand(16, 16, 4)], ImageInputError, "3 colour channels"),
    ([torch.full((16, 16, 3), float("nan"))], ImageInputError, "NaN"),
])
def test_bad_images_fail_before_any_model_runs(engine, images, exc, needle):
    with CountingLM(engine) as c:
        with pytest.raises(exc, match=needle):
            engine.encode("[a]", images, [ImageRef("a")])
    assert c.calls == 0


def test_bad_prompt_fails_before_any_model_runs(engine):
    with CountingLM(engine) as c:
        with pytest.raises(PromptError, match="never referenced"):
            engine.encode("a cat", [IMGS[0], IMGS[1]], [ImageRef("a"), ImageRef("b")])
        with pytest.raises(PromptError, match="empty"):
            engine.encode("")
    assert c.calls == 0


def test_adapter_dims_must_match_lmm(tiny_lmm_dir, tmp_path):
    p = str(tmp_path / "wrong.safetensors")
    build_tiny_adapter(p, lmm_dim=1536, token_dim=32, hidden_dim=16)
    with pytest.raises(WeightsError, match="1536-d LMM states.*hidden size 64"):
        DreamEngine.load(tiny_lmm_dir, p)


def test_folder_missing_files_listed(tiny_lmm_dir, tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(tiny_lmm_dir, d)
    os.remove(d / "model.safetensors")
    os.remove(d / "preprocessor_config.json")
    with pytest.raises(LMMFolderError) as e:
        check_lmm_folder(str(d))
    msg = str(e.value)
    assert "preprocessor_config.json" in msg and "model.safetensors" in msg and str(d) in msg
    with pytest.raises(LMMFolderError, match="not found"):
        LMMEncoder.from_folder(str(tmp_path / "nope"))


def test_pickle_weights_refused(tiny_lmm_dir, tmp_path):
    d = tmp_path / "pickled"
    shutil.copytree(tiny_lmm_dir, d)
    os.rename(d / "model.safetensors", d / "pytorch_model.bin")
    with pytest.raises(LMMFolderError, match="pickled weights.*pytorch_model.bin"):
        check_lmm_folder(str(d))
    bad = tmp_path / "adapter.safetensors"
    bad.write_bytes(b"\x80\x02}q\x00." + b"\x00" * 64)  # a pickle under a safetensors name
    with pytest.raises(WeightsError, match="not a safetensors file"):
        load_adapter(str(bad))
