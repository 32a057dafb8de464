"""The WORKERS parent (oned_images/workers.py) with real child processes that speak
sd_notify as a worker does, without a daemon: start order, readiness, restart back-off,
a worker that cannot start, stop."""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest

from oned_images.config import DaemonConfig
from oned_images.workers import Backoff, StartFailed, Supervisor, listen, metrics_dir

#: a stand-in worker: READY=1 to the parent's NOTIFY_SOCKET (as systemd.Notifier does),
#: then wait for a signal; EXIT=<n> in argv exits with n before READY instead.
CHILD = """
import os, socket, sys, time
if "EXIT" in sys.argv[1]:
    sys.exit(int(sys.argv[1].split("=")[1]))
address = os.environ["NOTIFY_SOCKET"]
address = "\\0" + address[1:] if address.startswith("@") else address
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
    s.sendto(f"READY=1\\nMAINPID={os.getpid()}".encode(), address)
time.sleep(60)
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def supervisor(workers: int, mode: str = "ok", clock=time.monotonic) -> Supervisor:
    config = DaemonConfig(workers=workers, listen_address="127.0.0.1", port=0,
                          var_location=tempfile.mkdtemp(prefix="oned-sup-"))
    return Supervisor(config, listen(config), [sys.executable, "-c", CHILD, mode],
                      clock=clock)


def test_backoff_doubles_up_to_the_longest_and_starts_over_after_a_stable_run():
    b = Backoff(first=1, longest=30, stable=60)
    assert [b.after_death(ran=2) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert b.after_death(ran=60) == 1  # it ran long enough: a new failure, not a loop
    assert b.after_death(ran=5) == 2


def test_workers_start_one_then_the_others_and_a_killed_one_is_restarted_after_its_backoff():
    clock = Clock()
    sup = supervisor(3, clock=clock)
    try:
        sup.start_all()
        assert [w.ready for w in sup.workers] == [True, True, True]
        assert [w.proc.args[-2:] for w in sup.workers] == [
            ["--worker", "1"], ["--worker", "2"], ["--worker", "3"]]
        victim = sup.workers[1]
        first_pid = victim.proc.pid
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        clock.now += 5  # it ran 5 s
        assert [(w.index, code) for w, code in sup.reap()] == [(2, -9)]
        sup.on_death(victim, -9)
        assert victim.proc is None and victim.restart_at == clock.now + 1
        sup.spawn(victim)
        deadline = time.monotonic() + 20
        while not victim.ready and time.monotonic() < deadline:
            sup._wait(0.2)
        assert victim.ready and victim.proc.pid != first_pid
        victim.proc.kill()
        victim.proc.wait()
        clock.now += 5
        sup.on_death(victim, -9)
        assert victim.restart_at == clock.now + 2  # died again soon: twice the wait
        assert [w.proc.poll() for w in (sup.workers[0], sup.workers[2])] == [None, None]
    finally:
        sup.stop()
    assert [w.proc.returncode for w in sup.workers if w.proc] == [-15, -15]


def test_a_worker_that_exits_before_it_is_ready_fails_the_start_and_no_other_starts():
    sup = supervisor(2, mode="EXIT=3")
    with pytest.raises(StartFailed) as failed:
        sup.start_all()
    worker, code = failed.value.args
    assert (worker.index, code) == (1, 3)
    assert sup.workers[1].proc is None


def test_db_fsck_sees_driver_processes_a_killed_worker_left(tmp_path):
    """fsck --repair must not take a running copy's files for strays: it finds the
    driver records of every worker (VAR_LOCATION/run/w<k>/drivers), not only run/."""
    import subprocess

    from oned_images.store.fsck import leftover_drivers

    script = tmp_path / "cp-script"
    # (not "sleep 30" last: dash execs a script's last command, and the process would
    # no longer show the script's name)
    script.write_text("#!/bin/sh\nsleep 30\nexit 0\n")
    script.chmod(0o755)
    procs = [subprocess.Popen([str(script)]) for _ in range(2)]
    # Popen returns while execve still sets the new image up: /proc/<pid>/cmdline reads
    # empty for a moment (a driver record is read long after its spawn)
    deadline = time.monotonic() + 10
    while not all(str(script).encode() in Path(f"/proc/{p.pid}/cmdline").read_bytes()
                  for p in procs):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        for where, proc in zip(("run", "run/w2"), procs, strict=True):
            records = tmp_path / where / "drivers"
            records.mkdir(parents=True)
            (records / str(proc.pid)).write_text(str(script))
        assert leftover_drivers(str(tmp_path)) == sorted(p.pid for p in procs)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert leftover_drivers(str(tmp_path)) == []


def test_the_metrics_directory_is_emptied_at_start_and_named_to_the_workers(tmp_path):
    """Counters start at zero at each start of the parent, as one daemon's do: the
    files an earlier run's workers left are removed (nothing else is touched), and
    every worker is told where the files are; METRICS = "off" tells none."""
    run = tmp_path / "run" / "metrics"
    run.mkdir(parents=True)
    (run / "counter_123.db").write_bytes(b"x" * 10)
    (run / "keep.txt").write_text("not ours")
    config = DaemonConfig(workers=2, var_location=str(tmp_path))
    assert metrics_dir(config) == str(run)
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]
    sup = supervisor(2)
    try:
        assert sup._env()["PROMETHEUS_MULTIPROC_DIR"] == sup.metrics_dir
        assert Path(sup.metrics_dir).is_dir()
    finally:
        sup.sock.close()
    off = DaemonConfig(workers=2, listen_address="127.0.0.1", port=0, metrics="off",
                       var_location=str(tmp_path / "off"))
    sup = Supervisor(off, listen(off), [sys.executable, "-c", CHILD, "ok"])
    try:
        assert sup.metrics_dir is None and "PROMETHEUS_MULTIPROC_DIR" not in sup._env()
    finally:
        sup.sock.close()
