"""Catalogue loaders, index texts, prices, goals, the BM25 index and its disk cache, the data command."""

from __future__ import annotations

import json

import pytest

from agentgym.envs.webshop import catalog, search
from agentgym.envs.webshop.catalog import index_text, load_catalogue, parse_pricing, product_prices
from agentgym.envs.webshop.data import main as data_main
from agentgym.envs.webshop.goals import human_goals, synthetic_goals
from agentgym.envs.webshop.search import SearchIndex, tokenize


@pytest.fixture(scope="module")
def cat(shared_data):
    return load_catalogue(shared_data / "webshop")


def test_processed_documents_load_with_instructions(cat):
    assert len(cat.products) == 100 and len(cat.by_asin) == 100
    with_instructions = [p for p in cat.products if p.get("instruction_text")]
    assert len(with_instructions) == 44
    assert all(p["instruction_attributes"] for p in with_instructions)


def test_index_text_rebuilds_the_official_contents(cat):
    same = sum(index_text(p) == text for p, text in zip(cat.products, cat.contents))
    assert same == len(cat.products)


def test_prices_are_seeded_draws_within_listed_ranges(cat):
    ranged = [p for p in cat.products if len(p["pricing"]) == 2]
    assert len(ranged) == 13
    for p in ranged:
        assert p["pricing"][0] <= cat.prices[p["asin"]] <= p["pricing"][1]
    assert product_prices(cat.products, 233) == cat.prices
    assert product_prices(cat.products, 1) != cat.prices


@pytest.mark.parametrize("raw, expected", [
    ("$19.99", ([19.99], "$19.99")), ("$19.99 - $27.99", ([19.99, 27.99], "$19.99 to $27.99")),
    ("", ([100.0], "$100.0")), (None, ([100.0], "$100.0")), ("$1,299.00", ([1299.0], "$1299.0")),
])
def test_parse_pricing(raw, expected):
    assert parse_pricing(raw) == expected


def test_raw_items_layout_is_normalised_like_the_official_loader(tmp_path, cat):
    dress = cat.by_asin["B08ZRR3DZT"]
    raw = [{"asin": "B08ZRR3DZT", "name": dress["name"], "full_description": dress["Description"],
            "small_description": dress["BulletPoints"], "pricing": "$19.99 - $27.99",
            "customization_options": {"Size": [{"value": "X-Small"}, {"value": "Medium/Tall "}],
                                      "Color": None},
            "images": ["img.jpg"], "category": "fashion", "query": " Women's Dresses ",
            "product_category": dress["product_category"], "brand": "dropped"},
           {"asin": "nan", "name": "skipped"}, {"asin": "B08ZRR3DZT", "name": "duplicate"}]
    (tmp_path / "items_shuffle_1000.json").write_text(json.dumps(raw))
    (tmp_path / "items_ins_v2_1000.json").write_text(json.dumps(
        {"B08ZRR3DZT": {"attributes": ["daily wear"], "instruction": "find a dress",
                        "instruction_attributes": ["daily wear"]}}))
    loaded = load_catalogue(tmp_path)
    (p,) = loaded.products
    assert p["Title"] == dress["name"] and p["Price"] == "$19.99 to $27.99" and p["pricing"] == [19.99, 27.99]
    assert p["options"] == {"size": ["x-small", "medium | tall"]} and "brand" not in p
    assert p["query"] == "women's dresses" and p["Attributes"] == ["daily wear"] and p["MainImage"] == "img.jpg"
    assert p["instruction_text"] == "find a dress"
    assert loaded.contents[0].endswith("size: x-small, medium | tall")
    goals = synthetic_goals(loaded)
    assert [g["goal_options"] for g in sorted(goals, key=lambda g: g["goal_options"]["size"])] == [
        {"size": "medium | tall"}, {"size": "x-small"}]


def test_synthetic_goals_shape_and_price_limits(cat):
    goals = synthetic_goals(cat)
    assert len(goals) == 501 and goals == synthetic_goals(cat)  # seeded: same order every time
    for g in goals:
        price = cat.prices[g["asin"]]
        assert g["price_upper"] > price and g["price_upper"] in [10.0 * i for i in range(1, 100)] + [1e6]
        product = cat.by_asin[g["asin"]]
        assert set(g["goal_options"]) == set(product["options"])
        assert g["instruction_text"].startswith(product["instruction_text"])
        assert 0 < g["weight"] <= 1
    rare_first = max(goals, key=lambda g: g["weight"])
    assert rare_first["weight"] > min(g["weight"] for g in goals)


def test_human_goals_come_from_annotations(cat):
    goals = human_goals(cat)
    assert goals and all(g["attributes"] and g["weight"] == 1.0 for g in goals)
    assert all(isinstance(g["goal_options"], list) for g in goals)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no documents"):
        load_catalogue(tmp_path)
    with pytest.raises(FileNotFoundError, match="looked in"):
        catalog.resolve_data_dir(tmp_path / "absent")


def test_tokenizer_is_lucene_like():
    assert tokenize("The Women's Running Shoes, size 5!") == ["women", "run", "shoe", "size", "5"]
    assert tokenize("the of and") == [] and tokenize("☕") == []


def test_search_ranks_each_product_for_its_own_title(cat):
    index = SearchIndex.build(cat.contents, [p["asin"] for p in cat.products])
    top1 = sum(index.search(p["Title"], 50)[:1] == [p["asin"]] for p in cat.products)
    assert top1 >= 95
    results = index.search("dress", 50)
    assert len(results) == len(set(results)) <= 50
    assert index.search("zzzqqq") == [] and index.search("") == []


def test_index_is_cached_on_disk_by_catalogue_fingerprint(cat, tmp_path, monkeypatch):
    ids = [p["asin"] for p in cat.products]
    built = SearchIndex.load_or_build(cat.contents, ids, cat.fingerprint, cache_root=tmp_path)
    (entry,) = tmp_path.iterdir()
    assert cat.fingerprint[:32] in entry.name and (entry / "ids.json").is_file()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached index should have been loaded")

    monkeypatch.setattr(SearchIndex, "build", classmethod(no_rebuild))
    loaded = SearchIndex.load_or_build(cat.contents, ids, cat.fingerprint, cache_root=tmp_path)
    assert loaded.search("console table") == built.search("console table")
    monkeypatch.undo()
    other = SearchIndex.load_or_build(cat.contents[:10], ids[:10], "f" * 64, cache_root=tmp_path)
    assert len(other) == 10 and len(list(tmp_path.iterdir())) == 2


def test_data_command_check_and_errors(shared_data, tmp_path, capsys):
    assert data_main(["--check", str(shared_data / "webshop")]) == 0
    out = capsys.readouterr().out
    assert "100 products" in out and "501 synthetic goals" in out
    assert data_main(["--check", str(tmp_path)]) == 1
    assert data_main(["--size", "huge"]) == 2
