"""The WebShop env on the shared catalogue: page flow, feedback, oracle and random agents, bad input."""

from __future__ import annotations

import json
import random

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentgym  # noqa: F401  (registers the ids)
from agentgym.envs.webshop.actions import ActionParseError, parse_action
from agentgym.envs.webshop.env import TOOLS, WebShopEnv, page_diff
from agentgym.types import FeedbackKind


@pytest.fixture(scope="module")
def data(shared_data):
    return shared_data / "webshop"


@pytest.fixture()
def env(data):
    return WebShopEnv(data)


def kinds(info):
    return [f.kind for f in info["feedback"]]


def feedback(info, kind):
    return [f for f in info["feedback"] if f.kind is kind]


# ------------------------------------------------------------------ construction, reset, tools
def test_gym_make_and_check_env(data):
    made = gym.make("agentgym/WebShop-v0", data_dir=str(data))
    assert isinstance(made.unwrapped, WebShopEnv) and made.unwrapped.max_steps == 15
    check_env(made.unwrapped, skip_render_check=True)


def test_reset_shows_instruction_and_search_page(env):
    obs, info = env.reset(seed=3)
    assert obs.startswith("Instruction: ") and "search[<query>]" in obs
    assert info["available_actions"] == ["search[<query>]"] and info["has_search_bar"]
    assert info["task"]["instruction"] in obs and "asin" not in info["task"]
    assert env.messages[0].role == "system" and "click[" in env.messages[0].content
    assert [t["function"]["name"] for t in info["tools"]] == ["search", "click"]
    assert json.loads(json.dumps(TOOLS)) == TOOLS
    assert info["reference"]["asin"] == env.goal["asin"]


def test_reset_options_choose_the_goal(env):
    env.reset(options={"goal_index": 7})
    assert env.goal is env.shop.goals[7]
    asin = env.shop.goals[11]["asin"]
    env.reset(seed=1, options={"asin": asin})
    assert env.goal["asin"] == asin
    first = env.reset(seed=5)[1]["task"]
    assert env.reset(seed=5)[1]["task"] == first
    for bad in ({"goal_index": -1}, {"goal_index": 10**6}, {"goal_index": "3"}, {"asin": "NOPE"}, {"colour": "red"}):
        with pytest.raises(ValueError):
            env.reset(options=bad)


def test_default_data_dir_error_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("WEBSHOP_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="WebShop data not found"):
        WebShopEnv()


# ------------------------------------------------------------------ page flow and feedback
def test_page_flow_next_prev_subpages_and_back(env):
    env.reset(options={"goal_index": 0})
    obs, _, _, _, info = env.step("search[women's dresses]")
    assert info["page"] == "results" and "click[Next >]" in info["available_actions"]
    assert "click[< Prev]" not in info["available_actions"]
    assert [f.kind for f in info["feedback"]][:2] == [FeedbackKind.OBSERVATION, FeedbackKind.PAGE_DIFF]
    first_page = info["clickables"][2:]
    obs, _, _, _, info = env.step("click[next >]")
    assert "Results page 2" in obs and "click[< Prev]" in info["available_actions"]
    assert not set(info["clickables"][3:]) & set(first_page)
    env.step("click[< prev]")
    asin = first_page[0]
    obs, _, _, _, info = env.step(f"click[{asin.lower()}]")
    assert info["page"] == "item" and info["asin"] == asin and "click[Buy Now]" in info["available_actions"]
    option = next(c for c in info["clickables"] if c not in ("Back to Search", "< Prev", "Description"))
    obs, _, _, _, info = env.step(f"click[{option}]")
    assert option in info["chosen_options"].values() and "(selected: " in obs
    diff = feedback(info, FeedbackKind.PAGE_DIFF)[0]
    assert diff.payload["added"] == 1 and diff.payload["removed"] == 1
    obs, _, _, _, info = env.step("click[Features]")
    assert info["page"] == "sub" and info["clickables"] == ["Back to Search", "< Prev"]
    obs, _, _, _, info = env.step("click[< Prev]")
    assert info["page"] == "item" and option in info["chosen_options"].values()  # options survive
    obs, _, _, _, info = env.step("click[Back to Search]")
    assert info["page"] == "search" and info["chosen_options"] == {}


def test_step_limit_truncates_with_outcome(data):
    env = WebShopEnv(data, max_steps=2)
    env.reset(seed=0)
    _, _, term, trunc, _ = env.step("search[shoes]")
    assert not term and not trunc
    _, reward, term, trunc, info = env.step("click[next >]")
    assert trunc and not term and reward == 0.0
    outcome = feedback(info, FeedbackKind.OUTCOME)[0]
    assert outcome.payload["purchased"] is False and outcome.payload["total"] == 0.0


def test_page_diff_is_compact():
    text, added, removed = page_diff("a\nb\nc", "a\nB\nc")
    assert (added, removed) == (1, 1) and "-b" in text and "+B" in text and "\n a" not in text
    long_text, _, _ = page_diff("\n".join(map(str, range(500))), "x", max_lines=10)
    assert long_text.count("\n") == 10 and "more diff lines" in long_text


# ------------------------------------------------------------------ oracle and random agents
def test_oracle_following_the_reference_buys_the_target_in_every_episode(env):
    rewards = []
    for index in range(len(env.shop.goals)):
        obs, info = env.reset(options={"goal_index": index})
        path = info["reference"]["path"]
        assert path, f"goal {index}: no reference path"
        for step, action in enumerate(path):
            obs, reward, term, trunc, info = env.step(action)
            assert not feedback(info, FeedbackKind.ERROR), (index, action, info["feedback"][0].text)
            assert term == (step == len(path) - 1) and not trunc
        outcome = feedback(info, FeedbackKind.OUTCOME)[0].payload
        assert outcome["asin"] == env.goal["asin"] and outcome["options"] == env.goal["goal_options"]
        rewards.append(reward)
    assert len(rewards) == 501 and sum(r == 1.0 for r in rewards) == 480


def test_reference_path_from_a_detour(env):
    obs, info = env.reset(options={"goal_index": 0})
    env.step("search[console table]")
    obs, _, _, _, info = env.step(f"click[{env.browser.clickables()[-1].label}]")
    path = feedback(info, FeedbackKind.REFERENCE)[0].payload["path"]
    assert path[0] in ("click[< Prev]", "click[Back to Search]")
    for action in path:
        obs, reward, term, trunc, info = env.step(action)
        assert not feedback(info, FeedbackKind.ERROR)
    assert term and info["reward_components"]["asin"] == env.goal["asin"]


def test_random_agent_episodes_end_cleanly(env):
    rng = random.Random(0)
    words = "dress table shoes hair oil wood black small pack set".split()
    for episode in range(25):
        obs, info = env.reset(seed=episode)
        done, steps = False, 0
        while not done:
            choice = rng.choice(info["available_actions"] + ["junk"])
            action = f"search[{rng.choice(words)} {rng.choice(words)}]" if choice.startswith("search[") else choice
            obs, reward, term, trunc, info = env.step(action)
            steps += 1
            assert 0.0 <= reward <= 1.0 and isinstance(obs, str)
            done = term or trunc
        assert steps <= env.max_steps
        assert feedback(info, FeedbackKind.OUTCOME), "every episode ends with an outcome record"
        with pytest.raises(RuntimeError):
            env.step("click[buy now]")


# ------------------------------------------------------------------ bad input
BAD_ACTIONS = [
    "", "   ", "buy it", "search", "search[]", "search[   ]", "click[]", "click[nothing here]",
    "click[Buy Now]",  # not on the search page
    "search[" + "x" * 100_000 + "]",  # 100 KB query
    "search[☕🛒✨]", "click[café ☕]", "search[the of and]", "search[shoes] and more",
    "click[buy now", '{"name": "pay", "arguments": {}}', '{"name": "click", "arguments": "{bad"}',
    "\x00\x01", "search[\udcff]",
]


@pytest.mark.parametrize("action", BAD_ACTIONS, ids=range(len(BAD_ACTIONS)))
def test_bad_input_gives_error_feedback_and_keeps_the_page(env, action):
    obs0, info0 = env.reset(seed=2)
    obs, reward, term, trunc, info = env.step(action)
    errors = feedback(info, FeedbackKind.ERROR)
    assert errors and reward == 0.0 and not term
    assert info["page"] == "search" and info["available_actions"] == info0["available_actions"]
    assert obs.endswith(obs0) and "The page is unchanged." in obs
    assert FeedbackKind.PAGE_DIFF not in kinds(info)
    json.dumps(errors[0].payload)


def test_unavailable_actions_on_other_pages(env):
    env.reset(options={"goal_index": 0})
    obs_results = env.step("search[dress]")[0]
    for action in ("search[shoes]", "click[Buy Now]", "click[Description]", "click[< Prev]"):
        obs, _, _, _, info = env.step(action)
        assert feedback(info, FeedbackKind.ERROR) and info["page"] == "results"
        assert obs.endswith(obs_results)


def test_non_text_and_overlong_actions_are_errors(env):
    env.reset(seed=0)
    for action in (None, 12, b"search[x]", "search[" + "y" * 2_000_000 + "]"):
        _, _, term, _, info = env.step(action)
        assert feedback(info, FeedbackKind.ERROR) and not term


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(
    st.text(max_size=300),
    st.builds(lambda kw, arg, pre: f"{pre}{kw}[{arg}]",
              st.sampled_from(["search", "click", "SEARCH", "Click", "clik", "search "]),
              st.text(max_size=80), st.text(max_size=20))))
def test_fuzz_actions_never_raise_and_errors_keep_the_page(env, text):
    obs0, info0 = env.reset(seed=4)
    obs, reward, term, trunc, info = env.step(text)
    assert isinstance(obs, str) and 0.0 <= reward <= 1.0
    if feedback(info, FeedbackKind.ERROR):
        assert info["page"] == "search" and obs.endswith(obs0)
    else:
        assert info["page"] == "results"


# ------------------------------------------------------------------ action parser
@pytest.mark.parametrize("text, expected", [
    ("search[red shoes]", ("search", "red shoes")),
    ("  Click [Buy Now]\n", ("click", "Buy Now")),
    ("Thought: I need shoes.\nAction: search[red shoes]", ("search", "red shoes")),
    ("I could click[a] but instead click[b]", ("click", "b")),
    ("<action>click[< Prev]</action> extra words", ("click", "< Prev")),
    ("click[size [large]]", ("click", "size [large]")),
    ('{"name": "click", "arguments": {"label": "Buy Now"}}', ("click", "Buy Now")),
    ('<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"hat\\"}"}</tool_call>', ("search", "hat")),
])
def test_parse_action_accepts(text, expected):
    assert tuple(parse_action(text)) == expected


@pytest.mark.parametrize("text", ["", "buy", "search[x] please", "click[x", '{"name": "buy", "arguments": {}}',
                                  '{"name": "click", "arguments": {"text": "x"}}'])
def test_parse_action_rejects(text):
    with pytest.raises(ActionParseError):
        parse_action(text)
