"""The official release's own code, re-written as a test oracle.

Everything here follows the public repository ``chenllliang/DreamEngine`` at commit
374cffe, with the release's own libraries (transformers' Qwen2-VL, diffusers'
``SD3Transformer2DModel``, peft LoRA, ``qwen_vl_utils``). It imports nothing of the pack,
so the pack is measured against the release, not against itself:

* ``T`` = ``src/diffusers/src/diffusers/models/transformers/transformer_sd3.py``:
  ``QwenVLSD3_DirectMap_Transformer2DModel.__init__`` / ``forward`` (the LMM's
  ``hidden_states[-1]``, the visual blend, the two align MLPs on every position and on
  the unmasked mean) and ``SD3Transformer2DModel.forward_with_lmm_encoder`` (the DiT with
  its context and pooled embedders bypassed) — :class:`Release`;
* ``P`` = ``src/diffusers/src/diffusers/pipelines/stable_diffusion_3/pipeline_qwen_vl_stable_diffusion_3.py``:
  ``cfg_predict`` — how each task's positive and negative are built, padded and batched
  (:func:`cfg_inputs`), and one guided Euler step (:func:`cfg_step`);
* ``D`` = ``src/scripts/eval/demo.py``: the model is the stock Qwen2-VL and the stock SD3.5
  DiT, each wrapped with peft LoRA (r = alpha = 32, ``init_lora_weights="gaussian"``,
  the demo's target modules), combined, and loaded from pickle shards with
  ``load_state_dict(strict=False)`` (:func:`load_release`); images first go through
  ``transforms.Resize(336, BILINEAR)`` (:func:`demo_resize`).

The checkpoint keeps the LMM under pre-4.52 transformers names (``lmm.model.layers…``,
``lmm.visual…``); :func:`checkpoint_names` / :func:`module_names` translate to and from
the names of the transformers that runs the oracle (4.49 keeps them; 5.x moved the text
model under ``model.language_model`` and the vision tower under ``model.visual``).

Run as a script (``python tests/release_oracle.py states …``) it computes, with whatever
transformers is first on the path, the release's LMM states for a list of cases; the test
suite runs it under transformers 4.49 (``.venv/tf449``).
"""
from __future__ import annotations

import json
import os
import sys

import torch

LMM_TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]  # D
DIT_TARGETS = ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k",
               "attn.to_out.0", "attn.to_q", "attn.to_v"]  # D
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
MAX_PIXELS = 512 * 28 * 28  # D: AutoProcessor.from_pretrained(QWEN_PATH, max_pixels=512*28*28)
SD35_LARGE_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


# ----------------------------------------------------------------------------- the model (T, D)
class _RMSWeight(torch.nn.Module):
    """T's ``norm_lmm_out`` (``LlamaRMSNorm``): a weight the direct map never uses."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(n))


class Release(torch.nn.Module):
    """T: ``QwenVLSD3_DirectMap_Transformer2DModel`` (``mlp_dim`` 4096 in the release)."""

    def __init__(self, lmm, dit, mlp_dim: int, pooled_proj=(4096, 2048)):
        super().__init__()
        self.lmm = lmm
        self.dit = dit
        h = lmm_hidden_size(lmm)
        self.norm_lmm_out = _RMSWeight(h)
        self.pooled_proj = torch.nn.Linear(*pooled_proj)  # unused by the forward
        out = dit.config.caption_projection_dim
        self.input_embeds_align_mlp = torch.nn.Sequential(torch.nn.Linear(h, mlp_dim), torch.nn.SiLU(),
                                                          torch.nn.Linear(mlp_dim, out))
        self.condition_embeds_align_mlp = torch.nn.Sequential(torch.nn.Linear(h, mlp_dim), torch.nn.SiLU(),
                                                              torch.nn.Linear(mlp_dim, out))

    def lmm_states(self, lmm_input_ids, lmm_attention_mask, lmm_pixel_values=None, lmm_image_grid_thw=None,
                   vit_skip_ratio=None) -> torch.Tensor:
        """T ``forward``, up to the align MLPs: ``hidden_states[-1]``, then the visual blend."""
        kw = {}
        if transformers_major() >= 5 and lmm_pixel_values is not None:
            # 5.x computes M-RoPE from the processor's ``mm_token_type_ids`` (1 on image tokens) and
            # refuses to run without it; 4.49 finds the images from the ids themselves.
            kw["mm_token_type_ids"] = (lmm_input_ids == self.lmm.config.image_token_id).int()
        h = self.lmm(input_ids=lmm_input_ids, attention_mask=lmm_attention_mask, pixel_values=lmm_pixel_values,
                     image_grid_thw=lmm_image_grid_thw, output_hidden_states=True, **kw)["hidden_states"][-1]
        if vit_skip_ratio and isinstance(lmm_pixel_values, torch.Tensor):
            vit_feature = visual_merged(self.lmm, lmm_pixel_values, lmm_image_grid_thw)
            image_mask = lmm_input_ids == self.lmm.config.image_token_id
            image_hidden_states = h[image_mask]
            h[image_mask] = (1 - vit_skip_ratio) * image_hidden_states + vit_skip_ratio * vit_feature
        return h

    def adapt(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """T: the token MLP on every position, the vector MLP on the unmasked mean."""
        return self.input_embeds_align_mlp(h), self.condition_embeds_align_mlp(h.mean(dim=1))

    def dit_forward(self, dit_hidden_states, dit_time_step, tokens, pooled) -> torch.Tensor:
        """T: the time embedding plus the pooled vector, then ``forward_with_lmm_encoder``."""
        dit = self.dit
        t_emb = dit.time_text_embed.timestep_embedder(dit.time_text_embed.time_proj(dit_time_step).to(pooled.dtype))
        temb = pooled + t_emb
        height, width = dit_hidden_states.shape[-2:]
        hidden = dit.pos_embed(dit_hidden_states)
        enc = tokens
        for block in dit.transformer_blocks:
            enc, hidden = block(hidden_states=hidden, encoder_hidden_states=enc, temb=temb)
        hidden = dit.proj_out(dit.norm_out(hidden, temb))
        p = dit.config.patch_size
        hidden = hidden.reshape(hidden.shape[0], height // p, width // p, p, p, dit.out_channels)
        hidden = torch.einsum("nhwpqc->nchpwq", hidden)
        return hidden.reshape(hidden.shape[0], dit.out_channels, height, width)

    def forward(self, lmm_input_ids, lmm_attention_mask, dit_hidden_states, dit_time_step, lmm_pixel_values=None,
                lmm_image_grid_thw=None, vit_skip_ratio=None):
        h = self.lmm_states(lmm_input_ids, lmm_attention_mask, lmm_pixel_values, lmm_image_grid_thw, vit_skip_ratio)
        tokens, pooled = self.adapt(h)
        return self.dit_forward(dit_hidden_states, dit_time_step, tokens, pooled)


def lmm_hidden_size(lmm) -> int:
    cfg = lmm.config
    return getattr(getattr(cfg, "text_config", None), "hidden_size", None) or cfg.hidden_size


def visual_merged(lmm, pixel_values, grid_thw) -> torch.Tensor:
    """T's ``self.lmm.visual(pixel_values, grid_thw)``: the tower's merged output
    (transformers 5.x moved the tower to ``model.visual`` and wraps the output)."""
    visual = lmm.visual if hasattr(lmm, "visual") else lmm.model.visual
    out = visual(pixel_values, grid_thw=grid_thw)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def inject_lora(model, targets, r: int = 32, seed: int = 0, scale: float = 0.02) -> list[str]:
    """D's ``add_adapter(LoraConfig(r=32, lora_alpha=32, init_lora_weights="gaussian", ...))``
    (``inject_adapter_in_model`` is the same injection on every transformers version), then
    B drawn at random as training leaves it (gaussian init sets B = 0)."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=r, init_lora_weights="gaussian", target_modules=targets),
                            model)
    g = torch.Generator().manual_seed(seed)
    names = []
    with torch.no_grad():
        for name, mod in model.named_modules():
            if hasattr(mod, "lora_B") and "default" in getattr(mod, "lora_B", {}):
                w = mod.lora_B["default"].weight
                w.copy_(torch.randn(w.shape, generator=g) * scale)
                names.append(name)
    return names


def tiny_dit(seed: int = 0, depth: int = 2):
    """A stock SD3.5-Large-layout ``SD3Transformer2DModel`` at small size (ComfyUI detects it:
    hidden width 64·depth, qk RMS norm)."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    dit = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=depth,
                                attention_head_dim=64, num_attention_heads=depth, joint_attention_dim=48,
                                caption_projection_dim=64 * depth, pooled_projection_dim=40, out_channels=16,
                                pos_embed_max_size=16, qk_norm="rms_norm")
    with torch.no_grad():  # diffusers zero-initialises some layers; a trained model has none
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in dit.named_parameters():
            if "pos_embed.pos_embed" not in name and float(p.abs().max()) == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return dit.eval()


# ----------------------------------------------------------------------------- checkpoint (D)
def checkpoint_names(sd: dict) -> dict:
    """Module names of the running transformers → the release checkpoint's (pre-4.52) names."""
    out = {}
    for k, v in sd.items():
        if k.startswith("lmm.model.language_model."):
            k = "lmm.model." + k[len("lmm.model.language_model."):]
        elif k.startswith("lmm.model.visual."):
            k = "lmm.visual." + k[len("lmm.model.visual."):]
        out[k] = v
    return out


def module_names(sd: dict, model: torch.nn.Module) -> dict:
    """The release checkpoint's names → this transformers' module names."""
    have = set(model.state_dict())
    out = {}
    for k, v in sd.items():
        if k not in have:
            if k.startswith("lmm.model."):
                k = "lmm.model.language_model." + k[len("lmm.model."):]
            elif k.startswith("lmm.visual."):
                k = "lmm.model.visual." + k[len("lmm.visual."):]
        out[k] = v
    return out


def write_release(root: str, state_dict: dict, n_shards: int = 3) -> str:
    """``root/transformer/`` as on the model hub: ``config.json``, the index and pickle shards
    written with ``torch.save``, holding the combined model's ``state_dict()``."""
    tr = os.path.join(root, "transformer")
    os.makedirs(tr, exist_ok=True)
    keys = sorted(state_dict)
    wm = {}
    for i in range(n_shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{n_shards:05d}.bin"
        part = {k: state_dict[k].detach().clone().contiguous() for k in keys[i::n_shards]}
        torch.save(part, os.path.join(tr, name))
        wm.update({k: name for k in part})
    with open(os.path.join(tr, "diffusion_pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state_dict.values())},
                   "weight_map": wm}, f)
    with open(os.path.join(tr, "config.json"), "w") as f:
        json.dump({"_class_name": "QwenVLSD3_DirectMap_Transformer2DModel", "_diffusers_version": "0.33.0.dev0"}, f)
    return root


def load_release(model: Release, root: str) -> Release:
    """D's ``load_sharded_model``: every shard (``torch.load``; these are the test's own
    files), ``load_state_dict(strict=False)``. Returns the model; fails if a key of the
    checkpoint is not a key of the model (the demo only prints them)."""
    tr = os.path.join(root, "transformer")
    with open(os.path.join(tr, "diffusion_pytorch_model.bin.index.json")) as f:
        wm = json.load(f)["weight_map"]
    sd = {}
    for shard in sorted(set(wm.values())):
        sd.update(torch.load(os.path.join(tr, shard), map_location="cpu", weights_only=True))
    missing, unexpected = model.load_state_dict(module_names(sd, model), strict=False)
    assert not unexpected, unexpected[:5]
    assert not missing, missing[:5]
    return model.eval()


# ----------------------------------------------------------------------------- inputs (P, D)
def demo_resize(img):
    """D's ``obj_transform``: ``transforms.Resize(336, interpolation=BILINEAR)``."""
    from torchvision import transforms

    return transforms.Resize(336, interpolation=transforms.InterpolationMode.BILINEAR)(img)


def release_processor(folder: str):
    """D: ``AutoProcessor.from_pretrained(QWEN_PATH, max_pixels=512*28*28)``, with the image
    processor the release's transformers had (PIL; transformers 5.x loads the torchvision one
    unless told ``backend="pil"``)."""
    from transformers import AutoImageProcessor, AutoProcessor

    proc = AutoProcessor.from_pretrained(folder, max_pixels=MAX_PIXELS, local_files_only=True)
    if transformers_major() >= 5:
        proc.image_processor = AutoImageProcessor.from_pretrained(folder, max_pixels=MAX_PIXELS, backend="pil",
                                                                  local_files_only=True)
    return proc


def cfg_inputs(processor, image=None, prompt=None, segments=None, max_sequence_length=77, batch=True):
    """P ``cfg_predict`` up to the batched LMM inputs: ``{"lmm_input_ids", "lmm_attention_mask",
    ["lmm_pixel_values", "lmm_image_grid_thw"]}``, row 0 the positive, row 1 the negative.

    The branch is chosen by the arguments as P chooses it: ``image`` alone: reconstruct;
    ``prompt`` alone: generate; ``prompt`` + ``image``: edit; ``prompt`` + ``segments``
    (``[[name, image], …]``): object fusion; ``segments`` alone (text pieces and images):
    free interleave. Raises ``RuntimeError`` exactly where P's ``torch.cat`` does; with
    ``batch=False`` returns the processor's two outputs before that concatenation."""
    from qwen_vl_utils import process_vision_info

    if image is not None and prompt is None:
        messages = [{"role": "user", "content": [{"type": "image", "image": image}]}]
        text = "Copy Image: " + IMG
        image_inputs, video_inputs = process_vision_info(messages)
        inputs = processor(text=[text], images=image_inputs, videos=video_inputs, padding="max_length",
                           return_tensors="pt", max_length=max_sequence_length)
        null_inputs = processor(text="Copy Image: ", padding="max_length", return_tensors="pt",
                                max_length=max_sequence_length, truncation=True)
    elif prompt is not None and image is None and segments is None:
        text = "Generate Image: " + prompt
        if max_sequence_length is not None:
            inputs = processor(text=[text], padding="max_length", return_tensors="pt",
                               max_length=max_sequence_length, truncation=True)
        else:
            inputs = processor(text=[text], padding=True, return_tensors="pt")
        null_inputs = processor(text="Generate Image: ", padding="max_length", return_tensors="pt",
                                max_length=max_sequence_length, truncation=True)
    elif prompt is not None and image is not None:
        messages = [{"role": "user", "content": [{"type": "image", "image": image}]}]
        text = "Edit image " + IMG + " following:" + prompt
        image_inputs, video_inputs = process_vision_info(messages)
        inputs = processor(text=[text], images=image_inputs, videos=video_inputs, padding="max_length",
                           return_tensors="pt", max_length=max_sequence_length)
        null_inputs = processor(text=["Edit image " + IMG + " following:"], images=image_inputs,
                                videos=video_inputs, padding="max_length", return_tensors="pt",
                                max_length=max_sequence_length)
    elif prompt is not None and segments is not None:
        messages = [{"role": "user", "content": [{"type": "image", "image": obj[1]} for obj in segments]}]
        obj_names_text = ", ".join([obj[0] + IMG for obj in segments])
        text = ["Combine the objects: " + obj_names_text + " and generate an image following: " + prompt]
        image_inputs, video_inputs = process_vision_info(messages)
        text_token_length = len(processor.tokenizer(text)["input_ids"][0])
        max_sequence_length = int(text_token_length + image_inputs[0].size[0] * image_inputs[0].size[1] / 28 / 28
                                  + image_inputs[1].size[0] * image_inputs[1].size[1] / 28 / 28 - 2)
        inputs = processor(text=text, images=image_inputs, videos=video_inputs, padding=True, return_tensors="pt",
                           max_length=max_sequence_length)
        null_text = ["Combine the objects: " + obj_names_text + " and generate an image following: "]
        null_inputs = processor(text=null_text, images=image_inputs, videos=video_inputs, padding="max_length",
                                return_tensors="pt", max_length=max_sequence_length)
    elif prompt is None and segments is not None:
        from PIL import Image

        messages = [{"role": "user", "content": [{"type": "image", "image": obj} for obj in segments
                                                 if isinstance(obj, Image.Image)]}]
        caption = [i if isinstance(i, str) else IMG for i in segments]
        text = ["Generate Image: " + "".join(caption).strip()]
        image_inputs, video_inputs = process_vision_info(messages)
        inputs = processor(text=text, images=image_inputs, videos=video_inputs, padding=True, return_tensors="pt",
                           max_length=max_sequence_length)
        null_text = ["Generate Image: " + "".join(i for i in segments if isinstance(i, str)).strip()]
        null_inputs = processor(text=null_text, padding="max_length", return_tensors="pt",
                                max_length=max_sequence_length)
    else:
        raise ValueError("You must provide either an image or a prompt.")
    if not batch:
        return inputs, null_inputs
    out = {"lmm_input_ids": torch.cat([inputs["input_ids"], null_inputs["input_ids"]]),
           "lmm_attention_mask": torch.cat([inputs["attention_mask"], null_inputs["attention_mask"]])}
    if "pixel_values" in inputs:
        pv, grid = inputs["pixel_values"], inputs["image_grid_thw"]
        if "pixel_values" in null_inputs:  # edit and fuse: both rows carry the images
            pv = torch.cat([pv, null_inputs["pixel_values"]])
            grid = torch.cat([grid, null_inputs["image_grid_thw"]])
        out["lmm_pixel_values"], out["lmm_image_grid_thw"] = pv, grid
    return out


def single_inputs(processor, text: str, images: list) -> dict:
    """One input with no padding (the trainer's batch of one with ``padding="longest"``)."""
    from qwen_vl_utils import process_vision_info

    kw = {}
    if images:
        msgs = [{"role": "user", "content": [{"type": "image", "image": im} for im in images]}]
        kw["images"], _ = process_vision_info(msgs)
    enc = processor(text=[text], padding=True, return_tensors="pt", **kw)
    out = {"lmm_input_ids": enc["input_ids"], "lmm_attention_mask": enc["attention_mask"]}
    if images:
        out["lmm_pixel_values"], out["lmm_image_grid_thw"] = enc["pixel_values"], enc["image_grid_thw"]
    return out


# ----------------------------------------------------------------------------- sampling (P)
def scheduler(steps: int = 28):
    """D: ``FlowMatchEulerDiscreteScheduler.from_pretrained(SD3_PATH, subfolder="scheduler")``
    (SD3.5 Large's config), ``set_timesteps`` as P's ``retrieve_timesteps``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    s = FlowMatchEulerDiscreteScheduler.from_config(SD35_LARGE_SCHEDULER)
    s.set_timesteps(steps)
    return s


def cfg_step(release: Release, states: torch.Tensor, latents: torch.Tensor, sched, i: int,
             guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """P's denoising loop, step ``i``, from the batched LMM states (row 0 positive, row 1
    negative): both rows through the DiT at ``t``, ``uncond + g·(text − uncond)``, then the
    scheduler's Euler step. Returns (guided velocity, next latents)."""
    t = sched.timesteps[i]
    tokens, pooled = release.adapt(states)
    x = torch.cat([latents] * 2)
    noise_pred = release.dit_forward(x, t.expand(x.shape[0]), tokens, pooled)
    text, uncond = noise_pred.chunk(2)
    v = uncond + guidance * (text - uncond)
    sched._step_index = i
    return v, sched.step(v, t, latents, return_dict=False)[0]


# ----------------------------------------------------------------------------- transformers 4.49 run
def unmask_as_on_cuda() -> None:
    """Give this process transformers 4.49's CUDA behaviour on the CPU: its
    ``Qwen2VLModel._update_causal_mask`` calls ``AttentionMaskConverter._unmask_unattended``
    for SDPA only when the mask is on a CUDA/XPU device (the demo ran on CUDA); here the
    same library function is applied to the mask it returns, under the same conditions."""
    from transformers.modeling_attn_mask_utils import AttentionMaskConverter
    from transformers.models.qwen2_vl import modeling_qwen2_vl as m

    orig = m.Qwen2VLModel._update_causal_mask

    def update(self, attention_mask, input_tensor, cache_position, past_key_values, output_attentions):
        mask = orig(self, attention_mask, input_tensor, cache_position, past_key_values, output_attentions)
        if (self.config._attn_implementation == "sdpa" and attention_mask is not None and mask is not None
                and attention_mask.device.type not in ("cuda", "xpu") and not output_attentions):
            mask = AttentionMaskConverter._unmask_unattended(mask, torch.finfo(input_tensor.dtype).min)
        return mask

    m.Qwen2VLModel._update_causal_mask = update


def config_449(folder: str):
    """A ``Qwen2VLConfig`` for transformers 4.x from a folder's ``config.json`` written by 5.x
    (4.x reads the text settings at the top level and M-RoPE from ``rope_scaling``)."""
    from transformers import Qwen2VLConfig

    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    text = cfg.pop("text_config", {})
    rp = text.pop("rope_parameters", None) or {}
    flat = {**{k: v for k, v in text.items() if k not in ("model_type", "architectures", "dtype")}, **cfg}
    flat["rope_theta"] = rp.get("rope_theta", 1000000.0)
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": rp["mrope_section"]}
    return Qwen2VLConfig(**flat)


def build_release(lmm_folder: str, dit, mlp_dim: int, pooled_proj, token_dim: int | None = None) -> Release:
    """The demo's model on the running transformers: stock LMM (+LoRA), stock DiT (+LoRA)."""
    from transformers import Qwen2VLForConditionalGeneration

    if transformers_major() >= 5:
        lmm = Qwen2VLForConditionalGeneration.from_pretrained(lmm_folder, local_files_only=True,
                                                              attn_implementation="sdpa")
    else:
        lmm = Qwen2VLForConditionalGeneration._from_config(config_449(lmm_folder), attn_implementation="sdpa")
    inject_lora(lmm, LMM_TARGETS)
    if dit is not None:
        inject_lora(dit, DIT_TARGETS)
    return Release(lmm, dit if dit is not None else _NoDiT(token_dim), mlp_dim, pooled_proj)


class _NoDiT(torch.nn.Module):
    """Stands in for the DiT where only the LMM part runs (its keys are skipped on load)."""

    def __init__(self, caption_projection_dim: int):
        super().__init__()
        self.config = type("config", (), {"caption_projection_dim": caption_projection_dim})


def states_main(spec_path: str, out_path: str) -> None:
    """The release's LMM states for each case of ``spec_path`` (JSON: ``release``, ``lmm_folder``,
    ``mlp_dim``, ``pooled_proj``, ``token_dim``, ``cuda_unmask``, ``cases`` — each a ``cfg_inputs`` call with
    image files), saved as safetensors ``{case name: states [2, L, D]}``."""
    from PIL import Image
    from safetensors.torch import save_file

    with open(spec_path) as f:
        spec = json.load(f)
    if spec.get("cuda_unmask"):
        unmask_as_on_cuda()
    model = build_release(spec["lmm_folder"], None, spec["mlp_dim"], tuple(spec["pooled_proj"]), spec["token_dim"])
    tr = os.path.join(spec["release"], "transformer")
    with open(os.path.join(tr, "diffusion_pytorch_model.bin.index.json")) as f:
        wm = json.load(f)["weight_map"]
    sd = {}
    for shard in sorted(set(wm.values())):
        shard_sd = torch.load(os.path.join(tr, shard), map_location="cpu", weights_only=True)
        sd.update({k: v for k, v in shard_sd.items() if not k.startswith("dit.")})
    missing, unexpected = model.load_state_dict(module_names(sd, model), strict=False)
    assert not unexpected, unexpected[:5]
    assert not [k for k in missing if k.startswith("lmm.")], missing[:5]
    model.eval()
    processor = release_processor(spec["lmm_folder"])
    out = {}
    for case in spec["cases"]:
        kw = dict(case["call"])
        load = lambda p: demo_resize(Image.open(p).convert("RGB"))  # noqa: E731
        if "image" in kw:
            kw["image"] = load(kw["image"])
        if "segments" in kw:
            kw["segments"] = [[s[0], load(s[1])] if isinstance(s, list) else
                              (load(s[len("file:"):]) if s.startswith("file:") else s) for s in kw["segments"]]
        inputs = cfg_inputs(processor, **kw)
        with torch.no_grad():
            out[case["name"]] = model.lmm_states(**inputs, vit_skip_ratio=case.get("r")).contiguous()
        out[case["name"] + ".mask"] = inputs["lmm_attention_mask"].contiguous()
    import transformers

    save_file(out, out_path, metadata={"transformers": transformers.__version__})


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "states":
        sys.exit("usage: python tests/release_oracle.py states SPEC.json OUT.safetensors")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from dream_engine_core.compat import ensure_torchvision_importable  # the CPU torch + CUDA torchvision fix only

    ensure_torchvision_importable()
    torch.set_grad_enabled(False)
    states_main(sys.argv[2], sys.argv[3])
