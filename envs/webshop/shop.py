"""The text shop: pages, what is clickable on each, and what a click or a search does.

Pages and their clickable labels (matched case-insensitively, like the original):

- ``search``: no clickables; the only action is ``search[query]``;
- ``results``: "Back to Search", "< Prev" (page > 1), "Next >" (more results), one ASIN per product
  (10 per page, at most 50 results);
- ``item``: "Back to Search", "< Prev" (back to the results), every option value, "Description",
  "Features", "Reviews" (+ "Attributes" with ``show_attrs``), "Buy Now";
- ``sub`` (description / features / reviews / attributes): "Back to Search", "< Prev" (the item);
- ``done``: nothing (the episode is over).

``Shop`` holds the catalogue, the search index and the goals, and is shared by every env instance
that uses the same data; ``Browser`` is one episode's state (immutable ``PageState`` snapshots).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field, replace
from typing import Any

from .catalog import DEFAULT_PRICE_SEED, Catalogue, load_catalogue
from .goals import DEFAULT_GOAL_SEED, GOAL_BUILDERS
from .search import SearchIndex

__all__ = ["Shop", "Browser", "PageState", "Clickable", "ActionError", "get_shop",
           "SEARCH_RETURN_N", "RESULTS_PER_PAGE", "MAX_QUERY_CHARS", "BUY_NOW", "BACK_TO_SEARCH",
           "NEXT_PAGE", "PREV_PAGE", "SUB_PAGES"]

SEARCH_RETURN_N = 50
RESULTS_PER_PAGE = 10
MAX_QUERY_CHARS = 1000  # a longer query is an error, not a 100 KB BM25 lookup
BUY_NOW = "Buy Now"
BACK_TO_SEARCH = "Back to Search"
NEXT_PAGE = "Next >"
PREV_PAGE = "< Prev"
SUB_PAGES = ("Description", "Features", "Reviews")
ATTRIBUTES_PAGE = "Attributes"


class ActionError(ValueError):
    """An action that is not possible on the current page (the page stays as it was)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Clickable:
    label: str  # as shown on the page
    kind: str  # button | product | option
    option_name: str | None = None


@dataclass(frozen=True)
class PageState:
    page: str = "search"  # search | results | item | sub | done
    query: str | None = None
    results: tuple[str, ...] = ()
    page_no: int = 1
    asin: str | None = None
    options: tuple[tuple[str, str], ...] = ()  # chosen (name, value), in choice order
    sub_page: str | None = None

    @property
    def chosen(self) -> dict[str, str]:
        return dict(self.options)


class Shop:
    """Catalogue + search index + goals for one data directory."""

    def __init__(self, catalogue: Catalogue, index: SearchIndex, goals: list[dict[str, Any]],
                 *, show_attrs: bool = False):
        self.catalogue = catalogue
        self.index = index
        self.goals = goals
        self.show_attrs = show_attrs
        self.weights = [float(g.get("weight", 1.0)) for g in goals]

    @classmethod
    def from_dir(cls, data_dir: str | os.PathLike | None = None, *, goals: str = "synthetic",
                 num_products: int | None = None, show_attrs: bool = False,
                 price_seed: int = DEFAULT_PRICE_SEED, goal_seed: int = DEFAULT_GOAL_SEED) -> "Shop":
        if goals not in GOAL_BUILDERS:
            raise ValueError(f"goals must be one of {sorted(GOAL_BUILDERS)}, got {goals!r}")
        catalogue = load_catalogue(data_dir, num_products=num_products, price_seed=price_seed)
        index = SearchIndex.load_or_build(catalogue.contents, [p["asin"] for p in catalogue.products],
                                          catalogue.fingerprint)
        goal_list = GOAL_BUILDERS[goals](catalogue, goal_seed)
        if not goal_list:
            raise ValueError(f"no {goals} goals in {catalogue.source}: the instruction file "
                             "(items_ins_v2*.json / items_human_ins.json) is missing or empty")
        return cls(catalogue, index, goal_list, show_attrs=show_attrs)

    def search(self, query: str) -> tuple[str, ...]:
        return tuple(self.index.search(query, SEARCH_RETURN_N))

    def product(self, asin: str) -> dict[str, Any]:
        return self.catalogue.by_asin[asin]


_SHOPS: dict[tuple, Shop] = {}
_SHOPS_LOCK = threading.Lock()


def get_shop(data_dir: str | os.PathLike | None = None, **kwargs: Any) -> Shop:
    """A process-wide shared ``Shop`` per (data directory, settings): loading is the slow part."""
    from .catalog import resolve_data_dir

    key = (str(resolve_data_dir(data_dir).resolve()), tuple(sorted(kwargs.items())))
    with _SHOPS_LOCK:
        if key not in _SHOPS:
            _SHOPS[key] = Shop.from_dir(key[0], **kwargs)
        return _SHOPS[key]


def _norm_label(label: str) -> str:
    return " ".join(label.split()).lower()


@dataclass
class Browser:
    """One shopper's view of the shop: the current page, its text and its clickables."""

    shop: Shop
    instruction: str
    state: PageState = field(default_factory=PageState)

    # ---------------------------------------------------------------- what is on the page
    def clickables(self, state: PageState | None = None) -> list[Clickable]:
        s = state or self.state
        if s.page == "results":
            out = [Clickable(BACK_TO_SEARCH, "button")]
            if s.page_no > 1:
                out.append(Clickable(PREV_PAGE, "button"))
            if s.page_no * RESULTS_PER_PAGE < len(s.results):
                out.append(Clickable(NEXT_PAGE, "button"))
            out += [Clickable(asin, "product") for asin in self._page_results(s)]
            return out
        if s.page == "item":
            product = self.shop.product(s.asin)
            out = [Clickable(BACK_TO_SEARCH, "button"), Clickable(PREV_PAGE, "button")]
            for name, values in (product.get("options") or {}).items():
                out += [Clickable(v, "option", name) for v in values]
            out += [Clickable(p, "button") for p in self._sub_pages()]
            out.append(Clickable(BUY_NOW, "button"))
            return out
        if s.page == "sub":
            return [Clickable(BACK_TO_SEARCH, "button"), Clickable(PREV_PAGE, "button")]
        return []

    def clickable_map(self, state: PageState | None = None) -> dict[str, Clickable]:
        # Later entries win on a label clash (an option value equal to another option's value),
        # as in the original where the page's radio inputs overwrite earlier labels.
        return {_norm_label(c.label): c for c in self.clickables(state)}

    def has_search_bar(self, state: PageState | None = None) -> bool:
        return (state or self.state).page == "search"

    def available_actions(self, state: PageState | None = None) -> list[str]:
        s = state or self.state
        actions = ["search[<query>]"] if self.has_search_bar(s) else []
        return actions + [f"click[{c.label}]" for c in self.clickables(s)]

    def _sub_pages(self) -> list[str]:
        return list(SUB_PAGES) + ([ATTRIBUTES_PAGE] if self.shop.show_attrs else [])

    def _page_results(self, s: PageState) -> tuple[str, ...]:
        start = (s.page_no - 1) * RESULTS_PER_PAGE
        return s.results[start:start + RESULTS_PER_PAGE]

    # ---------------------------------------------------------------- actions
    def search(self, query: str) -> str:
        """Run a search from the search page; returns a one-line account of what happened."""
        if self.state.page != "search":
            raise ActionError(f"search is only possible on the search page; this is the {self.state.page} "
                              f"page (click[{BACK_TO_SEARCH}] first)", "unavailable")
        query = " ".join(query.split())
        if not query:
            raise ActionError("empty search query: write search[words describing the product]", "empty_query")
        if len(query) > MAX_QUERY_CHARS:
            raise ActionError(f"search query of {len(query)} characters exceeds the limit of "
                              f"{MAX_QUERY_CHARS}", "query_too_long")
        from .search import tokenize

        if not tokenize(query):
            raise ActionError(f"search query {query[:80]!r} has no searchable words (only stop words, "
                              "punctuation or symbols)", "no_search_terms")
        query = query.lower()
        results = self.shop.search(query)
        self.state = PageState(page="results", query=query, results=results, page_no=1)
        return f"Searched for {query!r}: {len(results)} results."

    def click(self, label: str) -> tuple[str, bool]:
        """Click a label on the page; returns (what happened, whether this was the purchase)."""
        s = self.state
        target = self.clickable_map().get(_norm_label(label))
        if target is None:
            shown = ", ".join(c.label for c in self.clickables()) or "nothing (use search[...])"
            raise ActionError(f"{label[:80]!r} is not clickable on the {s.page} page; clickable: {shown}",
                              "not_clickable")
        name = _norm_label(target.label)
        if name == _norm_label(BACK_TO_SEARCH):
            self.state = PageState()
            return "Went back to the search page.", False
        if s.page == "results":
            if target.kind == "product":
                self.state = replace(s, page="item", asin=target.label, options=(), sub_page=None)
                return f"Opened product {target.label}.", False
            step = 1 if name == _norm_label(NEXT_PAGE) else -1
            self.state = replace(s, page_no=s.page_no + step)
            return f"Went to results page {s.page_no + step}.", False
        if s.page == "item":
            if target.kind == "option":
                chosen = [(k, v) for k, v in s.options if k != target.option_name]
                self.state = replace(s, options=tuple(chosen + [(target.option_name, target.label)]))
                return f"Selected {target.option_name}: {target.label}.", False
            if name == _norm_label(PREV_PAGE):
                self.state = replace(s, page="results", asin=None, options=())
                return f"Went back to results page {s.page_no}.", False
            if name == _norm_label(BUY_NOW):
                self.state = replace(s, page="done")
                return f"Bought {s.asin} with options {s.chosen}.", True
            self.state = replace(s, page="sub", sub_page=target.label)
            return f"Opened the {target.label} page of {s.asin}.", False
        # sub page: "< Prev" returns to the item with its chosen options
        self.state = replace(s, page="item", sub_page=None)
        return f"Went back to product {s.asin}.", False

    # ---------------------------------------------------------------- rendering
    def render(self, state: PageState | None = None) -> str:
        s = state or self.state
        lines = [f"Instruction: {self.instruction}"]
        if s.page == "search":
            lines += ["WebShop search page.", "[Search]"]
        elif s.page == "results":
            total = len(s.results)
            first = (s.page_no - 1) * RESULTS_PER_PAGE + 1 if total else 0
            last = min(s.page_no * RESULTS_PER_PAGE, total)
            lines += [f"Current query: {s.query}", f"Results page {s.page_no} ({first}-{last} of {total})",
                      " ".join(f"[{c.label}]" for c in self.clickables(s) if c.kind == "button")]
            for asin in self._page_results(s):
                product = self.shop.product(asin)
                lines += [f"[{asin}] {product['Title']}", f"  Price: {product['Price']}"]
            if not total:
                lines.append("No products matched the query.")
        elif s.page in ("item", "sub"):
            product = self.shop.product(s.asin)
            lines += [f"[{BACK_TO_SEARCH}] [{PREV_PAGE}]"]
            if s.page == "item":
                chosen = s.chosen
                for name, values in (product.get("options") or {}).items():
                    picked = f" (selected: {chosen[name]})" if name in chosen else ""
                    lines.append(f"{name}{picked}: " + " ".join(f"[{v}]" for v in values))
                lines += [product["Title"], f"Price: {product['Price']}", f"Rating: {product.get('Rating', 'N.A.')}",
                          " ".join(f"[{p}]" for p in self._sub_pages()) + f" [{BUY_NOW}]"]
            else:
                lines += [f"{s.sub_page} of {product['Title']}:", self._sub_page_text(product, s.sub_page)]
        elif s.page == "done":
            lines += ["Thank you for shopping with us!", f"You bought {s.asin} with options {s.chosen}."]
        actions = self.available_actions(s)
        lines.append("Available actions: " + (", ".join(actions) if actions else "none (episode over)"))
        return "\n".join(lines)

    @staticmethod
    def _sub_page_text(product: dict[str, Any], sub_page: str) -> str:
        if sub_page == "Description":
            return product.get("Description") or "(no description)"
        if sub_page == "Features":
            bullets = [b.strip() for b in product.get("BulletPoints") or [] if b and b.strip()]
            return "\n".join(f"- {b}" for b in bullets) or "(no features listed)"
        if sub_page == "Reviews":
            reviews = product.get("Reviews") or []
            return "\n".join(
                f"- {r.get('score', r.get('stars', '?'))}/5 {r.get('title', '')}: {r.get('body', r.get('review', ''))}"
                for r in reviews if isinstance(r, dict)) or "(no reviews)"
        return "\n".join(f"- {a}" for a in product.get("Attributes") or []) or "(no attributes)"
