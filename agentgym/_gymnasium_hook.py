"""Start-up hook that makes ``gymnasium.make("agentgym/...")`` work without ``import agentgym``.

Gymnasium 1.x no longer reads the ``gymnasium.envs`` entry-point group (agentgym still declares it
for older releases and for tools that list it). The installed package therefore ships a ``.pth``
file that imports this module (installed top-level as ``_agentgym_gymnasium_hook``) at interpreter
start. It costs one finder on ``sys.meta_path``: nothing is imported until ``gymnasium`` itself is,
and right after gymnasium finishes loading, agentgym's environment ids are registered.
"""

import importlib.abc
import importlib.util
import sys


class _RegisterAfterGymnasium(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "gymnasium":
            return None
        sys.meta_path.remove(self)  # one shot; let the normal finders locate gymnasium
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_then_register(module):
            original(module)
            try:
                from agentgym.registration import register_envs
                register_envs()
            except Exception:  # a broken agentgym install must never break gymnasium itself
                pass

        loader.exec_module = exec_then_register
        return spec


def install() -> None:
    if "gymnasium" in sys.modules:
        return
    if not any(isinstance(f, _RegisterAfterGymnasium) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterGymnasium())


install()
