"""AppWorld in agentgym: isolated AppWorld workers, a static code screen, and project-authored tasks.

``agentgym/AppWorld-v0`` -> ``agentgym.envs.appworld.env:AppWorldEnv``; ``agentgym data appworld``
(re)builds the world and tasks. The ``worker/`` folder runs inside the AppWorld virtualenv; the only
part imported here is ``worker/server.py``'s standard-library name rule (``NAME``, ``checked_name``),
so the env and the workers refuse the same task ids and experiment names.
"""
