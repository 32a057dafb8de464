"""Build a driver remotes directory for a test: our dummy and fs drivers plus
scripts of the test's own (a driver "written by someone else")."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def make_remotes(root: Path, drivers: dict[str, dict[str, str]]) -> Path:
    ds = root / "datastore"
    ds.mkdir(parents=True, exist_ok=True)
    for name in ("dummy", "fs", "common"):
        link = ds / name
        if not link.exists():
            link.symlink_to(REPO / "drivers" / "datastore" / name)
    for name, actions in drivers.items():
        d = ds / name
        d.mkdir(exist_ok=True)
        for action, text in actions.items():
            path = d / action
            path.write_text(text)
            path.chmod(0o755)
    return root


def driver_config(root: Path, names: str, extra: str = "") -> str:
    return (f'DATASTORE_MAD = [ EXECUTABLE = "one_datastore", ARGUMENTS = "{names}", '
            f'REMOTES = "{root}", KILL_GRACE = 1 ]\n' + extra + ds_mad_confs(names))


def ds_mad_confs(arguments: str) -> str:
    """A DS_MAD_CONF for each driver of ARGUMENTS' ``-d`` list beyond the built-in
    dummy and fs: as in oned, a datastore's DS_MAD must have one.  They come last: the
    first DS_MAD_CONF of a name counts, so a test's own (MODE, REQUIRED_ATTRS) wins."""
    words = arguments.split()
    names = words[words.index("-d") + 1].split(",") if "-d" in words[:-1] else []
    return "".join(f'DS_MAD_CONF = [ NAME = "{name}" ]\n' for name in names
                   if name and name not in ("dummy", "fs"))


def processes_with(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmd and state != "Z":
            found.append(int(entry))
    return found
