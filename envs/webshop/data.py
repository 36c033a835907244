"""``agentgym data webshop``: fetch the official WebShop files, or check a data directory.

    agentgym data webshop [--size small|all] [--dest DIR]   # download (needs the internet)
    agentgym data webshop --check DIR                       # load DIR, build its search index

The download takes the files the official ``setup.sh`` fetches from Google Drive
(``items_shuffle_1000.json`` + ``items_ins_v2_1000.json`` for "small", the full
``items_shuffle.json`` + ``items_ins_v2.json`` for "all", and ``items_human_ins.json``) into
``agentgym.paths.data_dir("webshop", "raw")``, where ``WebShopEnv`` looks by default. It cannot be
tested offline; ``--check`` is what the tests exercise.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import urllib.request
from pathlib import Path

__all__ = ["main", "OFFICIAL_FILES"]

# file name -> Google Drive id, as in princeton-nlp/WebShop setup.sh
OFFICIAL_FILES = {
    "small": {"items_shuffle_1000.json": "1EgHdxQ_YxqIQlvvq5iKlCrkEKR6-j0Ib",
              "items_ins_v2_1000.json": "1IduG0xl544V_A_jv3tHXC0kyFi7PnyBu"},
    "all": {"items_shuffle.json": "1A2whVgOO0euk5O13n2iYDM0bQRkkRduB",
            "items_ins_v2.json": "1s2j6NgHljiZzQNL3veZaAiyW_qDEgBNi"},
    "human": {"items_human_ins.json": "14Kb5SPBk_jfdLZ_CDBNitW98QLDlKR5O"},
}
_DRIVE_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"


def _download(file_id: str, target: Path) -> None:
    part = target.with_suffix(target.suffix + ".part")
    with urllib.request.urlopen(_DRIVE_URL.format(id=file_id), timeout=60) as response, open(part, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)
    head = part.read_bytes()[:1].strip()
    if head not in (b"[", b"{"):
        part.unlink()
        raise RuntimeError(f"{target.name}: Google Drive did not return JSON (quota page or login wall?)")
    part.replace(target)


def check(directory: str) -> int:
    from .goals import human_goals, synthetic_goals
    from .shop import get_shop

    started = time.perf_counter()
    shop = get_shop(directory)
    catalogue = shop.catalogue
    print(f"{len(catalogue.products)} products from {catalogue.source}")
    print(f"{len(synthetic_goals(catalogue))} synthetic goals, {len(human_goals(catalogue))} human goals")
    print(f"search index ready ({len(shop.index)} documents) in {time.perf_counter() - started:.2f}s")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="agentgym data webshop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["small", "all"], default="small")
    parser.add_argument("--dest", default=None, help="download folder (default: agentgym data dir)")
    parser.add_argument("--check", metavar="DIR", default=None, help="load DIR and build its index")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help / bad arguments; return its code instead
        return int(exc.code or 0)
    if args.check:
        try:
            return check(args.check)
        except (FileNotFoundError, ValueError) as exc:
            print(f"agentgym data webshop: {exc}", file=sys.stderr)
            return 1
    if args.dest:
        dest = Path(args.dest)
    else:
        from agentgym.paths import data_dir

        dest = data_dir("webshop", "raw")
    dest.mkdir(parents=True, exist_ok=True)
    for name, file_id in {**OFFICIAL_FILES[args.size], **OFFICIAL_FILES["human"]}.items():
        target = dest / name
        if target.exists():
            print(f"{name}: already present")
            continue
        print(f"{name}: downloading ...", flush=True)
        try:
            _download(file_id, target)
        except (OSError, RuntimeError) as exc:
            print(f"agentgym data webshop: could not fetch {name} ({exc}); the internet may be "
                  f"unreachable - copy the official files into {dest} by hand", file=sys.stderr)
            return 1
    print(f"WebShop data in {dest}; build the index with: agentgym data webshop --check {dest}")
    return 0
