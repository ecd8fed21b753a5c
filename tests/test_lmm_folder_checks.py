"""Every file of an LMM folder is checked before transformers reads it
(``dream_engine_core/lmm_folder.py``): a broken or incomplete file gives one error that
names the file, says what is wrong and what to do. Fast: the tiny Qwen2-VL folder, each
case a copy with one file broken. The same cases through the real server are in
``tests/test_hostile_inputs.py``.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
from safetensors.torch import load_file, save_file

from dream_engine_core.lmm_folder import LMMFolderError, check_lmm_folder, read_weight_map, weight_files
from dream_engine_core.weights import WeightsError

COPY = "copy"              # the fix for a config/tokenizer/processor file
REDOWNLOAD = "re-download"  # the fix for the weights and the index


def _json(path, data):
    with open(path, "w") as f:
        json.dump(data, f)


def _edit_json(name, fn):
    def edit(d):
        p = os.path.join(d, name)
        with open(p) as f:
            data = json.load(f)
        fn(data)
        _json(p, data)
    return edit


def _write(name, content: bytes | str):
    def edit(d):
        with open(os.path.join(d, name), "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)
    return edit


def _drop_text_size(key):
    def fn(cfg):
        cfg.get("text_config", {}).pop(key, None)
        cfg.pop(key, None)
    return fn


def sharded(d):
    """Split model.safetensors into two shards with an index, as save_pretrained does."""
    sd = load_file(os.path.join(d, "model.safetensors"))
    os.remove(os.path.join(d, "model.safetensors"))
    keys = sorted(sd)
    half = len(keys) // 2
    wm = {}
    for i, part in enumerate((keys[:half], keys[half:]), 1):
        name = f"model-0000{i}-of-00002.safetensors"
        save_file({k: sd[k] for k in part}, os.path.join(d, name), metadata={"format": "pt"})
        wm.update({k: name for k in part})
    _json(os.path.join(d, "model.safetensors.index.json"), {"metadata": {}, "weight_map": wm})


def _then(*edits):
    def edit(d):
        for e in edits:
            e(d)
    return edit


@pytest.fixture
def folder(tiny_lmm_dir, tmp_path):
    def make(edit=None, name="case"):
        d = str(tmp_path / name)
        shutil.copytree(tiny_lmm_dir, d)
        if edit:
            edit(d)
        return d
    return make


def test_the_tiny_folder_and_its_sharded_copy_pass(folder):
    check_lmm_folder(folder())
    d = folder(sharded, "sharded")
    check_lmm_folder(d)
    assert weight_files(d) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert len(read_weight_map(d)) == len(load_file(os.path.join(folder(name="plain"), "model.safetensors")))


CASES = [
    # (id, edit, file named, what the message says, fix)
    ("config empty", _write("config.json", b""), "config.json", "is empty (0 bytes)", COPY),
    ("config blank", _write("config.json", "  \n"), "config.json", "is empty (whitespace only)", COPY),
    ("config not JSON", _write("config.json", '{"model_type": "qwen2_vl",'), "config.json", "is not valid JSON",
     COPY),
    ("config not UTF-8", _write("config.json", b"\xff\xfe{}"), "config.json", "is not UTF-8 text", COPY),
    ("config a list", _write("config.json", "[1, 2]"), "config.json", "holds a JSON list, not an object", COPY),
    ("config no model_type", _edit_json("config.json", lambda c: c.pop("model_type")), "config.json",
     "describes no model_type", "Qwen2-VL"),
    ("config no vision_config", _edit_json("config.json", lambda c: c.pop("vision_config")), "config.json",
     "has no vision_config", COPY),
    ("config no hidden_size", _edit_json("config.json", _drop_text_size("hidden_size")), "config.json",
     "lacks the model sizes hidden_size", COPY),
    ("config no vocab_size", _edit_json("config.json", _drop_text_size("vocab_size")), "config.json",
     "lacks the model sizes vocab_size", COPY),
    ("config vision depth", _edit_json("config.json", lambda c: c["vision_config"].pop("depth")), "config.json",
     "vision_config.depth", COPY),
    ("config widths differ", _edit_json("config.json", lambda c: c["vision_config"].update(hidden_size=3584)),
     "config.json", "vision_config.hidden_size (3584) differs", COPY),
    ("tokenizer not JSON", _write("tokenizer.json", "{'model': 1}"), "tokenizer.json", "is not valid JSON", COPY),
    ("tokenizer empty", _write("tokenizer.json", b""), "tokenizer.json", "is empty (0 bytes)", COPY),
    ("tokenizer no model", _edit_json("tokenizer.json", lambda t: t.pop("model")), "tokenizer.json",
     "has no tokenizer model", COPY),
    ("tokenizer_config not JSON", _write("tokenizer_config.json", "{"), "tokenizer_config.json",
     "is not valid JSON", COPY),
    ("vocab.json a list", _write("vocab.json", "[]"), "vocab.json", "not an object", COPY),
    ("vocab.json negative id", _write("vocab.json", '{"a": -1}'), "vocab.json", "is not a vocabulary", COPY),
    ("merges.txt bad line", _write("merges.txt", "#version: 0.2\na b\nabc\n"), "merges.txt",
     "line 3 is not a merge", COPY),
    ("preprocessor not JSON", _write("preprocessor_config.json", "patch_size=14"), "preprocessor_config.json",
     "is not valid JSON", COPY),
    ("preprocessor patch 16", _edit_json("preprocessor_config.json", lambda p: p.update(patch_size=16)),
     "preprocessor_config.json", "patch_size is 16, but the model's vision_config.patch_size is 14", COPY),
    ("preprocessor merge 3", _edit_json("preprocessor_config.json", lambda p: p.update(merge_size=3)),
     "preprocessor_config.json", "merge_size is 3", COPY),
    ("preprocessor mean", _edit_json("preprocessor_config.json", lambda p: p.update(image_mean=[0.5, 0.5])),
     "preprocessor_config.json", "image_mean is [0.5, 0.5]; it must be three numbers", COPY),
    ("preprocessor pixels", _edit_json("preprocessor_config.json", lambda p: p.update(min_pixels=10 ** 7)),
     "preprocessor_config.json", "the pixel bounds are reversed", COPY),
    ("preprocessor CLIP", _edit_json("preprocessor_config.json",
                                     lambda p: p.update(image_processor_type="CLIPImageProcessor")),
     "preprocessor_config.json", "image_processor_type is 'CLIPImageProcessor'", COPY),
    ("processor_config broken", _write("processor_config.json", "{"), "processor_config.json",
     "is not valid JSON", COPY),
    ("processor_config nested", _then(
        lambda d: os.rename(os.path.join(d, "preprocessor_config.json"), os.path.join(d, "x.json")),
        lambda d: _json(os.path.join(d, "processor_config.json"),
                        {"image_processor": {**json.load(open(os.path.join(d, "x.json"))), "temporal_patch_size": 4},
                         "processor_class": "Qwen2VLProcessor"})),
     "processor_config.json", "image_processor.temporal_patch_size is 4", COPY),
    ("index not JSON", _then(sharded, _write("model.safetensors.index.json", "{\"weight_map\": ")),
     "model.safetensors.index.json", "is not valid JSON", REDOWNLOAD),
    ("index no weight_map", _then(sharded, _write("model.safetensors.index.json", '{"metadata": {}}')),
     "model.safetensors.index.json", "has no weight_map", REDOWNLOAD),
    ("index path outside", _then(sharded, _edit_json("model.safetensors.index.json",
                                                     lambda i: i["weight_map"].update(x="../model.safetensors"))),
     "model.safetensors.index.json", "which is not a file name in this folder", REDOWNLOAD),
    ("index key not in shard", _then(sharded, _edit_json(
        "model.safetensors.index.json",
        lambda i: i["weight_map"].update(extra="model-00001-of-00002.safetensors"))),
     "model.safetensors.index.json", "maps 'extra' to model-00001-of-00002.safetensors, which does not hold it",
     REDOWNLOAD),
    ("weights empty", _write("model.safetensors", b""), "model.safetensors", "is empty (0 bytes)", REDOWNLOAD),
    ("shard truncated", _then(sharded, lambda d: os.truncate(os.path.join(d, "model-00002-of-00002.safetensors"),
                                                              100)),
     "model-00002-of-00002.safetensors", "is truncated", REDOWNLOAD),
]


@pytest.mark.parametrize("edit,named,what,fix", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_file_named_with_what_is_wrong_and_the_fix(folder, edit, named, what, fix):
    d = folder(edit)
    with pytest.raises((LMMFolderError, WeightsError)) as ei:
        check_lmm_folder(d)
    msg = str(ei.value)
    assert os.path.join(d, named) in msg and what in msg and fix in msg, msg
    assert msg.count("\n") == 0  # one message, one line


def _transformers_error(d) -> str:
    from transformers import AutoConfig, AutoProcessor, Qwen2VLForConditionalGeneration

    try:
        AutoProcessor.from_pretrained(d, local_files_only=True)
        Qwen2VLForConditionalGeneration.from_pretrained(d, config=AutoConfig.from_pretrained(d, local_files_only=True),
                                                        local_files_only=True, use_safetensors=True)
    except Exception as e:  # noqa: BLE001 - the raw library error is what the check replaces
        return f"{type(e).__name__}: {e}"
    return ""


@pytest.mark.parametrize("case", ["config empty", "tokenizer not JSON", "config no vision_config"])
def test_without_the_check_transformers_fails_without_naming_the_file(folder, case):
    """The cases users met: transformers' own error names neither the file nor the fix."""
    edit = next(c[1] for c in CASES if c[0] == case)
    err = _transformers_error(folder(edit))
    assert err, "transformers loaded the broken folder"
    assert "Copy" not in err and "copy " not in err, err


def test_a_folder_that_passed_is_checked_again_once_a_file_changes(folder):
    d = folder()
    check_lmm_folder(d)
    check_lmm_folder(d)  # remembered: nothing changed
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        f.write("{")
    with pytest.raises(LMMFolderError, match="tokenizer.json is not valid JSON"):
        check_lmm_folder(d)


def test_missing_files_are_named_before_contents_are_read(folder):
    d = folder(_then(_write("config.json", b""), lambda d: os.remove(os.path.join(d, "tokenizer.json"))))
    with pytest.raises(LMMFolderError) as ei:
        check_lmm_folder(d)
    assert "missing: tokenizer.json" in str(ei.value)


def test_the_hub_config_layout_passes(folder):
    """Qwen2-VL-2B-Instruct's own config.json keeps the text model's sizes at the top level
    (transformers 5 writes them under text_config): both pass, and transformers builds the
    same model from both."""
    from transformers import AutoConfig

    def flatten(cfg):
        cfg.update({k: v for k, v in cfg.pop("text_config").items() if k != "model_type"})

    nested, flat = folder(name="nested"), folder(_edit_json("config.json", flatten), "flat")
    check_lmm_folder(flat)
    a, b = (AutoConfig.from_pretrained(d, local_files_only=True) for d in (nested, flat))
    assert (a.text_config.hidden_size, a.text_config.num_hidden_layers, a.text_config.vocab_size) == \
        (b.text_config.hidden_size, b.text_config.num_hidden_layers, b.text_config.vocab_size)
