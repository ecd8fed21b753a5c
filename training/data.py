"""Training data: the JSONL manifest, its validation, and a resumable loader.

Manifest format (one JSON object per line; blank lines and lines starting with
``#`` are skipped; image paths are relative to the manifest's folder)::

    {"task": "t2i",         "prompt": "two red circles",            "target": "img/0001.png"}
    {"task": "reconstruct", "images": ["img/0002.png"],              "target": "img/0002.png"}
    {"task": "edit",        "images": ["img/0003_src.png"], "prompt": "make it yellow",
                            "target": "img/0003.png"}
    {"task": "fuse",        "images": ["img/4_a.png", "img/4_b.png"], "names": ["hat", "cat"],
                            "prompt": "[cat] wearing [image 1]",     "target": "img/0004.png"}

* ``task``: ``t2i`` (alias ``generate``), ``reconstruct``, ``edit`` or ``fuse``.
* ``target``: the image the DiT learns to produce (required).
* ``images``: the input images. ``t2i``/``generate`` may hold images referenced in
  the prompt as ``[image N]`` (interleaved generation); ``reconstruct`` and ``edit``
  exactly one; ``fuse`` one or more, each with a name in ``names``.
* ``prompt``: the caption / instruction (absent for ``reconstruct``).
* ``ratio`` (optional): a fixed visual-blend ratio for this record's images; the
  trainer's ``--blend random`` draws ``r ~ U(0, 1)`` per sample instead.
* Any other field (e.g. ``check`` of the shapes world) is kept and ignored.

Every record is checked before training starts: a bad record is reported as
``manifest.jsonl:LINE: field 'FIELD': what is wrong`` (all of them at once), so a
run never crashes mid-epoch on a missing or unreadable image.

Randomness is per sample: the crop, the noise, σ, CFG dropout and the blend ratio
of sample ``i`` in epoch ``e`` come from a generator seeded with
``(seed, e, i)``. That makes a run independent of how samples are spread over
processes and micro-batches (DDP equality) and of where it was resumed.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from dream_engine_core.prompt import IMG, ImageRef, PromptError, build_task_inputs, check_ratio

TASK_ALIASES = {"t2i": "generate", "generate": "generate", "reconstruct": "reconstruct",
                "edit": "edit", "fuse": "fuse"}


class ManifestError(ValueError):
    """One or more manifest records are invalid; ``problems`` lists (line, field, message)."""

    def __init__(self, path: str, problems: list[tuple[int, str, str]]):
        self.path = path
        self.problems = problems
        head = f"{len(problems)} bad record(s) in {path}:"
        lines = [f"  {path}:{ln}: field {fld!r}: {msg}" for ln, fld, msg in problems[:50]]
        if len(problems) > 50:
            lines.append(f"  ... and {len(problems) - 50} more")
        super().__init__("\n".join([head] + lines))


@dataclass
class Record:
    line: int
    task: str                 # core task name: generate / reconstruct / edit / fuse
    prompt: str
    images: list[str]         # absolute paths
    names: list[str | None]
    target: str               # absolute path
    ratio: float = 0.0
    extra: dict = field(default_factory=dict)

    def refs(self, ratio: float | None = None) -> list[ImageRef]:
        r = self.ratio if ratio is None else ratio
        return [ImageRef(n, r) for n in self.names]


def _check_image(path: str) -> str | None:
    if not os.path.isfile(path):
        return f"file not found: {path}"
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            w, h = im.size
            if w == 0 or h == 0:
                return f"image has zero size: {path}"
    except Exception as e:  # noqa: BLE001 - any decoder error is a bad record
        return f"unreadable image {path}: {type(e).__name__}: {e}"
    return None


def load_manifest(path: str, check_images: bool = True) -> list[Record]:
    """Parse and validate a manifest; raise :class:`ManifestError` listing every bad record."""
    if not os.path.isfile(path):
        raise ManifestError(path, [(0, "manifest", "file not found")])
    images = _ImagePaths(os.path.dirname(os.path.abspath(path)), check_images)
    records, problems = [], []
    with open(path, encoding="utf-8") as f:
        for ln, raw in enumerate(f, start=1):
            s = raw.strip()
            if s and not s.startswith("#"):
                rec = _record(ln, s, images, problems)
                if rec is not None:
                    records.append(rec)
    if problems:
        raise ManifestError(path, problems)
    if not records:
        raise ManifestError(path, [(0, "manifest", "holds no records")])
    return records


class _ImagePaths:
    """A manifest's image paths made absolute (relative to the manifest) and, with ``check``,
    each file checked once (:func:`_check_image`)."""

    def __init__(self, root: str, check: bool):
        self.root, self.check, self.seen = root, check, {}

    def __call__(self, p, ln: int, fld: str, problems: list) -> str | None:
        if not isinstance(p, str) or not p:
            problems.append((ln, fld, f"must be a non-empty path string, got {p!r}"))
            return None
        full = p if os.path.isabs(p) else os.path.join(self.root, p)
        if self.check:
            if full not in self.seen:
                self.seen[full] = _check_image(full)
            if self.seen[full]:
                problems.append((ln, fld, self.seen[full]))
                return None
        return full


def _record(ln: int, line: str, images: _ImagePaths, problems: list) -> Record | None:
    """One manifest line as a record; every problem found is appended to ``problems``."""
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        problems.append((ln, "(line)", f"not valid JSON: {e.msg} at column {e.colno}"))
        return None
    if not isinstance(d, dict):
        problems.append((ln, "(line)", f"must be a JSON object, got {type(d).__name__}"))
        return None
    task = TASK_ALIASES.get(d.get("task"))
    if task is None:
        problems.append((ln, "task", f"must be one of {sorted(TASK_ALIASES)}, got {d.get('task')!r}"))
        return None
    n_before = len(problems)
    prompt, imgs, names = _prompt_images_names(ln, d, problems)
    if "target" not in d:
        problems.append((ln, "target", "missing (the image to learn to produce)"))
    target = images(d.get("target"), ln, "target", problems) if "target" in d else None
    paths = [images(p, ln, f"images[{k}]", problems) for k, p in enumerate(imgs)]
    try:
        ratio = check_ratio(d.get("ratio", 0.0))
    except PromptError as e:
        problems.append((ln, e.field, str(e)))
        ratio = 0.0
    if task == "reconstruct":
        prompt = ""
    if len(problems) == n_before:
        try:  # the core's prompt rules: the prompt and its images must form a model input
            build_task_inputs(prompt, [ImageRef(n) for n in names], task, style="training")
        except PromptError as e:
            problems.append((ln, e.field, str(e)))
    if len(problems) != n_before:
        return None
    extra = {k: v for k, v in d.items() if k not in ("task", "prompt", "images", "names", "target", "ratio")}
    return Record(ln, task, prompt, paths, list(names), target, ratio, extra)


def _prompt_images_names(ln: int, d: dict, problems: list) -> tuple[str, list, list]:
    """The record's prompt (a string), image list and one name (or None) per image."""
    prompt = d.get("prompt", "")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        problems.append((ln, "prompt", f"must be a string, got {type(prompt).__name__}"))
        prompt = ""
    imgs = d.get("images", [])
    if not isinstance(imgs, list):
        problems.append((ln, "images", "must be a list of image paths"))
        imgs = []
    names = d.get("names")
    if names is None:
        names = [None] * len(imgs)
    elif not isinstance(names, list) or len(names) != len(imgs) or \
            not all(n is None or isinstance(n, str) for n in names):
        problems.append((ln, "names", f"must be a list of {len(imgs)} name strings (one per image)"))
        names = [None] * len(imgs)
    return prompt, imgs, names


def bucket_keys(records: list[Record], tokenizer) -> list:
    """Per record: (text tokens, number of images) of its conditional input — records
    with equal keys give the DiT equal context lengths (images of one size); ``--bucket``."""
    keys = []
    for rec in records:
        inp = build_task_inputs(rec.prompt, rec.refs(0.0), rec.task, style="training").cond
        n_text = sum(len(tokenizer(piece, add_special_tokens=False)["input_ids"])
                     for piece in inp.text.split(IMG) if piece)
        keys.append((n_text, len(inp.images)))
    return keys


# ---------------------------------------------------------------- randomness
def sample_generator(seed: int, epoch: int, index: int, stream: int = 0) -> torch.Generator:
    """The generator of one sample's random draws (independent of process layout)."""
    s = (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(index)) * 4 + int(stream)
    return torch.Generator().manual_seed(s % (2 ** 63 - 1))


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(int(seed) * 65_537 + int(epoch))
    return torch.randperm(n, generator=g).tolist()


def bucketed_order(perm: list[int], keys: list, global_batch: int, seed: int, epoch: int) -> list[int]:
    """``perm`` reordered so that each global batch holds records of one bucket key
    (the same token length), as far as the buckets fill whole batches.

    Records of each key keep their order in ``perm`` and are cut into batches; the
    remainders are pooled into mixed batches; the batches are then shuffled
    (deterministically from ``seed`` and ``epoch``). Samples of one length run through
    the DiT as one forward, so a step costs one or two forwards instead of one per length."""
    by_key: dict = {}
    for i in perm:
        by_key.setdefault(keys[i], []).append(i)
    batches, rest = [], []
    for idx in by_key.values():
        full = len(idx) // global_batch * global_batch
        batches += [idx[k:k + global_batch] for k in range(0, full, global_batch)]
        rest += idx[full:]
    batches += [rest[k:k + global_batch] for k in range(0, len(rest), global_batch)]
    g = torch.Generator().manual_seed(int(seed) * 65_537 + int(epoch) + 1_000_000_007)
    order = torch.randperm(len(batches), generator=g).tolist()
    return [i for b in order for i in batches[b]]


# ---------------------------------------------------------------- images
def load_rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def resize_crop(img: Image.Image, size: int, g: torch.Generator | None, random_crop: bool = True) -> torch.Tensor:
    """Resize the short side to ``size`` and crop ``size × size`` (random or centre) →
    ``[size, size, 3]`` float in [0, 1] (ComfyUI's IMAGE layout)."""
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    if random_crop and g is not None:
        x0 = int(torch.randint(0, nw - size + 1, (1,), generator=g))
        y0 = int(torch.randint(0, nh - size + 1, (1,), generator=g))
    else:
        x0, y0 = (nw - size) // 2, (nh - size) // 2
    img = img.crop((x0, y0, x0 + size, y0 + size))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)


class ManifestDataset(torch.utils.data.Dataset):
    """Item ``(epoch, index)`` → the sample's target crop and input images (PIL).

    Indexed by ``(epoch, index)`` so that the crop is drawn from the sample's own
    generator, whatever worker loads it."""

    def __init__(self, records: list[Record], resolution: int, seed: int, random_crop: bool = True):
        self.records = records
        self.resolution = resolution
        self.seed = seed
        self.random_crop = random_crop

    def __len__(self):
        return len(self.records)

    def __getitem__(self, key):
        epoch, index = key
        r = self.records[index]
        g = sample_generator(self.seed, epoch, index, stream=1)
        target = resize_crop(load_rgb(r.target), self.resolution, g, self.random_crop)
        inputs = [load_rgb(p) for p in r.images]
        return {"epoch": epoch, "index": index, "target": target, "inputs": inputs}


class ResumableSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` keys of this rank's share, from a given global position.

    The global order is a per-epoch permutation; each optimizer step consumes
    ``global_batch`` consecutive keys, of which rank ``k`` takes the ``k``-th
    contiguous slice of ``global_batch / world`` keys (split further into
    micro-batches by the loader). The tail of an epoch shorter than a global batch
    is dropped."""

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int, start_step: int = 0,
                 shuffle: bool = True, max_steps: int | None = None, bucket_keys: list | None = None):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by {world} processes")
        self.steps_per_epoch = n // global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"the data set has {n} records, fewer than one global batch of {global_batch}")
        self.n, self.gb, self.rank, self.world = n, global_batch, rank, world
        self.seed, self.start_step, self.shuffle, self.max_steps = seed, start_step, shuffle, max_steps
        if bucket_keys is not None and len(bucket_keys) != n:
            raise ValueError(f"{len(bucket_keys)} bucket keys for {n} records")
        self.bucket_keys = bucket_keys
        self._order = (None, None)

    def position(self, step: int) -> tuple[int, int]:
        return divmod(step, self.steps_per_epoch)

    def __iter__(self):
        local = self.gb // self.world
        step = self.start_step
        while self.max_steps is None or step < self.max_steps:
            epoch, k = self.position(step)
            perm = self._epoch_order(epoch)
            base = k * self.gb + self.rank * local
            for i in perm[base:base + local]:
                yield (epoch, i)
            step += 1

    def _epoch_order(self, epoch: int) -> list[int]:
        if self._order[0] != epoch:
            perm = epoch_permutation(self.n, self.seed, epoch, self.shuffle)
            if self.bucket_keys is not None:
                perm = bucketed_order(perm, self.bucket_keys, self.gb, self.seed, epoch)
            self._order = (epoch, perm)
        return self._order[1]

    def __len__(self):
        if self.max_steps is None:
            raise TypeError("endless sampler")
        return (self.max_steps - self.start_step) * (self.gb // self.world)


def collate(items):
    return items


def make_loader(records, resolution, seed, global_batch, micro_batch, rank, world, start_step, max_steps,
                workers: int = 0, shuffle: bool = True, random_crop: bool = True, bucket_keys: list | None = None):
    ds = ManifestDataset(records, resolution, seed, random_crop)
    sampler = ResumableSampler(len(records), global_batch, rank, world, seed, start_step, shuffle, max_steps,
                               bucket_keys)
    kw = {}
    if workers > 0:
        kw = {"num_workers": workers, "persistent_workers": False, "prefetch_factor": 2}
    return torch.utils.data.DataLoader(ds, batch_size=micro_batch, sampler=sampler, collate_fn=collate,
                                       drop_last=False, **kw), sampler


def logit_normal_sigma(g: torch.Generator, mean: float = 0.0, std: float = 1.0, shift: float = 1.0) -> float:
    """σ = sigmoid(N(mean, std)), optionally time-shifted as SD3's scheduler (shift·σ / (1 + (shift−1)·σ))."""
    u = torch.randn((1,), generator=g).item() * std + mean
    s = 1.0 / (1.0 + math.exp(-u))
    if shift != 1.0:
        s = shift * s / (1 + (shift - 1) * s)
    return s
