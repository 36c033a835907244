"""AppWorld in agentgym: isolated AppWorld workers, a static code screen, and project-authored tasks.

``agentgym/AppWorld-v0`` -> ``agentgym.envs.appworld.env:AppWorldEnv``; ``agentgym data appworld``
(re)builds the world and tasks. The ``worker/`` folder runs inside the AppWorld virtualenv only and
is never imported here.
"""
