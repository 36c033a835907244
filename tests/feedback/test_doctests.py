"""The runnable examples in the feedback modules' and the strategies' docstrings."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["agentgym.feedback", "agentgym.feedback.prompts", "agentgym.feedback.parsing", "agentgym.feedback.render",
           "agentgym.feedback.reference", "agentgym.feedback.spans", "agentgym.feedback.selectors",
           "agentgym.feedback.sources", "agentgym.feedback.anchors", "agentgym.testing.strategies"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
