"""Packaging hook: a wheel carries the datastore drivers, the default
configuration and the built Images page as package data
(``oned_images/_data/{drivers,etc,web/dist}``).

They stay at the top of the checkout (``drivers/``, ``etc/``, ``web/dist/``), where the README
and the tests find them; ``build_py`` copies them into the built package so an
install made with ``pip install .`` works with no checkout.  Modes are kept
(``copy_tree`` preserves them), and the daemon restores execute bits at start
where an installer dropped them.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
#: web/dist is the page vite built from web/ (committed: installing needs no node)
SHIPPED = ("drivers", "etc", "web/dist")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        target = Path(self.build_lib) / "oned_images" / "_data"
        for name in SHIPPED:
            self.copy_tree(str(HERE / name), str(target / name), preserve_symlinks=False)


setup(cmdclass={"build_py": BuildPyWithData})
