#!/usr/bin/env python3
"""Run one command of a driver and report its progress, for the fs driver's long steps.

Usage:
    progress_run.py TOTAL qemu -- qemu-img convert -p ...    done = its percentage of TOTAL
    progress_run.py TOTAL FILE -- CMD [ARG...]              done = FILE's size so far
    progress_run.py 0 +FILE -- CMD [ARG...]                 done = FILE's allocated bytes

TOTAL is in bytes (0 = unknown).  While CMD runs, "INFO: <script>: progress <done>
<total>" lines go to file descriptor 3 at most once a second (image_source.Meter, the
same lines copies and downloads write), and one last line when CMD succeeds; the
daemon's runner reads them live and shows them as the image's progress (log, GET
/api/progress).  CMD's own output goes to this script's stdout and stderr, where
libfs.sh's ``run`` collects it for the error text; with ``qemu`` the percentages it
writes on stdout are read here instead.  Exit status: CMD's (127 when it cannot start).

libfs.sh's ``run_progress`` calls it with fd 3 the driver's stderr.  CMD is an argv,
never a shell string.  Python 3 standard library only.
"""

from __future__ import annotations

import os
import re
import sys
import threading

sys.dont_write_bytecode = True   # no __pycache__ in the driver tree (often read-only)
import image_source  # noqa: E402  (this directory: the script's own)
from image_source import Meter  # noqa: E402

POLL = 0.1
#: qemu-img convert -p writes "    (12.34/100%)\r"
QEMU_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class Drain:
    """A child's stream read to its end on a thread (so a full pipe never blocks it);
    what it said is kept, bounded, for an error text."""

    KEEP = 64 * 1024

    def __init__(self, stream, keep: bool = True) -> None:
        self.kept, self.keep = b"", keep
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        while chunk := stream.read1(4096):
            self.seen(chunk)

    def seen(self, chunk: bytes) -> None:
        if self.keep and len(self.kept) < self.KEEP:
            self.kept += chunk


class Percent(Drain):
    """The last percentage qemu-img printed on its stdout; the rest is kept only when
    the caller captures the output (the percentages never are)."""

    def __init__(self, stream, keep: bool = False) -> None:
        self.value = 0.0
        super().__init__(stream, keep)

    def seen(self, chunk: bytes) -> None:
        found = QEMU_PERCENT.findall(chunk)
        if found:
            self.value = float(found[-1])
        super().seen(QEMU_PERCENT.sub(b"", chunk).replace(b"\r", b"").strip(b" ")
                     if found else chunk)


def measure(path: str, allocated: bool) -> int:
    try:
        st = os.stat(path)
    except OSError:
        return 0
    return st.st_blocks * 512 if allocated else st.st_size


def run_measured(cmd: list[str], total: int, watch: str, *, capture: bool,
                 report=None) -> tuple[int, bytes]:
    """Run ``cmd`` (an argv) and report its progress; (exit status, its output).

    ``watch``: "qemu" (qemu-img's percentages of ``total``), FILE (its size) or +FILE
    (its allocated bytes).  With ``capture`` the command's stdout and stderr come back
    as one text for the caller's error message (fs_action.py); without, they pass
    through to this process's own (libfs.sh's ``run`` collects them).  ``report``: the
    stream the progress lines go to once the command runs (default sys.stderr)."""
    name, image_source.SCRIPT_NAME = image_source.SCRIPT_NAME, os.path.basename(cmd[0])
    try:
        return _run_measured(cmd, total, watch, capture, report)
    finally:
        image_source.SCRIPT_NAME = name   # the caller's own lines keep its name


def _run_measured(cmd: list[str], total: int, watch: str, capture: bool,
                  report) -> tuple[int, bytes]:
    import subprocess

    qemu = watch == "qemu"
    pipe = subprocess.PIPE
    try:
        child = subprocess.Popen(cmd, stdout=pipe if (qemu or capture) else None,
                                 stderr=pipe if capture else None)
    except OSError as exc:
        text = f"{cmd[0]}: {exc.strerror}\n"
        if not capture:
            sys.stderr.write(text)
        return 127, text.encode()
    percent = Percent(child.stdout, keep=capture) if child.stdout is not None else None
    errors = Drain(child.stderr) if child.stderr is not None else None
    if report is not None:
        sys.stderr = report
    meter = Meter(total)
    allocated, path = watch.startswith("+"), watch.lstrip("+")

    def done() -> int:
        if qemu and percent is not None:
            return int(total * percent.value / 100)
        return measure(path, allocated)

    rc = _wait(child, lambda: meter.reach(done()))
    output = b""
    for reader in (percent, errors):
        if reader is not None:
            reader.thread.join(5)
            output += reader.kept
    if rc == 0:
        meter.last = 0.0   # the last line, whenever the one before was written
        meter.reach(total if total else done())
    return rc, output


def _wait(child, tick) -> int:
    """The child's exit status, calling ``tick`` every POLL seconds until it ends.

    Popen.wait(timeout) polls with sleeps that double up to 50 ms, so a 6 ms mkfs
    was seen ending up to 8 ms late; a pidfd (Linux 5.3+) wakes this process the
    moment the child exits."""
    import select
    import subprocess

    try:
        pidfd = os.pidfd_open(child.pid)
    except (AttributeError, OSError):   # not Linux, an old kernel, or reaped already
        pidfd = None
    try:
        while True:
            if pidfd is not None:
                if select.select([pidfd], [], [], POLL)[0]:
                    return child.wait()
            else:
                try:
                    return child.wait(POLL)
                except subprocess.TimeoutExpired:
                    pass
            tick()
    finally:
        if pidfd is not None:
            os.close(pidfd)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--" or not argv[0].isdigit():
        sys.stderr.write("usage: progress_run.py TOTAL (qemu|FILE|+FILE) -- CMD [ARG...]\n")
        return 2
    # from the start on, this script's own lines (the progress) go to the driver's
    # stderr, fd 3
    report = open(3, "w", closefd=False)  # noqa: SIM115 (fd 3 is the caller's)
    rc, _ = run_measured(argv[3:], int(argv[0]), argv[1], capture=False, report=report)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
