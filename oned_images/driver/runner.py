"""Runs datastore driver scripts without blocking the reactor.

The contract is OpenNebula 7.0's (drivers.md §3, §6.2): argv
``[script, oid]``, the base64 DRV_ACTION on stdin then EOF, the result on
stdout, failure by exit code and stderr.  Each action runs in its own process
group (``setsid``) so a timeout or a cancel kills the script *and* its
children (TERM, then KILL after a grace period).  ``Slots`` caps concurrent
actions (oned's ``-t``), queueing the rest, and caps each user's share of them,
so one user's stalled copies cannot hold every slot; a per-key lock keeps one
action per image (and one monitor per datastore) at a time.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.logger import Logger, LogLevel

from oned_images.domain.restricted import protected_paths
from oned_images.driver import progress, reaper
from oned_images.driver.parse import (
    DriverResult,
    LineBuffer,
    failure_text,
    log_line,
    split_stderr,
)

log = Logger(namespace="ImM")
_tmp_ids = itertools.count(1)
LOG_LEVELS = {"ERROR": LogLevel.error, "INFO": LogLevel.info, "WARN": LogLevel.warn}

MAX_STDOUT = 1 << 20
MAX_STDERR = 1 << 16
#: RUBYLIB/GEM_*: OpenNebula's own Ruby drivers in a self-contained layout need them.
ENV_PASSTHROUGH = ("ONE_LOCATION", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY",
                   "HTTPS_PROXY", "NO_PROXY", "SSH_AUTH_SOCK", "TMPDIR", "RUBYLIB",
                   "GEM_PATH", "GEM_HOME")
#: the first program of every action (coreutils env: -C sets the working directory)
ENV = shutil.which("env", path="/usr/bin:/bin") or "/usr/bin/env"
#: util-linux's setpriv sets the scripts' parent-death signal (prctl PR_SET_PDEATHSIG);
#: without it (not Linux) the reaper alone stops a dead daemon's scripts
_SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin")
PDEATHSIG = [_SETPRIV, "--pdeathsig", "TERM"] if _SETPRIV else []
#: longest stderr line logged; the rest of a longer one is dropped
MAX_LOG_LINE = 4096
#: a bucket of slots: ("user", uid) for a user's actions, ("stat", uid) for the STAT
#: probes of their allocate calls; None for oneadmin's actions and monitors (no share)
Bucket = tuple[str, int] | None


class Slots:
    """oned's ``-t`` limit with per-user shares: a queue that is fair between users.

    At most ``limit`` actions run.  A user's actions take at most ``shares["user"]``
    of them and the STATs of their allocate calls at most ``shares["stat"]`` more,
    so whatever one user queues (15 URL imports from a server that never answers)
    other users' actions still start, and a user's own running copies never hold up
    the STAT of their next allocate.  Bucket ``None`` (oneadmin, monitors) is bounded
    by ``limit`` only.  When a slot frees, the waiting bucket with the fewest running
    actions goes first (first come first served among equals), so a user with one
    action is not queued behind another user's hundred.
    """

    def __init__(self, limit: int, shares: dict[str, int]) -> None:
        self.limit = limit
        self.shares = {kind: max(1, min(n, limit)) for kind, n in shares.items()}
        self.running: dict[Bucket, int] = {}
        self._waiting: dict[Bucket, deque[defer.Deferred[None]]] = {}
        self._arrival = 0
        self._order: dict[defer.Deferred[None], int] = {}

    @property
    def total(self) -> int:
        return sum(self.running.values())

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def _may_start(self, bucket: Bucket) -> bool:
        return self.total < self.limit and (
            bucket is None or self.running.get(bucket, 0) < self.shares[bucket[0]])

    def acquire(self, bucket: Bucket) -> defer.Deferred[None]:
        if self._may_start(bucket) and not self._waiting.get(bucket):
            self.running[bucket] = self.running.get(bucket, 0) + 1
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._arrival += 1
        self._order[d] = self._arrival
        self._waiting.setdefault(bucket, deque()).append(d)
        return d

    def release(self, bucket: Bucket) -> None:
        count = self.running.get(bucket, 0) - 1
        if count > 0:
            self.running[bucket] = count
        else:
            self.running.pop(bucket, None)
        self._wake()

    def _wake(self) -> None:
        while self.total < self.limit:
            ready = [b for b, q in self._waiting.items() if q and self._may_start(b)]
            if not ready:
                return
            bucket = min(ready, key=lambda b: (self.running.get(b, 0),
                                               self._order[self._waiting[b][0]]))
            queue = self._waiting[bucket]
            d = queue.popleft()
            if not queue:
                del self._waiting[bucket]
            del self._order[d]
            self.running[bucket] = self.running.get(bucket, 0) + 1
            d.callback(None)


def shares(settings: Any) -> dict[str, int]:
    """USER_SHARE (default half of -t) and the STAT share (a quarter of -t), at least 1."""
    limit = settings.concurrency
    return {"user": settings.user_share or max(1, limit // 2), "stat": max(1, limit // 4)}


class _Collector(protocol.ProcessProtocol):
    """Buffers output; fires ``done`` with the exit code once every pipe closed.

    stderr's ``INFO:``/``ERROR:`` … lines go to ``on_log`` as they arrive, so the
    log tells what a long copy is doing while it runs.
    """

    def __init__(self, stdin: bytes | None, on_log=None) -> None:
        self.stdin = stdin
        self.out = bytearray()
        self.err = bytearray()
        self.done: defer.Deferred[int] = defer.Deferred()
        self.on_log = on_log
        self.lines = LineBuffer(MAX_LOG_LINE)

    def _log(self, lines: list[str]) -> None:
        for line in lines:
            entry = log_line(line)
            if entry is not None and self.on_log is not None:
                self.on_log(*entry)

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        if self.stdin is not None:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        if len(self.out) < MAX_STDOUT:
            self.out += data[: MAX_STDOUT - len(self.out)]

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.err += data
        if len(self.err) > MAX_STDERR:
            del self.err[: len(self.err) - MAX_STDERR]
        self._log(self.lines.feed(data))

    def processEnded(self, reason) -> None:  # noqa: N802
        self._log(self.lines.flush())
        value = reason.value
        if isinstance(value, error.ProcessDone):
            code = 0
        elif isinstance(value, error.ProcessTerminated):
            code = value.exitCode if value.exitCode is not None else 128 + (value.signal or 0)
        else:
            code = 255
        self.done.callback(code)


@dataclass
class _Running:
    pid: int
    collector: _Collector
    cancelled: bool = False
    timed_out: bool = False


class DriverRunner:
    def __init__(self, reactor: Any, settings: Any, config: Any) -> None:
        self.reactor = reactor
        self.settings = settings
        self.config = config
        self.slots = Slots(settings.concurrency, shares(settings))
        self._locks: dict[tuple[str, int], defer.DeferredLock] = {}
        self._running: dict[tuple[str, int], _Running] = {}
        self._stopping = False
        #: keys whose queued action was cancelled before it could start
        self._dropped: set[tuple[str, int]] = set()
        #: actions started in total, for tests and the log
        self.started = 0
        #: bytes done/total of the running image actions (driver "progress" lines)
        self.progress = progress.Progress()
        #: called with (ds_mad, drv_action_b64, DriverResult, seconds) per ended action.
        self.observe: Callable[[str, str, DriverResult, float], None] | None = None

    # -------------------------------------------------------------- plumbing
    def script(self, ds_mad: str, action: str) -> str | None:
        if ds_mad not in self.settings.allowed or "/" in ds_mad or ds_mad in (".", ".."):
            return None
        path = os.path.join(self.settings.remotes, "datastore", ds_mad, action)
        return path if os.access(path, os.X_OK) and os.path.isfile(path) else None

    def environment(self) -> dict[str, str]:
        """What every script gets (drivers.md; the ONED_* keys are documented in
        drivers/datastore/common/libfs.sh and the README's Drivers section)."""
        env = {
            "PATH": os.environ.get("ONED_DRIVER_PATH")
            or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": os.environ.get("HOME") or self.config.var_location,
            "LANG": "C",
            "LC_ALL": "C",
            "ONED_PROTECTED_PATHS": "\n".join(protected_paths(self.config)),
            "ONED_STALL_TIMEOUT": str(self.config.driver_stall_timeout),
            "ONED_COPY_MAX_MB": str(self.config.driver_copy_max_mb),
        }
        for key in ENV_PASSTHROUGH:
            if key in os.environ:
                env[key] = os.environ[key]
        return env

    def _action_env(self, action: str, oid: int,
                    extra: dict[str, str] | None) -> tuple[dict[str, str], str]:
        """The environment of one action, with a private TMPDIR under VAR_LOCATION
        (removed when the action ends, swept at start by reaper.clear_action_tmp)."""
        tmpdir = str(reaper.action_tmp_root(self.config.run_location)
                     / f"{action}-{oid}-{next(_tmp_ids)}")
        os.makedirs(tmpdir, mode=0o700)
        return {**self.environment(), **(extra or {}), "TMPDIR": tmpdir}, tmpdir

    def _lock(self, key: tuple[str, int]) -> defer.DeferredLock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = defer.DeferredLock()
        return lock

    # ----------------------------------------------------------------- run
    async def run(self, action: str, ds_mad: str, oid: int, drv_action_b64: str,
                  key: tuple[str, int] | None = None, mode: str = "stdin",
                  env: dict[str, str] | None = None,
                  owner: int | None = None, *, script: str | None = None,
                  args: Sequence[str] | None = None,
                  timeouts: dict[str, int] | None = None) -> DriverResult:
        """Run one action; always returns a DriverResult (never raises for script trouble).

        ``env`` is added to the script's environment (ONED_URL_POLICY of a cp/stat);
        ``owner`` is the user the action works for, whose share of ``-t`` it takes;
        None (monitors) and 0 (oneadmin) have no share.

        Other kinds of driver (transfer-manager scripts, driver/tm.py) share the slots,
        locks, process groups, timeouts and records: they pass the ``script`` they
        resolved, its ``args`` (argv after the script, stdin closed at once, no
        DRV_ACTION) and their own ``timeouts`` table by action name.
        """
        key = key or ("image", oid)
        bucket: Bucket = None if owner in (None, 0) else \
            ("stat" if action == "stat" else "user", owner)
        lock = self._lock(key)
        await lock.acquire()
        try:
            await self.slots.acquire(bucket)
            try:
                if key in self._dropped:
                    self._dropped.discard(key)
                    return DriverResult(action, oid, 255, "", "", cancelled=True,
                                        error="Action cancelled")
                started = time.monotonic()
                result = await self._spawn(action, ds_mad, oid, drv_action_b64, key, mode, env,
                                           script, args, timeouts)
            finally:
                self.slots.release(bucket)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(key, None)
        if self.observe is not None and args is None:
            self.observe(ds_mad, drv_action_b64, result, time.monotonic() - started)
        return result

    async def _spawn(self, action: str, ds_mad: str, oid: int, b64: str,
                     key: tuple[str, int], mode: str,
                     extra_env: dict[str, str] | None = None, script: str | None = None,
                     args: Sequence[str] | None = None,
                     timeouts: dict[str, int] | None = None) -> DriverResult:
        script = script or self.script(ds_mad, action)
        if script is None:
            return DriverResult(action, oid, 255, "", "",
                                error=f"Datastore driver '{ds_mad}' not available")
        if self._stopping:
            return DriverResult(action, oid, 255, "", "", cancelled=True,
                                error="oned-images is stopping")
        # setsid: a process group of its own (pgid == pid) for group kills; nice: as
        # oned, copies run below the daemon's priority.  env -C sets the working
        # directory, so Twisted spawns with posix_spawn (its fork() path, taken for a
        # cwd of the child's own, copies the daemon and runs Python in the child: a few
        # ms of every action, on the reactor's thread).
        # setpriv --pdeathsig TERM: the script is told to stop when the daemon dies (a
        # kill -9 too), as oned's own stop tells it: its clean-up traps run, and a daemon
        # on another host that takes the action over does not race it.  What it started
        # and left running, the next start's reaper takes down with its process group.
        prefix = ["env", "-C", self.config.var_location, *PDEATHSIG, "setsid", "nice", "-n",
                  str(self.settings.priority)]
        if args is not None:
            argv = [*prefix, script, *args]
            stdin = None
        elif mode == "argv":
            argv = [*prefix, script, b64, str(oid)]
            stdin = None
        else:
            argv = [*prefix, script, str(oid)]
            stdin = b64.encode("ascii")

        def emit(level: str, msg: str) -> None:
            if level == "INFO" and (done := progress.parse(msg)):
                if key[0] == "image":   # (a STAT's measuring is not an image's progress)
                    self.progress.update(oid, action, *done)
                return
            log.emit(LOG_LEVELS.get(level, LogLevel.debug), "{kind} {oid} {action}: {msg}",
                     kind=key[0], oid=oid, action=action, msg=msg)

        collector = _Collector(stdin, emit)
        started = time.monotonic()
        env, tmpdir = self._action_env(action, oid, extra_env)
        try:
            transport = self.reactor.spawnProcess(collector, ENV, argv, env=env)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        self.started += 1
        # Twisted clears transport.pid once the process is reaped: keep our own copy
        # for forget(), or the record outlives the action.
        pid = transport.pid
        reaper.record(self.config.run_location, pid, script)
        running = _Running(pid, collector)
        self._running[key] = running
        timeout = (self.settings.timeouts if timeouts is None else timeouts).get(action)
        timer = None
        if timeout:
            timer = self.reactor.callLater(timeout, self._expire, running)
        log.debug("Running {action} for {kind} {oid} with {script} (pid {pid})", action=action,
                  kind=key[0], oid=oid, script=script, pid=pid)
        if key[0] == "image":
            self.progress.start(oid, action)
        try:
            code = await collector.done
        finally:
            if key[0] == "image":
                self.progress.end(oid)
            if timer is not None and timer.active():
                timer.cancel()
            self._running.pop(key, None)
            reaper.forget(self.config.run_location, pid)
            # (in a thread: an rmdir waits for the file system's journal, which a copy's
            # or the database's fsync can hold for milliseconds; the name is never reused)
            self.reactor.callInThread(shutil.rmtree, tmpdir, ignore_errors=True)
        stdout = collector.out.decode("utf-8", "replace")
        stderr = collector.err.decode("utf-8", "replace")
        logs, _ = split_stderr(stderr)
        result = DriverResult(action, oid, code, stdout, stderr, running.timed_out,
                              running.cancelled, logs)
        elapsed = time.monotonic() - started
        if running.timed_out:
            called = " ".join(args) if args is not None else str(oid)
            result.error = f"Timeout executing {script} {called}"
            result.exit_code = 255
        elif running.cancelled:
            result.error = "Action cancelled"
        elif code != 0:
            result.error = failure_text(stderr, code)
        if result.ok:
            log.info("{action} for {kind} {oid} succeeded in {secs:.4f}s", action=action,
                     kind=key[0], oid=oid, secs=elapsed)
        else:
            log.error("{action} for {kind} {oid} failed (exit {code}): {text}", action=action,
                      kind=key[0], oid=oid, code=result.exit_code, text=result.error)
        return result

    # ----------------------------------------------------- timeouts, cancel
    def _kill_group(self, running: _Running, sig: int) -> None:
        try:
            os.killpg(running.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _terminate(self, running: _Running) -> None:
        self._kill_group(running, signal.SIGTERM)

        def kill() -> None:
            if not running.collector.done.called:
                self._kill_group(running, signal.SIGKILL)
        self.reactor.callLater(self.settings.kill_grace, kill)

        # A script can exit on TERM while a child it left keeps the group alive.
        def sweep() -> None:
            self._kill_group(running, signal.SIGKILL)
        running.collector.done.addBoth(lambda r: (sweep(), r)[1])

    def _expire(self, running: _Running) -> None:
        running.timed_out = True
        self._terminate(running)

    def cancel(self, key: tuple[str, int]) -> defer.Deferred | None:
        """Kill the action running for ``key``; the Deferred fires once it has ended.

        An action still queued for ``key`` (a user beyond their share) never starts.
        """
        running = self._running.get(key)
        if running is None:
            if key not in self._locks:
                return None
            self._dropped.add(key)
            return defer.succeed(None)
        running.cancelled = True
        self._terminate(running)
        d: defer.Deferred = defer.Deferred()
        running.collector.done.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    async def stop(self) -> None:
        """Kill what still runs: reconciliation at the next start takes over."""
        self._stopping = True
        waits = []
        for running in list(self._running.values()):
            running.cancelled = True
            self._terminate(running)
            waits.append(running.collector.done)
        if waits:
            await defer.DeferredList(waits, consumeErrors=True)

    @property
    def stopping(self) -> bool:
        """stop() was called: cancelled actions are left to reconciliation."""
        return self._stopping

    def running_keys(self) -> list[tuple[str, int]]:
        return list(self._running)

    def load(self) -> tuple[int, int]:
        """(queued, running) actions: queued wait for a slot (-t) or for the action
        before them on the same image or datastore."""
        queued = self.slots.queued + sum(len(lock.waiting)
                                                   for lock in self._locks.values())
        return queued, len(self._running)
