"""Packaging hook: a wheel carries the datastore drivers and the default
configuration as package data (``oned_images/_data/{drivers,etc}``).

They stay at the top of the checkout (``drivers/``, ``etc/``), where the README
and the tests find them; ``build_py`` copies them into the built package so an
install made with ``pip install .`` works with no checkout.  Modes are kept
(``copy_tree`` preserves them), and the daemon restores execute bits at start
where an installer dropped them.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = ("drivers", "etc")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads drivers/ and etc/ from the checkout
        target = Path(self.build_lib) / "oned_images" / "_data"
        for name in SHIPPED:
            self.copy_tree(str(HERE / name), str(target / name), preserve_symlinks=False)


setup(cmdclass={"build_py": BuildPyWithData})
