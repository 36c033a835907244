"""Every runnable example in a docstring runs: each module of the core and the plugin folders whose
source holds a ``>>>`` example not marked ``+SKIP`` (AppWorld's worker scripts run in AppWorld's own
venv and are left out)."""

import doctest
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"agentgym": "agentgym", "agents": "agentgym.agents", "envs": "agentgym.envs",
            "feedback": "agentgym.feedback", "learners": "agentgym.learners"}
NOT_HERE = ("worker", "jail")  # folders whose code runs in another interpreter


def _modules_with_examples() -> list[str]:
    names = []
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            examples = [line for line in path.read_text(encoding="utf-8").splitlines() if line.lstrip().startswith(">>> ")]
            if any(part in NOT_HERE for part in rel.parts) or all("doctest: +SKIP" in line for line in examples):
                continue
            names.append(".".join([package, *(p for p in rel.parts if p != "__init__")]))
    return names


MODULES = _modules_with_examples()


def test_the_examples_are_found_in_every_layer():
    for expected in ("agentgym.plugins", "agentgym.wrappers", "agentgym.envs.echo.env", "agentgym.learners.gigpo",
                     "agentgym.feedback.selectors", "agentgym.agents.chat", "agentgym.envs.bfcl.decoder"):
        assert expected in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
