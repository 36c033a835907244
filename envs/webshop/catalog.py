"""WebShop's product catalogue: loaders for the official file formats and the derived fields.

Two layouts are recognised in a data directory (or given as files):

- **processed**: ``documents*.jsonl``, one ``{"id", "contents", "product"}`` object per line, as the
  official ``search_engine/convert_product_file_format.py`` writes it (``product`` already in the
  shop's shape: Title, Description, BulletPoints, Price, pricing, options, Attributes, ...);
- **raw**: ``items_shuffle*.json`` (scraped products) as the official setup downloads them; they are
  normalised the way the official loader does (Title from name, BulletPoints from small_description,
  price tag from pricing, options lower-cased with "/" shown as " | ").

Either layout is joined with ``items_ins_v2*.json`` (instruction text and attributes per ASIN: the
synthetic goals) and, when present, ``items_human_ins.json`` (human instructions: the human goals).

>>> from pathlib import Path
>>> cat = load_catalogue(Path(__file__).resolve().parents[3] / "shared/data/webshop")  # doctest: +SKIP
>>> len(cat.products)  # doctest: +SKIP
100
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable

__all__ = ["Catalogue", "load_catalogue", "resolve_data_dir", "index_text", "normalize_raw_product",
           "parse_pricing", "product_prices", "DEFAULT_PRICE_SEED"]

DEFAULT_PRICE_SEED = 233
_NO_ATTRIBUTES = ["DUMMY_ATTR"]  # what the official loader gives a product without attributes


@dataclass
class Catalogue:
    """Products in the official dict shape, in file order, plus what the shop derives from them."""

    products: list[dict[str, Any]]
    contents: list[str]  # the indexed text of each product (same order)
    prices: dict[str, float]  # ASIN -> the price a purchase pays (random within a listed range)
    source: str = ""
    by_asin: dict[str, dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        if len(self.contents) != len(self.products):
            raise ValueError(f"{len(self.contents)} index texts for {len(self.products)} products")
        self.by_asin = {p["asin"]: p for p in self.products}

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the ASINs and indexed texts: the key of the cached search index."""
        digest = hashlib.sha256()
        for product, text in zip(self.products, self.contents):
            digest.update(product["asin"].encode())
            digest.update(b"\x00")
            digest.update(text.encode("utf-8", "surrogatepass"))
            digest.update(b"\x01")
        return digest.hexdigest()


def resolve_data_dir(path: str | os.PathLike | None = None) -> Path:
    """The WebShop data directory: ``path``, else ``$WEBSHOP_DATA``, else ``agentgym data webshop``'s
    download folder. Raises FileNotFoundError naming every place it looked."""
    tried = []
    candidates: list[Path] = []
    if path is not None:
        candidates.append(Path(path).expanduser())
    elif os.environ.get("WEBSHOP_DATA"):
        candidates.append(Path(os.environ["WEBSHOP_DATA"]).expanduser())
    else:
        from agentgym.paths import data_dir

        candidates.append(data_dir("webshop", "raw", create=False))
    for candidate in candidates:
        tried.append(str(candidate))
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"WebShop data not found (looked in {tried}); pass data_dir=..., set WEBSHOP_DATA, or run "
        "`agentgym data webshop` where the internet is reachable")


def parse_pricing(pricing: Any) -> tuple[list[float], str]:
    """(pricing list, price tag) from a raw ``pricing`` field such as "$19.99 - $27.99".

    Like the official loader: no price means $100.0; a range keeps its first two bounds.
    """
    if not pricing:
        return [100.0], "$100.0"
    if isinstance(pricing, (list, tuple)):
        values = [float(v) for v in pricing]
    else:
        values = []
        for piece in str(pricing).split("$")[1:]:
            digits = re.sub(r"[^\d.]", "", piece)
            try:
                values.append(float(Decimal(digits)))
            except InvalidOperation:
                continue
        if not values:
            return [100.0], "$100.0"
    if len(values) == 1:
        return values, f"${values[0]}"
    return values[:2], f"${values[0]} to ${values[1]}"


def normalize_raw_product(raw: dict[str, Any], reviews: dict[str, tuple[list, Any]] | None = None
                          ) -> dict[str, Any]:
    """A scraped ``items_shuffle`` record in the shop's shape (a new dict; ``raw`` is not changed)."""
    p = {k: v for k, v in raw.items() if k not in _DROPPED_RAW_KEYS}
    asin = p["asin"]
    p["Title"] = p["name"]
    p["Description"] = p.get("full_description") or ""
    small = p.get("small_description") or []
    p["BulletPoints"] = small if isinstance(small, list) else [small]
    review_list, rating = (reviews or {}).get(asin, ([], "N.A."))
    p["Reviews"], p["Rating"] = review_list, rating
    p["pricing"], p["Price"] = parse_pricing(p.get("pricing"))
    options: dict[str, list[str]] = {}
    option_to_image: dict[str, Any] = {}
    for name, contents in (p.get("customization_options") or {}).items():
        if contents is None:
            continue
        values = []
        for content in contents:
            value = str(content["value"]).strip().replace("/", " | ").lower()
            values.append(value)
            option_to_image[value] = content.get("image")
        options[name.lower()] = values
    p["options"], p["option_to_image"] = options, option_to_image
    images = p.get("images") or [None]
    p["MainImage"] = images[0]
    p["query"] = str(p.get("query", "")).lower().strip()
    return p


_DROPPED_RAW_KEYS = frozenset({
    "product_information", "brand", "brand_url", "list_price", "availability_quantity",
    "availability_status", "total_reviews", "total_answered_questions", "seller_id", "seller_name",
    "fulfilled_by_amazon", "fast_track_message", "aplus_present", "small_description_old"})


def index_text(product: dict[str, Any]) -> str:
    """The text the search engine indexes: title, description, first bullet point and the options,
    lower-cased (the official documents.jsonl ``contents``)."""
    option_text = ", and ".join(f"{name}: {', '.join(values)}"
                                for name, values in (product.get("options") or {}).items())
    bullets = product.get("BulletPoints") or [""]
    return " ".join([product["Title"], product.get("Description") or "", bullets[0], option_text]).lower()


def product_prices(products: Iterable[dict[str, Any]], seed: int = DEFAULT_PRICE_SEED) -> dict[str, float]:
    """The price each product sells at: its listed price, or for a listed range a seeded uniform
    draw within it (the official shop draws these at start-up)."""
    rng = random.Random(seed)
    prices = {}
    for p in products:
        pricing = p.get("pricing") or []
        if not pricing:
            prices[p["asin"]] = 100.0
        elif len(pricing) == 1:
            prices[p["asin"]] = float(pricing[0])
        else:
            prices[p["asin"]] = rng.uniform(float(pricing[0]), float(pricing[1]))
    return prices


def _pick(directory: Path, patterns: list[str]) -> Path | None:
    for pattern in patterns:
        found = sorted(directory.glob(pattern))
        if found:
            return found[0]
    return None


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_catalogue(path: str | os.PathLike | None = None, *, num_products: int | None = None,
                   price_seed: int = DEFAULT_PRICE_SEED) -> Catalogue:
    """Load products from a WebShop data directory (see the module docstring for the layouts).

    ``num_products`` keeps the first N products (the official files are pre-shuffled).
    """
    root = resolve_data_dir(path)
    directory = root if root.is_dir() else root.parent
    documents = root if root.is_file() and root.suffix == ".jsonl" else None
    raw_items = root if root.is_file() and root.suffix == ".json" else None
    if documents is None and raw_items is None:
        documents = _pick(directory, ["documents.jsonl", "documents*.jsonl", "resources*/documents.jsonl"])
        if documents is None:
            raw_items = _pick(directory, ["items_shuffle.json", "items_shuffle*.json"])
    if documents is None and raw_items is None:
        raise FileNotFoundError(f"no documents*.jsonl or items_shuffle*.json in {directory}")
    size_hint = (raw_items or documents).stem.rpartition("_")[2]  # "1000" in items_shuffle_1000
    ins_path = _pick(directory, [f"items_ins_v2_{size_hint}.json", "items_ins_v2.json", "items_ins_v2*.json"])
    instructions = _read_json(ins_path) if ins_path else {}
    human_path = _pick(directory, ["items_human_ins.json"])
    human = _read_json(human_path) if human_path else {}

    products: list[dict[str, Any]] = []
    contents: list[str] = []
    seen: set[str] = set()

    def accept(asin: Any) -> bool:
        # The official loader skips ASINs that are 'nan' or longer than 10, and duplicates.
        if not isinstance(asin, str) or asin == "nan" or len(asin) > 10 or asin in seen:
            return False
        seen.add(asin)
        return True

    if documents is not None:
        with open(documents, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                    product = dict(doc["product"])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"{documents}:{line_no}: not a WebShop document ({exc})") from exc
                product.setdefault("asin", doc.get("id"))
                if not accept(product["asin"]):
                    continue
                products.append(product)
                contents.append(doc.get("contents") or index_text(product))
                if num_products is not None and len(products) >= num_products:
                    break
    else:
        reviews_path = _pick(directory, ["reviews.json", "items_reviews*.json"])
        reviews = ({r["asin"]: (r.get("reviews", []), r.get("average_rating", "N.A."))
                    for r in _read_json(reviews_path)} if reviews_path else {})
        for raw in _read_json(raw_items):
            if num_products is not None and len(products) >= num_products:
                break
            if not accept(raw.get("asin")):
                continue
            product = normalize_raw_product(raw, reviews)
            products.append(product)
            contents.append(index_text(product))

    for product in products:
        asin = product["asin"]
        entry = instructions.get(asin) or {}
        if not product.get("Attributes"):
            product["Attributes"] = list(entry.get("attributes") or _NO_ATTRIBUTES)
        if entry.get("instruction"):
            product["instruction_text"] = entry["instruction"]
            product["instruction_attributes"] = list(entry.get("instruction_attributes") or [])
        if asin in human and "instructions" not in product:
            product["instructions"] = human[asin]
        product.setdefault("Reviews", [])
        product.setdefault("Rating", "N.A.")
        product["query"] = str(product.get("query", "")).lower().strip()
    return Catalogue(products=products, contents=contents,
                     prices=product_prices(products, price_seed), source=str(documents or raw_items))
