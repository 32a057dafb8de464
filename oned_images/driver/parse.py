"""Reading what a driver script printed: results, log lines, failure texts.

drivers.md §1.5/§6.2: stderr lines ``ERROR|INFO|WARN|DEBUG: …`` are log
events; the other stderr lines, joined with "; ", are the failure text (the
Ruby driver glues them with nothing).  A text must never start with '-'
because oned drops such infos.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

LOG_LINE = re.compile(r"^(ERROR|INFO|WARN|DEBUG):\s+(\d+)?\s*(.*)$")


@dataclass
class DriverResult:
    action: str
    oid: int
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    cancelled: bool = False
    logs: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.cancelled

    @property
    def first_line(self) -> str:
        return self.stdout.strip().splitlines()[0].strip() if self.stdout.strip() else ""


def log_line(line: str) -> tuple[str, str] | None:
    """``(LEVEL, message)`` of an ``ERROR|INFO|WARN|DEBUG: …`` line, else None."""
    m = LOG_LINE.match(line.rstrip())
    return (m.group(1), m.group(3)) if m else None


def split_stderr(stderr: str) -> tuple[list[tuple[str, str]], list[str]]:
    logs: list[tuple[str, str]] = []
    plain: list[str] = []
    for line in stderr.splitlines():
        line = line.rstrip()
        if not line.strip():
            continue
        entry = log_line(line)
        if entry:
            logs.append(entry)
        else:
            plain.append(line.strip())
    return logs, plain


class LineBuffer:
    """Cuts a byte stream into lines as it arrives, none longer than ``limit`` characters.

    A driver's INFO/ERROR lines are logged while it runs (a copy can take hours), so
    stderr is read line by line; the rest of an overlong line is dropped, so a script
    that never prints a newline cannot make the daemon hold an unbounded line.
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._partial = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[str]:
        lines: list[str] = []
        parts = data.split(b"\n")
        for i, part in enumerate(parts):
            if not self._skipping:
                room = self.limit - len(self._partial)
                self._partial += part[:room]
                if len(part) > room:
                    lines.append(self._take())
                    self._skipping = True
            if i < len(parts) - 1:  # a newline ends this part
                if not self._skipping:
                    lines.append(self._take())
                self._skipping = False
        return [line for line in lines if line.strip()]

    def flush(self) -> list[str]:
        """The last line, if the script ended without a newline."""
        line = "" if self._skipping else self._take()
        self._skipping = False
        return [line] if line.strip() else []

    def _take(self) -> str:
        line = self._partial.decode("utf-8", "replace")
        self._partial.clear()
        return line


def failure_text(stderr: str, exit_code: int) -> str:
    logs, plain = split_stderr(stderr)
    if plain:
        text = "; ".join(plain)
    else:
        errs = [msg for level, msg in logs if level == "ERROR"]
        text = errs[-1] if errs else f"exit code {exit_code}"
    return clean(text)


def clean(text: str) -> str:
    text = text.strip().replace("\n", " ")
    while text.startswith("-"):
        text = text[1:].lstrip()
    return text[:4000] or "driver failed without a message"


def parse_monitor(stdout: str) -> dict[str, int]:
    """USED_MB / FREE_MB / TOTAL_MB from KEY=VALUE lines (floats accepted)."""
    values: dict[str, int] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        key = key.strip().upper()
        if not sep or key not in ("USED_MB", "FREE_MB", "TOTAL_MB"):
            continue
        try:
            values[key] = int(float(value.strip().strip('"')))
        except ValueError:
            continue
    return values
