"""The LMM folder check accepts exactly the Qwen2-VL folders ``from_pretrained`` loads.

Layouts: the hub layout (``preprocessor_config.json``, ``tokenizer.json``, one
``model.safetensors``), a folder re-saved by transformers 5's own ``save_pretrained``
(``processor_config.json`` with the image-processor settings nested, sharded safetensors
with an index), ``vocab.json`` + ``merges.txt`` instead of ``tokenizer.json``, and the
layout ``tools/convert_official.py`` writes (one ``model.safetensors`` next to every
non-weight file of the stock folder). For each: the check passes and the folder encodes
exactly like the hub folder. For each missing piece: the check names it, and
``from_pretrained`` indeed cannot load the folder.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dream_engine_core.encoder import LMMEncoder, LMMFolderError, check_lmm_folder
from dream_engine_core.prompt import ImageRef, build_task_inputs
from model_builders.qwen2vl import build_qwen2vl_tokenizer
from tools.release.writers import LMM_COPY_SKIP

from test_image_preprocessing import random_image


def loads_with_transformers(folder: str) -> bool:
    """``from_pretrained`` loads the processor and the model. Without any vocabulary file
    transformers 5 builds an *empty* tokenizer instead of failing; that is not a load."""
    from transformers import AutoConfig, AutoProcessor, Qwen2VLForConditionalGeneration

    try:
        # the config first: without one, the model class would fall back to its full-size defaults
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        proc = AutoProcessor.from_pretrained(folder, local_files_only=True)
        Qwen2VLForConditionalGeneration.from_pretrained(folder, config=config, local_files_only=True,
                                                        use_safetensors=True)
    except Exception:  # noqa: BLE001 - any failure means "does not load"
        return False
    return len(proc.tokenizer) >= 151643  # the layouts here carry the real vocabulary


def resaved(src: str, dst: str) -> str:
    """What transformers 5's save_pretrained writes for the processor and the model."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    AutoProcessor.from_pretrained(src, local_files_only=True).save_pretrained(dst)
    Qwen2VLForConditionalGeneration.from_pretrained(src, local_files_only=True).save_pretrained(
        dst, max_shard_size="400KB")
    return dst


def converter_layout(base: str, dst: str) -> str:
    """tools/convert_official.py's LMM folder: the weights in one model.safetensors, and every
    non-weight file of the stock folder (``--lmm-base``) copied."""
    os.makedirs(dst)
    index = os.path.join(base, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        sd = {}
        for s in shards:
            sd.update(load_file(os.path.join(base, s)))
    else:
        sd = load_file(os.path.join(base, "model.safetensors"))
    save_file(sd, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    for f in os.listdir(base):
        if not f.endswith(LMM_COPY_SKIP):
            shutil.copy2(os.path.join(base, f), os.path.join(dst, f))
    return dst


@pytest.fixture(scope="module")
def layouts(real_vocab_lmm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    hub = real_vocab_lmm_dir
    out = {"hub": hub}
    out["resaved"] = resaved(hub, str(root / "resaved"))
    vm = str(root / "vocab-merges")
    shutil.copytree(hub, vm)
    build_qwen2vl_tokenizer(vm, vocab_files=True)
    os.remove(os.path.join(vm, "tokenizer.json"))
    out["vocab-merges"] = vm
    out["converter-from-hub"] = converter_layout(hub, str(root / "converted-hub"))
    out["converter-from-resaved"] = converter_layout(out["resaved"], str(root / "converted-resaved"))
    return out


def test_the_layouts_are_what_they_claim(layouts):
    have = {k: set(os.listdir(v)) for k, v in layouts.items()}
    assert "preprocessor_config.json" in have["hub"] and "model.safetensors" in have["hub"]
    assert "preprocessor_config.json" not in have["resaved"] and "processor_config.json" in have["resaved"]
    assert "model.safetensors.index.json" in have["resaved"]
    assert sum(f.startswith("model-0") for f in have["resaved"]) > 1
    assert "tokenizer.json" not in have["vocab-merges"] and {"vocab.json", "merges.txt"} <= have["vocab-merges"]
    assert "processor_config.json" in have["converter-from-resaved"]
    assert "model.safetensors.index.json" not in have["converter-from-resaved"]


def encode_once(folder: str):
    enc = LMMEncoder.from_folder(folder)
    ti = build_task_inputs("a red cube beside [a] on a table", [ImageRef("a", 0.3)])
    prep = enc.prepare_images([random_image(90, 60, 7)])
    return enc.encode(ti.cond, prep)


@pytest.mark.heavy  # every layout converted or re-saved, loaded and encoded
@pytest.mark.parametrize("name", ["hub", "resaved", "vocab-merges", "converter-from-hub", "converter-from-resaved"])
def test_layout_accepted_and_encodes_like_the_hub_folder(layouts, name):
    check_lmm_folder(layouts[name])
    assert loads_with_transformers(layouts[name])
    ref, got = encode_once(layouts["hub"]), encode_once(layouts[name])
    assert torch.equal(ref.input_ids, got.input_ids)
    torch.testing.assert_close(got.hidden, ref.hidden, rtol=0, atol=0)


def _without(src: str, dst: str, *names: str, edit=None) -> str:
    shutil.copytree(src, dst)
    for n in names:
        os.remove(os.path.join(dst, n))
    if edit:
        edit(dst)
    return dst


def test_tokenizer_config_is_optional_as_for_from_pretrained(layouts, tmp_path):
    d = _without(layouts["hub"], str(tmp_path / "no-tokenizer-config"), "tokenizer_config.json")
    check_lmm_folder(d)
    assert loads_with_transformers(d)


def _empty_processor_config(d):
    with open(os.path.join(d, "processor_config.json"), "w") as f:
        json.dump({"processor_class": "Qwen2VLProcessor"}, f)


@pytest.mark.parametrize("base,remove,edit,named", [
    ("hub", ["preprocessor_config.json"], None, ["preprocessor_config.json", "processor_config.json"]),
    ("hub", ["preprocessor_config.json"], _empty_processor_config, ["preprocessor_config.json"]),
    ("resaved", ["processor_config.json"], None, ["preprocessor_config.json"]),
    ("hub", ["tokenizer.json"], None, ["tokenizer.json", "vocab.json + merges.txt"]),
    ("vocab-merges", ["merges.txt"], None, ["tokenizer.json", "vocab.json + merges.txt"]),
    ("hub", ["config.json"], None, ["config.json"]),
    ("hub", ["model.safetensors"], None, ["model.safetensors"]),
    ("resaved", ["model-00002-of-"], None, ["model-00002-of-"]),
])
def test_missing_piece_named_and_really_needed(layouts, tmp_path, base, remove, edit, named):
    src = layouts[base]
    names = [next(f for f in os.listdir(src) if f.startswith(r)) for r in remove]
    d = _without(src, str(tmp_path / "broken"), *names, edit=edit)
    with pytest.raises(LMMFolderError) as ei:
        check_lmm_folder(d)
    msg = str(ei.value)
    assert d in msg and all(n in msg for n in named), msg
    assert not loads_with_transformers(d), "the check refuses a folder from_pretrained loads"


def test_every_missing_file_named_at_once(layouts, tmp_path):
    d = _without(layouts["resaved"], str(tmp_path / "bare"), "processor_config.json", "tokenizer.json",
                 *sorted(f for f in os.listdir(layouts["resaved"]) if f.startswith("model-0000"))[:2])
    with pytest.raises(LMMFolderError) as ei:
        check_lmm_folder(d)
    msg = str(ei.value)
    assert "preprocessor_config.json" in msg and "tokenizer.json" in msg
    assert "model-00001-of-" in msg and "model-00002-of-" in msg
