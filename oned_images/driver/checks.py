"""Start-up checks of the driver tree, so a broken install fails at start, not
at the first copy.

* REMOTES must be a readable directory, and every DS_MAD allowed with ``-d``
  must have action scripts there: otherwise start-up stops naming the path.
* Installers do not always keep execute bits (wheels carry modes, but not every
  tool restores them): scripts shipped with oned-images get them back here;
  a script of the operator's own that is not executable is named in a warning.
* Each driver may list the external commands it runs in a ``tools`` file beside
  its scripts (``<command> <Debian package> <what fails without it>``); every
  command missing from the drivers' PATH is logged once, with what will fail.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from twisted.logger import Logger

from oned_images.config import ACTIONS, SHIPPED_DRIVERS, ConfigError, DriverSettings

log = Logger(namespace="OnM")

#: the file in <REMOTES>/datastore/<DS_MAD>/ that lists the driver's commands.
TOOLS_FILE = "tools"


@dataclass(frozen=True)
class Tool:
    command: str
    package: str
    needed_for: str


def read_tools(path: Path) -> list[Tool]:
    """The commands a driver declares; a missing file declares none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    tools = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split(None, 2)
        if len(words) < 3:
            raise ConfigError(f"{path}:{number}: expected <command> <package> <what fails>")
        tools.append(Tool(*words))
    return tools


def missing_tools(settings: DriverSettings, path: str) -> list[tuple[str, Tool]]:
    """(DS_MAD, tool) for every declared command not found on ``path``."""
    missing = []
    for ds_mad in settings.allowed:
        for tool in read_tools(Path(settings.remotes) / "datastore" / ds_mad / TOOLS_FILE):
            if shutil.which(tool.command, path=path) is None:
                missing.append((ds_mad, tool))
    return missing


def missing_tm_tools(settings: DriverSettings, path: str) -> list[tuple[str, Tool]]:
    """(TM_MAD, tool) for every command a transfer-manager driver under
    ``<REMOTES>/tm`` declares and ``path`` lacks (driver/tm.py runs them)."""
    missing = []
    tm_root = Path(settings.remotes) / "tm"
    for directory in sorted(tm_root.iterdir()) if tm_root.is_dir() else []:
        for tool in read_tools(directory / TOOLS_FILE):
            if shutil.which(tool.command, path=path) is None:
                missing.append((directory.name, tool))
    return missing


def _restore_modes(directory: Path) -> None:
    """Give shipped scripts (``#!`` files) back the execute bits an installer dropped."""
    for entry in directory.rglob("*"):
        if not entry.is_file() or os.access(entry, os.X_OK):
            continue
        with entry.open("rb") as f:
            if f.read(2) != b"#!":
                continue
        mode = entry.stat().st_mode
        try:
            entry.chmod(mode | ((mode & 0o444) >> 2))  # x wherever r is set
        except OSError as exc:
            raise ConfigError(
                f"{entry}: driver script is not executable and cannot be fixed "
                f"({exc.strerror}): run chmod +x on the scripts in {directory}") from None


def check_drivers(settings: DriverSettings, path: str) -> None:
    """Stop start-up (ConfigError) on a driver tree that cannot work; log what is missing."""
    remotes = Path(settings.remotes)
    if not remotes.exists():
        raise ConfigError(f"DATASTORE_MAD REMOTES {remotes} does not exist")
    if not remotes.is_dir() or not os.access(remotes, os.R_OK | os.X_OK):
        raise ConfigError(f"DATASTORE_MAD REMOTES {remotes} is not a readable directory")
    if remotes.resolve() == SHIPPED_DRIVERS.resolve():
        _restore_modes(remotes / "datastore")
        if (remotes / "tm").is_dir():
            _restore_modes(remotes / "tm")
    for ds_mad in settings.allowed:
        directory = remotes / "datastore" / ds_mad
        present = [a for a in ACTIONS if (directory / a).is_file()]
        if not present:
            raise ConfigError(f"DATASTORE_MAD -d allows {ds_mad!r} but {directory} "
                              "holds no driver scripts")
        for action in present:
            script = directory / action
            if not os.access(script, os.X_OK):
                mode = stat.filemode(script.stat().st_mode)
                log.warn("Driver script {script} is not executable ({mode}): {ds_mad} "
                         "{action} will fail", script=str(script), mode=mode, ds_mad=ds_mad,
                         action=action)
    for ds_mad, tool in missing_tools(settings, path):
        log.warn("{command} not found in the drivers' PATH: {ds_mad} {needed} will fail; "
                 "install Debian package {package}", command=tool.command, ds_mad=ds_mad,
                 needed=tool.needed_for, package=tool.package)
    for tm_mad, tool in missing_tm_tools(settings, path):
        log.warn("{command} not found in the drivers' PATH: TM {tm_mad} {needed} will fail; "
                 "install Debian package {package}", command=tool.command, tm_mad=tm_mad,
                 needed=tool.needed_for, package=tool.package)
