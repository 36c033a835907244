"""``agentgym/WebShop-v0``: the WebShop text shop as an ``AgentEnv``.

>>> import gymnasium as gym, agentgym
>>> env = gym.make("agentgym/WebShop-v0", data_dir="../shared/data/webshop")  # doctest: +SKIP
>>> obs, info = env.reset(seed=0)  # doctest: +SKIP
>>> info["available_actions"]  # doctest: +SKIP
['search[<query>]']
>>> obs, reward, terminated, truncated, info = env.step("search[leak proof travel bottles]")  # doctest: +SKIP

Episodes end at "Buy Now" (terminated, reward = the purchase score) or at the step limit
(truncated, reward 0; default 15 steps, SERL's setting). Reset options choose the goal:
``{"goal_index": i}`` (an index into ``env.unwrapped.shop.goals``) or ``{"asin": "B0..."}`` (a goal
of that product, chosen with the episode seed); without options the seed draws a goal weighted like
the original (by attribute rarity for synthetic goals).

Feedback per step: ``error`` for an invalid or unavailable action (the page is unchanged);
otherwise ``observation`` (what the action did) and ``page_diff`` (a unified diff of the page
text); always ``reference`` (target ASIN, goal options, a shortest action path from the current
page - for feedback sources, never shown to the policy); ``outcome`` with the reward components
at the purchase or at the step limit.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import numpy as np

from agentgym.envspec import EnvDefaults
from agentgym.env import AgentEnv, EnvReply, EnvReset
from agentgym.types import Feedback, FeedbackKind, Message

from .actions import FORMAT_HELP, ActionParseError, parse_action
from .catalog import DEFAULT_PRICE_SEED
from .goals import DEFAULT_GOAL_SEED
from .reference import Reference, build_reference
from .reward import score_purchase
from .shop import ActionError, Browser, Shop, get_shop

__all__ = ["WebShopEnv", "TOOLS", "SYSTEM_PROMPT", "page_diff"]

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "search",
        "description": "Search the shop for products. Only possible on the search page.",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string", "description": "Words describing the product to find."}},
            "required": ["query"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "click",
        "description": ("Click a label shown on the current page: a product id, an option value, "
                        "'Next >', '< Prev', 'Back to Search', 'Description', 'Features', "
                        "'Reviews' or 'Buy Now'."),
        "parameters": {"type": "object", "properties": {
            "label": {"type": "string", "description": "The label exactly as shown (case-insensitive)."}},
            "required": ["label"], "additionalProperties": False}}},
]

SYSTEM_PROMPT = (
    "You are shopping in WebShop. Follow the instruction to find and buy the right product with the "
    "right options. Each turn, answer with one action: search[your query] on the search page, or "
    "click[label] where label is one of the clickable labels listed on the page. Choose every option "
    "the instruction asks for before click[Buy Now].")

MAX_DIFF_LINES = 60


def page_diff(before: str, after: str, max_lines: int = MAX_DIFF_LINES) -> tuple[str, int, int]:
    """A compact unified diff (no context lines) of two page texts: (text, added, removed)."""
    lines = list(difflib.unified_diff(before.splitlines(), after.splitlines(), "before", "after",
                                      n=0, lineterm=""))
    added = sum(1 for l in lines if l.startswith("+") and not l.startswith("+++"))
    removed = sum(1 for l in lines if l.startswith("-") and not l.startswith("---"))
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more diff lines)"]
    return "\n".join(lines), added, removed


def webshop_headline(rows) -> dict[str, float]:
    """WebShop's published numbers: score = mean purchase reward x 100, and success rate (%) =
    episodes with reward 1."""
    return {"score": 100.0 * sum(r.reward for r in rows) / len(rows),
            "success_rate": 100.0 * sum(r.reward >= 1.0 for r in rows) / len(rows)}


class WebShopEnv(AgentEnv):
    """WebShop on a catalogue directory (see the module docstring).

    Arguments: ``data_dir`` (default ``$WEBSHOP_DATA`` or ``agentgym data webshop``'s folder),
    ``goals`` ("synthetic" or "human"), ``num_products`` (first N products), ``show_attrs``
    (an "Attributes" sub-page, off as in the benchmark), ``price_seed`` / ``goal_seed`` (the
    seeded draws made when the shop is built), ``max_steps`` (default 15), ``max_action_chars``
    (default 1 M, so a 100 KB search reaches the parser and is answered with the page shown again).
    """

    RESET_OPTIONS = ("goal_index", "asin")
    defaults = EnvDefaults(max_steps=15, max_new_tokens=64, category_field="category", headline=lambda rows: webshop_headline(rows),
                           data_hint="set WEBSHOP_DATA to a WebShop data folder "
                           "(or run `agentgym data webshop`), or pass --env.kwargs '{\"data_dir\": ...}'")

    def tasks(self) -> list[dict[str, Any]]:
        return [{"goal_index": i} for i in range(len(self.shop.goals))]

    def __init__(self, data_dir: str | os.PathLike | None = None, *, goals: str = "synthetic",
                 num_products: int | None = None, show_attrs: bool = False,
                 price_seed: int = DEFAULT_PRICE_SEED, goal_seed: int = DEFAULT_GOAL_SEED,
                 max_steps: int | None = None, max_action_chars: int = 1_000_000,
                 render_mode: str | None = None, step_timeout_s: float | None | str = "default"):
        super().__init__(max_steps=max_steps, max_action_chars=max_action_chars, render_mode=render_mode,
                         step_timeout_s=step_timeout_s)
        self.shop: Shop = get_shop(data_dir, goals=goals, num_products=num_products,
                                   show_attrs=show_attrs, price_seed=price_seed, goal_seed=goal_seed)
        self._cum_weights = np.cumsum(self.shop.weights)
        self.goal_kind = goals
        self.goal: dict[str, Any] = {}
        self.goal_index = -1
        self.browser: Browser | None = None
        self.reference: Reference | None = None
        self._page = ""

    # ------------------------------------------------------------------ reset
    def _choose_goal(self, options: dict[str, Any]) -> int:
        unknown = sorted(set(options) - set(self.RESET_OPTIONS))
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; WebShop accepts {list(self.RESET_OPTIONS)}")
        goals = self.shop.goals
        if "goal_index" in options:
            index = options["goal_index"]
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(goals):
                raise ValueError(f"goal_index must be an int in [0, {len(goals)}), got {index!r}")
            return int(index)
        if "asin" in options:
            matching = [i for i, g in enumerate(goals) if g["asin"] == options["asin"]]
            if not matching:
                raise ValueError(f"no goal for asin {options['asin']!r} among {len(goals)} goals")
            return matching[int(self.np_random.integers(len(matching)))]
        draw = self.np_random.random() * self._cum_weights[-1]
        return int(min(np.searchsorted(self._cum_weights, draw, side="right"), len(goals) - 1))

    def _reset(self, options: dict[str, Any]) -> EnvReset:
        self.goal_index = self._choose_goal(options)
        self.goal = self.shop.goals[self.goal_index]
        self.browser = Browser(self.shop, self.goal["instruction_text"])
        self.reference = build_reference(self.shop, self.goal)
        self._page = self.browser.render()
        task = {"id": f"webshop-{self.goal_index}", "goal_index": self.goal_index,
                "instruction": self.goal["instruction_text"], "category": self.goal.get("category"),
                "goals": self.goal_kind}
        info = {**self._page_info(), "reference": self.reference.as_payload(self.browser.state)}
        return EnvReset(messages=[Message(role="system", content=SYSTEM_PROMPT),
                                  Message(role="user", content=self._page)],
                        task=task, tools=TOOLS, info=info)

    def _page_info(self) -> dict[str, Any]:
        b = self.browser
        return {"available_actions": b.available_actions(), "has_search_bar": b.has_search_bar(),
                "clickables": [c.label for c in b.clickables()], "page": b.state.page,
                "asin": b.state.asin, "chosen_options": b.state.chosen}

    # ------------------------------------------------------------------ step
    def _reference_feedback(self) -> Feedback:
        payload = self.reference.as_payload(self.browser.state)
        text = (f"Target {payload['asin']} with options {payload['goal_options']}; shortest path from here: "
                + (" -> ".join(payload["path"]) if payload["path"] else "(none)"))
        return Feedback(kind=FeedbackKind.REFERENCE, step=0, text=text, payload=payload)

    def _step(self, action: str) -> EnvReply:
        before = self._page
        browser = self.browser
        feedback: list[Feedback] = []
        reward, terminated = 0.0, False
        extra: dict[str, Any] = {}
        try:
            parsed = parse_action(action)
            if parsed.name == "search":
                said, bought = browser.search(parsed.argument), False
            else:
                said, bought = browser.click(parsed.argument)
        except (ActionParseError, ActionError) as exc:
            kind = exc.kind if isinstance(exc, ActionError) else "malformed_action"
            text = f"Invalid action: {exc}"
            feedback.append(Feedback(kind=FeedbackKind.ERROR, step=0, text=text, payload={
                "type": kind, "action": action[:200], "available_actions": browser.available_actions()}))
            reply = f"{text}\nThe page is unchanged.\n\n{self._page}"
        else:
            self._page = browser.render()
            diff, added, removed = page_diff(before, self._page)
            feedback.append(Feedback(kind=FeedbackKind.OBSERVATION, step=0, text=said, payload={
                "action": parsed.name, "argument": parsed.argument[:200], "page": browser.state.page}))
            feedback.append(Feedback(kind=FeedbackKind.PAGE_DIFF, step=0, text=diff, payload={
                "added": added, "removed": removed, "page": browser.state.page}))
            reply = self._page
            if bought:
                score = score_purchase(self.goal, self.shop.product(browser.state.asin),
                                       self.shop.catalogue.prices[browser.state.asin], browser.state.chosen)
                reward, terminated = score.total, True
                outcome = {**score.as_dict(), "success": score.total == 1.0, "purchased": True,
                           "asin": browser.state.asin, "options": browser.state.chosen,
                           "target_asin": self.goal["asin"]}
                feedback.append(Feedback(kind=FeedbackKind.OUTCOME, step=0, payload=outcome, text=(
                    f"Purchase reward {score.total:.3f}: r_type={score.r_type}, r_att={score.r_att:.3f}, "
                    f"r_option={score.r_option}, r_price={score.r_price}")))
                extra["reward_components"] = outcome
                reply += f"\nYour score (min 0.0, max 1.0): {score.total:.3f}"
        feedback.append(self._reference_feedback())
        if not terminated and self.step_count >= self.max_steps:
            feedback.append(Feedback(kind=FeedbackKind.OUTCOME, step=0, payload={
                "total": 0.0, "success": False, "purchased": False, "target_asin": self.goal["asin"]},
                text=f"Step limit of {self.max_steps} reached without a purchase: reward 0."))
        return EnvReply(messages=[Message(role="user", content=reply)], reward=reward,
                        terminated=terminated, feedback=feedback, info={**self._page_info(), **extra})
