"""The runnable examples in the core modules' docstrings (registry, env defaults, config, schedule,
run logs, the env contract, GiGPO's advantages)."""

import doctest
import importlib

import pytest

MODULES = ["agentgym.plugins", "agentgym.envspec", "agentgym.config", "agentgym.config_files", "agentgym.train", "agentgym.runlog",
           "agentgym.env", "agentgym.learners.gigpo", "agentgym.evaluation", "agentgym.report.svg"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
