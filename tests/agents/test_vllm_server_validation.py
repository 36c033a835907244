"""The ``vllm_server`` backend's client does not trust a server (issue 24, item 4): against a scripted
HTTP server on 127.0.0.1 (no vLLM needed), every bad response - a missing or wrong prompt echo,
non-finite or positive log-probs, ids outside the vocabulary or of the wrong type, more or fewer ids
than asked for, a body dripped byte by byte, an oversized body, a malformed model list, prompt
log-probs for only part of the probe - is a ``ServerError`` / ``WeightSyncError`` naming the server
and the field, and nothing reaches a trajectory. The honest server's answers go through unchanged."""

from __future__ import annotations

import copy
import time

import pytest

from agentgym.agents import SamplingParams
from agentgym.agents.transport import ServerError
from agentgym.agents.vllm_policy import WeightSyncError
from agentgym.agents.vllm_server import VLLMServerPolicy
from agentgym.testing.openai_server import Raw, ScriptedOpenAIServer

SAMPLED = [5, 6, 7]
LOGPROBS = [-0.5, -0.25, -1.0]
CONV = [[{"role": "user", "content": "hi"}]]
SAMPLING = SamplingParams(max_new_tokens=8, seed=0)


def completion(body: dict, **choice) -> dict:
    """An honest vLLM completion of ``body``, with ``choice`` fields replaced."""
    base = {"index": 0, "text": "#$%", "token_ids": list(SAMPLED), "prompt_token_ids": list(body["prompt"]),
            "logprobs": {"token_logprobs": list(LOGPROBS), "tokens": ["#", "$", "%"]}, "finish_reason": "length"}
    base.update(choice)
    return {"id": "cmpl-1", "object": "text_completion", "model": body.get("model"), "choices": [base]}


def with_logprob(value) -> callable:
    return lambda body: completion(body, logprobs={"token_logprobs": [-0.5, value, -1.0]})


def with_id(value) -> callable:
    return lambda body: completion(body, token_ids=[5, value, 7])


ATTACKS = {  # name: (the completion's JSON, words the error must hold)
    "missing echo": (lambda b: completion(b, prompt_token_ids=None), "prompt_token_ids is missing"),
    "wrong echo": (lambda b: completion(b, prompt_token_ids=b["prompt"][:-1] + [3]), "prompt_token_ids differs"),
    "NaN log-prob": (with_logprob(float("nan")), "choices[0].logprobs.token_logprobs[1]: Input should be a finite number"),
    "-inf log-prob": (with_logprob(float("-inf")), "choices[0].logprobs.token_logprobs[1]: Input should be a finite"),
    "positive log-prob": (with_logprob(5), "token_logprobs[1]: Input should be less than or equal to 0 (got 5)"),
    "1e300 log-prob": (with_logprob(1e300), "token_logprobs[1]: Input should be less than or equal to 0"),
    "string log-prob": (with_logprob("-0.5"), "token_logprobs[1]: Input should be a valid number"),
    "dict log-prob": (with_logprob({"lp": -1}), "token_logprobs[1]: Input should be a valid number"),
    "null log-prob": (with_logprob(None), "token_logprobs[1]: Input should be a valid number"),
    "id 10**12": (with_id(10 ** 12), "choices[0].token_ids[1] = 1000000000000 is outside the vocabulary [0, 1809)"),
    "id -5": (with_id(-5), "choices[0].token_ids[1] = -5 is outside the vocabulary"),
    "id 1.9": (with_id(1.9), "choices[0].token_ids[1]: Input should be a valid integer (got 1.9)"),
    "id true": (with_id(True), "choices[0].token_ids[1]: Input should be a valid integer (got true)"),
    "id '7'": (with_id("7"), "choices[0].token_ids[1]: Input should be a valid integer (got \"7\")"),
    "200,000 ids for 8": (lambda b: completion(b, token_ids=[5] * 200_000, logprobs={"token_logprobs": [-0.1] * 200_000}),
                          "token_ids has 200000 ids; between 1 and max_tokens=8"),
    "empty ids": (lambda b: completion(b, token_ids=[], logprobs={"token_logprobs": []}), "token_ids has 0 ids"),
    "missing ids": (lambda b: completion(b, token_ids=None), "choices[0].token_ids is missing"),
    "fewer log-probs": (lambda b: completion(b, logprobs={"token_logprobs": [-0.5]}), "1 log-probs for 3 sampled ids"),
    "no log-probs": (lambda b: completion(b, logprobs=None), "choices[0].logprobs is missing"),
    "no choices": (lambda b: {"choices": []}, "choices: List should have at least 1 item"),
    "error in a 200": (lambda b: {"error": {"message": "overloaded"}}, "choices: Field required"),
    "not JSON": (lambda b: "<html>502</html>", "is not JSON"),
    "JSON array": (lambda b: [1, 2], "Input should be a valid dictionary"),
    "deep JSON": (lambda b: "[" * 100_000 + "]" * 100_000, "nests too deeply"),
}


@pytest.fixture(scope="module")
def scripted():
    """A server whose /v1/completions answer is whatever ``server.script`` says (honest by default)."""
    server = ScriptedOpenAIServer(routes={"/v1/completions": lambda body: Raw(server.script(body))})
    server.script = completion
    with server:
        yield server


def policy_for(server, tokenizer, **kwargs) -> VLLMServerPolicy:
    kwargs.setdefault("timeout", 10)
    return VLLMServerPolicy([server.base_url], model="scripted", tokenizer=tokenizer, **kwargs)


def test_an_honest_server_is_recorded_as_it_answered(scripted, tiny_tokenizer):
    scripted.script = completion
    policy = policy_for(scripted, tiny_tokenizer)
    [gen] = policy.generate(CONV, sampling=SAMPLING)
    assert gen.token_ids == SAMPLED and gen.logprobs == LOGPROBS and gen.info["server"] == scripted.base_url
    assert gen.text == tiny_tokenizer.decode(SAMPLED, skip_special_tokens=True)
    policy.close()


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_every_bad_completion_is_a_server_error_naming_server_and_field(scripted, tiny_tokenizer, attack):
    script, words = ATTACKS[attack]
    scripted.script = lambda body: script(copy.deepcopy(body))
    before = len(scripted.route_requests)
    policy = policy_for(scripted, tiny_tokenizer)
    try:
        with pytest.raises(ServerError) as raised:
            policy.generate(CONV, sampling=SAMPLING)
    finally:
        policy.close()
        scripted.script = completion
    message = str(raised.value)
    assert words in message and scripted.base_url.rsplit("/v1", 1)[0] in message, message
    assert "\n" not in message and len(message) < 1000
    assert len(scripted.route_requests) - before == 1  # a server that answers wrongly is not asked again


def test_unrelated_text_never_enters_the_trajectory(scripted, tiny_tokenizer):
    scripted.script = lambda body: completion(body, text="rm -rf / # not what the ids say")
    policy = policy_for(scripted, tiny_tokenizer)
    try:
        [gen] = policy.generate(CONV, sampling=SAMPLING)
    finally:
        policy.close()
        scripted.script = completion
    assert gen.text == tiny_tokenizer.decode(SAMPLED, skip_special_tokens=True) and "rm" not in gen.text


def test_a_server_without_the_echo_is_accepted_only_when_asked(scripted, tiny_tokenizer):
    scripted.script = lambda body: completion(body, prompt_token_ids=None)
    policy = policy_for(scripted, tiny_tokenizer, require_echo=False)
    try:
        [gen] = policy.generate(CONV, sampling=SAMPLING)
        assert gen.token_ids == SAMPLED
        scripted.script = lambda body: completion(body, prompt_token_ids=[1, 2, 3])
        with pytest.raises(ServerError, match="prompt_token_ids differs"):  # a wrong echo, always refused
            policy.generate(CONV, sampling=SAMPLING)
    finally:
        policy.close()
        scripted.script = completion


# ---------------------------------------------------------------------------------------- transport
def test_a_dripped_body_meets_the_deadline(tiny_tokenizer):
    drip = ScriptedOpenAIServer(routes={"/v1/completions": lambda body: Raw(completion(body), drip=0.2)})
    headers = ScriptedOpenAIServer(routes={"/v1/completions": lambda body: Raw(completion(body), drip=0.2,
                                                                                drip_all=True)})
    for server in (drip, headers):
        with server:
            policy = policy_for(server, tiny_tokenizer, timeout=1.0, attempts=2)
            started = time.monotonic()
            with pytest.raises(ServerError, match=r"no complete response within the 1 s request deadline.*"
                                                  r"gave up after 2 tries"):
                policy.generate(CONV, sampling=SAMPLING)
            elapsed = time.monotonic() - started
            policy.close()
        assert 2.0 <= elapsed < 4.0, elapsed  # two 1 s tries and the back-off; the body would take ~60 s


def test_the_response_size_is_capped(tiny_tokenizer):
    big = {"pad": "x" * 1_000_000}
    cases = {  # Raw, words; none is read past the cap
        "declared": (Raw(big), "declares 1,000,011 bytes, over the 65,536-byte limit"),
        "undeclared": (Raw(big, content_length=None), "the response is over the 65,536-byte limit"),
        "declared 300 MB": (Raw({"choices": []}, content_length=300_000_000), "declares 300,000,000 bytes"),
    }
    for name, (raw, words) in cases.items():
        with ScriptedOpenAIServer(routes={"/v1/completions": lambda body, raw=raw: raw}) as server:
            policy = policy_for(server, tiny_tokenizer, max_response_bytes=65_536)
            started = time.monotonic()
            with pytest.raises(ServerError) as raised:
                policy.generate(CONV, sampling=SAMPLING)
            assert words in str(raised.value), (name, str(raised.value))
            assert time.monotonic() - started < 2, name
            assert len(server.route_requests) == 1, name  # refused, not retried
            policy.close()


def test_retry_after_is_honoured_and_4xx_is_not_retried(tiny_tokenizer):
    answers = [Raw({"error": "busy"}, status=429, headers={"Retry-After": "0.4"}), None]

    def busy_then_fine(body):
        answer = answers.pop(0)
        return answer or Raw(completion(body))

    with ScriptedOpenAIServer(routes={"/v1/completions": busy_then_fine}) as server:
        policy = policy_for(server, tiny_tokenizer)
        started = time.monotonic()
        [gen] = policy.generate(CONV, sampling=SAMPLING)
        assert gen.token_ids == SAMPLED and time.monotonic() - started >= 0.4
        assert len(server.route_requests) == 2
        policy.close()
    with ScriptedOpenAIServer(routes={"/v1/completions": lambda b: Raw({"error": "bad"}, status=400)}) as server:
        policy = policy_for(server, tiny_tokenizer)
        with pytest.raises(ServerError, match="HTTP 400") as raised:
            policy.generate(CONV, sampling=SAMPLING)
        assert raised.value.status == 400 and len(server.route_requests) == 1
        policy.close()


# ---------------------------------------------------------------------------------------- models, verify
@pytest.mark.parametrize("listing, words", [
    ({"data": [{"id": 7}]}, "data[0].id: Input should be a valid string"),
    ({"data": "scripted"}, "data: Input should be a valid list"),
    ({"object": "list"}, "data: Field required"),
    ("not json", "is not JSON"),
])
def test_a_malformed_model_list_is_a_server_error(tiny_tokenizer, listing, words):
    with ScriptedOpenAIServer(routes={"/v1/models": lambda body: Raw(listing)}) as server:
        with pytest.raises(ServerError) as raised:
            VLLMServerPolicy([server.base_url], model=None, tokenizer=tiny_tokenizer)
        assert words in str(raised.value) and server.base_url in str(raised.value), str(raised.value)


@pytest.fixture(scope="module")
def trainer(tiny_model_path):
    from agentgym.agents import TransformersPolicy
    return TransformersPolicy(tiny_model_path)


def prompt_logprobs(trainer, ids: list[int]) -> list:
    """The trainer's own log-prob of every prompt token, in vLLM's prompt_logprobs shape."""
    scored = trainer.score(ids[:1], ids[1:]).logprobs
    return [None] + [{str(t): {"logprob": lp, "rank": 1, "decoded_token": "?"}} for t, lp in zip(ids[1:], scored)]


VERIFY_ATTACKS = {
    "honest": (lambda rows, n: rows, None),
    "first action token only": (lambda rows, n: rows[:n + 1], "prompt_logprobs is"),
    "later tokens missing": (lambda rows, n: rows[:n + 1] + [None] * (len(rows) - n - 1), "has no entry"),
    "empty rows": (lambda rows, n: [], "prompt_logprobs is 0 rows"),
    "later tokens wrong": (lambda rows, n: rows[:n + 1] + [{k: {"logprob": v["logprob"] - 1.0} for k, v in r.items()}
                                                         for r in rows[n + 1:]], "serves stale or wrong weights"),
    "NaN row": (lambda rows, n: rows[:-1] + [{k: {"logprob": float("nan")} for k in rows[-1]}],
                "prompt_logprobs[...]"),
}


@pytest.mark.parametrize("attack", list(VERIFY_ATTACKS))
def test_verify_compares_every_probe_token(tiny_tokenizer, trainer, attack):
    tamper, words = VERIFY_ATTACKS[attack]

    def answer(body):
        ids = body["prompt"]
        rows = prompt_logprobs(trainer, ids)
        split = max(1, len(ids) // 2)  # verify's context: the probe's first half; its action: the rest
        return Raw(completion(body, prompt_logprobs=tamper(rows, split)))

    routes = {"/v1/completions": answer,
              "/v1/models": lambda body: Raw({"data": [{"id": "scripted"}]})}
    with ScriptedOpenAIServer(routes=routes) as server:
        policy = policy_for(server, tiny_tokenizer)
        assert len(policy.probe_ids) >= 4  # several action tokens: a one-token comparison would pass
        try:
            if words is None:
                assert max(policy.verify(trainer)) < 1e-4
            else:
                with pytest.raises(WeightSyncError) as raised:
                    policy.verify(trainer)
                message = str(raised.value)
                assert server.base_url in message, message
                if words != "prompt_logprobs[...]":
                    assert words in message, message
                else:
                    assert "prompt_logprobs[" in message and "finite number" in message, message
        finally:
            policy.close()


def test_a_compressed_body_is_capped_as_it_inflates(tiny_tokenizer):
    import gzip

    bomb = gzip.compress(b'{"choices": [{"text": "' + b"x" * 5_000_000 + b'"}]}')  # ~5 KB on the wire
    raw = Raw(bomb, headers={"Content-Encoding": "gzip"})
    with ScriptedOpenAIServer(routes={"/v1/completions": lambda body: raw}) as server:
        policy = policy_for(server, tiny_tokenizer, max_response_bytes=65_536)
        with pytest.raises(ServerError, match="the response is over the 65,536-byte limit"):
            policy.generate(CONV, sampling=SAMPLING)
        assert len(server.route_requests) == 1
        policy.close()


def test_the_openai_policy_shares_the_size_cap():
    from agentgym.agents import PolicyError
    from agentgym.agents.openai_policy import OpenAIPolicy
    from agentgym.testing.openai_server import Fault, Reply

    with ScriptedOpenAIServer(responder=lambda body: Reply(content="fine")) as server:
        policy = OpenAIPolicy("m", base_url=server.base_url, max_response_bytes=100_000, max_attempts=3)
        server.fail_next(Fault("huge_arguments", size=2_000_000))
        started = time.monotonic()
        with pytest.raises(PolicyError, match=r"over the 100,000-byte limit \(max_response_bytes\); not retried"):
            policy.generate(CONV)
        assert time.monotonic() - started < 5 and len(server.requests) == 1
        assert policy.generate(CONV)[0].text == "fine"  # the next request is served as usual
        policy.close()
