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
import subprocess
import sys
import threading

sys.dont_write_bytecode = True   # no __pycache__ in the driver tree (often read-only)
import image_source  # noqa: E402  (this directory: the script's own)
from image_source import Meter  # noqa: E402

POLL = 0.1
#: qemu-img convert -p writes "    (12.34/100%)\r"
QEMU_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class Percent:
    """The last percentage qemu-img printed, read on a thread from its stdout."""

    def __init__(self, stream) -> None:
        self.value = 0.0
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        while chunk := stream.read1(4096):
            found = QEMU_PERCENT.findall(chunk)
            if found:
                self.value = float(found[-1])


def measure(path: str, allocated: bool) -> int:
    try:
        st = os.stat(path)
    except OSError:
        return 0
    return st.st_blocks * 512 if allocated else st.st_size


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--" or not argv[0].isdigit():
        sys.stderr.write("usage: progress_run.py TOTAL (qemu|FILE|+FILE) -- CMD [ARG...]\n")
        return 2
    total, watch, cmd = int(argv[0]), argv[1], argv[3:]
    image_source.SCRIPT_NAME = os.path.basename(cmd[0])
    qemu = watch == "qemu"
    try:
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE if qemu else None)
    except OSError as exc:
        sys.stderr.write(f"{cmd[0]}: {exc.strerror}\n")
        return 127
    percent = Percent(child.stdout) if qemu else None
    # from here on this script's own lines (the progress) go to the driver's stderr
    sys.stderr = open(3, "w", closefd=False)  # noqa: SIM115 (fd 3 is the caller's)
    meter = Meter(total)
    allocated, path = watch.startswith("+"), watch.lstrip("+")

    def done() -> int:
        if percent is not None:
            return int(total * percent.value / 100)
        return measure(path, allocated)

    while True:
        try:
            rc = child.wait(POLL)
            break
        except subprocess.TimeoutExpired:
            meter.reach(done())
    if percent is not None:
        percent.thread.join(5)
    if rc == 0:
        meter.last = 0.0   # the last line, whenever the one before was written
        meter.reach(total if total else done())
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
