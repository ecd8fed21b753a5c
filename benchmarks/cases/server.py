"""Figure 5: the real ComfyUI server's cache — a re-queue with only the seed changed runs
no encoder call."""
from __future__ import annotations

import os
import re
import time
import uuid


def server_cache(args: dict) -> dict:
    """Queue a text-to-image workflow on the real ComfyUI server (small models), then
    re-queue it with only the seed changed; count encoder calls from the server log."""
    import comfy_host as host
    from model_builders.comfy_formats import build_demo_models

    base = os.path.join(host.ROOT, "build", "bench", "server")
    host.import_comfy()
    build_demo_models(os.path.join(base, "small_models"))
    srv = host.ComfyServer(host.prepare_base_dir(base, os.path.join(base, "small_models"))).start()
    try:
        def encodes():
            return re.findall(r"Dream Engine: encoded .*?([0-9.]+)s\s*$", srv.log_text(), re.M)

        def queue(text, seed):
            p = host.configure(host.small_model_profile(host.load_api("1_text_to_image.json"), size=128),
                               text=text, seed=seed, steps=4)
            t = time.perf_counter()
            return srv.run(p), time.perf_counter() - t, host.nodes_of(p, "DreamEngineInterleavedConditioning")[0]

        text = f"a yellow circle left of a red square {uuid.uuid4().hex[:6]}"
        n0 = len(encodes())
        a, first, cond = queue(text, 1)
        n1 = len(encodes())
        b, second, _ = queue(text, 2)
        n2 = len(encodes())
        cached = host.status_messages(b, "execution_cached")
        cached = cached[0]["nodes"] if cached else []
        times = encodes()
        return {"status": [a["status"]["status_str"], b["status"]["status_str"]],
                "encoder_calls_first": n1 - n0, "encoder_calls_requeue": n2 - n1,
                "encode_node_s": float(times[-1]) if times else None,
                "conditioning_node_cached_on_requeue": cond in cached, "cached_nodes": cached,
                "first_prompt_s": first, "requeue_prompt_s": second, "server_rss": srv.rss_bytes(),
                "models": "small same-architecture models (model_builders.comfy_formats.build_demo_models); "
                          "the count, not the speed, is the figure"}
    finally:
        srv.stop()
