"""Where agentgym keeps what it builds or caches (indexes, generated games, models, worlds).

``AGENTGYM_DATA_DIR`` wins; otherwise a source checkout uses ``<repo>/data`` (git-ignored) and an
installed package ``~/.cache/agentgym``.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir(*parts: str, create: bool = True) -> Path:
    """The agentgym data directory (or a sub-path of it), created on demand."""
    env = os.environ.get("AGENTGYM_DATA_DIR")
    if env:
        base = Path(env).expanduser()
    elif (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "envs").is_dir():
        base = REPO_ROOT / "data"
    else:
        base = Path.home() / ".cache" / "agentgym"
    path = base.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
