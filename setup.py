"""Maps the four plugin folders (envs/, agents/, feedback/, learners/) under the ``agentgym`` namespace,
and installs the start-up hook that registers agentgym's ids with gymnasium.

Static configuration cannot discover sub-packages under a renamed root, so this file walks each
folder and gives setuptools the package list and, for each package, the folder it lives in.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
ROOTS = {"agentgym": "agentgym", "agentgym.envs": "envs", "agentgym.agents": "agents",
         "agentgym.feedback": "feedback", "agentgym.learners": "learners"}
HOOK_MODULE = "_agentgym_gymnasium_hook"
HOOK_PTH = "agentgym-gymnasium.pth"


def discover() -> dict[str, str]:
    """Package name -> folder, for every folder holding an ``__init__.py``."""
    found = {}
    for name, folder in ROOTS.items():
        for init in sorted((HERE / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(HERE / folder)
            found[".".join([name, *rel.parts])] = "/".join([folder, *rel.parts])
    return found


class BuildWithGymnasiumHook(build_py):
    """Also place the hook module and its .pth at the top of the installed tree (wheels and
    editable installs alike): gymnasium >= 1.0 reads no entry points, see agentgym/_gymnasium_hook.py."""

    def run(self):
        super().run()
        module, pth = self._hook_files()
        module.parent.mkdir(parents=True, exist_ok=True)
        module.write_text((HERE / "agentgym" / "_gymnasium_hook.py").read_text())
        pth.write_text(f"import {HOOK_MODULE}\n")

    def _hook_files(self):
        root = Path(self.build_lib)
        if getattr(self, "editable_mode", False):
            # PEP 660 editable wheels are assembled from the install command's lib directory;
            # build_lib is a scratch folder there.
            root = Path(self.distribution.get_command_obj("install").install_lib)
        return root / f"{HOOK_MODULE}.py", root / HOOK_PTH

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [str(p) for p in self._hook_files()]


PACKAGES = discover()
setup(packages=list(PACKAGES), package_dir=PACKAGES, cmdclass={"build_py": BuildWithGymnasiumHook},
      package_data={"agentgym": ["py.typed"]})
