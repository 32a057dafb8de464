"""WORKERS = N: N daemon processes accept on one port, and a small parent watches them.

Each worker is a full daemon of README "Several daemons" (its own DAEMON_NAME
``<name>-w<k>``, lease, driver claims, cache counters; its own run-time files under
``VAR_LOCATION/run/w<k>``), so everything several daemons on one database already do
(bootstrap and migration under the database lock, reconciliation and takeovers under
the takeover lock, one monitor per datastore) holds between workers as it holds between
hosts.  What this module adds is one host's plumbing:

* the port: the parent binds and listens once and the workers inherit that one socket
  (``reactor.adoptStreamPort``), rather than each binding a socket of its own with
  SO_REUSEPORT.  Measured on 2 cores, WORKERS = 2, system.version on a new connection
  per call: both spread the calls evenly (1 client: 194/206 and 201/199 of 400; 8
  clients: 411/389 and 385/415 of 800), but 8 clients got 1,600-1,660 calls/s from the
  shared socket against 950-1,240/s from SO_REUSEPORT, whose hash can queue a
  connection behind a busy worker while the other one idles (with one queue the idle
  worker takes it).  One queue also loses nothing when a worker dies (a SO_REUSEPORT
  socket resets the connections queued on it) and a restarting worker takes no
  connection before it is ready;
* the parent (:class:`Supervisor`, no reactor: a select loop over a self-pipe for
  signals and an sd_notify socket of its own): starts worker 1 alone (so a start-up
  error is reported once, by it), then the others; tells systemd READY once every
  worker told it READY over that socket; forwards SIGTERM/SIGINT/SIGHUP; restarts a
  worker that dies with a back-off (:class:`Backoff`); kills a worker whose watchdog
  pings stop; exits with the worker's status when one cannot start at all;
* the cache counters: a block of shared memory made before the first worker starts, so
  the workers know that users, groups or ACLs changed without a database round trip
  per call (store/versions.py, store/shared_counters.py);
* the metrics: one page whichever worker a scrape reaches (prometheus_client's
  multiprocess mode in ``VAR_LOCATION/run/metrics``, emptied at each start; a dead
  worker's live gauges are dropped there, its counts kept; see metrics.py);
* the workers die with the parent: PR_SET_PDEATHSIG (SIGTERM, so a worker still leaves
  the daemons table and stops its drivers) is set in the child before exec, as the
  driver scripts get it through ``setpriv --pdeathsig``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from oned_images import systemd
from oned_images.config import DaemonConfig
from oned_images.model.settings import default_daemon_name, serves_several_daemons
from oned_images.store import shared_counters
from oned_images.store.shared_counters import SharedCounters

log = Logger(namespace="OnM")

#: how a worker finds the inherited listening socket.
LISTEN_FD_ENV = "ONED_IMAGES_LISTEN_FD"
#: and the cache counters the workers share (store/shared_counters.py).
COUNTERS_FD_ENV = "ONED_IMAGES_COUNTERS_FD"
#: prometheus_client's multiprocess mode: where every worker keeps its metric values.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
PR_SET_PDEATHSIG = 1
#: seconds SIGTERM'd workers get before SIGKILL when the parent stops (within the
#: shipped unit's TimeoutStopSec = 30).
STOP_GRACE = 25.0


# --------------------------------------------------------------- the worker's side
def worker_config(config: DaemonConfig, worker: int, port: int) -> DaemonConfig:
    """Worker ``worker``'s configuration: its own name (``<DAEMON_NAME or host:port>-w<k>``)
    and run directory; everything else is the parent's."""
    base = config.daemon_name or default_daemon_name(port)
    return dataclasses.replace(config, worker=worker, daemon_name=f"{base}-w{worker}")


def inherited_socket() -> socket.socket | None:
    """The listening socket the parent passed (None: not a worker)."""
    fd = os.environ.pop(LISTEN_FD_ENV, "")
    if not fd.isdigit():
        return None
    sock = socket.socket(fileno=int(fd))
    sock.set_inheritable(False)  # driver scripts must not hold the port
    return sock


def inherited_counters(worker: int) -> SharedCounters | None:
    """The shared cache counters the parent passed, mapped (None: none passed)."""
    fd = os.environ.pop(COUNTERS_FD_ENV, "")
    if not fd.isdigit():
        return None
    try:
        return SharedCounters(int(fd), worker)
    finally:
        os.close(int(fd))  # the mapping stays; driver scripts get no descriptor


def adopt(reactor: Any, sock: socket.socket, factory: Any) -> Any:
    """The inherited socket as a Twisted listening port (Twisted dups the descriptor)."""
    sock.setblocking(False)
    try:
        return reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    finally:
        sock.close()


def _die_with_parent(parent: int) -> None:
    """In the forked child before exec: SIGTERM when the parent dies (kill -9 too)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl: no signal would come
        os._exit(1)


# --------------------------------------------------------------- the parent's side
class Backoff:
    """Seconds before restarting a worker: ``first``, doubled at each death up to
    ``longest``; a worker that ran ``stable`` seconds starts over at ``first``."""

    def __init__(self, first: float = 1.0, longest: float = 30.0, stable: float = 60.0) -> None:
        self.first, self.longest, self.stable = first, longest, stable
        self._next = first

    def after_death(self, ran: float) -> float:
        if ran >= self.stable:
            self._next = self.first
        delay = self._next
        self._next = min(self.longest, self._next * 2)
        return delay


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen | None = None
    started: float = 0.0
    ready: bool = False
    #: monotonic time of the last watchdog ping (or READY).
    pinged: float = 0.0
    #: monotonic time at which to start it again (None: running or stopping).
    restart_at: float | None = None
    backoff: Backoff = field(default_factory=Backoff)


class StartFailed(Exception):
    """A worker could not start at all: (worker, exit status)."""


class Supervisor:
    """Starts ``count`` workers on ``sock`` and keeps them running until a signal."""

    def __init__(self, config: DaemonConfig, sock: socket.socket, argv: list[str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        #: written with the port once every worker is ready (--port-file).
        self.port_file: str | None = None
        #: flushes the parent's log lines (a buffered file otherwise waits).
        self.flush: Callable[[], None] = lambda: None
        self.reopen: Callable[[], None] = lambda: None
        self.sock = sock
        self.argv = argv
        self.clock = clock
        self.workers = [Worker(k) for k in range(1, config.workers + 1)]
        self.stopping = False
        self.exit_code = 0
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        # never socket.getdefaulttimeout()'s: with a timeout an empty read raises
        # TimeoutError, not BlockingIOError (pyone sets one)
        self._notify.setblocking(False)
        self._notify.bind(f"\0oned-images-workers-{os.getpid()}-{os.urandom(4).hex()}")
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        #: made before any worker starts, kept for the restarted ones
        self.counters = shared_counters.create(config.workers)
        #: the workers' metric files (None with METRICS = "off": no instruments)
        self.metrics_dir = metrics_dir(config) if config.metrics != "off" else None
        self._signals: list[int] = []
        self.watchdog = systemd.watchdog_interval()  # systemd's, for the parent

    # ---------------------------------------------------------------- workers
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[LISTEN_FD_ENV] = str(self.sock.fileno())
        env[COUNTERS_FD_ENV] = str(self.counters)
        if self.metrics_dir is not None:
            env[METRICS_DIR_ENV] = self.metrics_dir
        else:
            env.pop(METRICS_DIR_ENV, None)
        env["NOTIFY_SOCKET"] = "@" + self._notify.getsockname()[1:].decode()
        env.pop("WATCHDOG_PID", None)
        if self.watchdog is not None:  # workers ping the parent at the same pace
            env["WATCHDOG_USEC"] = str(int(self.watchdog * 2e6))
        else:
            env.pop("WATCHDOG_USEC", None)
        return env

    def spawn(self, w: Worker) -> None:
        parent = os.getpid()
        w.proc = subprocess.Popen(
            [*self.argv, "--worker", str(w.index)], env=self._env(),
            pass_fds=(self.sock.fileno(), self.counters), preexec_fn=lambda: _die_with_parent(parent))
        w.started = w.pinged = self.clock()
        w.ready, w.restart_at = False, None
        log.info("Worker {k} started (pid {pid})", k=w.index, pid=w.proc.pid)

    def _by_pid(self, pid: int) -> Worker | None:
        return next((w for w in self.workers if w.proc is not None and w.proc.pid == pid),
                    None)

    # ---------------------------------------------------------------- events
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass

    def _read_notifications(self) -> None:
        """The workers' sd_notify datagrams; the sender is known by its credentials
        (SO_PASSCRED), as systemd knows it: WATCHDOG=1 names no pid."""
        while True:
            try:
                data, ancillary, _flags, _addr = self._notify.recvmsg(
                    4096, socket.CMSG_SPACE(struct.calcsize("3i")), socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            pid = next((struct.unpack("3i", cdata[:12])[0] for level, kind, cdata in ancillary
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), 0)
            w = self._by_pid(pid)
            if w is None:
                continue
            w.pinged = self.clock()
            lines = data.decode("utf-8", "replace").splitlines()
            if "READY=1" in lines and not w.ready:
                w.ready = True
                log.info("Worker {k} (pid {pid}) is ready", k=w.index, pid=pid)

    def reap(self) -> list[tuple[Worker, int]]:
        """Workers that ended: (worker, exit status as Popen gives it)."""
        ended = []
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is not None:
                ended.append((w, w.proc.returncode))
        return ended

    def on_death(self, w: Worker, code: int) -> None:
        """A worker ended while not stopping: restart it after its back-off."""
        ran = self.clock() - w.started
        delay = w.backoff.after_death(ran)
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        log.warn("Worker {k} (pid {pid}) {how} after {ran:.1f} s: restarting it in "
                 "{delay:.0f} s", k=w.index, pid=w.proc.pid, how=how, ran=ran, delay=delay)
        if self.metrics_dir is not None:
            # its gauges leave the page with it; its counters stay in the totals
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(w.proc.pid, self.metrics_dir)
        w.proc, w.ready, w.restart_at = None, False, self.clock() + delay

    def _check_watchdog(self) -> None:
        if self.watchdog is None:
            return
        for w in self.workers:
            if w.proc is not None and w.ready and self.clock() - w.pinged > 2 * self.watchdog:
                log.error("Worker {k} (pid {pid}) stopped its watchdog pings: killing it",
                          k=w.index, pid=w.proc.pid)
                w.proc.kill()
                w.pinged = self.clock()

    # ---------------------------------------------------------------- the loop
    def _wait(self, timeout: float) -> None:
        """Wait for a signal, a notification or ``timeout``; ping systemd's watchdog
        (start-up included: the workers' start can be longer than WatchdogSec)."""
        if self.watchdog is not None:
            systemd.notify("WATCHDOG=1")
            timeout = min(timeout, self.watchdog)
        try:
            select.select([self._notify, self._wake_r], [], [], max(0.0, timeout))
        except InterruptedError:
            pass
        try:
            while os.read(self._wake_r, 64):
                pass
        except BlockingIOError:
            pass
        self._read_notifications()
        self.flush()
        for signum in self._signals:
            if signum == signal.SIGHUP:
                self.reopen()
                self.forward(signal.SIGHUP)
            elif signum != signal.SIGCHLD:
                self.stopping = True
        self._signals.clear()

    def forward(self, signum: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signum)

    def start_all(self) -> None:
        """Worker 1 first (it migrates or bootstraps a new database; its start-up error
        is reported once), then the others together; raises StartFailed."""
        self.spawn(self.workers[0])
        self._until_ready(self.workers[:1])
        for w in self.workers[1:]:
            self.spawn(w)
        self._until_ready(self.workers[1:])

    def _until_ready(self, workers: list[Worker]) -> None:
        while not self.stopping and not all(w.ready for w in workers):
            self._wait(0.2)
            for w, code in self.reap():
                raise StartFailed(w, code)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, self._on_signal)
        try:
            self.start_all()
        except StartFailed as failed:
            w, code = failed.args
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            print(f"oned-images: worker {w.index} of {len(self.workers)} could not start "
                  f"(it {how}): stopping", file=sys.stderr, flush=True)
            self.stop()
            return code if code > 0 else 1
        if not self.stopping:
            self.announce()
        while not self.stopping:
            now = self.clock()
            wake = [w.restart_at for w in self.workers if w.restart_at is not None]
            self._wait(min([1.0] + [t - now for t in wake]))
            if self.stopping:
                break
            for w, code in self.reap():
                self.on_death(w, code)
            for w in self.workers:
                if w.restart_at is not None and self.clock() >= w.restart_at:
                    self.spawn(w)
            self._check_watchdog()
        self.stop()
        return self.exit_code

    def announce(self) -> None:
        cfg = self.config
        port = self.sock.getsockname()[1]
        pids = ", ".join(str(w.proc.pid) for w in self.workers)
        text = (f"Listening on http://{cfg.listen_address}:{port}/RPC2 with "
                f"{len(self.workers)} workers (pids {pids})")
        log.info(text)
        print(f"oned-images: listening on http://{cfg.listen_address}:{port}/RPC2 "
              f"({len(self.workers)} workers, pids {pids})", file=sys.stderr, flush=True)
        if self.port_file:
            tmp = self.port_file + ".tmp"
            with open(tmp, "w") as out:
                out.write(str(port))
            os.replace(tmp, self.port_file)
        systemd.notify(f"READY=1\nSTATUS={text}\nMAINPID={os.getpid()}")

    def stop(self) -> None:
        """SIGTERM to every worker; wait (SIGKILL after STOP_GRACE)."""
        systemd.notify("STOPPING=1\nSTATUS=Stopping the workers")
        self.stopping = True
        self.forward(signal.SIGTERM)
        deadline = self.clock() + STOP_GRACE
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                w.proc.wait(timeout=max(0.1, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                log.warn("Worker {k} (pid {pid}) did not stop in {s:.0f} s: killing it",
                         k=w.index, pid=w.proc.pid, s=STOP_GRACE)
                w.proc.kill()
                w.proc.wait()
        log.info("All workers stopped")
        self.flush()


def metrics_dir(config: DaemonConfig) -> str:
    """``VAR_LOCATION/run/metrics``, emptied of an earlier run's files: the workers'
    counters start at zero at each start of the parent, as one daemon's do.  (The
    parent imports prometheus_client only when a worker dies, to drop its gauges.)"""
    path = os.path.join(config.run_location, "metrics")
    os.makedirs(path, mode=0o700, exist_ok=True)
    for entry in os.scandir(path):
        if entry.is_file(follow_symlinks=False) and entry.name.endswith(".db"):
            os.unlink(entry.path)
    return path


def listen(config: DaemonConfig) -> socket.socket:
    """The one listening socket the workers share (raises OSError: port in use...)."""
    family = socket.AF_INET6 if ":" in config.listen_address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's listenTCP
    sock.bind((config.listen_address, config.port))
    sock.listen(1024)
    return sock


def supervise(config: DaemonConfig, port_file: str | None) -> int:
    """``oned-images serve`` with WORKERS > 1: the parent's whole life; the exit status."""
    from oned_images.logs import set_daemon_name, start_logging

    if not serves_several_daemons(config.db):
        print(f"oned-images: configuration error: WORKERS = {config.workers} runs "
              f"{config.workers} daemons on one database, and an in-memory SQLite "
              "database serves one daemon: give DB a PATH (a file) or use PostgreSQL, or "
              "set WORKERS = 1", file=sys.stderr)
        return 2
    try:
        sock = listen(config)
    except OSError as exc:
        print(f"oned-images: cannot listen on {config.listen_address}:{config.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    os.makedirs(config.var_location, exist_ok=True)
    observer = start_logging(config.log_system, config.log_file, config.log_debug_level)
    set_daemon_name(config.daemon_name or default_daemon_name(sock.getsockname()[1]))
    argv = [sys.executable, "-m", "oned_images", "serve"]
    if config.source_file:
        argv += ["--config", config.source_file]
    supervisor = Supervisor(config, sock, argv)
    supervisor.port_file = port_file
    supervisor.flush, supervisor.reopen = observer.flush, observer.reopen
    return supervisor.run()
