"""Write the shipped workflows: UI format in ``example_workflows/`` (ComfyUI's
template folder) and the API twins in ``example_workflows/api/``, both from the one
description below.

    .venv/bin/python scripts/build_workflows.py          # rewrite the files
    .venv/bin/python scripts/build_workflows.py --check  # exit 1 if they differ

The UI files load in ComfyUI's frontend by drag-and-drop and are listed as the
pack's templates. Each is laid out as ComfyUI's own templates are: left to right in
titled groups (Models, Images, Prompt, Sample, Output), a note saying what to change
first, and reroutes where a wire would otherwise cross a node. Stored node sizes are
at least the sizes the frontend computes from the widgets, so the layout is the one
the frontend draws (tests/test_frontend.py measures it there). The tests check that
the frontend turns each file into exactly its API twin, and queue every twin on the
real server.

Model file names are those of the released model as the converter writes them
(see docs/nodes.md); pick your own files in the loader nodes.
"""
from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "example_workflows")

# Real-model defaults (SD3.5 Large + the Dream Engine release).
DIT = "sd3.5_large.safetensors"                      # the user's own stock SD3.5 Large
LORA = "dream_engine_sd35_large_lora.safetensors"    # the release's DiT difference (converter)
VAE = "sd3.5_vae.safetensors"
LMM = "DreamEngine-Qwen2-VL-2B"                      # the release's LMM (LoRA merged; converter)
ADAPTER = "dream_engine_direct_map.safetensors"
SIZE = 1024
STEPS = 28
CFG = 3.5
# The release's sampling: diffusers' FlowMatchEulerDiscreteScheduler with SD3.5 Large's config
# (shift 3.0) is Euler on the sigmas ComfyUI's ``normal`` scheduler gives (tests/test_release_schedule.py).
SAMPLER = "euler"
SCHEDULER = "normal"
SEED = 42

# type: (socket inputs [(name, type)], widget names, outputs [(name, type)])
NODE_DEFS = {
    "UNETLoader": ([], ["unet_name", "weight_dtype"], [("MODEL", "MODEL")]),
    "VAELoader": ([], ["vae_name"], [("VAE", "VAE")]),
    "LoraLoaderModelOnly": ([("model", "MODEL")], ["lora_name", "strength_model"], [("MODEL", "MODEL")]),
    "LoadImage": ([], ["image"], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "EmptySD3LatentImage": ([], ["width", "height", "batch_size"], [("LATENT", "LATENT")]),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")],
                 ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"], [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE")], ["filename_prefix"], []),
    "ImageScaleBy": ([("image", "IMAGE")], ["upscale_method", "scale_by"], [("IMAGE", "IMAGE")]),
    "LoadDreamEngine": ([("model", "MODEL")], ["lmm", "adapter", "dtype", "device", "fingerprint_check"],
                        [("DREAM_ENGINE", "DREAM_ENGINE"), ("MODEL", "MODEL")]),
    "DreamEngineInterleavedConditioning": (
        [("dream_engine", "DREAM_ENGINE"), ("segments", "DREAM_SEGMENTS")],
        ["prompt", "task", "padding", "pooling", "positions", "image_short_side", "min_pixels", "max_pixels"],
        [("positive", "CONDITIONING"), ("negative", "CONDITIONING")]),
    "DreamEngineImageSegment": ([("image", "IMAGE"), ("segments", "DREAM_SEGMENTS"), ("mask", "MASK")],
                                ["name", "frame"], [("segments", "DREAM_SEGMENTS")]),
    "DreamEngineBlendRatio": ([("segments", "DREAM_SEGMENTS")], ["ratio", "apply_to"],
                              [("segments", "DREAM_SEGMENTS")]),
}
# Stored sizes: at least what the frontend computes from the widgets (title bar not included).
SIZES = {"UNETLoader": [320, 82], "VAELoader": [320, 58], "LoraLoaderModelOnly": [320, 82],
         "LoadDreamEngine": [350, 174], "LoadImage": [320, 314], "DreamEngineImageSegment": [320, 122],
         "DreamEngineBlendRatio": [320, 82], "DreamEngineInterleavedConditioning": [420, 300],
         "EmptySD3LatentImage": [300, 106], "KSampler": [340, 262], "VAEDecode": [210, 46],
         "ImageScaleBy": [320, 82], "SaveImage": [400, 400], "MarkdownNote": [400, 330]}

# Group colours from the frontend's palette (LGraphCanvas.node_colors).
COLORS = {"Models": "#3f789e", "Images": "#8A8", "Prompt": "#b58b2a", "Sample": "#a1309b", "Output": "#88A"}

# The grid (canvas units). A group's title bar is 50 high, a node's title bar 30.
TOP = 0                 # top band: Models, Prompt, Sample, Output
ROW = 80                # y of the first row of nodes in a group (below both title bars)
CHAIN = 210             # y of the model chain (UNET → LoRA → Load Dream Engine) and of the sampler row
BAND_H = 650            # height of the top band's groups
IMAGES = 700            # y of the Images group (below Models)
X_MODELS, X_PROMPT, X_SAMPLE, X_OUTPUT = 0, 1150, 1650, 2430


class Graph:
    def __init__(self, title: str, note: str):
        self.title = title
        self.nodes = []    # dicts: id, type, widgets (dict), links {input: (src, slot)}, pos
        self.note = note
        self.groups = []   # (title, [x, y, w, h])
        self.routes = {}   # (target id, input name) -> [reroute positions, source side first]

    def add(self, type_: str, pos, widgets=None, **links) -> int:
        nid = len(self.nodes) + 1
        self.nodes.append({"id": nid, "type": type_, "pos": list(pos), "widgets": dict(widgets or {}),
                           "links": links})
        return nid

    def group(self, title: str, x: int, y: int, w: int, h: int):
        self.groups.append((title, [x, y, w, h]))

    def route(self, target: int, name: str, *points):
        """Send the link into ``target``'s input ``name`` through reroutes at ``points``."""
        self.routes[(target, name)] = [list(p) for p in points]

    # ---------------------------------------------------------------- API format
    def api(self) -> dict:
        out = {}
        for n in self.nodes:
            sockets, widgets, _ = NODE_DEFS[n["type"]]
            inputs = {}
            for w in widgets:
                inputs[w] = n["widgets"][w]
            for name, _t in sockets:
                if name in n["links"]:
                    src, slot = n["links"][name]
                    inputs[name] = [str(src), slot]
            out[str(n["id"])] = {"inputs": inputs, "class_type": n["type"]}
        return out

    # ---------------------------------------------------------------- UI format
    def ui(self) -> dict:
        links = []
        out_links = {}
        in_links = {}
        for n in self.nodes:
            sockets = NODE_DEFS[n["type"]][0]
            for slot_in, (name, t) in enumerate(sockets):
                if name in n["links"]:
                    src, slot = n["links"][name]
                    lid = len(links) + 1
                    links.append([lid, src, slot, n["id"], slot_in, t])
                    out_links.setdefault((src, slot), []).append(lid)
                    in_links[(n["id"], name)] = lid
        order = self._order()
        nodes = []
        for n in self.nodes:
            sockets, widgets, outputs = NODE_DEFS[n["type"]]
            wv = []
            for w in widgets:
                wv.append(n["widgets"][w])
                if w == "seed":
                    wv.append("randomize")  # the frontend's control_after_generate widget
            if n["type"] == "LoadImage":
                wv.append("image")  # the upload widget
            nodes.append({
                "id": n["id"], "type": n["type"], "pos": n["pos"],
                "size": SIZES.get(n["type"], [320, 130]), "flags": {}, "order": order[n["id"]], "mode": 0,
                "inputs": [{"name": name, "type": t, "link": in_links.get((n["id"], name))}
                           for name, t in sockets],
                "outputs": [{"name": name, "type": t, "links": out_links.get((n["id"], i), []),
                             "slot_index": i} for i, (name, t) in enumerate(outputs)],
                "properties": {"Node name for S&R": n["type"]},
                "widgets_values": wv,
            })
        note_id = len(self.nodes) + 1
        nodes.append({"id": note_id, "type": "MarkdownNote", "pos": [X_MODELS - 460, ROW],
                      "size": SIZES["MarkdownNote"], "flags": {}, "order": len(self.nodes), "mode": 0,
                      "inputs": [], "outputs": [], "properties": {}, "widgets_values": [self.note],
                      "title": "Start here", "color": "#432", "bgcolor": "#653"})
        reroutes, extensions = [], []
        for (target, name), points in sorted(self.routes.items()):
            lid = in_links[(target, name)]
            parent = None
            for p in points:
                r = {"id": len(reroutes) + 1, "pos": p, "linkIds": [lid]}
                if parent is not None:
                    r["parentId"] = parent
                reroutes.append(r)
                parent = r["id"]
            extensions.append({"id": lid, "parentId": parent})
        extra = {"ds": {"scale": 0.45, "offset": [520, 160]}, "dream_engine": {"title": self.title}}
        if reroutes:
            extra["reroutes"] = reroutes
            extra["linkExtensions"] = extensions
        groups = [{"id": k + 1, "title": t, "bounding": b, "color": COLORS[t], "font_size": 24, "flags": {}}
                  for k, (t, b) in enumerate(self.groups)]
        return {"last_node_id": note_id, "last_link_id": len(links), "nodes": nodes, "links": links,
                "groups": groups, "config": {}, "extra": extra, "version": 0.4}

    def _order(self) -> dict:
        done, order = set(), {}
        while len(done) < len(self.nodes):
            for n in self.nodes:
                if n["id"] not in done and all(src in done for src, _ in n["links"].values()):
                    order[n["id"]] = len(order)
                    done.add(n["id"])
        return order


def _note(what: str, images: str = "") -> str:
    steps = ["**Models**: pick your files — SD3.5 Large (models/diffusion_models), the Dream Engine "
             "LoRA (models/loras), the VAE (models/vae), the LMM folder (models/LLM), the adapter "
             "(models/dream_engine)."]
    if images:
        steps.append(f"**Images**: {images}.")
    steps.append("**Prompt**: write yours, then Run.")
    return (f"## {what}\n\n**Change first**\n\n" + "\n".join(f"{k}. {t}" for k, t in enumerate(steps, 1))
            + "\n\nThe pack's converter writes the Dream Engine files (see its README).")


def _base(g: Graph, prompt: str, task: str, segments=None, prefix="dream_engine"):
    """Loaders → the release's DiT LoRA → Load Dream Engine → conditioning → KSampler → VAEDecode; returns (cond, decode) ids."""
    m = X_MODELS + 20
    unet = g.add("UNETLoader", (m, CHAIN), {"unet_name": DIT, "weight_dtype": "default"})
    vae = g.add("VAELoader", (m, ROW), {"vae_name": VAE})
    lora = g.add("LoraLoaderModelOnly", (m + 360, CHAIN), {"lora_name": LORA, "strength_model": 1.0},
                 model=(unet, 0))
    eng = g.add("LoadDreamEngine", (m + 720, CHAIN), {"lmm": LMM, "adapter": ADAPTER, "dtype": "default",
                                                      "device": "default", "fingerprint_check": "enforce"},
                 model=(lora, 0))
    links = {"dream_engine": (eng, 0)}
    if segments is not None:
        links["segments"] = segments
    cond = g.add("DreamEngineInterleavedConditioning", (X_PROMPT + 20, CHAIN + 80),
                 {"prompt": prompt, "task": task, "padding": "natural", "pooling": "mean",
                  "positions": "mrope", "image_short_side": 336, "min_pixels": 56 * 56,
                  "max_pixels": 512 * 28 * 28}, **links)
    lat = g.add("EmptySD3LatentImage", (X_SAMPLE + 20, CHAIN + 190), {"width": SIZE, "height": SIZE, "batch_size": 1})
    ks = g.add("KSampler", (X_SAMPLE + 380, CHAIN + 20), {"seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": SAMPLER,
                                                         "scheduler": SCHEDULER, "denoise": 1.0},
               model=(eng, 1), positive=(cond, 0), negative=(cond, 1), latent_image=(lat, 0))
    dec = g.add("VAEDecode", (X_OUTPUT + 20, CHAIN + 20), {}, samples=(ks, 0), vae=(vae, 0))
    # The VAE wire runs straight along the top of the band, above every node, and drops
    # into VAE Decode in the gap between Sample and Output.
    g.route(dec, "vae", (X_OUTPUT - 20, ROW + 10))
    g.group("Models", X_MODELS, TOP, 1110, 430)
    g.group("Prompt", X_PROMPT, TOP, 460, BAND_H)
    g.group("Sample", X_SAMPLE, TOP, 740, BAND_H)
    return cond, dec


def _output(g: Graph, width: int):
    g.group("Output", X_OUTPUT, TOP, width, BAND_H)


def _image(g: Graph, name: str, y: int, image: str) -> int:
    return g.add("LoadImage", (X_MODELS + 20, y), {"image": image})


def _images_group(g: Graph, rows: int):
    g.group("Images", X_MODELS, IMAGES, 1110, 80 + 314 + 80 + (rows - 1) * 440)


def text_to_image() -> Graph:
    g = Graph("Dream Engine 1: text to image", _note("Dream Engine — text to image"))
    _, dec = _base(g, "a red fox sitting in a snowy forest at sunrise, soft light, detailed fur", "generate")
    g.add("SaveImage", (X_OUTPUT + 270, CHAIN + 20), {"filename_prefix": "dream_engine/text_to_image"}, images=(dec, 0))
    _output(g, 710)
    return g


def edit() -> Graph:
    g = Graph("Dream Engine 2: instruction edit",
              _note("Dream Engine — edit an image by an instruction", "load your image"))
    y = IMAGES + ROW
    img = _image(g, "image", y, "dream_engine_example_1.png")
    seg = g.add("DreamEngineImageSegment", (X_MODELS + 380, y), {"name": "", "frame": 0}, image=(img, 0))
    _, dec = _base(g, "make the disc green and put it on a beach", "edit", segments=(seg, 0))
    g.add("SaveImage", (X_OUTPUT + 270, CHAIN + 20), {"filename_prefix": "dream_engine/edit"}, images=(dec, 0))
    _images_group(g, 1)
    _output(g, 710)
    return g


def fusion() -> Graph:
    g = Graph("Dream Engine 3: object fusion",
              _note("Dream Engine — combine two objects",
                    "one image per object; name each segment after its [object] in the prompt and "
                    "set its blend ratio r"))
    y1, y2 = IMAGES + ROW, IMAGES + ROW + 440
    a = _image(g, "a", y1, "dream_engine_example_1.png")
    b = _image(g, "b", y2, "dream_engine_example_2.png")
    sa = g.add("DreamEngineImageSegment", (X_MODELS + 380, y1), {"name": "disc", "frame": 0}, image=(a, 0))
    ra = g.add("DreamEngineBlendRatio", (X_MODELS + 740, y1), {"ratio": 0.3, "apply_to": "last"}, segments=(sa, 0))
    sb = g.add("DreamEngineImageSegment", (X_MODELS + 380, y2), {"name": "box", "frame": 0}, image=(b, 0),
               segments=(ra, 0))
    rb = g.add("DreamEngineBlendRatio", (X_MODELS + 740, y2), {"ratio": 0.7, "apply_to": "last"}, segments=(sb, 0))
    # The first object's segments go right, down between the rows, and into the second segment.
    g.route(sb, "segments", (X_MODELS + 1085, y1 + 10), (X_MODELS + 1085, y2 - 60), (X_MODELS + 360, y2 - 60))
    _, dec = _base(g, "the [disc] balanced on top of the [box] on a wooden table", "fuse", segments=(rb, 0))
    g.add("SaveImage", (X_OUTPUT + 270, CHAIN + 20), {"filename_prefix": "dream_engine/fusion"}, images=(dec, 0))
    _images_group(g, 2)
    _output(g, 710)
    return g


def reconstruct() -> Graph:
    g = Graph("Dream Engine 4: reconstruct / variation",
              _note("Dream Engine — reconstruct / variation (no text)",
                    "load your image; the blend ratio r sets how closely the variation follows it"))
    y = IMAGES + ROW
    img = _image(g, "image", y, "dream_engine_example_2.png")
    seg = g.add("DreamEngineImageSegment", (X_MODELS + 380, y), {"name": "", "frame": 0}, image=(img, 0))
    r = g.add("DreamEngineBlendRatio", (X_MODELS + 740, y), {"ratio": 0.5, "apply_to": "last"}, segments=(seg, 0))
    _, dec = _base(g, "", "reconstruct", segments=(r, 0))
    g.add("SaveImage", (X_OUTPUT + 270, CHAIN + 20), {"filename_prefix": "dream_engine/reconstruct"}, images=(dec, 0))
    _images_group(g, 1)
    _output(g, 710)
    return g


def artist_chain() -> Graph:
    g = Graph("Dream Engine 5: edit, upscale, save",
              _note("Dream Engine — edit, upscale, save", "load your image"))
    y = IMAGES + ROW
    img = _image(g, "image", y, "dream_engine_example_1.png")
    seg = g.add("DreamEngineImageSegment", (X_MODELS + 380, y), {"name": "", "frame": 0}, image=(img, 0))
    _, dec = _base(g, "paint it as a watercolour", "edit", segments=(seg, 0))
    up = g.add("ImageScaleBy", (X_OUTPUT + 270, CHAIN + 20), {"upscale_method": "lanczos", "scale_by": 1.5},
               image=(dec, 0))
    g.add("SaveImage", (X_OUTPUT + 630, CHAIN + 20), {"filename_prefix": "dream_engine/edit_upscaled"}, images=(up, 0))
    _images_group(g, 1)
    _output(g, 1070)
    return g


WORKFLOWS = {
    "1_text_to_image": text_to_image,
    "2_edit": edit,
    "3_object_fusion": fusion,
    "4_reconstruct_variation": reconstruct,
    "5_edit_upscale_save": artist_chain,
}


def render() -> dict[str, str]:
    files = {}
    for name, make in WORKFLOWS.items():
        g = make()
        files[os.path.join(HERE, name + ".json")] = json.dumps(g.ui(), indent=2) + "\n"
        files[os.path.join(HERE, "api", name + ".json")] = json.dumps(g.api(), indent=2) + "\n"
    return files


def main(argv=None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for path, text in render().items():
        old = open(path).read() if os.path.exists(path) else None
        if old != text:
            stale.append(path)
            if not check:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
    if check and stale:
        print("out of date (run scripts/build_workflows.py):\n  " + "\n  ".join(stale))
        return 1
    print(("checked" if check else "wrote") + f" {len(render())} files" + (f", {len(stale)} changed" if not check else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
