"""Generated ALFWorld-engine games, built offline from what the ``alfworld`` wheel ships.

THESE ARE NOT THE OFFICIAL ALFWORLD SPLITS. ALFWorld's own games were produced by running ALFRED's
generator inside AI2-THOR: THOR spawned object instances at random in compatible receptacles and the
resulting state was dumped into a PDDL problem. THOR is not available offline, so this module rebuilds
the same kind of problem from the data the wheel carries, and every game runs on the real engine
(TextWorld + ALFWorld's ``alfred.pddl`` / ``alfred.twl2``) and is kept only if ALFWorld's handcoded
expert wins it within the env's default step limit. What comes from the wheel and what is sampled:

- floor plan: one of the 120 real AI2-THOR floor plans (``alfworld/gen/layouts``);
- object and receptacle types in the scene: ``FloorPlanN-objects.json`` (real);
- receptacle instances: the ids and interaction poses in ``FloorPlanN-openable.json`` (real); the
  receptacle types the scene has but that file does not list (stove burners, garbage cans, side
  tables, ...) get 1-2 instances at navigable points of ``FloorPlanN-layout.npy`` (sampled);
- object instances: 1-3 per pickupable type (``constants.MAX_NUM_OF_OBJ_INSTANCES``), each in a
  random receptacle allowed by ``constants.VAL_RECEPTACLE_OBJECTS`` - THOR's InitialRandomSpawn
  constraint, without its physics (sampled); lamps go on furniture;
- agent start: a navigable point (sampled);
- task: one of the six task types with parameters valid under ALFRED's tables
  (``GOALS_VALID`` per room type, ``VAL_ACTION_OBJECTS``, ``VAL_RECEPTACLE_OBJECTS``); goal PDDL and
  task text from ALFWorld's goal library, exactly as ALFWorld's generator writes them.

Every game folder is labelled: ``traj_data.json`` has ``"agentgym": {"generated": true, ...}`` and a
``task_id`` starting with ``gen-``; ``game.tw-pddl`` has ``"agentgym": {"origin": "generated"}``.

>>> report = generate_games(6, seed=0, out=Path("/tmp/alfworld-gen"))   # doctest: +SKIP
>>> report.by_task_type                                                 # doctest: +SKIP
"""

from __future__ import annotations

import collections
import json
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from alfworld.gen import constants

from agentgym.paths import data_dir

from .engine import Engine
from .games import TASK_TYPES, fix_pddl_names, goal_pddl, write_game

__all__ = ["Scene", "build_scene", "sample_task", "problem_pddl", "generate_games", "GenerationReport",
           "LAYOUTS", "GENERATOR_VERSION"]

GENERATOR_VERSION = "agentgym-alfworld-gen/1"
LAYOUTS = Path(constants.__file__).resolve().parent / "layouts"
STATIC_RECEPTACLES = set(constants.RECEPTACLES) - constants.MOVABLE_RECEPTACLES_SET
PICKUPABLE = set().union(*constants.VAL_RECEPTACLE_OBJECTS.values()) - STATIC_RECEPTACLES
LAMPS = ("DeskLamp", "FloorLamp")
LAMP_HOSTS = ("Desk", "SideTable", "Dresser", "DiningTable", "CoffeeTable", "Shelf", "TVStand")
BASINS = {"SinkBasin": "Sink", "BathtubBasin": "Bathtub"}  # ALFRED ids: Sink|x|y|z|SinkBasin
# Step budget the expert must win within: the env's default step limit, so every kept game is
# solvable by the expert through the env as shipped.
EXPERT_BUDGET = 50


def scene_category(floor_plan: int) -> str:
    for name, numbers in constants.SCENE_TYPE.items():
        if floor_plan in numbers:
            return name
    raise ValueError(f"floor plan {floor_plan} is in no ALFRED scene type")


def floor_plans() -> list[int]:
    return sorted(int(p.name[len("FloorPlan"):-len("-objects.json")]) for p in LAYOUTS.glob("FloorPlan*-objects.json"))


@dataclass
class Scene:
    """A PDDL-ready household: receptacles with locations, objects in receptacles, the agent's start."""

    floor_plan: int
    types: set[str]
    receptacles: dict[str, tuple[str, tuple[int, int, int, int]]] = field(default_factory=dict)  # id -> (type, loc)
    objects: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (type, receptacle id)
    agent_loc: tuple[int, int, int, int] = (0, 0, 0, 30)

    def types_of_objects(self) -> collections.Counter:
        return collections.Counter(t for t, _ in self.objects.values())

    def receptacle_types(self) -> set[str]:
        return {t for t, _ in self.receptacles.values()}


def _receptacle_type(ident: str) -> str:
    parts = ident.split("|")
    return parts[-1] if parts[-1].isalpha() and len(parts) > 4 else parts[0]


def _grid(pose: list[float]) -> tuple[int, int, int, int]:
    x, z, rotation, horizon = pose
    return (int(round(x / constants.AGENT_STEP_SIZE)), int(round(z / constants.AGENT_STEP_SIZE)),
            int(round(rotation / 90)) % 4, int(horizon))


def _ident(kind: str, x: float, y: float, z: float, suffix: str = "") -> str:
    ident = f"{kind}|{x:+06.2f}|{y:+06.2f}|{z:+06.2f}"
    return ident + (f"|{suffix}" if suffix else "")


def build_scene(floor_plan: int, rng: random.Random) -> Scene:
    """Receptacles from the floor plan's files, objects spawned per ALFRED's compatibility tables."""
    types = set(json.loads((LAYOUTS / f"FloorPlan{floor_plan}-objects.json").read_text()))
    points = np.load(LAYOUTS / f"FloorPlan{floor_plan}-layout.npy")
    poses = json.loads((LAYOUTS / f"FloorPlan{floor_plan}-openable.json").read_text())
    scene = Scene(floor_plan=floor_plan, types=types)
    for ident, pose in sorted(poses.items()):
        kind = _receptacle_type(ident)
        if kind in STATIC_RECEPTACLES:
            scene.receptacles[ident] = (kind, _grid(pose))
    listed = scene.receptacle_types()
    for kind in sorted((types & STATIC_RECEPTACLES) - listed):
        for _ in range(rng.choice((1, 1, 2)) if kind not in BASINS else 1):
            x, z = (float(v) for v in points[rng.randrange(len(points))])
            ident = (_ident(BASINS[kind], x, 0.9, z, kind) if kind in BASINS else _ident(kind, x, 0.9, z))
            while ident in scene.receptacles:  # two instances drawn at one point: nudge the id
                x += 0.01
                ident = (_ident(BASINS[kind], x, 0.9, z, kind) if kind in BASINS else _ident(kind, x, 0.9, z))
            scene.receptacles[ident] = (kind, _grid([x, z, 90 * rng.randrange(4), 30]))
    x, z = (float(v) for v in points[rng.randrange(len(points))])
    scene.agent_loc = _grid([x, z, 90 * rng.randrange(4), 30])

    by_type: dict[str, list[str]] = collections.defaultdict(list)
    for ident, (kind, _) in scene.receptacles.items():
        by_type[kind].append(ident)
    for kind in sorted(types & PICKUPABLE):
        hosts = [r for rtype, objs in constants.VAL_RECEPTACLE_OBJECTS.items() if kind in objs
                 for r in by_type.get(rtype, [])]
        if not hosts:
            continue
        for _ in range(rng.randint(1, constants.MAX_NUM_OF_OBJ_INSTANCES)):
            _place(scene, kind, rng.choice(hosts), rng)
    for lamp in LAMPS:
        hosts = [r for rtype in LAMP_HOSTS for r in by_type.get(rtype, [])]
        if lamp in types and hosts:
            _place(scene, lamp, rng.choice(hosts), rng)
    return scene


def _place(scene: Scene, kind: str, host: str, rng: random.Random) -> None:
    parts = host.split("|")
    x, y, z = (float(v) for v in parts[1:4])
    ident = _ident(kind, x + rng.uniform(-0.4, 0.4), y + 0.05, z + rng.uniform(-0.4, 0.4))
    while ident in scene.objects:
        ident = _ident(kind, x + rng.uniform(-0.4, 0.4), y + 0.05, z + rng.uniform(-0.4, 0.4))
    scene.objects[ident] = (kind, host)


def sample_task(scene: Scene, task_type: str, rng: random.Random) -> dict[str, Any] | None:
    """``pddl_params`` for ``task_type`` valid in ``scene`` under ALFRED's tables, or None."""
    if scene_category(scene.floor_plan) not in constants.GOALS_VALID[task_type]:
        return None
    counts = scene.types_of_objects()
    recep_types = scene.receptacle_types()
    actions = constants.VAL_ACTION_OBJECTS
    tool = {"pick_clean_then_place_in_recep": ("Cleanable", "SinkBasin"),
            "pick_heat_then_place_in_recep": ("Heatable", "Microwave"),
            "pick_cool_then_place_in_recep": ("Coolable", "Fridge")}
    params = {"mrecep_target": "", "object_sliced": False, "toggle_target": "", "parent_target": "",
              "object_target": ""}
    objects = sorted(t for t in counts if t in PICKUPABLE)
    if task_type == "look_at_obj_in_light":
        lamps = sorted(t for t in counts if t in LAMPS)
        if not lamps or not objects:
            return None
        params.update(object_target=rng.choice(objects), toggle_target=rng.choice(lamps))
        return params
    need = 2 if task_type == "pick_two_obj_and_place" else 1
    choices = []
    for obj in objects:
        if counts[obj] < need:
            continue
        if task_type in tool:
            ability, appliance = tool[task_type]
            if obj not in actions[ability] or appliance not in recep_types:
                continue
        for recep in sorted(recep_types):
            if need == 2 and recep in constants.OPENABLE_CLASS_SET:
                continue  # the expert fails the second put into a closed receptacle (see _co_locate_pair)
            if obj in constants.VAL_RECEPTACLE_OBJECTS.get(recep, ()) and recep != tool.get(task_type, ("", ""))[1]:
                choices.append((obj, recep))
    if not choices:
        return None
    obj, recep = rng.choice(choices)
    params.update(object_target=obj, parent_target=recep)
    if need == 2 and not _co_locate_pair(scene, obj, recep, rng):
        return None
    return params


def _co_locate_pair(scene: Scene, kind: str, goal_recep: str, rng: random.Random) -> bool:
    """Put two instances of ``kind`` together in one open (not openable) receptacle that is not of
    the goal type; False if the scene has none.

    ALFWorld's handcoded expert remembers where it last saw an object class and, when it goes back
    there, neither re-opens a closed receptacle nor looks elsewhere once that spot is empty: with the
    pair apart, or behind a door, it loops until its step budget runs out. Side by side on an open
    surface it wins, and the placement stays one THOR could spawn.
    """
    hosts = sorted(r for r, (t, _) in scene.receptacles.items()
                   if t != goal_recep and t not in constants.OPENABLE_CLASS_SET
                   and kind in constants.VAL_RECEPTACLE_OBJECTS.get(t, ()))
    if not hosts:
        return False
    host = rng.choice(hosts)
    instances = sorted(o for o, (t, _) in scene.objects.items() if t == kind)
    for ident in rng.sample(instances, 2):
        scene.objects[ident] = (kind, host)
    return True


def problem_pddl(scene: Scene, task_type: str, params: dict[str, Any], problem_id: str) -> str:
    """The PDDL problem in the layout ALFWorld's games use (one agent, ``agent1``)."""
    receptacle_types = set(constants.RECEPTACLES) - set(constants.MOVABLE_RECEPTACLES)
    constants_objects = sorted(constants.OBJECTS_SET - receptacle_types)
    loc = "loc|%d|%d|%d|%d"
    locations = sorted({loc % l for _, l in scene.receptacles.values()} | {loc % scene.agent_loc})
    lines = [f"(define (problem plan_{problem_id})", "(:domain alfred)", "(:objects", "agent1 # agent"]
    lines += [f"        {o} # object" for o in constants_objects]
    lines += [f"        {o}Type # otype" for o in constants_objects]
    lines += [f"        {r}Type # rtype" for r in sorted(receptacle_types)]
    lines += [f"        {o} # object" for o in sorted(scene.objects)]
    lines += [f"        {r} # receptacle" for r in sorted(scene.receptacles)]
    lines += [f"        {l} # location" for l in locations]
    lines += ["        )", "", "(:init", ""]
    init: list[str] = []
    for r, (kind, l) in sorted(scene.receptacles.items()):
        init.append(f"(receptacleType {r} {kind}Type)")
        if kind in constants.OPENABLE_CLASS_SET:
            init.append(f"(openable {r})")
        init.append(f"(receptacleAtLocation {r} {loc % l})")
    for rtype in sorted(scene.receptacle_types()):
        for otype in sorted(set(constants.VAL_RECEPTACLE_OBJECTS.get(rtype, ())) & set(constants_objects)):
            init.append(f"(canContain {rtype}Type {otype}Type)")
    init.append(f"(atLocation agent1 {loc % scene.agent_loc})")
    abilities = {"Cleanable": "cleanable", "Heatable": "heatable", "Coolable": "coolable",
                 "Toggleable": "toggleable", "Sliceable": "sliceable"}
    for o, (kind, host) in sorted(scene.objects.items()):
        init.append(f"(objectType {o} {kind}Type)")
        if kind in PICKUPABLE:
            init.append(f"(pickupable {o})")
        if kind in constants.MOVABLE_RECEPTACLES_SET:
            init.append(f"(isReceptacleObject {o})")
        for ability, predicate in abilities.items():
            if kind in constants.VAL_ACTION_OBJECTS[ability]:
                init.append(f"({predicate} {o})")
        init.append(f"(inReceptacle {o} {host})")
        init.append(f"(objectAtLocation {o} {loc % scene.receptacles[host][1]})")
    lines += [f"        {fact}" for fact in init]
    lines += ["        )", ""]
    text = fix_pddl_names("\n".join(lines) + "\n")
    return text + goal_pddl(task_type, params)


@dataclass
class GenerationReport:
    """What ``generate_games`` produced: kept games by task type, rejections and why, timing."""

    out: Path
    games: list[dict[str, Any]] = field(default_factory=list)
    rejected: collections.Counter = field(default_factory=collections.Counter)
    seconds: float = 0.0

    @property
    def by_task_type(self) -> dict[str, int]:
        counts = collections.Counter(g["task_type"] for g in self.games)
        return {t: counts.get(t, 0) for t in TASK_TYPES}

    def summary(self) -> str:
        lines = [f"{len(self.games)} generated ALFWorld-engine games (not the official split) in {self.out}",
                 f"  generated in {self.seconds:.0f} s; expert plan length mean "
                 f"{np.mean([g['expert_steps'] for g in self.games]) if self.games else 0:.1f}"]
        lines += [f"  {t:<34} {n}" for t, n in self.by_task_type.items()]
        if self.rejected:
            lines.append("  rejected candidates: " + ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items())))
        return "\n".join(lines)


def verify(engine: Engine, gamefile: str, budget: int = EXPERT_BUDGET) -> tuple[bool, list[str], str]:
    """Play the game with the handcoded expert: (won within budget, plan, reason if not)."""
    try:
        state = engine.start(gamefile, seed=0)
    except Exception as err:  # a game the engine cannot load is rejected, with the engine's reason
        return False, [], f"load:{type(err).__name__}"
    if state["won"]:
        return False, [], "goal-already-true"
    try:
        plan, won = engine.expert_rollout([], seed=0, max_steps=budget, restore=False)
    except Exception as err:  # the expert gave up (HandCodedAgentTimeout/Failed)
        return False, [], f"expert:{type(err).__name__}"
    return won, plan, "" if won else "expert-over-budget"


def generate_games(n: int, *, seed: int = 0, out: Path | None = None, progress: bool = False,
                   task_types: tuple[str, ...] = TASK_TYPES, max_attempts_per_game: int = 40) -> GenerationReport:
    """Write ``n`` expert-verified games (task types round-robin) into ``out``; reuses games already
    there that this generator version wrote with the same seed and index."""
    out = Path(out) if out is not None else data_dir("alfworld", "generated")
    out.mkdir(parents=True, exist_ok=True)
    report = GenerationReport(out=out)
    started = time.perf_counter()
    plans = floor_plans()
    engine = Engine()
    try:
        for index in range(n):
            task_type = task_types[index % len(task_types)]
            folder = out / f"gen-s{seed}-{index:05d}-{task_type}"
            cached = _cached(folder)
            if cached is not None:
                report.games.append(cached)
                continue
            rng = random.Random(f"{GENERATOR_VERSION}:{seed}:{index}")
            for attempt in range(max_attempts_per_game):
                floor_plan = rng.choice([p for p in plans
                                         if scene_category(p) in constants.GOALS_VALID[task_type]])
                scene = build_scene(floor_plan, rng)
                params = sample_task(scene, task_type, rng)
                if params is None:
                    report.rejected["no-valid-task"] += 1
                    continue
                task_id = f"gen-s{seed}-{index:05d}-a{attempt}"
                traj = {"task_id": task_id, "task_type": task_type, "pddl_params": params,
                        "scene": {"floor_plan": f"FloorPlan{floor_plan}", "scene_num": floor_plan},
                        "agentgym": {"generated": True, "generator": GENERATOR_VERSION, "seed": seed,
                                     "index": index, "attempt": attempt,
                                     "note": "generated ALFWorld-engine game, not the official split"}}
                problem = problem_pddl(scene, task_type, params, task_id.replace("-", "_"))
                shutil.rmtree(folder, ignore_errors=True)
                gamefile = write_game(folder, traj, problem, solvable=False, template_seed=rng.randrange(2**31),
                                      extra={"agentgym": {"origin": "generated", "generator": GENERATOR_VERSION}})
                won, plan, reason = verify(engine, str(gamefile))
                if not won:
                    report.rejected[reason] += 1
                    continue
                game = json.loads(gamefile.read_text())
                game["solvable"] = True
                game["agentgym"]["expert_plan"] = plan
                gamefile.write_text(json.dumps(game))
                record = {"path": str(gamefile), "task_type": task_type, "task_id": task_id,
                          "floor_plan": floor_plan, "expert_steps": len(plan)}
                report.games.append(record)
                if progress:
                    print(f"[{index + 1}/{n}] {task_type:<32} FloorPlan{floor_plan:<4} expert {len(plan)} steps",
                          file=sys.stderr, flush=True)
                break
            else:
                shutil.rmtree(folder, ignore_errors=True)
                report.rejected["gave-up"] += 1
    finally:
        engine.close()
    report.seconds = time.perf_counter() - started
    (out / "REPORT.json").write_text(json.dumps({"label": "generated ALFWorld-engine games, not the official split",
                                                 "generator": GENERATOR_VERSION, "seed": seed,
                                                 "by_task_type": report.by_task_type,
                                                 "rejected": dict(report.rejected),
                                                 "games": report.games}, indent=1))
    return report


def _cached(folder: Path) -> dict[str, Any] | None:
    gamefile, trajfile = folder / "game.tw-pddl", folder / "traj_data.json"
    if not (gamefile.is_file() and trajfile.is_file()):
        return None
    try:
        game, traj = json.loads(gamefile.read_text()), json.loads(trajfile.read_text())
    except (OSError, ValueError):
        return None
    meta = game.get("agentgym") or {}
    if not game.get("solvable") or meta.get("generator") != GENERATOR_VERSION:
        return None
    return {"path": str(gamefile), "task_type": traj["task_type"], "task_id": traj["task_id"],
            "floor_plan": traj["scene"]["scene_num"], "expert_steps": len(meta.get("expert_plan", []))}
