"""Build step that pyproject.toml cannot declare: the wheel carries tasks/, prompts/ and
simulators/ inside the package, at ``icpo_eval/_data/<folder>`` (read by ``icpo_eval.paths``).

In the repository the three folders stay at the top level, where users read and edit them; an
editable install reads them in place, so nothing is copied then.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLED = ("tasks", "prompts", "simulators")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        here = Path(__file__).resolve().parent
        for name in BUNDLED:
            target = Path(self.build_lib) / "icpo_eval" / "_data" / name
            shutil.copytree(
                here / name,
                target,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )


setup(cmdclass={"build_py": BuildPyWithData})
