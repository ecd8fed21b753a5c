"""Write the shipped workflows: UI format in ``workflows/`` and the API twins in
``workflows/api/``, both from the one description below.

    .venv/bin/python workflows/build_workflows.py          # rewrite the files
    .venv/bin/python workflows/build_workflows.py --check  # exit 1 if they differ

The UI files load in ComfyUI's frontend by drag-and-drop (and are listed as the
pack's templates); the tests check that the frontend turns each into exactly its
API twin, and queue every twin on the real server.

Model file names are those of the released model as the converter writes them
(see docs/nodes.md); pick your own files in the loader nodes.
"""
from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# Real-model defaults (SD3.5 Large + the Dream Engine release).
DIT = "sd3.5_large.safetensors"                      # the user's own stock SD3.5 Large
LORA = "dream_engine_sd35_large_lora.safetensors"    # the release's DiT difference (converter)
VAE = "sd3.5_vae.safetensors"
LMM = "DreamEngine-Qwen2-VL-2B"                      # the release's LMM (LoRA merged; converter)
ADAPTER = "dream_engine_direct_map.safetensors"
SIZE = 1024
STEPS = 28
CFG = 3.5
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
SIZES = {"KSampler": [315, 262], "DreamEngineInterleavedConditioning": [400, 260], "LoadImage": [315, 314],
         "LoadDreamEngine": [330, 150], "Note": [360, 180],
         "VAEDecode": [210, 46], "DreamEngineImageSegment": [315, 150], "SaveImage": [420, 460]}


class Graph:
    def __init__(self, title: str, note: str):
        self.title = title
        self.nodes = []   # dicts: id, type, widgets (dict), links {input: (src, slot)}, pos
        self.note = note

    def add(self, type_: str, pos, widgets=None, **links) -> int:
        nid = len(self.nodes) + 1
        self.nodes.append({"id": nid, "type": type_, "pos": list(pos), "widgets": dict(widgets or {}),
                           "links": links})
        return nid

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
        by_id = {n["id"]: n for n in self.nodes}
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
                "size": SIZES.get(n["type"], [315, 130]), "flags": {}, "order": order[n["id"]], "mode": 0,
                "inputs": [{"name": name, "type": t, "link": in_links.get((n["id"], name))}
                           for name, t in sockets],
                "outputs": [{"name": name, "type": t, "links": out_links.get((n["id"], i), []),
                             "slot_index": i} for i, (name, t) in enumerate(outputs)],
                "properties": {"Node name for S&R": n["type"]},
                "widgets_values": wv,
            })
        note_id = len(self.nodes) + 1
        nodes.append({"id": note_id, "type": "Note", "pos": [20, -230], "size": SIZES["Note"], "flags": {},
                      "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [],
                      "properties": {}, "widgets_values": [self.note]})
        return {"last_node_id": note_id, "last_link_id": len(links), "nodes": nodes, "links": links,
                "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.8, "offset": [60, 300]}, "dream_engine": {"title": self.title}},
                "version": 0.4}

    def _order(self) -> dict:
        done, order = set(), {}
        while len(done) < len(self.nodes):
            for n in self.nodes:
                if n["id"] not in done and all(src in done for src, _ in n["links"].values()):
                    order[n["id"]] = len(order)
                    done.add(n["id"])
        return order


MODELS_NOTE = (f"Models: your SD3.5 Large {DIT} in models/diffusion_models, {LORA} in models/loras, "
               f"{VAE} in models/vae, the {LMM} folder in models/LLM, {ADAPTER} in models/dream_engine "
               f"(the converter writes the Dream Engine files; see the pack's README). "
               f"Connect the MODEL output of Load Dream Engine to the sampler.")


def _base(g: Graph, prompt: str, task: str, segments=None, prefix="dream_engine"):
    """Loaders → the release's DiT LoRA → Load Dream Engine → conditioning → KSampler → VAEDecode; returns (cond, decode) ids."""
    unet = g.add("UNETLoader", (20, 40), {"unet_name": DIT, "weight_dtype": "default"})
    vae = g.add("VAELoader", (20, 200), {"vae_name": VAE})
    lora = g.add("LoraLoaderModelOnly", (20, -120), {"lora_name": LORA, "strength_model": 1.0}, model=(unet, 0))
    eng = g.add("LoadDreamEngine", (380, 40), {"lmm": LMM, "adapter": ADAPTER, "dtype": "default",
                                               "device": "default", "fingerprint_check": "enforce"}, model=(lora, 0))
    links = {"dream_engine": (eng, 0)}
    if segments is not None:
        links["segments"] = segments
    cond = g.add("DreamEngineInterleavedConditioning", (760, 40),
                 {"prompt": prompt, "task": task, "padding": "natural", "pooling": "mean",
                  "positions": "mrope", "image_short_side": 336, "min_pixels": 56 * 56,
                  "max_pixels": 512 * 28 * 28}, **links)
    lat = g.add("EmptySD3LatentImage", (760, 340), {"width": SIZE, "height": SIZE, "batch_size": 1})
    ks = g.add("KSampler", (1200, 40), {"seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler",
                                        "scheduler": "simple", "denoise": 1.0},
               model=(eng, 1), positive=(cond, 0), negative=(cond, 1), latent_image=(lat, 0))
    dec = g.add("VAEDecode", (1550, 40), {}, samples=(ks, 0), vae=(vae, 0))
    return cond, dec


def text_to_image() -> Graph:
    g = Graph("Dream Engine 1: text to image", "Text to image with the Dream Engine.\n" + MODELS_NOTE)
    _, dec = _base(g, "a red fox sitting in a snowy forest at sunrise, soft light, detailed fur", "generate")
    g.add("SaveImage", (1800, 40), {"filename_prefix": "dream_engine/text_to_image"}, images=(dec, 0))
    return g


def _image(g: Graph, name: str, y: int, image: str) -> int:
    return g.add("LoadImage", (20, y), {"image": image})


def edit() -> Graph:
    g = Graph("Dream Engine 2: instruction edit",
              "Edit one image by an instruction (task edit). Load your own image in Load Image.\n" + MODELS_NOTE)
    img = _image(g, "image", 360, "dream_engine_example_1.png")
    seg = g.add("DreamEngineImageSegment", (380, 360), {"name": "", "frame": 0}, image=(img, 0))
    _, dec = _base(g, "make the disc green and put it on a beach", "edit", segments=(seg, 0))
    g.add("SaveImage", (1800, 40), {"filename_prefix": "dream_engine/edit"}, images=(dec, 0))
    return g


def fusion() -> Graph:
    g = Graph("Dream Engine 3: object fusion",
              "Combine two objects (task fuse). Each segment is named after its object and carries its own "
              "blend ratio r.\n" + MODELS_NOTE)
    a = _image(g, "a", 360, "dream_engine_example_1.png")
    b = _image(g, "b", 760, "dream_engine_example_2.png")
    sa = g.add("DreamEngineImageSegment", (380, 360), {"name": "disc", "frame": 0}, image=(a, 0))
    ra = g.add("DreamEngineBlendRatio", (380, 540), {"ratio": 0.3, "apply_to": "last"}, segments=(sa, 0))
    sb = g.add("DreamEngineImageSegment", (380, 760), {"name": "box", "frame": 0}, image=(b, 0),
               segments=(ra, 0))
    rb = g.add("DreamEngineBlendRatio", (380, 940), {"ratio": 0.7, "apply_to": "last"}, segments=(sb, 0))
    _, dec = _base(g, "the [disc] balanced on top of the [box] on a wooden table", "fuse", segments=(rb, 0))
    g.add("SaveImage", (1800, 40), {"filename_prefix": "dream_engine/fusion"}, images=(dec, 0))
    return g


def reconstruct() -> Graph:
    g = Graph("Dream Engine 4: reconstruct / variation",
              "Reconstruct an image (task reconstruct, no text). The blend ratio r sets how closely the "
              "variation follows the image's appearance.\n" + MODELS_NOTE)
    img = _image(g, "image", 360, "dream_engine_example_2.png")
    seg = g.add("DreamEngineImageSegment", (380, 360), {"name": "", "frame": 0}, image=(img, 0))
    r = g.add("DreamEngineBlendRatio", (380, 540), {"ratio": 0.5, "apply_to": "last"}, segments=(seg, 0))
    _, dec = _base(g, "", "reconstruct", segments=(r, 0))
    g.add("SaveImage", (1800, 40), {"filename_prefix": "dream_engine/reconstruct"}, images=(dec, 0))
    return g


def artist_chain() -> Graph:
    g = Graph("Dream Engine 5: edit, upscale, save",
              "An artist's chain: edit an image, upscale the result with ComfyUI's Upscale Image By, save.\n"
              + MODELS_NOTE)
    img = _image(g, "image", 360, "dream_engine_example_1.png")
    seg = g.add("DreamEngineImageSegment", (380, 360), {"name": "", "frame": 0}, image=(img, 0))
    _, dec = _base(g, "paint it as a watercolour", "edit", segments=(seg, 0))
    up = g.add("ImageScaleBy", (1800, 40), {"upscale_method": "lanczos", "scale_by": 1.5}, image=(dec, 0))
    g.add("SaveImage", (2140, 40), {"filename_prefix": "dream_engine/edit_upscaled"}, images=(up, 0))
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
        print("out of date (run workflows/build_workflows.py):\n  " + "\n  ".join(stale))
        return 1
    print(("checked" if check else "wrote") + f" {len(render())} files" + (f", {len(stale)} changed" if not check else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
