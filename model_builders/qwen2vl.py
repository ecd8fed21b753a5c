"""Small same-architecture models for tests, benchmarks and the demo.

Everything here is written in the real file formats and loaded back through
exactly the code path the real Qwen2-VL-2B-Instruct folder takes
(``dream_engine_core.encoder.LMMEncoder.from_folder``). Nothing is downloaded.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from dream_engine_core.adapter import Adapter, AdapterSpec
from dream_engine_core.weights import save_adapter

# Qwen2-VL's special tokens in the order of the real vocabulary (151643 ...).
QWEN2VL_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


@dataclass(frozen=True)
class LMMSize:
    """Shape knobs of a Qwen2-VL model (defaults: a tiny test model)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    mrope_section: tuple = (2, 3, 3)  # sums to head_dim / 2
    vision_embed_dim: int = 32
    vision_depth: int = 2
    vision_heads: int = 2
    vision_mlp_ratio: int = 2


# Config values of the released Qwen2-VL-2B-Instruct (text and vision towers).
QWEN2VL_2B = LMMSize(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    mrope_section=(16, 24, 24),
    vision_embed_dim=1280,
    vision_depth=32,
    vision_heads=16,
    vision_mlp_ratio=4,
)


def build_tokenizer(folder: str, real_vocab_ids: bool = False, words: tuple = ()):
    """A byte-level BPE tokenizer carrying Qwen2-VL's special tokens.

    Built with the ``tokenizers`` library and saved as a tokenizer folder that loads
    with ``AutoTokenizer`` like the real one. Without ``words``: the 256 byte tokens
    and a few merges. With ``words``: BPE merges trained (``BpeTrainer``) on those
    words, so each of them, with or without a leading space, is a single token, as in
    a real vocabulary. With ``real_vocab_ids`` the special tokens get their real ids
    (151643+) by padding the vocabulary, for full-size benchmarks.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    if words:
        trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + 40 * len(words), min_frequency=1,
                                      initial_alphabet=alphabet, show_progress=False)
        base = Tokenizer(models.BPE())
        base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        base.train_from_iterator([w for w in words for _ in range(2)] + [" " + w for w in words], trainer)
        model = json.loads(base.to_str())["model"]
        vocab = dict(model["vocab"])
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    else:
        vocab = {ch: i for i, ch in enumerate(alphabet)}
        merges = []
        for a, b in [("Ġ", "a"), ("e", "r"), ("i", "n"), ("o", "n"), ("a", "t"), ("e", "n"), ("o", "r"),
                     ("Ġ", "t")]:
            vocab[a + b] = len(vocab)
            merges.append((a, b))
    if real_vocab_ids:
        while len(vocab) < 151643:
            vocab[f"<|filler_{len(vocab)}|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        padding_side="left",
        model_max_length=32768,
    )
    fast.add_special_tokens({"additional_special_tokens": QWEN2VL_SPECIAL_TOKENS[1:]})
    os.makedirs(folder, exist_ok=True)
    fast.save_pretrained(folder)
    ids = {t: fast.convert_tokens_to_ids(t) for t in QWEN2VL_SPECIAL_TOKENS}
    return fast, ids


def build_tiny_qwen2vl(folder: str, size: LMMSize = LMMSize(), seed: int = 0, dtype=torch.float32,
                       real_vocab_ids: bool = False, weights: bool = True, words: tuple = (),
                       embed_std: float | None = None) -> str:
    """Write a Qwen2-VL folder (config, safetensors weights, tokenizer, processor config).

    Random weights from ``seed``; same architecture classes as Qwen2-VL-2B-Instruct.
    ``embed_std``: draw the token embeddings with this standard deviation instead of
    transformers' 0.02 (a larger one makes each token's state dominated by the token
    itself rather than by the average of the tokens before it).
    Returns ``folder``. With ``weights=False`` only the config and tokenizer are written
    (used to build a model in memory without a weights file).
    """
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    os.makedirs(folder, exist_ok=True)
    _, ids = build_tokenizer(folder, real_vocab_ids=real_vocab_ids, words=words)
    vocab_size = max(ids.values()) + 1
    vocab_size = 151936 if real_vocab_ids else (vocab_size + 15) // 16 * 16
    head_dim = size.hidden_size // size.num_attention_heads
    assert sum(size.mrope_section) * 2 == head_dim, "mrope_section must sum to head_dim / 2"
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=size.hidden_size,
            intermediate_size=size.intermediate_size,
            num_hidden_layers=size.num_hidden_layers,
            num_attention_heads=size.num_attention_heads,
            num_key_value_heads=size.num_key_value_heads,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                             "mrope_section": list(size.mrope_section)},
            tie_word_embeddings=True,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=size.vision_depth,
            embed_dim=size.vision_embed_dim,
            hidden_size=size.hidden_size,
            mlp_ratio=size.vision_mlp_ratio,
            num_heads=size.vision_heads,
            in_chans=3,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    config.save_pretrained(folder)
    _write_processor_config(folder)
    if not weights:
        return folder
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).to(dtype)
    # A random model built by transformers zeroes the pad token's embedding row;
    # give it values so that pad tokens behave like the real model's.
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[ids["<|endoftext|>"]].normal_(0.0, 0.02)
        if embed_std is not None:
            emb.normal_(0.0, embed_std, generator=torch.Generator().manual_seed(seed + 1))
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _write_processor_config(folder: str) -> None:
    """The Qwen2-VL image-processor config as the real folder ships it."""
    cfg = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "min_pixels": 56 * 56,
        "max_pixels": 28 * 28 * 1280,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def build_tiny_adapter(path: str, lmm_dim: int = 64, kind: str = "direct", token_dim: int = 128,
                       pooled_dim: int | None = None, hidden_dim: int = 96, seed: int = 0,
                       lmm_name: str = "tiny-qwen2-vl") -> Adapter:
    """A randomly initialised adapter saved as safetensors with metadata."""
    if pooled_dim is None:
        pooled_dim = token_dim
    torch.manual_seed(seed)
    spec = AdapterSpec(kind=kind, lmm_dim=lmm_dim, hidden_dim=hidden_dim, token_dim=token_dim,
                       pooled_dim=pooled_dim, lmm=lmm_name)
    adapter = Adapter(spec)
    save_adapter(path, adapter)
    return adapter
