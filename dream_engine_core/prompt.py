"""Interleaved prompts: image references, task templates and CFG inputs.

Reference syntax
----------------
A prompt refers to its images in square brackets, either by position or by the
segment's own name::

    a cat wearing the hat of [image 1] in the style of [image 2]
    a cat wearing [hat] in the style of [painting]

``[image N]`` is the N-th segment (1-based, in the order the segments are given);
``[name]`` is the segment whose name is ``name`` (case-insensitive, surrounding
spaces ignored). Every other bracketed text is an error, so a typo never becomes
literal text silently; write ``[[`` and ``]]`` for literal brackets.

Tasks and their model inputs (``IMG`` is Qwen2-VL's vision placeholder
``<|vision_start|><|image_pad|><|vision_end|>``; the processor expands the pad
token to the image's patch tokens). These are the strings the released model was
trained and sampled with (the official code's training and inference pipelines):

=============  ===========================================================  =====================================
task           conditional                                                  unconditional (CFG)
=============  ===========================================================  =====================================
generate       ``"Generate Image: " + prompt``                              ``"Generate Image: "``
  with images  ``"Generate Image: " + prompt_with_IMG.strip()``             the same text with the images dropped
edit           ``"Edit image " + IMG + " following:" + instruction``        the same with the instruction removed
fuse           ``"Combine the objects: " + ", ".join(name + IMG) +``        the same with the caption removed
               ``" and generate an image following: " + caption``
reconstruct    ``"Copy Image: " + IMG``                                     ``"Copy Image: "``
=============  ===========================================================  =====================================

* generate: every image must be referenced; an image referenced twice is fed twice.
* edit / reconstruct: exactly one image, placed by the template; the text may not
  reference it (reconstruct takes no text at all).
* fuse: every image is an object and needs a name; references in the caption are
  written as the object's name.

Nothing is truncated: a prompt of any length is kept whole.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .errors import PromptError  # noqa: F401 - raised here, exported under this module too

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
TASKS = ("generate", "edit", "fuse", "reconstruct")

_REF = re.compile(r"\[\[|\]\]|\[([^\[\]]*)\]|[\[\]]")
_IMAGE_N = re.compile(r"^\s*image\s*(\d+)\s*$", re.IGNORECASE)


@dataclass
class ImageRef:
    """What the prompt layer knows of an image: its name and blend ratio."""

    name: str | None = None
    ratio: float = 0.0

    def __post_init__(self):
        self.ratio = check_ratio(self.ratio, self.name)
        if self.name is not None:
            self.name = self.name.strip() or None
            if self.name is not None and ("[" in self.name or "]" in self.name):
                raise PromptError(f"image name {self.name!r} may not contain square brackets", "names")


def check_ratio(r, name=None) -> float:
    try:
        r = float(r)
    except (TypeError, ValueError):
        raise PromptError(f"blend ratio must be a number in [0, 1], got {r!r}", "ratio") from None
    if not (math.isfinite(r) and 0.0 <= r <= 1.0):
        label = f" of image {name!r}" if name else ""
        raise PromptError(f"blend ratio{label} must be in [0, 1], got {r}; set r between 0 (no blend) and 1 (vision features only)",
                          "ratio")
    return r


@dataclass
class ModelInput:
    """One text for the LMM, with the images its placeholders stand for, in order."""

    text: str
    images: list[int] = field(default_factory=list)   # index into the prompt's images, per placeholder
    ratios: list[float] = field(default_factory=list)  # blend ratio per placeholder

    def __post_init__(self):
        n = self.text.count(IMG)
        if n != len(self.images) or n != len(self.ratios):
            raise PromptError(f"the model input has {n} image placeholders but {len(self.images)} images and "
                              f"{len(self.ratios)} ratios; build model inputs with build_task_inputs", "images")


@dataclass
class TaskInputs:
    task: str
    cond: ModelInput
    uncond: ModelInput


def _label(i: int, refs: list[ImageRef]) -> str:
    n = refs[i].name
    return f"[image {i + 1}]" + (f" ([{n}])" if n else "")


def parse(prompt: str, refs: list[ImageRef]) -> list:
    """Split ``prompt`` into text pieces (str) and image indices (int)."""
    names: dict[str, int] = {}
    for i, r in enumerate(refs):
        if r.name:
            key = r.name.lower()
            if key in names:
                raise PromptError(f"two images are named {r.name!r}; give each image its own name", "names")
            if _IMAGE_N.match(key):
                raise PromptError(f"image name {r.name!r} is reserved for references by position; pick another name",
                                  "names")
            names[key] = i
    out: list = []
    pos = 0
    text = []
    for m in _REF.finditer(prompt):
        text.append(prompt[pos:m.start()])
        pos = m.end()
        tok = m.group(0)
        if tok in ("[[", "]]"):
            text.append(tok[0])
            continue
        if m.group(1) is None:
            raise PromptError(f"unmatched {tok!r} at character {m.start()} of the prompt; "
                              f"write [[ or ]] for a literal bracket")
        inner = m.group(1)
        num = _IMAGE_N.match(inner)
        if num:
            idx = int(num.group(1)) - 1
            if not 0 <= idx < len(refs):
                raise PromptError(_missing(f"[{inner}]", refs))
        elif inner.strip().lower() in names:
            idx = names[inner.strip().lower()]
        else:
            raise PromptError(_missing(f"[{inner}]", refs))
        out.append("".join(text))
        text = []
        out.append(idx)
    text.append(prompt[pos:])
    out.append("".join(text))
    return [p for p in out if p != ""]


def _missing(ref: str, refs: list[ImageRef]) -> str:
    if refs:
        have = ", ".join(_label(i, refs) for i in range(len(refs)))
        return (f"the prompt refers to {ref}, but no image has that position or name; "
                f"the images given are {have} (connect another image segment or fix the reference; "
                f"write [[ and ]] for literal brackets)")
    return (f"the prompt refers to {ref}, but no image was given; connect an image segment "
            f"or remove the reference (write [[ and ]] for literal brackets)")


def _input(parts: list, refs: list[ImageRef]) -> ModelInput:
    text = "".join(IMG if isinstance(p, int) else p for p in parts)
    idx = [p for p in parts if isinstance(p, int)]
    return ModelInput(text, idx, [refs[i].ratio for i in idx])


def build_task_inputs(prompt: str, refs: list[ImageRef], task: str = "generate",
                      style: str = "inference") -> TaskInputs:
    """The conditional and unconditional model inputs of ``task``.

    ``style="inference"`` gives the release's sampling strings; ``"training"`` the
    trainer's (the unconditional edit input ends in ``"following: "``).
    """
    if task not in TASKS:
        raise PromptError(f"task must be one of {TASKS}, got {task!r}", "task")
    if style not in ("inference", "training"):
        raise PromptError(f"style must be 'inference' or 'training', got {style!r}", "style")
    prompt = "" if prompt is None else str(prompt)
    refs = list(refs)
    parts = parse(prompt, refs)
    has_text = any(isinstance(p, str) and p.strip() for p in parts)
    used = [p for p in parts if isinstance(p, int)]

    if task == "generate":
        if not has_text and not used:
            raise PromptError("the prompt is empty; write what to generate (images are referenced as [image 1] or [name])")
        unused = [i for i in range(len(refs)) if i not in used]
        if unused:
            raise PromptError("image " + ", ".join(_label(i, refs) for i in unused) +
                              " is given but never referenced; write it into the prompt (e.g. 'in the style of "
                              f"[image {unused[0] + 1}]') or disconnect it")
        if not used:
            return TaskInputs(task, ModelInput("Generate Image: " + prompt), ModelInput("Generate Image: "))
        cond = _input(["Generate Image: "] + _strip(parts), refs)
        text_only = "".join(p for p in parts if isinstance(p, str)).strip()
        return TaskInputs(task, cond, ModelInput("Generate Image: " + text_only))

    if task in ("edit", "reconstruct"):
        if len(refs) != 1:
            raise PromptError(f"{task} takes exactly one image, {len(refs)} were given; "
                              f"connect {'one image segment' if not refs else 'only the image to ' + task}", "images")
        if used:
            raise PromptError(f"{task} places its image itself; remove the reference "
                              f"{_label(used[0], refs)} from the text")
        one = [0]
        if task == "edit":
            if not has_text:
                raise PromptError("the edit instruction is empty; write what to change (e.g. 'make it red')")
            head = "Edit image " + IMG + " following:"
            un = head + (" " if style == "training" else "")
            return TaskInputs(task, ModelInput(head + prompt, one, [refs[0].ratio]),
                              ModelInput(un, one, [refs[0].ratio]))
        if prompt.strip():
            raise PromptError("reconstruct takes no text; clear the prompt (or use task 'edit' to change the image)")
        return TaskInputs(task, ModelInput("Copy Image: " + IMG, one, [refs[0].ratio]),
                          ModelInput("Copy Image: "))

    # fuse
    if not refs:
        raise PromptError("fuse needs at least one image segment, each named after its object", "images")
    unnamed = [i for i, r in enumerate(refs) if not r.name]
    if unnamed:
        raise PromptError("fuse writes each image as '<name><image>': give " +
                          ", ".join(f"[image {i + 1}]" for i in unnamed) + " a name (e.g. 'hat') on its image segment",
                          "names")
    if not has_text and not used:
        raise PromptError("the fuse caption is empty; write the image to generate from the objects")
    caption = "".join(refs[p].name if isinstance(p, int) else p for p in parts)
    objects = ", ".join(r.name + IMG for r in refs)
    head = "Combine the objects: " + objects + " and generate an image following: "
    idx = list(range(len(refs)))
    ratios = [r.ratio for r in refs]
    return TaskInputs(task, ModelInput(head + caption, idx, ratios), ModelInput(head, idx, ratios))


def _strip(parts: list) -> list:
    """The release strips the joined interleaved prompt: strip the text at both ends."""
    parts = list(parts)
    if parts and isinstance(parts[0], str):
        parts[0] = parts[0].lstrip()
    if parts and isinstance(parts[-1], str):
        parts[-1] = parts[-1].rstrip()
    return [p for p in parts if p != ""]
