"""bfcl-eval's decoders (``decoding="official"``, ``agentgym.envs.bfcl.decoder``): values read as
bfcl-eval reads them, a bad call fails the whole reply, arithmetic folded within bounds and never
evaluated, and hostile text never raises."""

from __future__ import annotations

import ast
import builtins
import doctest
import json
import time

from hypothesis import given, settings
from hypothesis import strategies as st

import agentgym.envs.bfcl.decoder as decoder
from agentgym.envs.bfcl.decoder import MAX_FOLD_BITS, MAX_FOLD_NODES, MAX_FOLD_SIZE, fold_constant
from agentgym.parsing import AutoToolCallParser

# BFCL-shaped replies and their broken variants: bare names, arithmetic, fences, tags, nesting.
call_like_text = st.one_of(
    st.text(max_size=200),
    st.from_regex(r"\[?[a-z_]{1,6}\((\w+=[^,()]{0,12},?){0,3}\)\]?", fullmatch=True),
    st.lists(st.sampled_from(["[", "]", "(", ")", "{", "}", "'", '"', ",", "=", ".", "__", "import", "*", "**", "-",
                              "+", "<tool_call>", "</tool_call>", "```", "```python", "\n", "x", "1", "6223", "os",
                              "\\", "AAPL"]),
             max_size=40).map("".join),
)


def test_docstring_examples():
    result = doctest.testmod(decoder, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result


official = AutoToolCallParser(decoding="official")


def test_official_decoding_reads_values_as_bfcl_eval():
    (call,) = official("get_stock_info(symbol=AAPL, flag=true, n=6223*2, neg=-5, text=g(1), item=x[0])").calls
    assert call.arguments == {"symbol": "AAPL", "flag": "true", "n": 12446, "neg": -5, "text": "g(1)",
                              "item": "x[0]"}
    assert official("f(a=+5)").calls[0].arguments == {"a": -5}  # bfcl-eval negates any unary operator
    assert official("sort('report.pdf')").calls[0].arguments == {"$0": "report.pdf"}  # kept (bfcl-eval drops)
    assert [c.name for c in official("```\n[ls(), pwd()]\n```").calls] == ["ls", "pwd"]


def test_official_decoding_fails_the_whole_reply():
    for text in ["[ls(), cd(folder=os.sep)]", "[ls(), 'not a call']", "[ls(), f(a={})]", "[ls(), f(a=1/0)]",
                 "```python\n[ls()]\n```", "[ls(), f(a=g(x=1))]", "[ls(), __import__('os').system('x')]"]:
        result = official(text)
        assert result.calls == [] and result.attempted and result.errors, text
        assert "none of its calls run" in result.errors[0]
    assert "language tag" in official("```python\n[ls()]\n```").errors[0]
    tagged = '<tool_call>\n{"name": "ls", "arguments": {}}\n</tool_call><tool_call>\n{"name": "x"}\n</tool_call>'
    assert official(tagged).calls == []  # Qwen FC: a call without arguments fails the reply
    skipped = '<tool_call>\n{"name": "ls", "arguments": {}}\n</tool_call><tool_call>\n{oops\n</tool_call>'
    assert [c.name for c in official(skipped).calls] == ["ls"]  # Qwen FC: unparsable JSON blocks are skipped
    for prose in ["", "Sure, the file is moved.", "'just a string'"]:
        assert not official(prose).attempted and official(prose).errors == []
    assert official("[]").attempted and official("[]").calls == [] and official("[]").errors == []


def test_fold_constant_is_bounded_and_never_evaluates_names():
    def fold(text):
        return fold_constant(ast.parse(text, mode="eval").body)

    assert fold("6223*2") == 12446 and fold("'ab' * 3 + 'c'") == "abababc" and fold("[0] * 3") == [0, 0, 0]
    assert fold("2 ** -1") == 0.5 and fold("-(3 - 5)") == 2 and fold("not 0") is True
    hostile = ["10 ** 10 ** 10", "9 ** 100000", "1 << 10 ** 6", "'a' * 10 ** 9", "[[0] * 10000] * 10000",
               "2 ** 1024 * 2 ** 1024", "1 / 0", "'%999999999d' % 1", "x + 1", "len('a') + 1", "(1).real + 1",
               "+".join(["1"] * (MAX_FOLD_NODES + 1)), "b'a' * 2", "1e308 * 10 ** 300"]
    real_eval, real_exec = builtins.eval, builtins.exec

    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec called")

    builtins.eval, builtins.exec = forbidden, forbidden
    try:
        for text in hostile:
            started = time.perf_counter()
            try:
                value = fold(text)
            except ValueError:
                pass
            else:  # what is computed stays within the bounds
                assert not isinstance(value, int) or value.bit_length() <= MAX_FOLD_BITS, text
                assert not isinstance(value, (str, list)) or len(value) <= MAX_FOLD_SIZE, text
            assert time.perf_counter() - started < 0.5, text
        assert official("f(a=10**10**10)").calls == [] and official("f(a=1+" + "1+" * 900 + "1)").calls == []
    finally:
        builtins.eval, builtins.exec = real_eval, real_exec


@settings(max_examples=300, deadline=None)
@given(call_like_text)
def test_official_parser_never_raises_and_only_returns_named_calls(text):
    result = official(text)
    for call in result.calls:
        assert call.name and all(part.isidentifier() for part in call.name.split("."))
        json.dumps(call.arguments)
    assert not (result.calls and result.errors and result.syntax == "python")  # all or nothing
