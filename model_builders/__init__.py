"""Random-weight models in the real file formats, for tests, benchmarks, the demo's
small model set and the miniature's starting point. Each loads through the same path
as the real model:

* :mod:`.qwen2vl` — Qwen2-VL folders (config, tokenizer, processor config,
  safetensors) of any size, and adapters;
* :mod:`.comfy_formats` — an SD3.5-format MMDiT (Large or Medium layout), a 16-channel
  TAESD VAE and a DiT LoRA that ComfyUI's own loaders detect, and the small model set of
  ``make demo``;
* :mod:`.full_size` — full-size models written one tensor at a time (benchmarks);
* :mod:`.flops` — the FLOPs and weight bytes of the encoder's passes, counted from the
  shapes (the benchmarks' floor, the training estimates).

The tiny training set (these models and a shapes-world manifest) is
``miniature.training_set``.

Nothing is downloaded.
"""
