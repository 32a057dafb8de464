"""Clean up after a daemon that died without stopping its drivers (kill -9, crash).

Driver scripts run in their own sessions, so they outlive a killed daemon.
The runner records each running process group in ``<VAR>/run/drivers/<pid>``;
at the next start the groups still alive are terminated (TERM lets our
scripts delete their partial files, KILL follows), and files in local
datastores that no image references any more are removed, so an interrupted
copy leaves nothing behind before reconciliation runs it again.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path

from twisted.logger import Logger

log = Logger(namespace="ImM")

#: what our fs driver creates in BASE_PATH: <32 hex>[.tmp|.download|.tmp.conv|.snap|.md5sum]
DRIVER_FILE = re.compile(r"^([0-9a-f]{32})(\.tmp|\.download|\.tmp\.conv|\.snap|\.md5sum)?$")


def run_dir(run_location: str) -> Path:
    """``run_location``: DaemonConfig.run_location (VAR_LOCATION/run, a worker's own below)."""
    return Path(run_location) / "drivers"


def action_tmp_root(run_location: str) -> Path:
    """Parent of the private TMPDIR each action gets (removed when the action ends)."""
    return Path(run_location) / "tmp"


def clear_action_tmp(run_location: str) -> list[str]:
    """Remove the TMPDIRs of actions a previous run left (kill -9, crash): after
    kill_leftover_groups nothing uses them any more."""
    root = action_tmp_root(run_location)
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    for name in names:
        shutil.rmtree(root / name, ignore_errors=True)
    if names:
        log.warn("Removed {n} temporary directories of interrupted driver actions",
                 n=len(names))
    return names


def record(run_location: str, pid: int, script: str) -> None:
    d = run_dir(run_location)
    d.mkdir(parents=True, exist_ok=True)
    (d / str(pid)).write_text(script)


def forget(run_location: str, pid: int) -> None:
    try:
        (run_dir(run_location) / str(pid)).unlink()
    except FileNotFoundError:
        pass


def _alive_with(pid: int, script: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return script.encode() in cmdline


def kill_leftover_groups(run_location: str, grace: float = 5.0) -> list[int]:
    """Terminate the process groups a previous daemon left running; returns their pids."""
    d = run_dir(run_location)
    if not d.is_dir():
        return []
    victims = []
    for entry in d.iterdir():
        try:
            pid = int(entry.name)
            script = entry.read_text()
        except (ValueError, OSError):
            entry.unlink(missing_ok=True)
            continue
        if _alive_with(pid, script) or _orphaned_group(pid):
            victims.append(pid)
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        entry.unlink(missing_ok=True)
    deadline = time.monotonic() + grace
    while victims and time.monotonic() < deadline:
        if not any(_group_alive(p) for p in victims):
            break
        time.sleep(0.05)
    for pid in victims:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        log.warn("Killed driver process group {pid} left by a previous run", pid=pid)
    return victims


def _orphaned_group(pgid: int) -> bool:
    """The group of a script that died with its daemon (parent-death signal) while what
    it started runs on.  Its leader's pid is free, and Linux never hands out a pid that
    is still some process group's id, so members of group ``pgid`` are that script's.
    (Where nothing reaps orphans, as in some containers, the dead leader stays a zombie.)"""
    try:
        stat = Path(f"/proc/{pgid}/stat").read_text()
    except OSError:
        return _group_alive(pgid)
    return stat.rsplit(")", 1)[-1].split()[0] == "Z" and _group_alive(pgid)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


#: what an interrupted action leaves half-written: always safe to delete.
PARTIAL_SUFFIXES = (".tmp", ".download", ".tmp.conv")
LOST_FOUND = "lost+found"


def lost_found(base_path: str, ds_id: int) -> str:
    """Where files no image references are kept: beside the datastore directories, so a
    datastore's monitor never counts them and its driver never sees them."""
    base = os.path.normpath(base_path)
    return os.path.join(os.path.dirname(base), LOST_FOUND, str(ds_id))


def free_name(path: str) -> str:
    """``path``, or ``path.N`` for the first N that does not exist yet."""
    candidate, n = path, 0
    while os.path.lexists(candidate):
        n += 1
        candidate = f"{path}.{n}"
    return candidate


def sweep_orphans(base_path: str, ds_id: int, referenced: set[str]) -> list[str]:
    """Clean driver files in ``base_path`` that belong to no image SOURCE.

    Partial files of an interrupted copy are deleted.  A complete file is moved to
    lost+found, never deleted: an image row may be missing for reasons other than an
    interrupted action (a restored older backup, a hand edit), and then the file is the
    only copy of someone's image.  ``db fsck`` reports what lost+found holds.
    """
    handled: list[str] = []
    try:
        names = os.listdir(base_path)
    except OSError:
        return handled
    keep = {os.path.basename(s) for s in referenced if s}
    for name in names:
        m = DRIVER_FILE.match(name)
        if not m or m.group(1) in keep:
            continue
        path = os.path.join(base_path, name)
        try:
            if (m.group(2) or "") in PARTIAL_SUFFIXES:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
                log.warn("Removed {path}: a partial file of an interrupted action", path=path)
            else:
                dest = free_name(os.path.join(lost_found(base_path, ds_id), name))
                os.makedirs(os.path.dirname(dest), mode=0o750, exist_ok=True)
                os.rename(path, dest)
                log.warn("Moved {path} to {dest}: no image references it", path=path,
                         dest=dest)
        except OSError as exc:
            log.warn("Cannot clean {path}: {error}", path=path, error=str(exc))
            continue
        handled.append(path)
    return handled
