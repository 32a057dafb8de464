"""systemd's service notification protocol: readiness, status, watchdog.

The protocol is one datagram of ``KEY=value`` lines to the UNIX socket named by
$NOTIFY_SOCKET (``@name`` is the abstract namespace).  It is implemented here in a
few lines rather than taken from a library: ``sdnotify`` (PyPI) has not been
released since 2017, and ``systemd-python``/``cysystemd`` build a C extension
against libsystemd headers, a compiler and Debian packages that a plain
``pip install`` of this daemon must not need.  Without $NOTIFY_SOCKET (not under
systemd, or Type=simple) every call does nothing.

The watchdog pings come from a LoopingCall on the reactor, so they stop when the
reactor stops turning: a reactor blocked for WatchdogSec gets the daemon restarted.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.logger import Logger

log = Logger(namespace="OnM")


def notify(message: str) -> bool:
    """Send one notification; False when not under systemd or the send failed."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)  # never wait on the reactor: a full queue drops one
            sock.sendto(message.encode("utf-8"), address)
        return True
    except OSError as exc:
        global _warned
        if not _warned:  # once: the watchdog would repeat it every few seconds
            _warned = True
            log.warn("sd_notify to {addr} failed: {err}", addr=address.replace("\0", "@"),
                     err=exc)
        return False


_warned = False


def watchdog_interval() -> float | None:
    """Half of $WATCHDOG_USEC in seconds, if the watchdog is enabled for this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class Notifier:
    """What the daemon tells systemd over its life; inert outside systemd."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._watchdog: Any = None  # a LoopingCall once started

    def starting(self, status: str) -> None:
        """Start the watchdog pings (harmless before READY) and say what start does."""
        interval = watchdog_interval() if self.enabled else None
        if interval is not None:
            from twisted.internet import task  # (not at import: the WORKERS parent has no reactor)

            self._watchdog = task.LoopingCall(notify, "WATCHDOG=1")
            self._watchdog.clock = self.reactor
            self._watchdog.start(interval, now=True)
        self.status(status)

    def status(self, text: str) -> None:
        if self.enabled:
            notify("STATUS=" + text.replace("\n", " "))

    def ready(self, status: str) -> None:
        if self.enabled:
            notify(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")

    def stopping(self) -> None:
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        if self.enabled:
            notify("STOPPING=1\nSTATUS=Stopping: ending driver actions, closing the database")
