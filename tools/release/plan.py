"""The key plan: where every key of the release goes.

The release's checkpoint is the demo's combined model: ``dit.*`` (diffusers SD3 names),
``lmm.*`` (pre-4.52 Qwen2-VL names), ``input_embeds_align_mlp.*`` /
``condition_embeds_align_mlp.*`` (the adapter) and the unused ``pooled_proj.*`` /
``norm_lmm_out.weight``. Both models may carry peft LoRA (``…base_layer.weight``,
``…lora_A.default.weight``, ``…lora_B.default.weight``; the demo uses alpha = r), merged
into the weight they wrap.

:data:`FAMILIES` is the whole table: the first family whose pattern matches a key takes
it. A key no family takes is refused (the conversion writes nothing); a release laid out
otherwise is one more row (or another table). The table says, per family, the file it
goes to, whether its keys may be peft-wrapped, and whether it stays in float32 whatever
``--dtype`` asks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from ..weights import merge_lora


@dataclass(frozen=True)
class Family:
    """Release keys matching ``pattern`` (whole key; group ``key`` is the destination key)."""
    dest: str              # "adapter", "lmm", "dit": the file written; "unused": nothing written
    pattern: str
    peft: bool = False     # may be peft-wrapped: KEY.base_layer.(weight|bias) + KEY.lora_(A|B)[.default].weight
    fp32: bool = False     # written in float32 whatever --dtype asks
    why: str = ""          # "unused": why it is not written


FAMILIES = (
    Family("unused", r"pooled_proj\..+|norm_lmm_out\.weight", why="not part of the released model's forward"),
    Family("adapter", r"(?P<key>(input_embeds_align_mlp|condition_embeds_align_mlp)\.[02]\.(weight|bias))",
           fp32=True),
    Family("lmm", r"lmm\.(base_model\.model\.)?(?P<key>.+)", peft=True),
    Family("dit", r"dit\.(base_model\.model\.)?(?P<key>.+)", peft=True),
)
LORA = re.compile(r"(?P<module>.+)\.lora_(?P<ab>[AB])\.(?:default\.)?weight")
BASE = re.compile(r"(?P<module>.+)\.base_layer\.(?P<param>weight|bias)")


@dataclass
class Target:
    """One output tensor: the release tensor ``base``, with the LoRA ``lora_a``/``lora_b`` merged."""
    file: str                   # adapter / dit / lmm
    key: str
    base: str
    lora_a: str | None = None
    lora_b: str | None = None
    alpha: float | None = None  # None: alpha = r
    fp32: bool = False

    @property
    def kind(self) -> str:
        return "merge" if self.lora_a else "copy"

    def build(self, tensor: Callable[[str], torch.Tensor]) -> torch.Tensor:
        """The output tensor (LoRA merged); ``tensor(key)`` reads a release tensor."""
        w = tensor(self.base)
        if self.lora_a:
            w = merge_lora(w, tensor(self.lora_a), tensor(self.lora_b), self.alpha)
        return w


@dataclass
class Plan:
    targets: list[Target]
    rows: list[tuple[str, str]]    # (release key, destination), one per mapped key
    unmapped: list[str]

    def of(self, file: str) -> list[Target]:
        return [t for t in self.targets if t.file == file]


def family_of(key: str) -> tuple[Family | None, re.Match | None]:
    for fam in FAMILIES:
        m = re.fullmatch(fam.pattern, key)
        if m:
            return fam, m
    return None, None


def plan(keys: list[str], lora_alpha: float | None = None) -> Plan:
    """Classify every key of the release."""
    targets: dict[tuple, Target] = {}
    rows, unmapped, loras = [], [], {}
    for k in keys:
        fam, m = family_of(k)
        if fam is None:
            unmapped.append(k)
        elif fam.dest == "unused":
            rows.append((k, f"unused ({fam.why})"))
        elif not (fam.peft and _peft_part(fam.dest, k, m["key"], targets, loras)):
            targets[(fam.dest, m["key"])] = Target(fam.dest, m["key"], k, fp32=fam.fp32)
            rows.append((k, f"{fam.dest}: {m['key']}"))
    for (file, module), ab in loras.items():
        key = f"{module}.weight"
        t = targets.get((file, key))
        if t is None or "A" not in ab or "B" not in ab:
            unmapped += sorted(ab.values())
            continue
        t.lora_a, t.lora_b, t.alpha = ab["A"], ab["B"], lora_alpha
        rows += [(ab["A"], f"{file}: merged into {key}"), (ab["B"], f"{file}: merged into {key}")]
    rows += [(t.base, f"{t.file}: {t.key}" + (" (LoRA merged)" if t.lora_a else "")) for t in targets.values()
             if t.base.endswith((".base_layer.weight", ".base_layer.bias"))]
    return Plan(list(targets.values()), rows, sorted(unmapped))


def _peft_part(file: str, release_key: str, key: str, targets: dict, loras: dict) -> bool:
    """Take a peft LoRA factor (kept for its module) or wrapped base weight; False for a plain key."""
    lm = LORA.fullmatch(key)
    if lm:
        loras.setdefault((file, lm["module"]), {})[lm["ab"]] = release_key
        return True
    bm = BASE.fullmatch(key)
    if bm:
        dest = f"{bm['module']}.{bm['param']}"
        targets.setdefault((file, dest), Target(file, dest, release_key)).base = release_key
        return True
    return False
