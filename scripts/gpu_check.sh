#!/usr/bin/env bash
# The GPU check: on one NVIDIA GPU, in under 8 minutes, a bf16 learner step per learner on
# SmolLM2-135M and a random ~0.5B Qwen2 (tokens/s, peak memory), HINT-SD vs dense SD per step, an
# in-process vLLM CUDA rollout with a verified LoRA push, and a 2-update BFCL training run; prints
# one table (scripts/gpu_check.py has the details).
#   ./scripts/gpu_check.sh                 on a GPU machine set up with ./setup.sh --gpu
#   ./scripts/gpu_check.sh --cpu           the dry run: tiny model on CPU, vLLM part skipped (< 1 min)
#   ./scripts/gpu_check.sh --out rows.json also write the rows as JSON
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
# The 8-minute budget is enforced: a hung check ends the script (status 124) rather than the machine.
exec timeout "${GPU_CHECK_TIMEOUT_S:-480}" "$VENV/bin/python" scripts/gpu_check.py "$@"
