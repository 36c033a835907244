"""Build the project's AppWorld root: base world, API docs, tasks, datasets (AppWorld venv only).

Usage (from scripts/setup_appworld.sh or ``agentgym data appworld``)::

    <appworld-venv>/bin/python envs/appworld/worker/build.py --root DATA/appworld/root --seed 0

Writes, in AppWorld's own on-disk format:

- ``root/data/base_dbs/<app>.db``           the generated world (full SQLite databases)
- ``root/data/api_docs/standard/<app>.json``  API docs of the 11 non-admin apps
- ``root/data/tasks/<id>/``                  specs.json, dbs/*.jsonl (changes over base_dbs),
                                              ground_truth/ (evaluation.py, answer.json, ...)
- ``root/data/datasets/{train,dev,test}.txt``
- ``root/world.json``                         the manifest (people, passwords, groups)

and the episode root ``play/`` beside it: the same tree WITHOUT any ``ground_truth`` folder, which
is all an episode worker ever sees.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, default=str) + "\n")


def build_api_docs(data: Path) -> None:
    """Write api_docs/standard/<app>.json from the apps' own OpenAPI specs."""
    from appworld.apps import get_all_apps
    from appworld.collections.api_docs import ApiDocCollection
    from appworld.common.constants import CANARY_STRING

    apps = tuple(get_all_apps(skip_admin=True))
    docs = ApiDocCollection.build(load_apps=apps, include_response_schemas=True)
    for app_name, api_name_to_doc in docs.items():
        out = {}
        for api_name, doc in api_name_to_doc.items():
            doc = dict(doc)
            doc["canary_string"] = CANARY_STRING
            out[api_name] = doc
        _write_json(data / "api_docs" / "standard" / f"{app_name}.json", out)
    return docs


def build_base(data: Path, seed: int) -> dict:
    """Create the base world in memory and save it as base_dbs/*.db."""
    from appworld.apps import get_all_apps
    from appworld.apps.api_lib import save_local_dbs, set_local_date_and_time
    from appworld.collections.models import ModelCollection

    sys.path.insert(0, str(HERE))
    from world import WORLD_DATETIME, build_base_world

    freezer = set_local_date_and_time(WORLD_DATETIME)
    try:
        apps = list(get_all_apps())
        models = ModelCollection.load(to_db_home_path=":memory:base", load_apps=apps, create_db=True)
        manifest = build_base_world(models, seed=seed)
        # The api_docs app serves its docs from its own database: one row per API.
        docs = build_api_docs(data)
        rows = [models.api_docs.ApiDoc.create(app_name_=d["app_name"], api_name=d["api_name"],
                                              path=d["path"], method=d["method"],
                                              description=d["description"], parameters=d["parameters"],
                                              response_schemas=d["response_schemas"])
                for api_name_to_doc in docs.values() for d in api_name_to_doc.values()]
        models.api_docs.ApiDoc.save_all(rows)
        save_local_dbs(from_db_home_path=":memory:base", to_db_home_path=str(data / "base_dbs"),
                       format="full", app_names=apps, delete_if_exists=True)
    finally:
        freezer.stop()
    return manifest


def build_play_root(root: Path, play: Path) -> None:
    """Mirror root/data into play/data without any ground_truth folder (hard copies, small)."""
    if play.exists():
        shutil.rmtree(play)
    src = root / "data"
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        if "ground_truth" in dirnames:
            dirnames.remove("ground_truth")
        target = play / "data" / rel
        target.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            shutil.copy2(Path(dirpath) / name, target / name)


def source_stamp() -> str:
    """Hash of the generator sources; setup_appworld.sh rebuilds when it changes (same recipe as
    ``cat world.py tasks.py build.py | sha256sum | cut -c1-16``)."""
    import hashlib

    blob = b"".join((HERE / name).read_bytes() for name in ("world.py", "tasks.py", "build.py"))
    return hashlib.sha256(blob).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="where to write the full AppWorld root")
    parser.add_argument("--play", required=True, help="where to write the root without ground truth")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks-only", action="store_true",
                        help="reuse the existing base world and API docs; rewrite tasks only")
    args = parser.parse_args(argv)
    root, play = Path(args.root).resolve(), Path(args.play).resolve()
    started = time.time()
    tmp = root.with_name(root.name + ".building")
    if tmp.exists():
        shutil.rmtree(tmp)
    data = tmp / "data"
    data.mkdir(parents=True)
    os.environ["APPWORLD_ROOT"] = str(tmp)
    from appworld.common.path_store import path_store

    path_store.update_root(str(tmp))
    if args.tasks_only and (root / "world.json").is_file():
        for name in ("base_dbs", "api_docs"):
            shutil.copytree(root / "data" / name, data / name)
        manifest = json.loads((root / "world.json").read_text())
    else:
        manifest = build_base(data, args.seed)
    _write_json(tmp / "world.json", manifest)
    sys.path.insert(0, str(HERE))
    from tasks import build_tasks

    splits = build_tasks(data, manifest)
    for split, ids in splits.items():
        (data / "datasets").mkdir(exist_ok=True)
        (data / "datasets" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    (tmp / ".stamp").write_text(source_stamp() + "\n")
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    build_play_root(root, play)
    total = sum(len(v) for v in splits.values())
    print(json.dumps({"root": str(root), "play": str(play), "tasks": total,
                      "splits": {k: len(v) for k, v in splits.items()},
                      "seconds": round(time.time() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
