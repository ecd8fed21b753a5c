"""Prompt layer: reference syntax, task templates and CFG inputs, byte for byte."""
import pytest

from dream_engine_core.prompt import IMG, ImageRef, PromptError, build_task_inputs, parse


def refs(*names, r=0.0):
    return [ImageRef(n, r) for n in names]


def test_generate_text_only_templates():
    ti = build_task_inputs("a red cube on a table", [], "generate")
    assert ti.cond.text == "Generate Image: a red cube on a table"
    assert ti.uncond.text == "Generate Image: "
    assert ti.cond.images == [] and ti.uncond.images == []


def test_generate_interleaved_by_position_and_name():
    rs = [ImageRef("hat", 0.25), ImageRef(None, 0.75)]
    ti = build_task_inputs(" a cat wearing the hat of [hat] in the style of [image 2] ", rs, "generate")
    assert ti.cond.text == f"Generate Image: a cat wearing the hat of {IMG} in the style of {IMG}"
    assert ti.cond.images == [0, 1] and ti.cond.ratios == [0.25, 0.75]
    # free interleave: the unconditional input keeps the text and drops the images
    assert ti.uncond.text == "Generate Image: a cat wearing the hat of  in the style of"
    assert ti.uncond.images == []


def test_reference_forms_are_equivalent():
    rs = refs("Hat")
    a = build_task_inputs("x [image 1] y", rs)
    b = build_task_inputs("x [ hat ] y", rs)
    c = build_task_inputs("x [IMAGE1] y", rs)
    assert a.cond.text == b.cond.text == c.cond.text


def test_image_referenced_twice_is_fed_twice():
    ti = build_task_inputs("[image 1] next to [image 1]", refs(None))
    assert ti.cond.images == [0, 0]
    assert ti.cond.text.count(IMG) == 2


def test_three_images_in_order_of_reference():
    ti = build_task_inputs("[c] then [a] then [b]", refs("a", "b", "c"))
    assert ti.cond.images == [2, 0, 1]


def test_edit_templates():
    ti = build_task_inputs("make it red", refs(None, r=0.5), "edit")
    assert ti.cond.text == f"Edit image {IMG} following:make it red"
    assert ti.uncond.text == f"Edit image {IMG} following:"
    assert ti.cond.images == ti.uncond.images == [0]
    assert ti.uncond.ratios == [0.5]
    tr = build_task_inputs("make it red", refs(None), "edit", style="training")
    assert tr.uncond.text == f"Edit image {IMG} following: "


def test_fuse_templates():
    rs = [ImageRef("dog", 0.2), ImageRef("hat", 0.9)]
    ti = build_task_inputs("[dog] wearing [hat] on a beach", rs, "fuse")
    head = f"Combine the objects: dog{IMG}, hat{IMG} and generate an image following: "
    assert ti.cond.text == head + "dog wearing hat on a beach"
    assert ti.uncond.text == head
    assert ti.cond.images == ti.uncond.images == [0, 1]
    assert ti.cond.ratios == [0.2, 0.9]


def test_reconstruct_templates():
    ti = build_task_inputs("", refs(None, r=1.0), "reconstruct")
    assert ti.cond.text == f"Copy Image: {IMG}" and ti.cond.images == [0]
    assert ti.uncond.text == "Copy Image: " and ti.uncond.images == []


def test_literal_brackets():
    assert parse("a [[b]] c", []) == ["a [b] c"]


def test_long_prompt_not_truncated():
    p = "word " * 400
    ti = build_task_inputs(p, [])
    assert ti.cond.text == "Generate Image: " + p


@pytest.mark.parametrize("prompt,rs,task,needle", [
    ("a cat in [image 2]", [ImageRef()], "generate", "[image 2]"),
    ("a cat in [image 1]", [], "generate", "no image was given"),
    ("a cat in [hta]", [ImageRef("hat")], "generate", "[hta]"),
    ("a cat", [ImageRef("hat")], "generate", "never referenced"),
    ("", [], "generate", "empty"),
    ("   ", [], "generate", "empty"),
    ("make it red", [], "edit", "exactly one image"),
    ("make [image 1] red", [ImageRef()], "edit", "remove the reference"),
    ("", [ImageRef()], "edit", "empty"),
    ("copy it", [ImageRef()], "reconstruct", "no text"),
    ("a dog", [ImageRef()], "fuse", "name"),
    ("", [ImageRef("dog")], "fuse", "empty"),
    ("a [dog", [ImageRef("dog")], "generate", "unmatched"),
    ("x", [], "paint", "task must be one of"),
    ("[a] [a]", [ImageRef("a"), ImageRef("A")], "generate", "two images are named"),
])
def test_bad_prompts_name_the_fix(prompt, rs, task, needle):
    with pytest.raises(PromptError) as e:
        build_task_inputs(prompt, rs, task)
    assert needle in str(e.value)


@pytest.mark.parametrize("r", [-0.1, 1.5, float("nan"), "abc"])
def test_ratio_out_of_range(r):
    with pytest.raises(PromptError, match=r"\[0, 1\]"):
        ImageRef("x", r)
