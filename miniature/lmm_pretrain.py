"""Pretraining of the miniature's Qwen2-VL on the shapes world (a stand-in for Qwen2-VL's own).

Dream Engine keeps its LMM frozen and relies on what the LMM learnt in pretraining:
that image tokens say *what* is *where*, and that text states carry their sentence.
A randomly initialised Qwen2-VL lacks the first: its vision tower uses only rotary
positions, so with small random attention weights a patch's feature says what the
patch shows but not where it is, and nothing downstream can put the objects back in
place. Before it is frozen, the miniature's vision tower is therefore trained for a
couple of minutes the way a VLM's vision side is aligned to its language model
(captioning and grounding through the frozen language model), on shapes-world data:

* **grounded captioning**: ``<image> large red circle top left , small blue square …``
  (next-token loss on the description after the image, through the frozen language
  model);
* **grounding probes**: linear heads read, from each merged vision token (the vision
  tower's output, and the language model's state at that token), the token's grid cell
  and what it shows — the colour, shape and size of the object it covers, or none
  (the heads are discarded). The cell probe puts *where* into the tokens; the content
  probe keeps *what* there while it does (with the cell probe alone, a linear probe
  read a token's colour 92 % of the time, against 100 % before the alignment).

The language model itself keeps its random weights (see ``pretrain_lmm``): its text
states stay close to the words they stand for.

The result is written as a normal Qwen2-VL folder (safetensors, tokenizer, processor
config) that ``LMMEncoder.from_folder`` and LoadDreamEngine load unchanged.
"""
from __future__ import annotations

import os
import random
import shutil
import time

import torch
import torch.nn.functional as F

from dream_engine_core.encoder import LMMEncoder
from dream_engine_core.prompt import IMG, ModelInput
from training.schedule import warmup_cosine

from .shapes_world import COLOURS, SHAPES, SIZES, grounding, random_scene, render

# content classes of a merged vision token: none + each colour / shape / size
_CONTENT = (("colour", (None,) + tuple(COLOURS)), ("shape", (None,) + SHAPES), ("size", (None,) + tuple(SIZES)))


def _image_groups(enc: LMMEncoder, scenes, size: int, img_args: tuple) -> list[dict]:
    """Image + grounded-description samples, grouped by token length (the number of
    objects sets the description's length)."""
    prep = enc.prepare_images([render(s, size) for s in scenes], *img_args)
    per_image = prep.pixel_values.view(len(scenes), -1, prep.pixel_values.shape[-1])
    groups: dict[int, list] = {}
    for k, s in enumerate(scenes):
        ids, _, spans = enc.tokenize(ModelInput(IMG + " " + grounding(s), [k], [0.0]), prep)
        groups.setdefault(ids.shape[1], []).append((k, ids[0], spans[0]))
    return [{"ids": torch.stack([r for _, r, _ in g]), "pixel_values": torch.cat([per_image[k] for k, _, _ in g]),
             "grid": prep.grid_thw[[k for k, _, _ in g]], "span": g[0][2], "tokens": prep.tokens_per_image[0],
             "content": torch.cat([_content_labels(scenes[k], prep.grid_thw[k], enc.merge) for k, _, _ in g])}
            for g in groups.values()]


def _content_labels(scene, grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """[tokens, 3]: for each merged vision token (row-major), the class index of the colour,
    shape and size of the object whose box holds the token's centre (0: none)."""
    t, h, w = (int(v) for v in grid_thw)
    hh, ww = h // merge, w // merge
    rows = []
    for _ in range(t):
        for r in range(hh):
            for c in range(ww):
                x, y = (c + 0.5) / ww, (r + 0.5) / hh
                hit = [o for o in scene.objects if abs(x - o.x) <= SIZES[o.size] and abs(y - o.y) <= SIZES[o.size]]
                o = hit[0] if hit else None
                rows.append([vals.index(getattr(o, attr) if o else None) for attr, vals in _CONTENT])
    return torch.tensor(rows)


def _content_loss(head: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the content probe, summed over colour, shape and size."""
    logits = head(x.float()).split([len(v) for _, v in _CONTENT], dim=-1)
    return sum(F.cross_entropy(lg, labels[:, k]) for k, lg in enumerate(logits))


def _grid_labels(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """Each merged vision token's cell index (row-major over the merged grid)."""
    labels = []
    for t, h, w in grid_thw.tolist():
        labels.append(torch.arange(t * (h // merge) * (w // merge)))
    return torch.cat(labels)


def _losses(model, heads, g_img, merge):
    inner = model.model
    parts = {}
    lm_loss, probe_v, probe_l, acc, what_v, what_l = [], [], [], [], [], []
    for g in g_img:
        ids = g["ids"]
        B, L = ids.shape
        feats = inner.visual(g["pixel_values"], grid_thw=g["grid"]).pooler_output  # [B·n, D]
        a, b = g["span"]
        embeds = inner.get_input_embeddings()(ids).clone()
        embeds[:, a:b] = feats.view(B, b - a, -1).to(embeds.dtype)
        mm = (ids == model.config.image_token_id).int()
        pos, _ = inner.get_rope_index(ids, mm, image_grid_thw=g["grid"])
        h = inner.language_model(inputs_embeds=embeds, position_ids=pos, use_cache=False).last_hidden_state
        logits = model.lm_head(h[:, b + 1:-1])  # predict the description after <|vision_end|>
        tgt = ids[:, b + 2:]
        lm_loss.append(F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten()))
        acc.append((logits.argmax(-1) == tgt).float().mean())
        cells = _grid_labels(g["grid"], merge)
        probe_v.append(F.cross_entropy(heads["vit"](feats.float()), cells))
        probe_l.append(F.cross_entropy(heads["llm"](h[:, a:b].flatten(0, 1).float()), cells))
        what_v.append(_content_loss(heads["vit_what"], feats, g["content"]))
        what_l.append(_content_loss(heads["llm_what"], h[:, a:b].flatten(0, 1), g["content"]))
    parts["lm"] = torch.stack(lm_loss).mean()
    parts["probe_vit"] = torch.stack(probe_v).mean()
    parts["probe_llm"] = torch.stack(probe_l).mean()
    parts["what_vit"] = torch.stack(what_v).mean()
    parts["what_llm"] = torch.stack(what_l).mean()
    total = parts["lm"] + 0.5 * (parts["probe_vit"] + parts["probe_llm"] + parts["what_vit"] + parts["what_llm"])
    parts["desc_acc"] = torch.stack(acc).mean()
    parts["total"] = total
    return total, parts


def pretrain_lmm(src: str, dst: str, steps: int = 1500, batch: int = 32, lr: float = 1e-3, seed: int = 0,
                 size: int = 64, short_side: int = 112, min_pixels: int = 56 * 56,
                 max_pixels: int = 512 * 28 * 28, log=print, progress: bool = True) -> dict:
    """Align the vision tower of the Qwen2-VL folder ``src`` on the shapes world; write
    the whole model to ``dst``.

    Returns the held-out figures before and after (``lm``: description loss,
    ``desc_acc``: its token accuracy, ``probe_vit`` / ``probe_llm``: grid-cell probe
    losses, ``what_vit`` / ``what_llm``: content probe losses, ``total``)."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    enc = LMMEncoder.from_folder(src, dtype=torch.float32)
    model = enc.model
    # Only the vision tower (and its merger) learns. The language model stays as built:
    # a two-layer language model trained on next-word prediction turns each state into a
    # guess of the next word (its head is tied to the embeddings) and loses the word
    # itself, which is what the adapter needs; a large LMM keeps both.
    model.eval().requires_grad_(False)
    model.model.visual.train().requires_grad_(True)
    D = enc.hidden_size
    img_args = (short_side, min_pixels, max_pixels)
    rng = random.Random(seed)
    held_rng = random.Random(seed + 10_000)
    held_img = _image_groups(enc, [random_scene(held_rng) for _ in range(64)], size, img_args)
    n_cells = int(held_img[0]["tokens"])
    vit_dim = model.model.visual.merger.mlp[-1].out_features
    n_what = sum(len(v) for _, v in _CONTENT)
    heads = torch.nn.ModuleDict({"vit": torch.nn.Linear(vit_dim, n_cells), "llm": torch.nn.Linear(D, n_cells),
                                 "vit_what": torch.nn.Linear(vit_dim, n_what), "llm_what": torch.nn.Linear(D, n_what)})
    params = list(model.model.visual.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, steps // 20, overlap=True))  # 5 % warm-up

    @torch.no_grad()
    def held_out():
        model.model.visual.eval()
        _, parts = _losses(model, heads, held_img, enc.merge)
        model.model.visual.train()
        return {k: round(float(v), 5) for k, v in parts.items()}

    before = held_out()
    log(f"lmm pretraining: held-out before {before}")
    t0 = time.time()
    bar = tqdm(total=steps, desc="lmm", disable=not progress)
    for step in range(steps):
        g_img = _image_groups(enc, [random_scene(rng) for _ in range(batch)], size, img_args)
        loss, parts = _losses(model, heads, g_img, enc.merge)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{parts['desc_acc'].item():.2f}")
    bar.close()
    after = held_out()
    log(f"lmm pretraining: held-out after {after} ({time.time() - t0:.0f} s)")
    model.eval().requires_grad_(False)
    tmp = dst + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    model.save_pretrained(tmp, safe_serialization=True)
    if os.path.exists(dst):
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return {"before": before, "after": after, "steps": steps, "batch": batch}
