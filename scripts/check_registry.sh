#!/usr/bin/env bash
# The Comfy Registry's own checks, as a publisher runs them: `comfy node validate` must
# report nothing but success, and `comfy node pack` must give an archive with what a user
# needs and without the test suite or benchmark results (.comfyignore). comfy-cli lives in
# its own environment (build/comfy-cli, installed once) so its dependencies never touch
# .venv. Prints the archive's size and file list.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CLI=build/comfy-cli
PKG="comfy-cli==1.23.0"
t0=$SECONDS
if [ "$(cat "$CLI/.stamp" 2>/dev/null)" != "$PKG" ]; then
  rm -rf "$CLI"
  python3 -m venv "$CLI"
  "$CLI/bin/python" -m pip install -q --disable-pip-version-check "$PKG" \
    2> >(grep -v "^WARNING: Location 'file:" >&2)
  echo "$PKG" > "$CLI/.stamp"
fi
# comfy-cli keeps its settings (tracking off with --skip-prompt) under $HOME/.config; ruff
# (run by validate) its cache under RUFF_CACHE_DIR: both stay in build/.
export HOME="$ROOT/$CLI/home" RUFF_CACHE_DIR="$ROOT/$CLI/ruff-cache"
mkdir -p "$HOME"
COMFY=("$ROOT/$CLI/bin/comfy" --skip-prompt)

out="$("${COMFY[@]}" node validate </dev/null 2>&1)"
echo "$out" | sed 's/^/[registry] validate: /'
extra="$(echo "$out" | grep -vxF -e "Validating node configuration..." -e "Running security checks..." \
  -e "✓ All validation checks passed successfully" || true)"
if [ -n "$extra" ] || ! echo "$out" | grep -qxF "✓ All validation checks passed successfully"; then
  echo "[registry] FAILED: comfy node validate reported more than success (above)" >&2
  exit 1
fi

rm -f node.zip
"${COMFY[@]}" node pack </dev/null >/dev/null
mkdir -p build
mv node.zip build/node.zip
"$CLI/bin/python" - build/node.zip <<'PY'
import sys, zipfile

path = sys.argv[1]
with zipfile.ZipFile(path) as z:
    infos = z.infolist()
names = [i.filename for i in infos]
need = ["__init__.py", "requirements.txt", "pyproject.toml", "README.md", "nodes/engine.py",
        "dream_engine_core/lmm_folder.py", "web/dream_engine.js", "web/docs/LoadDreamEngine.md",
        "web/docs/LoadDreamEngine/zh.md", "locales/zh/nodeDefs.json", "tools/convert_official.py",
        "comfy_host/importer.py", "example_workflows/1_text_to_image.json", "example_workflows/api/1_text_to_image.json",
        "miniature/profile.json", "miniature/models/LLM/Qwen2-VL-miniature/model.safetensors"]
banned = ("tests/", "benchmarks/", "training/", "model_builders/", "scripts/", ".ci/")
missing = [n for n in need if n not in names]
leaked = [n for n in names if n.startswith(banned)]
size = sum(i.file_size for i in infos)
import os
print(f"[registry] {path}: {os.path.getsize(path) / 2**20:.1f} MiB compressed, {size / 2**20:.1f} MiB unpacked, "
      f"{len(names)} files")
for i in infos:
    print(f"[registry]   {i.file_size:>10}  {i.filename}")
if missing or leaked:
    print(f"[registry] FAILED: missing from the archive: {missing}; should not be in it: {leaked}", file=sys.stderr)
    sys.exit(1)
PY
echo "[registry] done in $((SECONDS - t0)) s"
