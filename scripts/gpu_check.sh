#!/usr/bin/env bash
# The GPU check: on one NVIDIA GPU, in one go and under 10 minutes (enforced), it records
#   1. ./setup.sh --gpu (log, exit status, seconds);
#   2. the gpu-marked tests (pytest -m gpu, except the one that runs this script);
#   3. scripts/gpu_check.py: one bf16 update of every learner on a 0.5B model (Qwen/Qwen2.5-0.5B-Instruct
#      from the hub, else a random-init model of its shape): seconds per update, tokens/s, peak GPU
#      memory; HINT-SD vs dense SD per step; vLLM rollouts after a LoRA push, the push verified; and
#      the first update of --preset hint_sd_paper (Qwen3-4B-Instruct, or a smaller hub model where the
#      4B cannot be downloaded);
# into a record folder: phases.tsv (phase, status, seconds), one log per phase, rows.json and
# table.md (the figures for the README), environment.txt (GPU, driver, packages).
#   ./scripts/gpu_check.sh --record DIR      on a GPU machine (DIR default: runs/gpu_check-<time>)
#   ./scripts/gpu_check.sh --skip-setup      the machine is set up already (./setup.sh --gpu ran)
#   ./scripts/gpu_check.sh --cpu             the dry run: no setup, no gpu tests, tiny model on CPU,
#                                            vLLM and the paper preset skipped with the reason (~1 min)
#   ./scripts/gpu_check.sh --out rows.json   also write the rows of step 3 to that file
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BUDGET=${GPU_CHECK_TIMEOUT_S:-570}   # 9.5 minutes: the whole check, every phase included
CPU=0
SETUP=1
RECORD=""
PYARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1; SETUP=0; PYARGS+=(--cpu) ;;
    --skip-setup) SETUP=0 ;;
    --record) RECORD=$2; shift ;;
    --out) PYARGS+=(--out "$2"); shift ;;
    *) echo "usage: ./scripts/gpu_check.sh [--cpu] [--skip-setup] [--record DIR] [--out rows.json]" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$RECORD" ]; then
  if [ "$CPU" = 1 ]; then RECORD=$(mktemp -d -t agentgym-gpu-check-XXXXXX); else RECORD="runs/gpu_check-$(date -u +%Y%m%d-%H%M%S)"; fi
fi
mkdir -p "$RECORD"
START=$SECONDS
left() { echo $((BUDGET - (SECONDS - START))); }
printf "phase\tstatus\tseconds\n" > "$RECORD/phases.tsv"

# phase NAME CAP_SECONDS COMMAND...: runs COMMAND with a deadline of min(CAP, what is left), logs it.
phase() {
  local name=$1 cap=$2; shift 2
  local limit; limit=$(left)
  [ "$cap" -lt "$limit" ] && limit=$cap
  if [ "$limit" -le 5 ]; then
    printf "%s\tskipped: no time left\t0\n" "$name" >> "$RECORD/phases.tsv"
    echo "[gpu_check] phase $name: skipped (no time left of ${BUDGET}s)" >&2
    return 0
  fi
  echo "[gpu_check] phase $name: started (deadline ${limit}s, log $RECORD/$name.log)" >&2
  local t0=$SECONDS rc=0
  timeout "$limit" "$@" > "$RECORD/$name.log" 2>&1 || rc=$?
  local status=ok
  [ "$rc" = 124 ] && status="timed out after ${limit}s"
  [ "$rc" != 0 ] && [ "$rc" != 124 ] && status="FAILED (exit $rc)"
  printf "%s\t%s\t%s\n" "$name" "$status" $((SECONDS - t0)) >> "$RECORD/phases.tsv"
  echo "[gpu_check] phase $name: $status ($((SECONDS - t0)) s)" >&2
  return "$rc"
}
skip() { printf "%s\tskipped: %s\t0\n" "$1" "$2" >> "$RECORD/phases.tsv"; echo "[gpu_check] phase $1: skipped ($2)" >&2; }

{
  date -u +"%Y-%m-%d %H:%M:%S UTC"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi: none"
  "$VENV/bin/python" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1 || true
} > "$RECORD/environment.txt"

if [ "$SETUP" = 1 ]; then
  phase setup 300 ./setup.sh --gpu || echo "[gpu_check] setup failed: the next phases run with what $VENV has" >&2
else
  skip setup "$([ "$CPU" = 1 ] && echo "--cpu" || echo "--skip-setup")"
fi
if [ "$CPU" = 1 ]; then
  skip gpu_tests "--cpu"
else
  phase gpu_tests 150 "$VENV/bin/python" -m pytest -m gpu -q -p no:cacheprovider \
    --deselect tests/distributed/test_gpu_check.py::test_gpu_check_on_a_gpu_passes_every_check_in_8_minutes
fi
"$VENV/bin/python" -m pip freeze 2>/dev/null | grep -iE "^(torch|vllm|transformers|peft|accelerate|flash)" >> "$RECORD/environment.txt" || true

# The figures: the script's own deadline is what is left (it spends it on its checks in order).
limit=$(left)
rc=0
if [ "$limit" -le 5 ]; then
  skip figures "no time left"
  rc=124
else
  echo "[gpu_check] phase figures: started (deadline ${limit}s)" >&2
  t0=$SECONDS
  GPU_CHECK_DEADLINE_S=$((limit - 5)) timeout "$limit" "$VENV/bin/python" scripts/gpu_check.py \
    --record "$RECORD" "${PYARGS[@]}" || rc=$?
  printf "figures\t%s\t%s\n" "$([ "$rc" = 0 ] && echo ok || echo "exit $rc")" $((SECONDS - t0)) >> "$RECORD/phases.tsv"
fi
echo "[gpu_check] record: $RECORD ($((SECONDS - START)) s in all)" >&2
column -t -s $'\t' "$RECORD/phases.tsv" >&2 || cat "$RECORD/phases.tsv" >&2
exit "$rc"
