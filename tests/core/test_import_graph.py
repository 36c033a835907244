"""The project's module import graph, read with ``ast`` (function-level imports included, imports
under ``if TYPE_CHECKING:`` left out: they never run): no import cycle, and the core reaches the
plugin folders only through their interface modules or the registries.

Modules: ``agentgym/`` is the core (``agentgym.*``, its sub-packages ``integrations``, ``report``,
``testing`` included); the four plugin folders install as ``agentgym.envs``, ``agentgym.agents``,
``agentgym.feedback`` and ``agentgym.learners`` (``setup.py``'s ``ROOTS``).

A core module may import a plugin-folder module only when it is one of ``INTERFACE`` below: the
types, base classes and helpers that plugins and the core both code against. Every other
plugin-folder module is a concrete plugin (a learner, a feedback source or selector, a policy
backend, a teacher, an env) and the core reaches it through a registry (``agentgym.plugins``:
``LEARNERS``, ``SOURCES``, ``SELECTORS``, ``ROLLOUT_BACKENDS``, ``TEACHERS``, ``MODELS``; gymnasium's
registry for envs), whose ``"module:attr"`` strings are not imports. Package ``__init__`` files
count as what they import at module level: ``agentgym.agents`` loads its members lazily (interface);
``agentgym.learners`` and ``agentgym.feedback`` import every built-in plugin (concrete), so the core
names the interface module instead (``agentgym.learners.base``, not ``agentgym.learners``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"agentgym": "agentgym", "agentgym.envs": "envs", "agentgym.agents": "agents",
         "agentgym.feedback": "feedback", "agentgym.learners": "learners"}
PLUGIN_PACKAGES = ("agentgym.envs", "agentgym.agents", "agentgym.feedback", "agentgym.learners")

# Plugin-folder modules the core may import (everything else there is a concrete plugin).
INTERFACE = {
    "agentgym.agents",                      # lazy facade: importing it loads no backend
    "agentgym.agents.base",                 # Policy, SamplingParams, Generation, PolicyError, derive_seed
    "agentgym.agents.models",               # model sources behind the MODELS registry, name checks
    "agentgym.agents.transformers_policy",  # the in-process policy the trainer trains and evaluates
    "agentgym.learners.base",               # Learner and the shared objectives, and its split parts:
    "agentgym.learners.engine", "agentgym.learners.samples", "agentgym.learners.settings",
    "agentgym.learners.signal",             # the teacher-signal diagnostic over any learner's metrics
    "agentgym.feedback.base",               # FeedbackSource, CombinedSource, make_source, check_options
    "agentgym.feedback.prompts",            # every template and its checks
}


def module_name(path: Path) -> str:
    for package, folder in ROOTS.items():
        base = REPO / folder
        if path.is_relative_to(base):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([package, *parts])
    raise ValueError(path)


def project_modules() -> dict[str, Path]:
    found = {}
    for folder in ROOTS.values():
        for path in sorted((REPO / folder).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[module_name(path)] = path
    return found


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest project module that ``name`` names or lies in (None: not the project's)."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def import_edges(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """{importer: {imported: first line}} over the project's modules."""
    edges: dict[str, dict[str, int]] = defaultdict(dict)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_lines(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from pkg import submodule` imports the submodule; `from mod import name`, the module.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != name:
                    edges[name].setdefault(resolved, node.lineno)
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    found = []
    for comp in comps:
        members, start = set(comp), min(comp)
        # the shortest path back to start inside the component (breadth-first)
        paths, seen = {start: [start]}, {start}
        queue = [start]
        while queue:
            v = queue.pop(0)
            for w in sorted(edges.get(v, {})):
                if w == start:
                    queue = []
                    found.append(paths[v] + [start])
                    break
                if w in members and w not in seen:
                    seen.add(w)
                    paths[w] = paths[v] + [w]
                    queue.append(w)
    return found


def _is_core(name: str) -> bool:
    return name.split(".")[0] == "agentgym" and not any(name == p or name.startswith(p + ".") for p in PLUGIN_PACKAGES)


def _where(modules: dict[str, Path], importer: str, line: int) -> str:
    return f"{modules[importer].relative_to(REPO)}:{line}"


def test_the_graph_sees_function_level_imports():
    """The reader itself: a function-local import is an edge; the cycle finder names a cycle."""
    modules = project_modules()
    edges = import_edges(modules)
    assert "agentgym.train" in modules and "agentgym.envs.bfcl" in modules and "agentgym.learners.base" in modules
    assert len(modules) > 80 and sum(len(v) for v in edges.values()) > 150
    # agentgym.train imports agentgym.trainer (torch) inside _train only, never at module level
    assert "agentgym.trainer" in edges["agentgym.train"]
    assert cycles({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}) == [["a", "b", "c", "a"]]


def test_no_import_cycle():
    modules = project_modules()
    edges = import_edges(modules)
    found = cycles(edges)
    described = [" -> ".join(f"{a} ({_where(modules, a, edges[a][b])})" for a, b in zip(c, c[1:])) + f" -> {c[-1]}"
                 for c in found]
    assert not found, "import cycles:\n" + "\n".join(described)


def test_the_core_imports_no_concrete_plugin():
    modules = project_modules()
    edges = import_edges(modules)
    offending = sorted(f"{_where(modules, a, line)}: {a} imports {b}"
                       for a, targets in edges.items() if _is_core(a)
                       for b, line in targets.items() if not _is_core(b) and b not in INTERFACE)
    assert not offending, "core modules importing concrete plugins (reach them through a registry):\n" + \
        "\n".join(offending)
