"""VM work with several daemons on one database (README "Several daemons"):
each VM's transfer or dummy driver step is claimed by the daemon that made it due, runs
once, is left alone by a restarting daemon while its owner lives, and is taken over
after a kill -9 of its owner once the lease has run out; driver scripts die with their
daemon; one scheduler pass at a time across daemons."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.test_several_daemons import LEASE, db_status, ok, several  # noqa: F401
from tests.support.daemon import REPO, wait_for
from tests.support.remotes import driver_config, make_remotes, processes_with
from tests.support.seed import num

pytestmark = [pytest.mark.timeout(120)]

ACTIVE, RUNNING = 3, 3

#: a TM driver "count": every run appends "<action> <args>" to runs, then runs the shared
#: script; a MKIMAGE, while the file "slow" exists, first writes a partial disk.<n>.tmp
#: (what a killed copy leaves) and waits for the file "gate".
COUNT_SCRIPT = """#!/usr/bin/env bash
action=${{0##*/}}
echo "$action $*" >> "{state}/runs"
if [[ $action == mkimage && -e "{state}/slow" ]]; then
    dst=${{3#*:}}; mkdir -p -- "${{dst%/*}}"; head -c 4096 /dev/zero > "$dst.tmp"
    while [[ ! -e "{state}/gate" ]]; do sleep 0.05; done
    rm -f -- "$dst.tmp"
fi
exec "$(dirname -- "$0")/../shared/$action" "$@"
"""
TM_ACTIONS = ("clone", "ln", "mvds", "cpds", "delete", "mv", "mkimage", "mkswap", "context",
              "snap_create", "snap_revert", "snap_delete", "resize")


def count_remotes(root: Path, state: Path) -> Path:
    remotes = make_remotes(root, {})
    tm = remotes / "tm"
    (tm / "count").mkdir(parents=True)
    for name in ("common", "shared", "dummy"):
        (tm / name).symlink_to(REPO / "drivers" / "tm" / name)
    for action in TM_ACTIONS:
        script = tm / "count" / action
        script.write_text(COUNT_SCRIPT.format(state=state))
        script.chmod(0o755)
    return remotes


@pytest.fixture
def cluster(tmp_path, several):  # noqa: F811 (the fixture of test_several_daemons)
    """Three daemons with the "count" TM driver, a dummy host; the system DS 0 on "count"."""
    state = tmp_path / "state"
    state.mkdir()
    remotes = count_remotes(tmp_path / "remotes", state)
    conf = driver_config(remotes, "-t 15 -d dummy,fs",
                         'TM_MAD = [ EXECUTABLE = "one_tm", '
                         'ARGUMENTS = "-d dummy,shared,count" ]\n'
                         'TM_MAD_CONF = [ NAME = "count", LN_TARGET = "NONE", '
                         'CLONE_TARGET = "SYSTEM", SHARED = "YES" ]\n')
    daemons = several(3, conf)
    a = daemons[0]
    hid = ok(a, "one.host.allocate", "h1", "dummy", "dummy", -1)
    wait_for(lambda: num(ok(a, "one.host.info", hid), "STATE") == 2)
    ok(a, "one.datastore.update", 0, 'TM_MAD="count"', 1)  # the scheduler's choice
    wait_for(lambda: "<TM_MAD><![CDATA[count]]></TM_MAD>" in ok(daemons[2], "one.datastore.info", 0))
    return daemons, state, hid, 0, remotes


def vm_text(n: int) -> str:
    return f'NAME="v{n}"\nCPU="0.01"\nMEMORY="16"\nDISK=[TYPE="fs",SIZE="1",FORMAT="raw"]'


def lcm(d, oid: int) -> tuple[int, int]:
    doc = ok(d, "one.vm.info", oid)
    return num(doc, "STATE"), num(doc, "LCM_STATE")


def mkimage_runs(state: Path) -> Counter:
    """VM id -> how many MKIMAGE runs the count driver saw."""
    runs = (state / "runs").read_text().splitlines() if (state / "runs").exists() else []
    return Counter(int(line.split()[4]) for line in runs if line.startswith("mkimage "))


def sysdir(d, sys_ds: int, oid: int) -> Path:
    base = ok(d, "one.datastore.info", sys_ds).split("<BASE_PATH><![CDATA[")[1].split("]]>")[0]
    return Path(base) / str(oid)


def test_vms_instantiated_across_three_daemons_each_run_their_prolog_once(cluster):
    daemons, state, hid, sys_ds, _r = cluster
    ids = [ok(daemons[n % 3], "one.vm.allocate", vm_text(n), False) for n in range(9)]
    for oid in ids:
        try:
            wait_for(lambda oid=oid: lcm(daemons[oid % 3], oid) == (ACTIVE, RUNNING),
                     timeout=40)
        except AssertionError:
            raise AssertionError(ok(daemons[0], "one.vm.info", oid) + "\n".join(
                d.log_text()[-3000:] for d in daemons)) from None
    assert mkimage_runs(state) == Counter({oid: 1 for oid in ids})
    for oid in ids:
        assert sorted(p.name for p in sysdir(daemons[0], sys_ds, oid).iterdir()) == ["disk.0"]
    # every daemon scheduled: the VMs are placed once each, on the one host
    placed = [num(ok(daemons[0], "one.vm.info", oid), "HISTORY_RECORDS/HISTORY/HID")
              for oid in ids]
    assert placed == [hid] * 9
    # the claims went with the answers
    for d in daemons:
        assert " vm " not in db_status(d).replace("\n", " ")


def test_kill9_of_the_daemon_in_a_slow_prolog_another_finishes_it(cluster):
    daemons, state, hid, sys_ds, remotes = cluster
    a, victim, c = daemons
    (state / "slow").touch()
    oid = ok(victim, "one.vm.allocate", vm_text(0), True)
    ok(victim, "one.vm.deploy", oid, hid, False, sys_ds, "")
    partial = sysdir(a, sys_ds, oid) / "disk.0.tmp"
    wait_for(partial.exists)
    script = str(remotes / "tm" / "count" / "mkimage")
    assert len(processes_with(script)) == 1
    assert f"vm {oid} PROLOG" in db_status(a).split("daemon d1")[1].split("daemon d2")[0]
    victim.kill9()
    killed = time.monotonic()
    # the script dies with its daemon (parent-death signal), not a lease later
    wait_for(lambda: processes_with(script) == [], timeout=LEASE - 1)
    (state / "gate").touch()
    wait_for(lambda: lcm(a, oid) == (ACTIVE, RUNNING), timeout=LEASE + 20)
    took = time.monotonic() - killed
    assert took < LEASE + 10, took
    assert mkimage_runs(state) == Counter({oid: 2})
    # the half-written file of the killed run is gone; the disk is whole
    assert sorted(p.name for p in sysdir(a, sys_ds, oid).iterdir()) == ["disk.0"]
    assert (sysdir(a, sys_ds, oid) / "disk.0").stat().st_size == 1024 * 1024
    logs = a.log_text() + c.log_text()
    assert f"Taking over the driver work of VMs [{oid}]" in logs


def test_restart_of_a_daemon_leaves_a_live_daemons_vm_work_alone(cluster):
    daemons, state, hid, sys_ds, remotes = cluster
    a, b, _c = daemons
    (state / "slow").touch()
    oid = ok(a, "one.vm.allocate", vm_text(0), True)
    ok(a, "one.vm.deploy", oid, hid, False, sys_ds, "")
    partial = sysdir(a, sys_ds, oid) / "disk.0.tmp"
    wait_for(partial.exists)
    script = str(remotes / "tm" / "count" / "mkimage")
    pids = processes_with(script)
    b.kill9()
    b.start()
    time.sleep(LEASE + 1)  # a lease's worth of ticks on every daemon
    assert partial.exists()  # not swept: a live daemon writes it
    assert processes_with(script) == pids
    assert lcm(b, oid) == (ACTIVE, 1)  # PROLOG still
    assert f"VM {oid}: the prolog transfer" not in b.log_text()
    assert "Taking over" not in b.log_text()
    (state / "gate").touch()
    wait_for(lambda: lcm(b, oid) == (ACTIVE, RUNNING), timeout=20)
    assert mkimage_runs(state) == Counter({oid: 1})
    assert sorted(p.name for p in sysdir(a, sys_ds, oid).iterdir()) == ["disk.0"]
