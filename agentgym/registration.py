"""Gymnasium ids of the environments agentgym ships.

Importing this module imports gymnasium only: entry points are strings, so an environment's
dependencies load when it is first made, not when agentgym is imported. Importing ``agentgym``
calls ``register_envs()``; so does the ``gymnasium.envs`` entry point and the start-up hook that
the installed package ships (see ``agentgym/_gymnasium_hook.py``), which is what makes plain
``gymnasium.make("agentgym/...")`` work without importing agentgym first.

A user's own environment registers the ordinary way and runs through the same rollout code:

>>> import gymnasium as gym
>>> gym.register(id="myproject/Echo-v0", entry_point="agentgym.envs.echo.env:EchoEnv")
>>> gym.make("myproject/Echo-v0").reset(seed=1)[0].startswith("Say the word")
True
"""

from __future__ import annotations

from typing import Any

import gymnasium

NAMESPACE = "agentgym"

# id -> (entry point, default kwargs). One line per environment; no factory branches.
ENVIRONMENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "Echo-v0": ("agentgym.envs.echo.env:EchoEnv", {}),
    "BFCLMultiTurn-v0": ("agentgym.envs.bfcl.multi_turn:BFCLMultiTurnEnv", {}),
    "BFCLSingleTurn-v0": ("agentgym.envs.bfcl.single_turn:BFCLSingleTurnEnv", {}),
    "WebShop-v0": ("agentgym.envs.webshop.env:WebShopEnv", {}),
    "ALFWorld-v0": ("agentgym.envs.alfworld.env:ALFWorldEnv", {}),
    "AppWorld-v0": ("agentgym.envs.appworld.env:AppWorldEnv", {}),
    "Remote-v0": ("agentgym.integrations.openenv_client:RemoteEnv", {}),  # url=: an `agentgym serve` server
}


def register_envs() -> None:
    """Register every agentgym environment with gymnasium (idempotent)."""
    for name, (entry_point, kwargs) in ENVIRONMENTS.items():
        env_id = f"{NAMESPACE}/{name}"
        if env_id in gymnasium.registry:
            continue
        # The step limit lives in the env itself (it knows turns vs steps); gymnasium's TimeLimit
        # wrapper would double-count it, and the passive checker rejects valid text observations.
        gymnasium.register(id=env_id, entry_point=entry_point, kwargs=dict(kwargs),
                           disable_env_checker=True, order_enforce=True)
