"""``agentgym data appworld``: (re)build the project's AppWorld world and tasks.

Runs ``worker/build.py`` with the AppWorld virtualenv's Python (AppWorld cannot be imported here:
it pins pydantic 1). The venv itself is made by ``scripts/setup_appworld.sh``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from agentgym.envs.appworld.workers import BUILD_SCRIPT, AppWorldPaths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentgym data appworld", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated world (default 0)")
    parser.add_argument("--if-missing", action="store_true", help="do nothing when the tasks are built")
    args = parser.parse_args(argv)
    paths = AppWorldPaths.default()
    if not paths.venv_python.exists():
        print(f"error: AppWorld virtualenv not found at {paths.venv_python}; run scripts/setup_appworld.sh",
              file=sys.stderr)
        return 2
    if args.if_missing and paths.missing() is None:
        print(f"AppWorld tasks already built under {paths.base}")
        return 0
    env = {**os.environ, "APPWORLD_CACHE": str(paths.cache), "HOME": str(paths.base / "home")}
    (paths.base / "home").mkdir(parents=True, exist_ok=True)
    cmd = [str(paths.venv_python), str(BUILD_SCRIPT), "--root", str(paths.root), "--play", str(paths.play),
           "--seed", str(args.seed)]
    return subprocess.call(cmd, env=env, cwd=paths.base)
