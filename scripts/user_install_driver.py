"""Drive a ComfyUI installed as a user installs it (run by scripts/check_user_install.sh).

It runs in the user's virtual environment, where the pack exists only as the copy in
``custom_nodes/``, as a module of that copy (``cd`` into it, then ``python -m
scripts.user_install_driver``); besides the standard library it uses only that copy's
``comfy_host.workflows`` (standard library too). It starts ComfyUI's own ``main.py``,
reads ``/object_info`` and queues workflow 1 (API format) with the embedded miniature's
values (``miniature/profile.json``, applied by ``comfy_host.workflows.apply_profile``,
the one place widget values are changed).

    python -m scripts.user_install_driver --comfyui DIR --workflow API.json --profile profile.json \
        --expect render            # workflow 1 renders one image of the profile's size
    python -m scripts.user_install_driver ... --expect error:TEXT   # it fails with a message containing TEXT

The server is started through the copy's ``comfy_host/launch.py`` (run by path, so the
server process imports nothing of the pack but what ComfyUI loads from ``custom_nodes``):
it stands in for a torchvision matching torch — this machine's package registry has only
CUDA torchvision wheels, whose compiled operators cannot load next to the CPU torch, and
ComfyUI imports torchvision before any custom node — with the core's own fix
(``dream_engine_core/compat.py: ensure_torchvision_importable``), then runs ``main.py``
unchanged.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

from comfy_host.workflows import apply_profile  # the pack copy's own (standard library only)

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(PACK_DIR, "comfy_host", "launch.py")
NODES = ("LoadDreamEngine", "DreamEngineInterleavedConditioning", "DreamEngineImageSegment", "DreamEngineBlendRatio")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: dict | None = None, timeout: float = 30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # e.g. a prompt refused at validation: show why
        raise SystemExit(f"{url}: HTTP {e.code}: {e.read().decode(errors='replace')[:3000]}") from None


def png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfyui", required=True)
    ap.add_argument("--workflow", required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--expect", default="render")
    ap.add_argument("--log", required=True)
    ap.add_argument("--timeout", type=float, default=600)
    return ap.parse_args()


def wait_for_nodes(proc, url: str, a, deadline: float) -> None:
    """Until ``/object_info`` answers; then it must list the pack's nodes, and the log no import failure."""
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"ComfyUI exited with {proc.returncode}; see {a.log}")
        try:
            info = http(url + "/object_info")
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.time() > deadline:
                raise SystemExit(f"ComfyUI did not answer within {a.timeout:.0f} s; see {a.log}")
            time.sleep(1)
    missing = [n for n in NODES if n not in info]
    with open(a.log) as f:
        text = f.read()
    if missing:
        raise SystemExit(f"/object_info lacks {missing}; ComfyUI log:\n{text[-3000:]}")
    pack = os.path.basename(PACK_DIR)
    failed = [ln for ln in text.splitlines() if "IMPORT FAILED" in ln and pack in ln]
    if failed:
        raise SystemExit(f"the pack failed to import: {failed}\n{text[-3000:]}")
    print(f"[user-install] /object_info lists the {len(NODES)} nodes")


def run_workflow(url: str, prompt: dict, deadline: float, timeout: float) -> dict:
    """Queue ``prompt``; its history entry once it has finished (or failed)."""
    pid = http(url + "/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})["prompt_id"]
    while True:
        hist = http(url + f"/history/{pid}")
        if pid in hist:  # an entry appears once the prompt has finished (or failed)
            return hist[pid]
        if time.time() > deadline:
            raise SystemExit(f"workflow did not finish within {timeout:.0f} s")
        time.sleep(0.5)


def check_outcome(entry: dict, a, size: int) -> None:
    """``--expect render``: one image of the profile's size; ``--expect error:TEXT``: an error naming TEXT."""
    errors = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
    if a.expect == "render":
        if errors:
            raise SystemExit("workflow 1 failed: " + json.dumps(errors[0])[:3000])
        images = [im for out in entry["outputs"].values() for im in out.get("images", [])]
        assert len(images) == 1, images
        path = os.path.join(a.comfyui, "output", images[0].get("subfolder", ""), images[0]["filename"])
        got = png_size(path)
        assert got == (size, size), got
        print(f"[user-install] workflow 1 rendered {path} ({got[0]}x{got[1]})")
        return
    want = a.expect.split(":", 1)[1]
    if not errors:
        raise SystemExit(f"workflow 1 succeeded; expected an error containing {want!r}")
    msg = errors[0]["exception_message"]
    if want not in msg:
        raise SystemExit(f"error message lacks {want!r}: {msg}")
    print(f"[user-install] {errors[0]['node_type']} raised: {msg.strip()}")


def main() -> int:
    a = parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(a.log, "w")
    proc = subprocess.Popen([sys.executable, LAUNCH, "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--disable-auto-launch"], cwd=a.comfyui, env=dict(os.environ, COMFYUI_PATH=a.comfyui),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + a.timeout
        wait_for_nodes(proc, url, a, deadline)
        with open(a.profile) as f:
            prof = json.load(f)
        with open(a.workflow) as f:
            prompt = apply_profile(json.load(f), prof)
        check_outcome(run_workflow(url, prompt, deadline, a.timeout), a, prof["size"])
        return 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


if __name__ == "__main__":
    sys.exit(main())
