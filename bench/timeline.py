"""Where an image's copy spends its time: the phases of allocate-to-READY, per run.

Usage: python -m bench.timeline [--runs 20] [--mb 1] [--mkfs raw|ext4] [--poll 0.001]

Starts its own daemon (bench.common) and attaches ``strace -f --seccomp-bpf -e
trace=execve,exit_group`` to it: only the driver processes' execve and exit stop
under the tracer, so the daemon's and the drivers' own work run at full speed.  Each
run allocates an image from PATH (a --mb MiB file in the page cache), or an empty
1 GiB datablock with --mkfs, and polls one.image.info every --poll seconds on a
kept-alive connection until READY, as bench.figures does.  The phases (medians,
minimums and maximums over the runs):

* ``alloc->stat spawn``: the allocate call received .. the first exec of the stat;
* ``<action> chain``: that first exec (the runner's env -C / setpriv / setsid / nice)
  .. the exec of the Python interpreter (through the script's ``#!``);
* ``<action> py``: the interpreter's exec .. its exit;
* ``stat exit->alloc reply``, ``stat exit->cp spawn``: the daemon's work between;
* ``<last action> exit->READY seen``: the reply stored, and the client's next poll.

The tracer still stops a process at each fork and thread start it follows, so an
action that runs tools (mkfs with a file system, qemu-img) shows a ``py`` phase well
above its untraced time (bench.drivers times the actions alone).  Needs strace
(Debian package strace) and the fs driver's Python actions.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.client import Client, Endpoint
from bench.common import SESSION, start_daemon

EVENT = re.compile(r"(\d+)\s+([\d.]+) (.*)")
#: the Python interpreter of an fs action: its script's path names the action
ACTION = re.compile(r'^execve\("[^"]*python3[^"]*", \[.*?"[^"]*/fs/(\w+)"')


def processes(trace: Path) -> list[dict]:
    """Per driver process: first exec (spawn), the interpreter's exec, exit, action."""
    seen: dict[int, dict] = {}
    for line in trace.read_text().splitlines():
        m = EVENT.match(line)
        if not m or "= -1 ENOENT" in line:
            continue
        pid, ts, rest = int(m[1]), float(m[2]), m[3]
        if rest.startswith("execve("):
            proc = seen.setdefault(pid, {"spawn": ts})
            act = ACTION.match(rest)
            if act and "python" not in proc:
                proc.update(python=ts, act=act[1])
        elif rest.startswith("+++ exited") and pid in seen:
            seen[pid]["exit"] = ts
    return sorted((p for p in seen.values() if "act" in p and "exit" in p),
                  key=lambda p: p["spawn"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--mb", type=int, default=1)
    ap.add_argument("--mkfs", choices=("raw", "ext4"), help="an empty 1 GiB datablock")
    ap.add_argument("--poll", type=float, default=0.001)
    args = ap.parse_args()
    if shutil.which("strace") is None:
        raise SystemExit("strace is needed (Debian package strace)")
    work = Path(tempfile.mkdtemp(prefix="oned-bench-tl-", dir="/var/tmp"))
    daemon = start_daemon()
    try:
        src = work / "src.raw"
        subprocess.run(["dd", "if=/dev/urandom", f"of={src}", "bs=1M", f"count={args.mb}",
                        "status=none"], check=True)
        src.read_bytes()
        client = Client(Endpoint(daemon.url, SESSION, daemon.proc.pid), "keep")

        def template(name: str) -> str:
            if not args.mkfs:
                return f'NAME="{name}"\nPATH="{src}"'
            fs = "" if args.mkfs == "raw" else f'\nFS="{args.mkfs}"'
            return f'NAME="{name}"\nTYPE="DATABLOCK"\nSIZE="1024"{fs}'

        def copy(name: str) -> tuple[float, float, float]:
            t0 = time.time()
            res = client.call("one.image.allocate", template(name), 1)
            assert res[0], res
            t1 = time.time()
            req = client.request("one.image.info", res[1])
            while True:
                body = client.send(req)
                if b"&lt;STATE&gt;1&lt;" in body:
                    return t0, t1, time.time()
                assert b"&lt;STATE&gt;5&lt;" not in body, body
                time.sleep(args.poll)

        for n in range(3):   # warm: the first copies compile and cache
            copy(f"warm{n}")
        trace = work / "strace.txt"
        tracer = subprocess.Popen(
            ["strace", "-f", "-ttt", "--seccomp-bpf", "-s", "400", "-e",
             "trace=execve,exit_group", "-o", str(trace), "-p", str(daemon.proc.pid)],
            stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        marks = []
        for n in range(args.runs):
            marks.append(copy(f"run{n}"))
            time.sleep(0.1)
        time.sleep(0.5)   # the last monitor
        tracer.send_signal(signal.SIGINT)
        tracer.wait()
        procs = processes(trace)
    finally:
        daemon.drop()
        shutil.rmtree(work, ignore_errors=True)

    phases: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        phases.setdefault(name, []).append(seconds)

    first = "mkfs" if args.mkfs else "stat"
    for t0, t1, t2 in marks:
        mine = [p for p in procs if t0 <= p["spawn"] <= t2]
        acts = {p["act"]: p for p in mine}
        start = acts[first]
        add(f"alloc->{first} spawn", start["spawn"] - t0)
        for name, p in acts.items():
            add(f"{name} chain", p["python"] - p["spawn"])
            add(f"{name} py", p["exit"] - p["python"])
        last = acts["mkfs" if args.mkfs else "cp"]
        if not args.mkfs:
            add("stat exit->alloc reply", t1 - start["exit"])
            add("stat exit->cp spawn", last["spawn"] - start["exit"])
        else:
            add("alloc reply", t1 - t0)
        add(f"{last['act']} exit->READY seen", t2 - last["exit"])
        add("total (allocate to READY)", t2 - t0)
    what = f"1 GiB datablock {args.mkfs}" if args.mkfs else f"{args.mb} MiB from PATH"
    print(f"{what}, {args.runs} runs, poll {args.poll * 1e3:g} ms")
    for name, values in phases.items():
        print(f"  {name:<28} p50={statistics.median(values) * 1e3:7.1f} ms  "
              f"min={min(values) * 1e3:7.1f}  max={max(values) * 1e3:7.1f}")


if __name__ == "__main__":
    main()
