"""WebShop goals: what the shopper is asked to buy.

- **synthetic**: every product with an instruction (``items_ins_v2``) crossed with every combination
  of its options; the instruction gains " with color: x, and size: y" and ", and price lower than
  P dollars", where P is the larger of two prices drawn from the first four multiples of $10 above
  the product's price. Each goal is weighted by the rarity of its attributes (mean of 1 / count).
- **human**: the human-written instructions of ``items_human_ins.json`` (attributes and options as
  the annotators marked them), weight 1; instructions without attributes are skipped.

Goals are shuffled with a fixed seed so an index names the same goal on every machine.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from typing import Any

from .catalog import Catalogue

__all__ = ["synthetic_goals", "human_goals", "GOAL_BUILDERS", "PRICE_STEPS", "DEFAULT_GOAL_SEED"]

DEFAULT_GOAL_SEED = 233
PRICE_STEPS = [10.0 * i for i in range(1, 100)]  # $10 .. $990
NO_PRICE_LIMIT = 1_000_000.0


def _price_limit(price: float, rng: random.Random) -> tuple[float, str]:
    above = [p for p in PRICE_STEPS if p > price][:4]
    if len(above) < 2:
        return NO_PRICE_LIMIT, ""
    upper = max(rng.sample(above, 2))
    return upper, f", and price lower than {upper:.2f} dollars"


def synthetic_goals(catalogue: Catalogue, seed: int = DEFAULT_GOAL_SEED) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    goals: list[dict[str, Any]] = []
    attribute_counts: dict[str, int] = defaultdict(int)
    for product in catalogue.products:
        if not product.get("instruction_text"):
            continue
        attributes = list(product.get("instruction_attributes") or [])
        if not attributes:  # the official generator asserts this never happens; skip instead
            continue
        asin = product["asin"]
        price_upper, price_text = _price_limit(catalogue.prices[asin], rng)
        options = product.get("options") or {}
        names = sorted(options)
        for combination in itertools.product(*(options[name] for name in names)):
            goal_options = dict(zip(names, combination))
            option_text = ", and ".join(f"{k}: {v}" for k, v in goal_options.items())
            option_text = f" with {option_text}" if option_text else ""
            goals.append({
                "asin": asin, "category": product["category"], "query": product["query"],
                "name": product["Title"], "product_category": product["product_category"],
                "instruction_text": f"{product['instruction_text']}{option_text}{price_text}",
                "attributes": attributes, "price_upper": price_upper, "goal_options": goal_options,
            })
            for attribute in attributes:
                attribute_counts[attribute] += 1
    for goal in goals:
        goal["weight"] = sum(1.0 / attribute_counts[a] for a in goal["attributes"]) / len(goal["attributes"])
    random.Random(seed).shuffle(goals)
    return goals


def human_goals(catalogue: Catalogue, seed: int = DEFAULT_GOAL_SEED) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    goals: list[dict[str, Any]] = []
    for product in catalogue.products:
        for annotation in product.get("instructions") or []:
            attributes = list(annotation.get("instruction_attributes") or [])
            if not attributes:
                continue
            asin = product["asin"]
            price_upper, price_text = _price_limit(catalogue.prices[asin], rng)
            goals.append({
                "asin": asin, "category": product["category"], "query": product["query"],
                "name": product["name"], "product_category": product["product_category"],
                "instruction_text": annotation["instruction"].strip(".") + price_text,
                "attributes": attributes, "price_upper": price_upper,
                "goal_options": list(annotation.get("instruction_options") or []), "weight": 1.0,
            })
    random.Random(seed).shuffle(goals)
    return goals


# goal source name -> builder (the env's ``goals=`` argument)
GOAL_BUILDERS = {"synthetic": synthetic_goals, "human": human_goals}
