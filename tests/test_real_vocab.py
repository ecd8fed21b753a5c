"""The four task templates on the real Qwen2 vocabulary (installed by scripts/setup_env.sh).

Token counts are checked against the Qwen2-VL processor's own tokenization of the same
text and images, and every input decodes back to its text with the image placeholders
expanded to their patch tokens.
"""
from __future__ import annotations

import pytest
import torch

from dream_engine_core.prompt import IMG, TASKS, ImageRef, build_task_inputs
from model_builders.qwen2vl import QWEN2VL_SPECIAL_TOKENS

from test_image_preprocessing import random_image

CASES = {
    "generate": ("a watercolour fox beside [cat] under a full moon, soft light", ["cat"]),
    "edit": ("make the sky purple and add two small boats", [None]),
    "fuse": ("[hat] on [dog] in a sunny park", ["hat", "dog"]),
    "reconstruct": ("", [None]),
}
IMAGES = [random_image(120, 90, 1), random_image(64, 200, 2)]


def test_real_vocabulary_facts(real_vocab_engine):
    tok = real_vocab_engine.encoder.tokenizer
    assert len(tok) == 151657  # 151,643 BPE tokens + Qwen2-VL's 14 special tokens
    assert [tok.convert_tokens_to_ids(t) for t in QWEN2VL_SPECIAL_TOKENS] == list(range(151643, 151657))
    assert tok.pad_token == "<|endoftext|>" and tok.padding_side == "left" and tok.eos_token == "<|im_end|>"
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]
    assert real_vocab_engine.encoder.model.get_input_embeddings().weight.shape[0] >= 151657


@pytest.mark.parametrize("task", TASKS)
def test_task_templates_tokenize_like_the_processor(real_vocab_engine, task):
    enc = real_vocab_engine.encoder
    prompt, names = CASES[task]
    refs = [ImageRef(n) for n in names]
    images = IMAGES[:len(refs)]
    ti = build_task_inputs(prompt, refs, task)
    prep = enc.prepare_images(images)
    for mi in (ti.cond, ti.uncond):
        ids, mask, spans = enc.tokenize(mi, prep)
        # the processor's own expansion and tokenization of the same text and images
        kw = {"text": [mi.text], "return_tensors": "pt"}
        if mi.images:
            from dream_engine_core.encoder import release_resize

            kw["images"] = [release_resize(images[i]) for i in mi.images]
        ref = enc.processor(**kw)["input_ids"]
        assert torch.equal(ids, ref), f"{task}: {ids.shape[1]} tokens, processor {ref.shape[1]}"
        # round trip: decoding gives the text back, each placeholder expanded to its tokens
        expanded = mi.text
        for k, i in enumerate(mi.images):
            n = prep.tokens_per_image[i]
            expanded = expanded.replace(IMG, "<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>", 1)
            assert spans[k][1] - spans[k][0] == n
        assert enc.tokenizer.decode(ids[0]) == expanded
        # real BPE: words are single tokens, so far fewer text tokens than characters
        text_tokens = ids.shape[1] - sum(e - s + 2 for s, e in spans)
        text = mi.text.replace(IMG, "")
        assert text_tokens <= len(text.split()) * 2 + 2 < len(text) or not text.strip()


def test_text_only_prompt_counts(real_vocab_engine):
    """The natural length of a text prompt is its real token count."""
    enc = real_vocab_engine.encoder
    pos, neg = real_vocab_engine.encode("a small green cat sitting on a wooden chair")
    n = len(enc.tokenizer("Generate Image: a small green cat sitting on a wooden chair")["input_ids"])
    assert pos.tokens.shape[1] == n < 20
    assert neg.tokens.shape[1] == len(enc.tokenizer("Generate Image: ")["input_ids"])
