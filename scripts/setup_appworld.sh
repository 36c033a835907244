#!/usr/bin/env bash
# Set up AppWorld for agentgym (idempotent; called by ./setup.sh; ~1-2 minutes the first time).
#
# AppWorld pins pydantic 1, so it lives in its own virtualenv under the agentgym data directory
# ($AGENTGYM_DATA_DIR/appworld, default <repo>/data/appworld), never in .venv:
#   venv/   appworld==0.1.3.post1 with its dependencies pinned by envs/appworld/worker/constraints.txt
#   cache/  APPWORLD_CACHE (`appworld install` unpacks its test bundle here, not in ~/.appworld)
#   root/   the project's generated world and tasks in AppWorld's format (with ground truth)
#   play/   the same without ground truth: the only root episode workers see
# The decrypted app code stays inside venv/ (git-ignored data/); nothing here is committed.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
DATA="${AGENTGYM_DATA_DIR:-$REPO/data}"
BASE="$DATA/appworld"
VENV="$BASE/venv"
PY="${PYTHON:-python3}"
VERSION="0.1.3.post1"
WORKER="$REPO/envs/appworld/worker"
mkdir -p "$BASE/cache" "$BASE/home"

# Agent code runs in an OS sandbox: bubblewrap + libseccomp's Python binding for Debian's python3
# (envs/appworld/sandbox.py). Install them with apt when missing and we are root; say so otherwise.
NEED=()
command -v bwrap >/dev/null 2>&1 || NEED+=(bubblewrap)
/usr/bin/python3 -c "import sys; sys.path.append('/usr/lib/python3/dist-packages'); import seccomp" \
  >/dev/null 2>&1 || NEED+=(python3-seccomp)
if [ "${#NEED[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${NEED[@]}" >/dev/null
  else
    echo "setup_appworld: the AppWorld sandbox needs: ${NEED[*]} (as root: apt-get install -y ${NEED[*]});" \
         "AppWorld episodes refuse to run without it" >&2
  fi
fi
# The apps worker and the grader never run as root: run as root, agentgym starts them as this
# system user (no login, no home; envs/appworld/workers.py). Other users run them as themselves.
WORKER_USER=agentgym-appworld
if [ "$(id -u)" = 0 ] && ! id -u "$WORKER_USER" >/dev/null 2>&1; then
  if command -v useradd >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$WORKER_USER"
  else
    echo "setup_appworld: create a system user $WORKER_USER (no login); AppWorld workers refuse to run as root" >&2
  fi
fi
export APPWORLD_CACHE="$BASE/cache" HOME="$BASE/home"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
if ! "$VENV/bin/python" -c "import sys, importlib.metadata as m; sys.exit(m.version('appworld') != '$VERSION')" 2>/dev/null; then
  if [ -x "$REPO/.venv/bin/uv" ]; then
    "$REPO/.venv/bin/uv" pip install --quiet --compile-bytecode --python "$VENV/bin/python" \
      -c "$WORKER/constraints.txt" "appworld==$VERSION"
  else
    "$VENV/bin/python" -m pip install --quiet -c "$WORKER/constraints.txt" "appworld==$VERSION"
  fi
fi
SITE="$("$VENV/bin/python" -c 'import appworld, os; print(os.path.dirname(appworld.__file__))')"
if [ ! -f "$SITE/apps/simple_note/apis.py" ] || [ ! -d "$BASE/cache/tests" ]; then
  (cd "$BASE" && "$VENV/bin/appworld" install)
  # Workers start much faster with the decrypted apps byte-compiled once (CPU-bound imports).
  "$VENV/bin/python" -m compileall -q -j 0 "$SITE" > /dev/null || true
fi

# (Re)build the world and tasks when they are missing or their generator sources changed.
STAMP="$(cat "$WORKER/world.py" "$WORKER/tasks.py" "$WORKER/build.py" | sha256sum | cut -c1-16)"
if [ "$(cat "$BASE/root/.stamp" 2>/dev/null)" != "$STAMP" ] || [ ! -d "$BASE/play/data/tasks" ]; then
  (cd "$BASE" && "$VENV/bin/python" "$WORKER/build.py" --root "$BASE/root" --play "$BASE/play" --seed 0)
fi
echo "setup_appworld: ok ($BASE)"
