"""LoadDreamEngine and InterleavedConditioning."""
from __future__ import annotations

import logging
import time

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import torch
from comfy_api.latest import io, ui

from ..dream_engine_core.cpu_linear import cpu_path_note, packed_bytes
from ..dream_engine_core.encoder import LMMEncoder, check_lmm_folder
from ..dream_engine_core.encoder import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, DEFAULT_SHORT_SIDE
from ..dream_engine_core.engine import DreamEngine, EncodeOptions, PADDINGS, describe
from ..dream_engine_core.errors import OptionError
from ..dream_engine_core.adapter import POOLINGS
from ..dream_engine_core.encoder import POSITIONS
from ..dream_engine_core.prompt import TASKS, build_task_inputs
from ..dream_engine_core.fingerprint import check_pair as check_lmm_fingerprint
from ..dream_engine_core.weights import load_adapter, read_metadata
from .direct_map import check_adapter_fits, mark_direct_map, patch_direct_map
from .models import (DreamEngineHandle, DreamEngineModule, adapter_files, adapter_path,
                     lmm_folder_path, lmm_folders)
from .segments import CATEGORY, Segments, search_aliases

log = logging.getLogger("dream_engine")
Engine = io.Custom("DREAM_ENGINE")
DTYPES = {"default": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("default", "cpu", "gpu")
FINGERPRINT_CHECKS = ("enforce", "ignore")


def _devices(device: str):
    if device == "cpu":
        return torch.device("cpu"), torch.device("cpu")
    if device == "gpu":
        return mm.get_torch_device(), mm.text_encoder_offload_device()
    if device == "default":
        return mm.text_encoder_device(), mm.text_encoder_offload_device()
    raise OptionError(f"device must be one of {DEVICES}, got {device!r}")


def _dtype(name: str, load_device) -> torch.dtype:
    if name not in DTYPES:
        raise OptionError(f"dtype must be one of {list(DTYPES)}, got {name!r}")
    if DTYPES[name] is not None:
        return DTYPES[name]
    if mm.is_device_cpu(load_device):
        return torch.float32
    if mm.should_use_bf16(load_device, prioritize_performance=False):
        return torch.bfloat16
    if mm.should_use_fp16(load_device, prioritize_performance=False):
        return torch.float16
    return torch.float32


def make_patcher(module: torch.nn.Module, load_device, offload_device):
    """Wrap the LMM + adapter as the host wraps its own models, so that its memory manager
    loads and offloads them (``mm.load_models_gpu`` before each encode).

    Newer ComfyUI builds models with ``comfy.model_patcher.CoreModelPatcher``, which its
    ``main.py`` rebinds to the dynamic-VRAM ``ModelPatcherDynamic`` when comfy-aimdo works
    (read at call time for that reason). A plain ``ModelPatcher`` there takes the
    non-dynamic path, whose memory free can evict the whole DiT. The dynamic patcher moves
    modules that are not ``comfy.ops`` layers (the transformers LMM) whole, with the dtypes
    recorded by ``archive_model_dtypes``, as core does for its text encoders; on a CPU load
    device it returns a plain ``ModelPatcher`` itself. Hosts without ``CoreModelPatcher``
    (0.3.75) get the plain ``ModelPatcher``.
    """
    archive = getattr(mm, "archive_model_dtypes", None)
    if archive is not None:
        archive(module)
    cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    return cls(module, load_device=load_device, offload_device=offload_device)


class LoadDreamEngine(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadDreamEngine",
            display_name="Load Dream Engine",
            category=CATEGORY,
            **search_aliases("qwen2-vl", "qwen2 vl loader", "multimodal encoder", "image prompt", "lmm",
                             "sd3.5 text encoder"),
            description="Loads the Dream Engine: the Qwen2-VL LMM (an HF-format folder in models/LLM) and the "
                        "adapter (models/dream_engine). A direct-map adapter also returns a clone of the SD3.5 "
                        "MODEL with its text embedders bypassed (connect that MODEL to the sampler); a "
                        "standard-map adapter returns the MODEL unchanged.",
            inputs=[
                io.Model.Input("model", tooltip="The SD3.5 diffusion model (e.g. from Load Diffusion Model)."),
                io.Combo.Input("lmm", options=lmm_folders(),
                               tooltip="Qwen2-VL-2B-Instruct folder inside models/LLM."),
                io.Combo.Input("adapter", options=adapter_files(),
                               tooltip="Adapter .safetensors inside models/dream_engine."),
                io.Combo.Input("dtype", options=list(DTYPES), default="default",
                               tooltip="Weights dtype of the LMM and adapter. default: bf16/fp16 on a GPU "
                                       "that supports it, fp32 on CPU."),
                io.Combo.Input("device", options=list(DEVICES), default="default",
                               tooltip="Where the LMM runs. default: ComfyUI's text-encoder device: the GPU "
                                       "on a normal- or high-VRAM GPU (and always with the dynamic VRAM of newer "
                                       "ComfyUI), the CPU under --lowvram, --novram or --cpu. cpu: always the CPU "
                                       "(slower encodes, no VRAM used). gpu: the main GPU on every host. On a GPU, "
                                       "ComfyUI's memory manager loads the LMM for encoding and offloads it to RAM "
                                       "when the DiT needs the memory."),
                io.Combo.Input("fingerprint_check", options=list(FINGERPRINT_CHECKS), default="enforce", optional=True,
                               tooltip="enforce: refuse an adapter whose recorded LMM fingerprint does not match "
                                       "the selected LMM folder (it was made with a different LMM). ignore: "
                                       "skip the check (experts only). Optional, so saved prompts without it "
                                       "keep working (enforced)."),
            ],
            outputs=[
                Engine.Output("dream_engine", display_name="DREAM_ENGINE"),
                io.Model.Output("patched_model", display_name="MODEL",
                                tooltip="The MODEL to sample with (patched clone for a direct-map adapter)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, lmm):
        # Only ``lmm``: ComfyUI attaches the returned message to every input this function
        # names. It replaces ComfyUI's "value not in list" for ``lmm`` so that a missing or
        # incomplete folder names the folder and the files expected (and no name leaves the
        # LLM folders: lmm_folder_path). ``adapter`` keeps ComfyUI's own list check on hosts
        # that check V3 combo values; where the host does not (0.3.75), execute refuses it
        # (adapter_path).
        try:
            check_lmm_folder(lmm_folder_path(lmm))
        except Exception as e:  # noqa: BLE001 - reported to the user as the validation message
            return str(e)
        return True

    @classmethod
    def execute(cls, model, lmm, adapter, dtype="default", device="default",
                fingerprint_check="enforce") -> io.NodeOutput:
        folder = lmm_folder_path(lmm)
        apath = adapter_path(adapter)
        # -- adapter <-> LMM fingerprint (dream_engine_core/fingerprint.py) --
        if fingerprint_check not in FINGERPRINT_CHECKS:
            raise OptionError(f"fingerprint_check must be one of {FINGERPRINT_CHECKS}, got {fingerprint_check!r}")
        if fingerprint_check == "enforce":
            warning = check_lmm_fingerprint(read_metadata(apath), adapter, folder)  # raises on a mismatch
            if warning:
                log.warning("Dream Engine: %s", warning)
        # -- end fingerprint --
        load_device, offload_device = _devices(device)
        dt = _dtype(dtype, load_device)
        t0 = time.perf_counter()
        adapter_mod = load_adapter(apath, dtype=dt, device=offload_device)
        spec = adapter_mod.spec
        check_adapter_fits(spec, model, adapter)  # before the LMM loads
        encoder = LMMEncoder.from_folder(folder, dtype=dt, device=offload_device)
        engine = DreamEngine(encoder, adapter_mod, repr(adapter))
        patcher = make_patcher(DreamEngineModule(encoder.model, adapter_mod), load_device, offload_device)
        handle = DreamEngineHandle(engine, patcher, lmm, adapter)
        out_model = patch_direct_map(model) if spec.kind == "direct" else model
        log.info("Dream Engine: loaded %s + %s (%s map, %s, %s) in %.2fs", lmm, adapter, spec.kind, dt,
                 load_device, time.perf_counter() - t0)
        if mm.is_device_cpu(load_device):
            note, slow = cpu_path_note(dt, packed_bytes(encoder.model))
            (log.warning if slow else log.info)("Dream Engine: %s", note)
        return io.NodeOutput(handle, out_model)


def to_conditioning(c) -> list:
    """ComfyUI CONDITIONING; direct-map conditioning carries the marker that the
    sampler's MODEL checks (nodes/direct_map.py)."""
    dev = mm.intermediate_device()
    d = {"pooled_output": c.pooled.detach().float().to(dev)}
    return [[c.tokens.detach().float().to(dev), mark_direct_map(d) if c.map_kind == "direct" else d]]


class InterleavedConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamEngineInterleavedConditioning",
            display_name="Dream Engine Interleaved Conditioning",
            category=CATEGORY,
            **search_aliases("qwen2-vl", "interleaved", "image prompt", "multi image", "reference image",
                             "multimodal prompt", "image edit", "object fusion"),
            description="Encodes an interleaved text-image prompt with the Dream Engine into the positive "
                        "conditioning and the task's matching negative (the CFG input of the release). "
                        "Refer to images as [image 1], [image 2] … or by a segment's [name].",
            inputs=[
                Engine.Input("dream_engine"),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The prompt. Images: [image N] (N-th segment) or [name]; [[ and ]] "
                                        "for literal brackets. edit: the instruction; fuse: the caption; "
                                        "reconstruct: leave empty."),
                io.Combo.Input("task", options=list(TASKS), default="generate",
                               tooltip="generate: text (+ referenced images) → image; edit: one image + "
                                       "instruction; fuse: named objects + caption; reconstruct: one image."),
                io.Combo.Input("padding", options=list(PADDINGS), default="natural",
                               tooltip="natural: positive and negative keep their own lengths (as trained). "
                                       "reference: pad like the release's inference (left, with <|endoftext|>, "
                                       "to 77 tokens or to the positive's length; never truncated), pad states "
                                       "as transformers 5.x computes them. reference_4.49_gpu: the same padding, "
                                       "pad states as transformers 4.49 computed them with SDPA on CUDA (pad "
                                       "positions attend to every token), as the release's demo ran there."),
                io.Combo.Input("pooling", options=list(POOLINGS), default="mean",
                               tooltip="Mean for the pooled vector: mean over every position (release) or "
                                       "masked_mean (pad tokens excluded; same as mean without padding)."),
                io.Combo.Input("positions", options=list(POSITIONS), default="mrope",
                               tooltip="mrope: Qwen2-VL's multimodal positions — what the release's code "
                                       "computes on transformers 4.49 and later. 1d: plain positions 0…L−1, which "
                                       "transformers 4.48 and older used on every call after the first; the "
                                       "release's transformers version is not known."),
                Segments.Input("segments", optional=True,
                               tooltip="The prompt's images (Image Segment chain)."),
                io.Int.Input("image_short_side", default=DEFAULT_SHORT_SIDE, min=0, max=4096, step=1,
                             tooltip="Each image is first resized so its short side is this many pixels "
                                     "(the release: 336); 0 keeps the image's own size."),
                io.Int.Input("min_pixels", default=DEFAULT_MIN_PIXELS, min=28 * 28, max=16384 * 16384,
                             tooltip="Lower bound of an image's pixel count after the Qwen2-VL processor "
                                     "fits it to 28-px units (default 56·56)."),
                io.Int.Input("max_pixels", default=DEFAULT_MAX_PIXELS, min=28 * 28, max=16384 * 16384,
                             tooltip="Upper bound of an image's pixel count (the release: 512·28·28); "
                                     "fewer pixels, fewer image tokens, faster encoding."),
            ],
            outputs=[
                io.Conditioning.Output("positive", display_name="positive"),
                io.Conditioning.Output("negative", display_name="negative"),
            ],
        )

    @classmethod
    def execute(cls, dream_engine, prompt, task="generate", padding="natural", pooling="mean",
                positions="mrope", segments=None, image_short_side=DEFAULT_SHORT_SIDE,
                min_pixels=DEFAULT_MIN_PIXELS, max_pixels=DEFAULT_MAX_PIXELS) -> io.NodeOutput:
        chain = tuple(segments or ())
        refs = [s.ref() for s in chain]
        if max_pixels < min_pixels:
            raise OptionError(f"max_pixels ({max_pixels}) must be at least min_pixels ({min_pixels}); raise "
                              f"max_pixels or lower min_pixels")
        opts = EncodeOptions(padding=padding, pooling=pooling, positions=positions,
                             short_side=int(image_short_side) or None, min_pixels=int(min_pixels),
                             max_pixels=int(max_pixels))
        build_task_inputs(prompt, refs, task, opts.style)  # prompt errors before any model loads
        handle: DreamEngineHandle = dream_engine
        t0 = time.perf_counter()
        # whole: the LMM's layers are plain torch layers, which ComfyUI cannot run partly offloaded
        mm.load_models_gpu([handle.patcher], force_full_load=True)
        pbar = comfy.utils.ProgressBar(5)
        pos, neg = handle.engine.encode(
            prompt, [s.image for s in chain], refs, task, options=opts,
            progress=lambda done, total: pbar.update_absolute(done, total),
            check_interrupt=mm.throw_exception_if_processing_interrupted)
        seen = describe(pos, neg)  # what the model saw: shown on the node and logged
        log.info("Dream Engine: encoded a %s prompt (%d image(s)): positive %d tokens, negative %d tokens, "
                 "%s map, %.2fs\n%s", task, len(chain), pos.tokens.shape[1], neg.tokens.shape[1],
                 pos.map_kind, time.perf_counter() - t0, seen)
        return io.NodeOutput(to_conditioning(pos), to_conditioning(neg), ui=ui.PreviewText(seen))
