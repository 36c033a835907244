"""The reference solution of a goal: the target product, the options to choose, and a shortest
sequence of actions that buys them from any page. For feedback sources and oracles, never the policy.

From the search page the shortest purchase is: one search that lists the target, "Next >" clicks
to its results page, the product click, one click per goal option, "Buy Now". The search query is
the candidate (product query, goal instruction, product title) that ranks the target highest.
From other pages the planner compares staying (paging through the current results, or finishing on
the target's item page) with going back to search, and returns the shorter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .shop import (BACK_TO_SEARCH, BUY_NOW, MAX_QUERY_CHARS, NEXT_PAGE, PREV_PAGE, RESULTS_PER_PAGE,
                   PageState, Shop)

__all__ = ["Reference", "build_reference"]


@dataclass(frozen=True)
class Reference:
    asin: str
    goal_options: dict[str, str]  # option name -> value to choose (goal options the product offers)
    query: str | None  # None: no candidate query lists the target (path unknown)
    results_page: int  # the page of ``query``'s results that lists the target

    def start_path(self) -> list[str]:
        if self.query is None:
            return []
        return ([f"search[{self.query}]"] + [f"click[{NEXT_PAGE}]"] * (self.results_page - 1)
                + [f"click[{self.asin}]"] + self._finish({}))

    def _finish(self, chosen: dict[str, str]) -> list[str]:
        return [f"click[{v}]" for k, v in self.goal_options.items() if chosen.get(k) != v] + [f"click[{BUY_NOW}]"]

    def path_from(self, state: PageState) -> list[str]:
        """A shortest action list that buys the target from ``state`` ([] once done or unknown)."""
        if state.page == "done" or self.query is None:
            return []
        restart = self.start_path() if state.page == "search" else [f"click[{BACK_TO_SEARCH}]"] + self.start_path()
        options = [restart]
        if state.page == "results" and self.asin in state.results:
            target_page = state.results.index(self.asin) // RESULTS_PER_PAGE + 1
            step = NEXT_PAGE if target_page > state.page_no else PREV_PAGE
            options.append([f"click[{step}]"] * abs(target_page - state.page_no)
                           + [f"click[{self.asin}]"] + self._finish({}))
        if state.page in ("item", "sub"):
            back = [f"click[{PREV_PAGE}]"] if state.page == "sub" else []
            if state.asin == self.asin:
                options.append(back + self._finish(state.chosen))
            elif state.page == "item":
                options.append([f"click[{PREV_PAGE}]"] + self.path_from(
                    PageState(page="results", query=state.query, results=state.results, page_no=state.page_no)))
            else:
                options.append(back + self.path_from(
                    PageState(page="item", query=state.query, results=state.results,
                              page_no=state.page_no, asin=state.asin, options=state.options)))
        return min(options, key=len)

    def as_payload(self, state: PageState) -> dict[str, Any]:
        return {"asin": self.asin, "goal_options": dict(self.goal_options), "query": self.query,
                "path": self.path_from(state), "path_from_start": self.start_path()}


def _options_to_choose(product: dict[str, Any], goal_options: Any) -> dict[str, str]:
    offered = product.get("options") or {}
    if isinstance(goal_options, dict):
        return {k: v for k, v in goal_options.items() if v in offered.get(k, [])}
    # human goals list bare values: choose each under the option that offers it
    wanted = [str(v).lower() for v in goal_options or []]
    chosen = {}
    for name, values in offered.items():
        for value in wanted:
            if value in values:
                chosen[name] = value
                break
    return chosen


def build_reference(shop: Shop, goal: dict[str, Any]) -> Reference:
    product = shop.product(goal["asin"])
    candidates = [product.get("query") or "", goal.get("instruction_text") or "", product["Title"]]
    best: tuple[int, str] | None = None
    for raw in candidates:
        query = " ".join(raw.split())[:MAX_QUERY_CHARS].lower()
        if not query:
            continue
        results = shop.search(query)
        if goal["asin"] in results:
            page = results.index(goal["asin"]) // RESULTS_PER_PAGE + 1
            if best is None or page < best[0]:
                best = (page, query)
            if page == 1:
                break
    return Reference(asin=goal["asin"], goal_options=_options_to_choose(product, goal["goal_options"]),
                     query=best[1] if best else None, results_page=best[0] if best else 1)
