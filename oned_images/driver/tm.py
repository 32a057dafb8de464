"""Transfer-manager (TM) actions: OpenNebula's TRANSFER lines, run by the driver runner.

oned writes a transfer file of lines ``<ACTION>[.<system tm>] <tm_mad> <args...>`` and
one_tm.rb runs them one after the other, each as
``<REMOTES>/tm/<tm_mad>/<action>[.<system tm>]`` (falling back to the name without the
suffix) with the other words as argv and nothing on stdin; the first failing line ends
the transfer with its error text (vms.md section 7.1).  Here a line is a
:class:`TmAction`, built by the functions named after section 7.2's operations, and
:class:`TransferManager` runs lines through the same
:class:`~oned_images.driver.runner.DriverRunner` as the datastore actions: the ``-t``
slots and the owner's share of them, one action per VM at a time (key ``("vm", id)``),
a process group per script, timeouts (TERM, then KILL), cancel, live log lines and the
pid records with which the next start kills what a killed daemon left running.

While a transfer runs it is journaled in ``<VAR_LOCATION>/run/tm/<vm id>`` (the lines,
as a transfer file); the journal goes when the transfer ends, and stays when the daemon
stops or dies in the middle, so that the VM side finds at the next start which
transfers were interrupted (:meth:`TransferManager.interrupted`) and redoes or fails
them, then calls :meth:`TransferManager.forget`.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from oned_images.driver.parse import DriverResult

log = Logger(namespace="TrM")

#: seconds before a TM script is killed (TERM, then KILL); the copies (clone, cpds,
#: mvds, mv, mkimage) have no limit, like every TM action in oned (one_tm.rb passes none).
DEFAULT_TIMEOUTS = {"ln": 600, "delete": 1800, "mkswap": 1800, "context": 600,
                    "snap_create": 1800, "snap_revert": 1800, "snap_delete": 1800,
                    "resize": 1800, "failmigrate": 600, "premigrate": 600,
                    "postmigrate": 600, "monitor": 120}
#: every TM action name (TM_MAD -w gives each of them the same timeout)
ACTIONS = (*DEFAULT_TIMEOUTS, "clone", "cpds", "mvds", "mv", "mkimage")

#: one word of a transfer line: the file is split on white space, so no argument may
#: hold any (nor control characters); nothing here ever reaches a shell.
_WORD = re.compile(r"^[^\s\x00-\x1f\x7f]+$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
_ACTION = re.compile(r"^[A-Z][A-Z_]*$")


@dataclass(frozen=True)
class TmAction:
    """One TRANSFER line: ``CLONE qcow2 fe:/src host:/dst 5 1``.

    ``action`` is upper case as oned writes it; ``system_tm`` is the ``.<tm>`` suffix
    oned adds for a system datastore of another TM (``CLONE.ssh``), or "".
    """

    action: str
    tm_mad: str
    args: tuple[str, ...]
    system_tm: str = ""

    def __post_init__(self) -> None:
        if not _ACTION.match(self.action):
            raise ValueError(f"Invalid TM action {self.action!r}")
        if not _NAME.match(self.tm_mad):
            raise ValueError(f"Invalid TM driver name {self.tm_mad!r}")
        if self.system_tm and not _NAME.match(self.system_tm):
            raise ValueError(f"Invalid system TM driver name {self.system_tm!r}")
        object.__setattr__(self, "args", tuple(str(a) for a in self.args))
        for arg in self.args:
            if not _WORD.match(arg):
                raise ValueError(f"Invalid TM argument {arg!r}: empty or with white space")

    @property
    def name(self) -> str:
        """The action in lower case without the suffix: ``clone`` (timeouts, logs)."""
        return self.action.lower()

    @property
    def script_name(self) -> str:
        """The script one_tm.rb looks for first: ``clone`` or ``clone.ssh``."""
        return self.name + (f".{self.system_tm}" if self.system_tm else "")

    @property
    def line(self) -> str:
        head = self.action + (f".{self.system_tm}" if self.system_tm else "")
        return " ".join((head, self.tm_mad, *self.args))

    @classmethod
    def parse(cls, line: str) -> TmAction:
        """A transfer-file line back into an action (ValueError when malformed)."""
        words = line.split()
        if len(words) < 2:
            raise ValueError(f"Invalid transfer line {line!r}")
        action, _, system_tm = words[0].upper().partition(".")
        return cls(action, words[1], tuple(words[2:]), system_tm.lower())


# ------------------------------------------------------------------ paths
def frontend() -> str:
    """oned's ``fe`` in transfer lines: its HOSTNAME, by default gethostname()."""
    return socket.gethostname()


def system_dir(datastore_location: str, sys_ds_id: int, vm_id: int) -> str:
    """``<DATASTORE_LOCATION>/<system ds>/<vm id>``: where a VM's disks live."""
    return f"{datastore_location.rstrip('/')}/{int(sys_ds_id)}/{int(vm_id)}"


def disk_path(datastore_location: str, sys_ds_id: int, vm_id: int, disk_id: int) -> str:
    """``<system dir>/disk.<disk id>``."""
    return f"{system_dir(datastore_location, sys_ds_id, vm_id)}/disk.{int(disk_id)}"


def _on(host: str, path: str) -> str:
    return f"{host}:{path}"


# ---------------------------------------------------- lines (vms.md 7.2)
def clone(tm_mad: str, source: str, host: str, disk: str, vm_id: int, ds_id: int, *,
          fe: str | None = None, system_tm: str = "") -> TmAction:
    """``CLONE <ds tm> <fe>:<SOURCE> <host>:<disk> <vm> <image ds>`` (a SOURCE holding
    ':' goes as it is, as oned does)."""
    src = source if ":" in source else _on(fe or frontend(), source)
    return TmAction("CLONE", tm_mad, (src, _on(host, disk), str(vm_id), str(ds_id)),
                    system_tm)


def ln(tm_mad: str, source: str, host: str, disk: str, vm_id: int, ds_id: int, *,
       fe: str | None = None, system_tm: str = "") -> TmAction:
    """``LN``: the same words as CLONE (persistent images, CLONE=NO)."""
    src = source if ":" in source else _on(fe or frontend(), source)
    return TmAction("LN", tm_mad, (src, _on(host, disk), str(vm_id), str(ds_id)), system_tm)


def mkimage(sys_tm: str, size_mb: int, fmt: str, host: str, disk: str, vm_id: int,
            sys_ds_id: int) -> TmAction:
    """``MKIMAGE <sys tm> <size> <format> <host>:<disk> <vm> <sys ds>`` (volatile FS)."""
    return TmAction("MKIMAGE", sys_tm, (str(size_mb), fmt, _on(host, disk), str(vm_id),
                                        str(sys_ds_id)))


def mkswap(sys_tm: str, size_mb: int, host: str, disk: str, vm_id: int,
           sys_ds_id: int) -> TmAction:
    """``MKSWAP <sys tm> <size> <host>:<disk> <vm> <sys ds>``."""
    return TmAction("MKSWAP", sys_tm, (str(size_mb), _on(host, disk), str(vm_id),
                                       str(sys_ds_id)))


def context(sys_tm: str, files: Sequence[str], host: str, disk: str, vm_id: int,
            sys_ds_id: int) -> TmAction:
    """``CONTEXT <sys tm> <context.sh> [files] <host>:<disk> <vm> <sys ds>``; a file
    may be ``path:name`` (its name in the ISO)."""
    return TmAction("CONTEXT", sys_tm, (*files, _on(host, disk), str(vm_id),
                                        str(sys_ds_id)))


def mvds(tm_mad: str, host: str, disk: str, source: str, vm_id: int, ds_id: int, *,
         system_tm: str = "") -> TmAction:
    """``MVDS <ds tm> <host>:<disk> <SOURCE> <vm> <image ds>`` (persistent, SAVE=YES)."""
    return TmAction("MVDS", tm_mad, (_on(host, disk), source, str(vm_id), str(ds_id)),
                    system_tm)


def cpds(tm_mad: str, host: str, disk: str, source: str, snap_id: int, vm_id: int,
         ds_id: int, *, system_tm: str = "") -> TmAction:
    """``CPDS <ds tm> <host>:<disk> <new SOURCE> <snap id or -1> <vm> <image ds>``."""
    return TmAction("CPDS", tm_mad, (_on(host, disk), source, str(snap_id), str(vm_id),
                                     str(ds_id)), system_tm)


def delete(tm_mad: str, host: str, path: str, vm_id: int, ds_id: int, *,
           system_tm: str = "") -> TmAction:
    """``DELETE <tm> <host>:<disk or system dir> <vm> <ds>``."""
    return TmAction("DELETE", tm_mad, (_on(host, path), str(vm_id), str(ds_id)), system_tm)


def mv(tm_mad: str, src_host: str, src: str, dst_host: str, dst: str, vm_id: int,
       ds_id: int, *, system_tm: str = "") -> TmAction:
    """``MV <tm> <host>:<path> <host>:<path> <vm> <ds>`` (stop, undeploy, resume)."""
    return TmAction("MV", tm_mad, (_on(src_host, src), _on(dst_host, dst), str(vm_id),
                                   str(ds_id)), system_tm)


def _snap(action: str, tm_mad: str, host: str, disk: str, snap_id: int, vm_id: int,
          ds_id: int, system_tm: str) -> TmAction:
    return TmAction(action, tm_mad, (_on(host, disk), str(snap_id), str(vm_id), str(ds_id)),
                    system_tm)


def snap_create(tm_mad: str, host: str, disk: str, snap_id: int, vm_id: int, ds_id: int,
                *, system_tm: str = "") -> TmAction:
    """``SNAP_CREATE <ds tm> <host>:<disk> <snap id> <vm> <image ds>``."""
    return _snap("SNAP_CREATE", tm_mad, host, disk, snap_id, vm_id, ds_id, system_tm)


def snap_revert(tm_mad: str, host: str, disk: str, snap_id: int, vm_id: int, ds_id: int,
                *, system_tm: str = "") -> TmAction:
    """``SNAP_REVERT``: the words of SNAP_CREATE."""
    return _snap("SNAP_REVERT", tm_mad, host, disk, snap_id, vm_id, ds_id, system_tm)


def snap_delete(tm_mad: str, host: str, disk: str, snap_id: int, vm_id: int, ds_id: int,
                *, system_tm: str = "") -> TmAction:
    """``SNAP_DELETE``: the words of SNAP_CREATE."""
    return _snap("SNAP_DELETE", tm_mad, host, disk, snap_id, vm_id, ds_id, system_tm)


def resize(tm_mad: str, host: str, disk: str, size_mb: int, vm_id: int, ds_id: int, *,
           system_tm: str = "") -> TmAction:
    """``RESIZE <tm> <host>:<disk> <size MB> <vm> <ds>``."""
    return TmAction("RESIZE", tm_mad, (_on(host, disk), str(size_mb), str(vm_id), str(ds_id)),
                    system_tm)


# ---------------------------------------------------------------- results
@dataclass
class TmResult:
    """How a transfer ended, in the terms oned's TransferManager reacts to (vms.md 7.4)."""

    vm_id: int
    ok: bool
    #: the failure text one_tm.rb sends after ``TRANSFER FAILURE <vm>`` ("" on success)
    info: str = ""
    #: the line that failed (None on success, or when nothing ran)
    failed: TmAction | None = None
    #: one DriverResult per line that ran, in order
    results: list[DriverResult] = field(default_factory=list)
    timed_out: bool = False
    cancelled: bool = False

    @property
    def message(self) -> str:
        """The driver's answer: ``TRANSFER SUCCESS 5`` / ``TRANSFER FAILURE 5 <info>``."""
        if self.ok:
            return f"TRANSFER SUCCESS {self.vm_id}"
        return f"TRANSFER FAILURE {self.vm_id} {self.info or '-'}"

    @property
    def error(self) -> str | None:
        """What oned writes to the VM's USER_TEMPLATE/ERROR after ``<ctime>: ``, or None
        (success, or an empty info or one starting with '-', which oned skips)."""
        if self.ok or not self.info or self.info.startswith("-"):
            return None
        return f"Error executing image transfer script: {self.info}"


@dataclass(frozen=True)
class Interrupted:
    """A transfer the journal shows was running when the daemon stopped or died."""

    vm_id: int
    op: str
    actions: tuple[TmAction, ...]


@dataclass
class _Transfer:
    cancelled: bool = False
    done: defer.Deferred = field(default_factory=defer.Deferred)


#: what a TM script killed with KILL can leave half-written (our scripts write these
#: names and rename them when complete; TERM makes them delete their own)
_PARTIAL = re.compile(r"^(disk\.\d+|\d+|kernel|initrd)\.tmp(\.conv)?$")


def sweep_partial_files(datastore_location: str,
                        vm_ids: Collection[int] | None = None) -> list[str]:
    """Delete the partial files of TM actions a dead daemon left: ``disk.<n>.tmp``,
    ``kernel.tmp`` and ``initrd.tmp`` in VM directories and ``<id>.tmp`` in ``.snap`` directories of every datastore.  Call it
    at start, after reaper.kill_leftover_groups and before any transfer runs (the
    image datastores' ``<hash>.tmp`` are reaper.sweep_orphans' job).

    With ``vm_ids`` (a takeover while other daemons run transfers) only the directories
    of those VMs are swept: the rest may be live daemons' files being written."""
    removed = []
    root = Path(datastore_location)
    only = None if vm_ids is None else {str(i) for i in vm_ids}
    for ds in root.iterdir() if root.is_dir() else []:
        if not ds.name.isdigit() or not ds.is_dir():
            continue
        for entry in ds.iterdir():
            if only is not None and entry.name not in only:
                continue
            if entry.is_dir() and not entry.is_symlink() and \
                    (entry.name.isdigit() or entry.name.endswith(".snap")):
                dirs = [entry, *(d for d in entry.glob("disk.*.snap") if d.is_dir())]
                for directory in dirs:
                    for f in directory.iterdir():
                        if _PARTIAL.match(f.name) and not f.is_dir():
                            f.unlink(missing_ok=True)
                            removed.append(str(f))
    for path in removed:
        log.warn("Removed {path}: a partial file of an interrupted TM action", path=path)
    return removed


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


class TransferManager:
    """Runs TM actions and transfers (sequences of them) for VMs.

    ``allowed`` is one_tm.rb's ``-d`` list; None allows every directory under
    ``<REMOTES>/tm`` (one_tm.rb without ``-d``).  ``timeouts`` (seconds by action
    name, 0 or absent = none) are added to :data:`DEFAULT_TIMEOUTS`.
    """

    def __init__(self, runner: Any, config: Any, *, remotes: str | None = None,
                 allowed: Iterable[str] | None = None,
                 timeouts: dict[str, int] | None = None) -> None:
        self.runner = runner
        self.config = config
        self.remotes = remotes or runner.settings.remotes
        self.allowed = None if allowed is None else frozenset(allowed)
        self.timeouts = {k: v for k, v in (DEFAULT_TIMEOUTS | (timeouts or {})).items() if v}
        self._locks: dict[int, defer.DeferredLock] = {}
        self._active: dict[int, _Transfer] = {}

    # -------------------------------------------------------------- scripts
    def script(self, action: TmAction) -> tuple[str | None, str]:
        """``(path, "")`` of the script that runs ``action``, or ``(None, text)`` with
        one_tm.rb's failure text."""
        tm_dir = os.path.join(self.remotes, "tm", action.tm_mad)
        if (self.allowed is not None and action.tm_mad not in self.allowed) \
                or not os.path.isdir(tm_dir):
            return None, f"Transfer Driver '{action.tm_mad}' not available"
        path = os.path.join(tm_dir, action.script_name)
        if _executable(path):
            return path, ""
        if not action.system_tm:
            return None, f"Driver path '{path}' does not exists"
        short = os.path.join(tm_dir, action.name)
        if _executable(short):
            return short, ""
        return None, f"Driver path '{path}' nor '{short}' exists"

    def environment(self) -> dict[str, str]:
        """What TM scripts get besides the runner's environment (drivers/tm/common)."""
        return {"ONED_DATASTORE_LOCATION": self.config.datastore_location,
                "ONED_VMS_LOCATION": os.path.join(self.config.var_location, "vms")}

    # ------------------------------------------------------------- running
    async def run(self, action: TmAction, vm_id: int, *, op: str = "transfer",
                  owner: int | None = None, env: dict[str, str] | None = None) -> TmResult:
        """Run one line for ``vm_id`` (a transfer of one line)."""
        return await self.transfer(vm_id, [action], op=op, owner=owner, env=env)

    async def transfer(self, vm_id: int, actions: Sequence[TmAction], *,
                       op: str = "transfer", owner: int | None = None,
                       env: dict[str, str] | None = None) -> TmResult:
        """Run the lines in order, stopping at the first failure (one_tm.rb's TRANSFER).

        ``op`` names the transfer as oned's transfer files do (prolog, epilog,
        disk_snapshot, disk_saveas...); ``owner`` is the VM owner, whose share of the
        driver slots each line takes; ``env`` is added to the scripts' environment
        (ONED_DISK_FS for a MKIMAGE).  Never raises for script trouble.
        """
        lock = self._locks.get(vm_id)
        if lock is None:
            lock = self._locks[vm_id] = defer.DeferredLock()
        await lock.acquire()
        state = self._active[vm_id] = _Transfer()
        self._journal(vm_id, op, actions)
        result = TmResult(vm_id, True)
        try:
            for action in actions:
                if state.cancelled:
                    result = TmResult(vm_id, False, "Action cancelled", action,
                                      result.results, cancelled=True)
                    break
                script, why = self.script(action)
                if script is None:
                    log.error("TRANSFER {op} of VM {vm}: {line}: {why}", op=op, vm=vm_id,
                              line=action.line, why=why)
                    result = TmResult(vm_id, False, why, action, result.results)
                    break
                done = await self.runner.run(
                    action.name, action.tm_mad, vm_id, "", key=("vm", vm_id),
                    env={**self.environment(), **(env or {})}, owner=owner,
                    script=script, args=action.args, timeouts=self.timeouts)
                result.results.append(done)
                if not done.ok:
                    result = TmResult(vm_id, False, done.error, action, result.results,
                                      done.timed_out, done.cancelled or state.cancelled)
                    break
        finally:
            del self._active[vm_id]
            if not self.runner.stopping:
                self.forget(vm_id)
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(vm_id, None)
            state.done.callback(None)
        log.info("{message} ({op}, {n} of {total} lines)", message=result.message, op=op,
                 n=len(result.results), total=len(actions))
        return result

    def cancel(self, vm_id: int) -> defer.Deferred | None:
        """Stop the transfer running for ``vm_id``: its script is killed (TERM, then
        KILL, the whole group) and no further line runs.  The Deferred fires once the
        transfer has ended (its result says ``cancelled``); None if none runs."""
        state = self._active.get(vm_id)
        if state is None:
            return None
        state.cancelled = True
        self.runner.cancel(("vm", vm_id))
        d: defer.Deferred = defer.Deferred()
        state.done.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    # ------------------------------------------------------------- journal
    def _journal_dir(self) -> Path:
        return Path(self.config.run_location) / "tm"

    def _journal(self, vm_id: int, op: str, actions: Sequence[TmAction]) -> None:
        directory = self._journal_dir()
        directory.mkdir(parents=True, exist_ok=True)
        text = f"# {op}\n" + "".join(a.line + "\n" for a in actions)
        tmp = directory / f".{vm_id}.tmp"
        tmp.write_text(text)
        tmp.replace(directory / str(vm_id))

    def forget(self, vm_id: int) -> None:
        """Drop the journal of ``vm_id`` (its transfer ended, or was reconciled)."""
        try:
            (self._journal_dir() / str(vm_id)).unlink()
        except FileNotFoundError:
            pass

    def interrupted(self) -> list[Interrupted]:
        """The transfers a stopped or killed daemon left unfinished, by VM id (the
        driver processes themselves were killed at start by reaper)."""
        out = []
        try:
            entries = sorted(self._journal_dir().iterdir(), key=lambda p: p.name)
        except FileNotFoundError:
            return []
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                lines = entry.read_text().splitlines()
                op = lines[0][1:].strip() if lines and lines[0].startswith("#") else ""
                actions = tuple(TmAction.parse(line) for line in lines
                                if line.strip() and not line.lstrip().startswith("#"))
            except (OSError, ValueError) as exc:
                log.warn("Unreadable TM journal {path}: {error}", path=str(entry),
                         error=str(exc))
                continue
            out.append(Interrupted(int(entry.name), op, actions))
        return out
