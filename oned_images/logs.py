"""oned.log-style log lines from twisted.logger events.

``Fri Nov 27 03:13:14 2026 [Z0][ReM][D]: text`` — the module tag comes from the
Logger namespace (ReM requests, ImM images, DBM database, AuM auth, DsM
datastores, OnM daemon), the letter from the level.  The file observer buffers
and flushes once a second: a flush per call would cost more than the call.
"""

from __future__ import annotations

import sys
import time
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)
from zope.interface import implementer

LETTERS = {
    LogLevel.critical: "E",
    LogLevel.error: "E",
    LogLevel.warn: "W",
    LogLevel.info: "I",
    LogLevel.debug: "D",
}
# oned DEBUG_LEVEL: 0 ERROR, 1 WARNING, 2 INFO, 3+ DEBUG
LEVELS = {0: LogLevel.error, 1: LogLevel.warn, 2: LogLevel.info}


def format_line(event: dict) -> str | None:
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}"
    if not text:
        return None
    module = event.get("log_namespace", "OnM")
    if len(module) != 3:
        module = "OnM"
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(event.get("log_time",
                                                                           time.time())))
    letter = LETTERS.get(event.get("log_level"), "I")
    return f"{stamp} [Z0][{module}][{letter}]: {text}\n"


@implementer(ILogObserver)
class OnedLogObserver:
    """Writes oned-style lines; flushing is the caller's business (see flush())."""

    def __init__(self, out: IO[str], flush_each: bool = False) -> None:
        self.out = out
        self.flush_each = flush_each

    def __call__(self, event: dict) -> None:
        line = format_line(event)
        if line is None:
            return
        self.out.write(line)
        if self.flush_each:
            self.out.flush()

    def flush(self) -> None:
        try:
            self.out.flush()
        except ValueError:
            pass


def start_logging(system: str, path: str, level: int) -> OnedLogObserver:
    if system == "std":
        observer = OnedLogObserver(sys.stderr, flush_each=True)
    else:
        observer = OnedLogObserver(open(path, "a", encoding="utf-8", buffering=1 << 16))
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS.get(level, LogLevel.debug))
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(observer, [predicate])], redirectStandardIO=False,
        discardBuffer=True)
    return observer
