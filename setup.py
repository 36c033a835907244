"""Maps the four plugin folders (envs/, agents/, feedback/, learners/) under the ``agentgym`` namespace.

Static configuration cannot discover sub-packages under a renamed root, so this file walks each
folder and gives setuptools the package list and, for each package, the folder it lives in.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {"agentgym": "agentgym", "agentgym.envs": "envs", "agentgym.agents": "agents",
         "agentgym.feedback": "feedback", "agentgym.learners": "learners"}


def discover() -> dict[str, str]:
    """Package name -> folder, for every folder holding an ``__init__.py``."""
    here = Path(__file__).parent
    found = {}
    for name, folder in ROOTS.items():
        for init in sorted((here / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(here / folder)
            found[".".join([name, *rel.parts])] = "/".join([folder, *rel.parts])
    return found


PACKAGES = discover()
setup(packages=list(PACKAGES), package_dir=PACKAGES,
      package_data={"agentgym": ["py.typed", "data/*"]})
