"""Tool-call parsing: hostile text never raises and never executes; canonical calls round-trip."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from agentgym.parsing import AutoToolCallParser, JsonToolCallParser, PythonCallParser, format_python_call
from agentgym.types import ToolCall

parse = AutoToolCallParser()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
identifiers = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True).filter(
    lambda s: s not in {"if", "in", "is", "or", "and", "not", "for", "def", "del", "try", "as", "with",
                        "else", "elif", "from", "None", "True", "False", "pass", "while", "break",
                        "class", "raise", "yield", "async", "await", "import", "global", "lambda",
                        "return", "assert", "except", "finally", "continue", "nonlocal"})
calls = st.builds(ToolCall, name=identifiers, arguments=st.dictionaries(identifiers, json_values, max_size=4))

call_like_text = st.one_of(
    st.text(max_size=200),
    st.from_regex(r"\[?[a-z_]{1,6}\((\w+=[^,()]{0,12},?){0,3}\)\]?", fullmatch=True),
    st.lists(st.sampled_from(["[", "]", "(", ")", "{", "}", "'", '"', ",", "=", ".", "__", "import",
                              "<tool_call>", "</tool_call>", "```", "\n", "x", "1", "os", "\\"]),
             max_size=40).map("".join),
)


@settings(max_examples=400, deadline=None)
@given(call_like_text)
def test_parser_never_raises_and_only_returns_named_calls(text):
    result = parse(text)
    assert isinstance(result.errors, list)
    for call in result.calls:
        assert call.name and all(part.isidentifier() for part in call.name.split("."))
        json.dumps(call.arguments)  # always JSON-safe


@settings(max_examples=150, deadline=None)
@given(st.lists(calls, min_size=1, max_size=3))
def test_canonical_python_calls_round_trip(call_list):
    text = "[" + ", ".join(format_python_call(c) for c in call_list) + "]"
    parsed = PythonCallParser()(text)
    assert parsed.errors == []
    assert [(c.name, c.arguments) for c in parsed.calls] == [(c.name, c.arguments) for c in call_list]


@settings(max_examples=100, deadline=None)
@given(st.lists(calls, min_size=1, max_size=3))
def test_json_tool_calls_round_trip(call_list):
    text = "".join(f"<tool_call>{json.dumps({'name': c.name, 'arguments': c.arguments})}</tool_call>"
                   for c in call_list)
    parsed = parse(text)
    assert parsed.errors == [] and parsed.syntax == "json"
    assert [(c.name, c.arguments) for c in parsed.calls] == [(c.name, c.arguments) for c in call_list]


def test_supported_shapes():
    assert [c.name for c in parse("```python\n[ls(a=True), cd(folder='x')]\n```").calls] == ["ls", "cd"]
    assert parse("sort('report.pdf')").calls[0].arguments == {"$0": "report.pdf"}
    assert parse("math.factorial(number=5)").calls[0].name == "math.factorial"
    openai = {"function": {"name": "cd", "arguments": json.dumps({"folder": "x"})}}
    assert parse(json.dumps(openai)).calls[0].arguments == {"folder": "x"}
    assert parse('[{"name": "ls", "parameters": {"a": true}}]').calls[0].arguments == {"a": True}


def test_non_literals_are_refused_with_the_offending_text():
    result = parse("cd(folder=os.getcwd())")
    assert result.calls == [] and "must be a literal" in result.errors[0] and "os.getcwd()" in result.errors[0]
    assert "finite" in parse("add(a=1e999, b=1)").errors[0]
    assert "finite" in JsonToolCallParser()('{"name": "add", "arguments": {"a": NaN}}').errors[0]
    assert parse("ls(**{'a': 1})").errors == ["ls: **kwargs are not allowed"]


def test_prose_is_not_an_attempted_call():
    for text in ["", "Sure, the file is moved.", "I can't do that: the function is missing."]:
        result = parse(text)
        assert result.calls == [] and not result.attempted
    assert parse("[cd(folder='x'").attempted


def test_docstring_examples():
    import doctest

    import agentgym.parsing
    result = doctest.testmod(agentgym.parsing, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result


def test_the_official_decoding_is_the_bfcl_packages_and_named_when_missing():
    """The core imports no env package: without the BFCL decoder loaded, decoding="official" is a clear error."""
    import subprocess
    import sys

    code = ("import sys; from agentgym.parsing import AutoToolCallParser\n"
            "assert not [m for m in sys.modules if m.startswith('agentgym.envs.bfcl')], 'the core imported the BFCL package'\n"
            "try:\n    AutoToolCallParser(decoding='official')\nexcept ValueError as e:\n    print(e)\n"
            "import agentgym.envs.bfcl.decoder\n"
            "print(AutoToolCallParser(decoding='official')('[f(n=6223*2)]').calls[0].arguments)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "decoding 'official' has no Python-call decoder registered; bfcl-eval's comes with the BFCL environments: "
        "import agentgym.envs.bfcl.decoder", "{'n': 12446}"]
