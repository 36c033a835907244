"""One fast-downward planner library per process, shared by every ALFWorld engine of that process.

fast-downward's ``libdownward.so`` keeps the loaded task and the current state in C globals, so
TextWorld gives every ``PddlEnv`` a private *copy* of the library (``fast_downward.load_lib`` copies
it into ``$TMPDIR`` and dlopens the copy). glibc never unmaps those copies (the library defines
``STB_GNU_UNIQUE`` symbols, which make it non-deletable: ``dlclose`` returns 0 and the mapping stays),
so every env built and closed held 33.7 MB of a deleted file and ~1.8 MB of RSS until exit.

Here the package's own ``libdownward.so`` is loaded once (no copy, nothing in ``$TMPDIR``), and each
engine gets a ``PlannerHandle``: a view of the library that records what its engine loaded
(``load_sas``/``load_sas_replan`` text) and which operators it applied since. Every engine call
runs under the process-wide ``PLANNER_LOCK``; when a handle finds the library holding another
engine's game, it loads its own task again and re-applies its operators (a few ms: ALFWorld
episodes are at most a few dozen steps), so the library is always in the state its engine left it.
The same lock serialises TextWorld's tatsu parser and textworld's process-wide intern table, which
are not thread-safe: engines in several threads of one process play correctly side by side.

When the last handle is released the library's state is freed (``cleanup``); the one mapping of the
package's file stays (see above) and is reused by the next engine.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import fast_downward
from fast_downward.interface import DOWNWARD_LIB_PATH, Atom

__all__ = ["PLANNER_LOCK", "PlannerHandle", "acquire", "users"]

# Re-entrant: an engine call (a reset) makes nested engine calls (an expert rollout).
PLANNER_LOCK = threading.RLock()

_lib: Any = None          # the one loaded library (a ctypes CDLL with fast_downward's signatures)
_users = 0                # live handles
_owner: "PlannerHandle | None" = None  # whose game the library holds now


def _load() -> Any:
    lib = ctypes.CDLL(DOWNWARD_LIB_PATH)
    # fast_downward.load_lib sets argument/return types on its copy; set the same on ours.
    for name, (argtypes, restype) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    return lib


_SIGNATURES: dict[str, tuple[list, Any]] = {
    "load_sas": ([ctypes.c_char_p], None),
    "load_sas_replan": ([ctypes.c_char_p], None),
    "cleanup": ([], None),
    "get_applicable_operators_count": ([], int),
    "get_applicable_operators": ([ctypes.POINTER(fast_downward.Operator)], None),
    "get_state_size": ([], int),
    "get_state": ([ctypes.POINTER(Atom)], None),
    "apply_operator": ([ctypes.c_int, ctypes.POINTER(Atom)], int),
    "check_goal": ([], ctypes.c_bool),
    "solve": ([ctypes.c_bool], ctypes.c_bool),
    "solve_sas": ([ctypes.c_char_p, ctypes.c_bool], ctypes.c_bool),
    "replan": ([ctypes.c_bool], ctypes.c_bool),
    "get_last_plan_length": ([], int),
    "get_last_plan": ([ctypes.POINTER(fast_downward.Operator)], None),
    "check_solution": ([ctypes.c_int, ctypes.POINTER(fast_downward.Operator)], ctypes.c_bool),
}


def users() -> int:
    """How many engines of this process hold the planner now."""
    return _users


class PlannerHandle:
    """One engine's view of the shared library (what ``PddlEnv.downward_lib`` is set to).

    Only call it with ``PLANNER_LOCK`` held (``Engine`` does). ``release()`` is idempotent.
    """

    def __init__(self) -> None:
        self._sas: bytes | None = None
        self._sas_replan: bytes | None = None
        self._applied: list[tuple[int, int]] = []  # (operator id, effect count) since load_sas
        self.released = False
        self.restores = 0  # how often another engine's game had to be swapped out (for tests)

    # ------------------------------------------------------------------ state switching
    def _activate(self) -> Any:
        global _owner
        if self.released:
            raise RuntimeError("this ALFWorld planner handle was released")
        if _owner is not self:
            if self._sas is not None:
                _lib.load_sas(self._sas)
            if self._sas_replan is not None:
                _lib.load_sas_replan(self._sas_replan)
            for op_id, n_effects in self._applied:
                _lib.apply_operator(op_id, (Atom * n_effects)())
            _owner = self
            self.restores += 1
        return _lib

    # ------------------------------------------------------------------ the calls that change state
    def load_sas(self, sas: bytes) -> None:
        global _owner
        if self.released:
            raise RuntimeError("this ALFWorld planner handle was released")
        _lib.load_sas(sas)
        self._sas, self._sas_replan, self._applied = sas, None, []
        _owner = self

    def load_sas_replan(self, sas: bytes) -> None:
        self._activate().load_sas_replan(sas)
        self._sas_replan = sas

    def apply_operator(self, op_id: int, effects: Any) -> int:
        result = self._activate().apply_operator(op_id, effects)
        self._applied.append((int(op_id), len(effects)))
        return result

    def __getattr__(self, name: str) -> Any:  # read-only queries (state, operators, goal, plans)
        if name not in _SIGNATURES:
            raise AttributeError(name)
        function = getattr(_lib, name)

        def call(*args: Any) -> Any:
            self._activate()
            return function(*args)
        return call

    # ------------------------------------------------------------------ lifetime
    def release(self) -> None:
        """Give the library back; the last release frees its state (``cleanup``)."""
        global _users, _owner
        with PLANNER_LOCK:
            if self.released:
                return
            self.released = True
            self._sas = self._sas_replan = None
            self._applied = []
            _users -= 1
            if _owner is self:
                _owner = None
            if _users == 0:
                _lib.cleanup()
                _owner = None


def acquire() -> PlannerHandle:
    """A handle on the process's planner library (loaded on first use)."""
    global _lib, _users
    with PLANNER_LOCK:
        if _lib is None:
            _lib = _load()
        _users += 1
        return PlannerHandle()
