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


def split_stderr(stderr: str) -> tuple[list[tuple[str, str]], list[str]]:
    logs: list[tuple[str, str]] = []
    plain: list[str] = []
    for line in stderr.splitlines():
        line = line.rstrip()
        if not line.strip():
            continue
        m = LOG_LINE.match(line)
        if m:
            logs.append((m.group(1), m.group(3)))
        else:
            plain.append(line.strip())
    return logs, plain


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
