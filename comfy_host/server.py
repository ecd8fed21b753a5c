"""The real ComfyUI server with this pack loaded from ``custom_nodes``.

:class:`ComfyServer` starts ComfyUI's ``main.py`` (through ``comfy_host/launch.py``) on
loopback in a base directory (laid out by :func:`comfy_host.base_dir.prepare_base_dir`),
queues prompts through the HTTP API and waits for their history.

Nothing here imports the pack; the server loads it itself.
"""
from __future__ import annotations

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

from .base_dir import ROOT

PY = sys.executable


def _die_with_parent():
    """Linux: the server gets SIGTERM when the process that started it dies (a killed
    test run must not leave a server behind)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: best effort
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    pass


class PromptRejected(ServerError):
    """``POST /prompt`` refused the prompt (validation); ``.body`` is the server's JSON."""

    def __init__(self, body: dict):
        self.body = body
        super().__init__(json.dumps(body, indent=1)[:4000])


class ComfyServer:
    def __init__(self, base_dir: str, port: int | None = None, cpu: bool = True, extra_args=()):
        self.base_dir = base_dir
        self.port = port or free_port()
        self.cpu = cpu
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(base_dir, "comfyui.log")
        self.client_id = uuid.uuid4().hex

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 180) -> "ComfyServer":
        cmd = [PY, os.path.join(ROOT, "comfy_host", "launch.py"), "--listen", "127.0.0.1",
               "--port", str(self.port), "--disable-auto-launch", "--base-directory", self.base_dir,
               "--database-url", "sqlite:///:memory:"] + (["--cpu"] if self.cpu else []) + self.extra_args
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, cwd=ROOT,
                                     preexec_fn=_die_with_parent)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        self.stop()
        raise ServerError(f"ComfyUI did not answer within {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise ServerError("no VmRSS")

    # ------------------------------------------------------------- HTTP
    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            data = r.read()
        return json.loads(data) if data[:1] in (b"{", b"[") else data

    def get_bytes(self, path: str, timeout: float = 30) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return r.read()

    def post(self, path: str, body: dict, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = r.read()
        return json.loads(data) if data else None

    def queue(self, prompt: dict) -> str:
        try:
            r = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                raise PromptRejected(json.loads(body)) from None
            except ValueError:
                raise ServerError(f"/prompt answered {e.code}: {body[:2000]!r}") from None
        return r["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            h = self.get(f"/history/{prompt_id}")
            if prompt_id in h and h[prompt_id].get("status", {}).get("completed") is not None:
                st = h[prompt_id]["status"]
                if st.get("status_str") in ("success", "error"):
                    return h[prompt_id]
            if not self.alive():
                raise ServerError(f"ComfyUI died:\n{self.log_tail()}")
            time.sleep(0.1)
        raise ServerError(f"prompt {prompt_id} did not finish in {timeout}s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        return self.wait(self.queue(prompt), timeout)

    def output_images(self, entry: dict) -> list[str]:
        """Paths of the images a finished prompt saved."""
        out = []
        for node in entry.get("outputs", {}).values():
            for im in node.get("images", []):
                folder = {"output": "output", "temp": "temp"}[im.get("type", "output")]
                out.append(os.path.join(self.base_dir, folder, im.get("subfolder", ""), im["filename"]))
        return out


def status_messages(entry: dict, kind: str) -> list[dict]:
    return [m[1] for m in entry.get("status", {}).get("messages", []) if m[0] == kind]


def execution_error(entry: dict) -> dict | None:
    errs = status_messages(entry, "execution_error")
    return errs[0] if errs else None
