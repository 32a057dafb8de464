"""Datastore capacity under concurrency (issue 7): the size of a copy that is still
running is reserved in the transaction that checks it, so concurrent allocates and
clones cannot together promise more space than the datastore has; a finished copy
keeps its space counted until the next monitor measures it.

The driver here keeps real files: mkfs/clone write BASE_PATH/<image id> holding the
size in MB and wait for a gate, monitor reports 1000 MB minus what the files hold
(after a pause, so a test can look between a copy's end and the refresh; it can also
hold its figures a while after measuring), rm removes the file."""

from __future__ import annotations

import threading
import xmlrpc.client

import pytest

from tests.support.daemon import ADMIN_PASSWORD, Daemon, backend, wait_for
from tests.support.remotes import make_remotes
from tests.support.seed import connect_db, num, ok, unique

pytestmark = pytest.mark.timeout(120)
SESSION = f"oneadmin:{ADMIN_PASSWORD}"

DRIVER = '''#!{python}
import base64, os, sys, time
import xml.etree.ElementTree as ET

action = os.path.basename(sys.argv[0])
doc = ET.fromstring(base64.b64decode(sys.stdin.read()))
base = doc.findtext("DATASTORE/BASE_PATH")
os.makedirs(base, exist_ok=True)
gates = {gates!r}
if action == "monitor":
    time.sleep(float(open(os.path.join(gates, "monitor-pause")).read()))
    used = sum(int(open(os.path.join(base, f)).read()) for f in os.listdir(base))
    with open(os.path.join(gates, "measured"), "a") as f:
        f.write("m")
    time.sleep(float(open(os.path.join(gates, "monitor-hold")).read()))
    print("USED_MB=%d\\nFREE_MB=%d\\nTOTAL_MB=1000" % (used, 1000 - used))
elif action == "stat":
    print(400)
elif action == "rm":
    os.unlink(doc.findtext("IMAGE/SOURCE"))
else:
    oid = sys.argv[1]
    while not os.path.exists(os.path.join(gates, oid)):
        time.sleep(0.05)
    path = os.path.join(base, oid)
    with open(path, "w") as f:
        f.write(doc.findtext("IMAGE/SIZE"))
    print(path + (" raw" if action != "mkfs" else ""))
'''


@pytest.fixture(scope="module")
def capd(tmp_path_factory):
    import sys

    tmp = tmp_path_factory.mktemp("capacity")
    gates = tmp / "gates"
    gates.mkdir()
    (gates / "monitor-pause").write_text("0")
    (gates / "monitor-hold").write_text("0")
    script = DRIVER.format(python=sys.executable, gates=str(gates))
    remotes = make_remotes(tmp / "remotes", {"cap": {
        a: script for a in ("cp", "mkfs", "clone", "rm", "stat", "monitor")}})
    d = Daemon(tmp / "d", extra_config=(
        f'DATASTORE_MAD = [ EXECUTABLE = "one_datastore", ARGUMENTS = "-t 15 -d dummy,fs,cap", '
        f'REMOTES = "{remotes}", KILL_GRACE = 1 ]\nDS_MAD_CONF = [ NAME = "cap" ]\n')).start()
    d.gates = gates  # type: ignore[attr-defined]
    yield d
    d.drop()


def free_mb(d: Daemon, ds: int) -> int:
    return num(ok(d, "one.datastore.info", ds), "FREE_MB")


def cap_datastore(d: Daemon) -> int:
    ds = ok(d, "one.datastore.allocate", f'NAME="{unique("cap")}"\nDS_MAD="cap"\n'
            'TM_MAD="dummy"', -1)
    wait_for(lambda: free_mb(d, ds) == 1000)
    return ds


def image_state(d: Daemon, oid: int) -> int:
    return num(ok(d, "one.image.info", oid), "STATE")


def concurrently(d: Daemon, method: str, args: list[tuple]) -> list[list]:
    """Each call on its own thread and connection, released together."""
    replies: list = [None] * len(args)
    start = threading.Barrier(len(args))

    def one(i: int) -> None:
        proxy = xmlrpc.client.ServerProxy(d.url)
        start.wait()
        replies[i] = getattr(proxy, method)(d.session(), *args[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return replies


def split(replies: list[list], method: str) -> list[int]:
    """The ids of the accepted calls; every other one was refused for space."""
    accepted = [r[1] for r in replies if r[0] is True]
    refused = [r for r in replies if r[0] is False]
    assert refused == [[False, f"[{method}] Not enough space in datastore", 2048, -1, -1]] \
        * len(refused), replies
    return accepted


def test_concurrent_datablocks_reserve_their_size(capd):
    d, ds = capd, cap_datastore(capd)
    block = 'NAME="{}"\nTYPE="DATABLOCK"\nSIZE="400"'
    accepted = split(concurrently(d, "one.image.allocate",
                                  [(block.format(unique("b")), ds) for _ in range(5)]),
                     "one.image.allocate")
    assert len(accepted) == 2
    assert [image_state(d, i) for i in accepted] == [4, 4]
    # 200 MB are left while both run: 200 fit, 201 do not
    reply = d.raw().one.image.allocate(d.session(), 'NAME="big"\nTYPE="DATABLOCK"\n'
                                       'SIZE="201"', ds)
    assert reply == [False, "[one.image.allocate] Not enough space in datastore", 2048, -1, -1]
    # an image registered by SOURCE copies nothing: only the measured space counts
    ok(d, "one.image.allocate", 'NAME="reg"\nSOURCE="/elsewhere/r"\nFORMAT="raw"\n'
       'SIZE="400"', ds)
    # a copy that ended stays counted until the monitor has measured its file
    (d.gates / "monitor-pause").write_text("3")
    for i in accepted:
        (d.gates / str(i)).touch()
    wait_for(lambda: [image_state(d, i) for i in accepted] == [1, 1], timeout=30)
    assert free_mb(d, ds) == 200
    reply = d.raw().one.image.allocate(d.session(), block.format(unique("late")), ds)
    assert reply == [False, "[one.image.allocate] Not enough space in datastore", 2048, -1, -1]
    (d.gates / "monitor-pause").write_text("0")
    wait_for(lambda: num(ok(d, "one.datastore.info", ds), "USED_MB") == 800, timeout=30)
    # A run that measured after the copies wrote their files but before they were
    # recorded subtracts them twice (conservative: never space promised twice); the
    # run their end requested settles it.
    wait_for(lambda: free_mb(d, ds) == 200, timeout=30)
    # removing one gives its space back, once measured
    ok(d, "one.image.delete", accepted[0])
    wait_for(lambda: free_mb(d, ds) == 600, timeout=30)
    again = ok(d, "one.image.allocate", block.format(unique("again")), ds)
    (d.gates / str(again)).touch()
    wait_for(lambda: image_state(d, again) == 1, timeout=30)


def test_cancelled_copy_releases_its_reservation(capd):
    d, ds = capd, cap_datastore(capd)
    first = ok(d, "one.image.allocate", 'NAME="f"\nTYPE="DATABLOCK"\nSIZE="700"', ds)
    text = 'NAME="g"\nTYPE="DATABLOCK"\nSIZE="700"'
    assert d.raw().one.image.allocate(d.session(), text, ds)[1] == \
        "[one.image.allocate] Not enough space in datastore"
    ok(d, "one.image.delete", first, True)  # a forced delete cancels the running mkfs
    second = ok(d, "one.image.allocate", text, ds)
    (d.gates / str(second)).touch()
    wait_for(lambda: image_state(d, second) == 1, timeout=30)


def test_concurrent_clones_reserve_their_size(capd):
    d, ds = capd, cap_datastore(capd)
    src = ok(d, "one.image.allocate", 'NAME="src"\nSOURCE="/elsewhere/src"\nFORMAT="raw"\n'
             'SIZE="400"', ds)
    accepted = split(concurrently(d, "one.image.clone",
                                  [(src, unique("c"), -1) for _ in range(5)]),
                     "one.image.clone")
    assert len(accepted) == 2
    assert num(ok(d, "one.image.info", src), "CLONING_OPS") == 2
    for i in accepted:
        (d.gates / str(i)).touch()
    wait_for(lambda: [image_state(d, i) for i in accepted] == [1, 1], timeout=30)
    assert d.raw().one.image.clone(d.session(), src, unique("c"), -1)[1] == \
        "[one.image.clone] Not enough space in datastore"
    for i in accepted:
        ok(d, "one.image.delete", i)
    wait_for(lambda: free_mb(d, ds) == 1000, timeout=30)
    third = ok(d, "one.image.clone", src, unique("c"), -1)
    (d.gates / str(third)).touch()
    wait_for(lambda: image_state(d, third) == 1, timeout=30)


def test_reservations_survive_a_restart(capd):
    d, ds = capd, cap_datastore(capd)
    running = [ok(d, "one.image.allocate", f'NAME="{unique("r")}"\nTYPE="DATABLOCK"\n'
                  'SIZE="450"', ds) for _ in range(2)]
    d.kill9()
    d.start()
    wait_for(lambda: "Reconciling image" in d.log_text())
    assert [image_state(d, i) for i in running] == [4, 4]
    reply = d.raw().one.image.allocate(d.session(), 'NAME="after"\nTYPE="DATABLOCK"\n'
                                       'SIZE="101"', ds)
    assert reply == [False, "[one.image.allocate] Not enough space in datastore", 2048, -1, -1]
    for i in running:
        (d.gates / str(i)).touch()
    wait_for(lambda: [image_state(d, i) for i in running] == [1, 1], timeout=30)
    wait_for(lambda: free_mb(d, ds) == 100, timeout=30)


def test_a_copy_ending_during_a_monitor_run_stays_counted(capd):
    """The monitor measured before the copy's file existed and reports after the copy
    ended: its figures must not give the copy's space back."""
    d, ds = capd, cap_datastore(capd)
    big = ok(d, "one.image.allocate", 'NAME="big"\nTYPE="DATABLOCK"\nSIZE="400"', ds)
    measured = d.gates / "measured"
    try:
        (d.gates / "monitor-hold").write_text("4")
        small = ok(d, "one.image.allocate", 'NAME="small"\nTYPE="DATABLOCK"\nSIZE="10"', ds)
        measured.unlink(missing_ok=True)
        (d.gates / str(small)).touch()  # its end starts a monitor run, which measures
        wait_for(lambda: measured.exists(), timeout=30)
        (d.gates / str(big)).touch()  # ... then the big copy ends while it holds
        wait_for(lambda: image_state(d, big) == 1, timeout=30)
        assert free_mb(d, ds) == 590
        # the held run reports 990 free; the next run starts once it is recorded
        wait_for(lambda: measured.read_text() == "mm", timeout=30)
        assert free_mb(d, ds) == 590
    finally:
        (d.gates / "monitor-hold").write_text("0")
    wait_for(lambda: num(ok(d, "one.datastore.info", ds), "USED_MB") == 410, timeout=30)
    assert free_mb(d, ds) == 590


@pytest.mark.skipif(backend() == "sqlite", reason="row locks: PostgreSQL (SQLite has "
                    "one writer at a time)")
def test_an_allocate_by_source_does_not_wait_for_the_datastore_row(daemon):
    """Only an image that copies reserves space, so only its allocate holds the
    datastore's row: with the row held elsewhere, an allocate by SOURCE completes, and
    a datablock's waits until the row is let go (then completes)."""
    conn, mark = connect_db(daemon)
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT oid FROM datastore_pool WHERE oid = {mark} FOR UPDATE", (1,))
        assert cur.fetchone() == (1,)

        def allocate(template: str, out: list) -> threading.Thread:
            t = threading.Thread(target=lambda: out.append(
                xmlrpc.client.ServerProxy(daemon.url).one.image.allocate(SESSION, template, 1)))
            t.start()
            return t

        by_source: list = []
        allocate(f'NAME="{unique("src")}"\nSOURCE="/var/tmp/src"\nFORMAT="raw"\nSIZE="1"',
                 by_source).join(10)
        assert by_source and by_source[0][0] is True, "an allocate by SOURCE waited"
        done: list = []
        blocked = allocate(f'NAME="{unique("blk")}"\nTYPE="DATABLOCK"\nSIZE="1"', done)
        blocked.join(1.5)
        assert done == [] and blocked.is_alive()
    finally:
        conn.rollback()
        conn.close()
    blocked.join(30)
    assert done and done[0][0] is True, done
