"""oned.log-style log lines from twisted.logger events.

``Fri Nov 27 03:13:14 2026 [Z0][ReM][D]: text`` — the module tag comes from the
Logger namespace (ReM requests, ImM images, DBM database, AuM auth, DsM
datastores, OnM daemon), the letter from the level.  The file observer buffers
and flushes once a second: a flush per call would cost more than the call.

One event is one line, and no logged value can start a line of its own.  The
whole formatted text of every event (its format, every field, driver output,
failure texts) is escaped here, at the one place every event passes, so no code
path can forget it: a backslash becomes ``\\\\``; LF, CR and TAB become ``\\n``,
``\\r``, ``\\t``; every other C0/C1 control character and DEL become ``\\xNN``;
U+2028/U+2029 (line and paragraph separators), the bidirectional overrides
and isolates (which reorder what a terminal shows) and lone surrogates become
``\\uNNNN``.
Escaping the backslash keeps the mapping reversible: ``\\n`` in the log is
always a newline that was in the value.

A traceback (``log.failure``) is the one exception to one line per event: it is
written as a block under the event's line, each line with the same header and
a ``| `` marker, itself escaped (an exception text with a newline stays on its
line).  So every line of the file starts with a timestamp and a header, and a
line that starts with ``| `` after the header is always a traceback line::

    Fri Nov 27 03:13:14 2026 [Z0][ReM][E]: Req:7 UID:0 one.image.info failed unexpectedly
    Fri Nov 27 03:13:14 2026 [Z0][ReM][E]: | Traceback (most recent call last):
    Fri Nov 27 03:13:14 2026 [Z0][ReM][E]: |   File "/…/images.py", line 12, in info
    Fri Nov 27 03:13:14 2026 [Z0][ReM][E]: |     return self.pool[oid]
    Fri Nov 27 03:13:14 2026 [Z0][ReM][E]: | builtins.KeyError: 12

Passwords and tokens are kept out of the log where they are known: the method
table declares which call parameters and results are secret (rpc/registry.py)
and the call log masks them; :func:`redact` also masks, in every line, the
values of password-, secret-, token- and key-named attributes (``NAME = value``
and ``<NAME>value</NAME>``) and the password of ``scheme://user:password@`` URLs.

The log file is created 0640 (and tightened to it if it exists) whatever the
umask, and :meth:`OnedLogObserver.reopen` (SIGHUP) reopens it by name after
logrotate has moved it.
"""

from __future__ import annotations

import linecache
import os
import re
import sys
import threading
import time
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)
from twisted.python.failure import Failure
from twisted.python.reflect import qual
from zope.interface import implementer

log = Logger(namespace="OnM")

LETTERS = {
    LogLevel.critical: "E",
    LogLevel.error: "E",
    LogLevel.warn: "W",
    LogLevel.info: "I",
    LogLevel.debug: "D",
}
# oned DEBUG_LEVEL: 0 ERROR, 1 WARNING, 2 INFO, 3+ DEBUG
LEVELS = {0: LogLevel.error, 1: LogLevel.warn, 2: LogLevel.info}
LOG_MODE = 0o640
MASK = "****"

#: what may not reach the file as is: backslash, C0, DEL, C1, U+2028/2029, bidi controls,
#: and lone surrogates (undecodable bytes), which the UTF-8 file could not even take.
_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e"
                     "\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

#: names of attributes whose values are secrets (RESTIC_PASSWORD, SSH_KEY, TOKEN_PASSWORD…)
_SECRET_WORDS = ("PASSW", "PASSPHRASE", "SECRET", "TOKEN", "KEY", "CREDENTIAL")
_SECRET_NAME = rf"[A-Za-z0-9_]*(?:{'|'.join(_SECRET_WORDS)})[A-Za-z0-9_]*"
_SECRET_ATTR = re.compile(
    rf"(?i)\b({_SECRET_NAME})(\s*=\s*)(\"(?:[^\"\\]|\\.)*\"?|[^\s,\]]+)")
_SECRET_XML = re.compile(rf"(?is)(<({_SECRET_NAME})>)(?:<!\[CDATA\[.*?\]\]>|[^<]*)")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]*@")


def _escape_char(match: re.Match) -> str:
    ch = match.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` on one line, with nothing a terminal or a line splitter acts on."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape_char, text)


def redact(text: str) -> str:
    """Mask secret-named attribute values and URL passwords (before escaping)."""
    upper = text.upper()  # a cheap test first: most lines name no secret
    if any(word in upper for word in _SECRET_WORDS):
        if "=" in text:
            text = _SECRET_ATTR.sub(rf"\1\2{MASK}", text)
        if "<" in text:
            text = _SECRET_XML.sub(rf"\1{MASK}", text)
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
    return text


def traceback_lines(failure: Failure) -> list[str]:
    """The traceback as lines of our own making, so that each stays one line."""
    lines = ["Traceback (most recent call last):"]
    for func, filename, lineno, _locals, _globals in failure.frames:
        lines.append(f'  File "{filename}", line {lineno}, in {func}')
        source = linecache.getline(filename, lineno).strip()
        if source:
            lines.append(f"    {source}")
    lines.append(f"{qual(failure.type)}: {failure.getErrorMessage()}")
    return lines


#: "[name] " of the daemon among several on one database (README "Several daemons"),
#: set once at start; empty for tools.
daemon_tag = ""


def set_daemon_name(name: str) -> None:
    global daemon_tag
    daemon_tag = f"[{escape(name)}] " if name else ""


def format_line(event: dict) -> str | None:
    text = formatEvent(event)
    failure = event.get("log_failure")
    if not text and failure is None:
        return None
    module = event.get("log_namespace", "OnM")
    if len(module) != 3:
        module = "OnM"
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(event.get("log_time",
                                                                           time.time())))
    letter = LETTERS.get(event.get("log_level"), "I")
    head = f"{stamp} {daemon_tag}[Z0][{module}][{letter}]: "
    line = f"{head}{escape(redact(text))}\n"
    if failure is not None:
        line += "".join(f"{head}| {escape(redact(tb))}\n" for tb in traceback_lines(failure))
    return line


def open_log(path: str) -> IO[str]:
    """Append to ``path``, created (or tightened to) LOG_MODE whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_MODE)
    try:
        os.fchmod(fd, LOG_MODE)
    except OSError:
        pass  # not our file (a shared log, a pipe): its owner decides
    return os.fdopen(fd, "a", encoding="utf-8", buffering=1 << 16)


@implementer(ILogObserver)
class OnedLogObserver:
    """Writes oned-style lines; flushing is the caller's business (see flush()).

    Events come from the reactor and from the DB threads; a lock keeps their lines
    whole and keeps a write off the file reopen() is closing."""

    def __init__(self, out: IO[str], flush_each: bool = False, path: str | None = None) -> None:
        self.out = out
        self.flush_each = flush_each
        #: the file reopened by reopen(); None for standard error.
        self.path = path
        self._lock = threading.Lock()

    def __call__(self, event: dict) -> None:
        line = format_line(event)
        if line is None:
            return
        with self._lock:
            self.out.write(line)
            if self.flush_each:
                self.out.flush()

    def flush(self) -> None:
        with self._lock:
            try:
                self.out.flush()
            except ValueError:
                pass

    def reopen(self) -> None:
        """After logrotate moved the file: finish the old one, continue in a new one."""
        if self.path is None:
            return
        try:
            new = open_log(self.path)
        except OSError as exc:
            log.error("Cannot reopen the log {path}: {error}", path=self.path, error=exc)
            return
        with self._lock:
            old, self.out = self.out, new
            try:
                old.close()
            except (OSError, ValueError):
                pass
        log.info("Log file {path} reopened", path=self.path)


#: whether debug lines reach the log (DEBUG_LEVEL 3 and up): the call log skips building
#: the two lines of every call (parameters, masked result) that the filter would drop.
debug_enabled = True


def start_logging(system: str, path: str, level: int) -> OnedLogObserver:
    global debug_enabled
    debug_enabled = LEVELS.get(level, LogLevel.debug) <= LogLevel.debug
    if system == "std":
        observer = OnedLogObserver(sys.stderr, flush_each=True)
    else:
        observer = OnedLogObserver(open_log(path), path=path)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS.get(level, LogLevel.debug))
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(observer, [predicate])], redirectStandardIO=False,
        discardBuffer=True)
    return observer
