#!/usr/bin/env bash
# The core tests and the host tests that touch the encoder on the oldest supported
# transformers (4.57.x). That release, with the tokenizers and hub client it needs,
# goes into .venv/tf457 (pip --target, installed once) and is put first on
# PYTHONPATH; everything else is the project environment (scripts/setup_env.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY=.venv/bin/python
OLDEST=.venv/tf457
PKGS=(transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2)
t0=$SECONDS
if [ "$(cat "$OLDEST/.stamp" 2>/dev/null)" != "${PKGS[*]}" ]; then
  rm -rf "$OLDEST"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$OLDEST" "${PKGS[@]}" \
    2> >(grep -v "^WARNING: Location 'file:" >&2)
  echo "${PKGS[*]}" > "$OLDEST/.stamp"
fi
export PYTHONPATH="$ROOT/$OLDEST"
"$PY" - <<'PY'
import huggingface_hub, tokenizers, transformers
from dream_engine_core.compat import TRANSFORMERS_MIN, parse_version
assert parse_version(transformers.__version__)[:2] == TRANSFORMERS_MIN, transformers.__file__
print(f"[oldest] transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, "
      f"huggingface_hub {huggingface_hub.__version__}")
PY
"$PY" -m pytest -q -p no:cacheprovider tests/test_core_encoder.py tests/test_core_prompt.py \
  tests/test_core_weights.py tests/test_transformers_compat.py tests/test_nodes_inprocess.py \
  "tests/test_workflows.py::test_workflow_runs" -k "not workflow_runs or 1_text or 3_object"
echo "[oldest] done in $((SECONDS - t0)) s"
