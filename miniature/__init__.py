"""The embedded miniature: a small Dream Engine trained on CPU in a synthetic shapes
world, shipped in ``miniature/models`` as the pack's default models.

* :mod:`.shapes_world` — scenes, captions and the data set;
* :mod:`.training_set` — a complete tiny training set (small models and a manifest);
* :mod:`.shapes_eval` — the detector and the checks of ShapesEval;
* :mod:`.vae`, :mod:`.lmm_pretrain` — the miniature's own VAE and LMM pre-training;
* :mod:`.pipeline` — every phase, from data to shipped files (``make miniature``);
* :mod:`.evaluate` — ShapesEval rendered through the real ComfyUI server.

The trainer it calls for the adapter and the DiT is the pack's real one (``training``).
"""
