"""ALFWorld on the real TextWorld + ALFWorld engine: ``gymnasium.make("agentgym/ALFWorld-v0")``.

``env`` holds the environment, ``engine`` the in-process engine, ``games`` game folders (rebuild the
shared trial, discovery), ``generate`` the offline generator of ALFWorld-engine games, ``data`` the
``agentgym data alfworld`` command.
"""
