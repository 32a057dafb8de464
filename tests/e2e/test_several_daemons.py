"""Several daemons on one database, PostgreSQL or one SQLite file (README "Several
daemons"): same answers from each, caches invalidated across them, driver work owned with
a lease and taken over after a kill -9, SQLite's writers one at a time across them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from oned_images.store import schema
from tests.support.daemon import (
    REPO,
    Daemon,
    backend,
    db_tool,
    joining,
    start_several,
    wait_for,
)
from tests.support.remotes import driver_config, make_remotes, processes_with
from tests.support.seed import field

LEASE = 3
#: seconds each copy of the kill -9 test takes (MB at LIMIT_TRANSFER_BW = 1M)
COPY_SECONDS = 8


@pytest.fixture
def several(tmp_path):
    made: list[Daemon] = []

    def make(count: int = 3, extra: str = "") -> list[Daemon]:
        made.extend(start_several(tmp_path, count, f"DAEMON_LEASE = {LEASE}\n" + extra))
        return made[-count:]

    yield make
    for d in reversed(made):
        d.drop()


def call(d: Daemon, method: str, *args, session: str | None = None):
    reply = getattr(d.raw(), method)(session or d.session(), *args)
    return reply


def ok(d: Daemon, method: str, *args, session: str | None = None):
    reply = call(d, method, *args, session=session)
    assert reply[0] is True, reply
    return reply[1]


def db_status(d: Daemon) -> str:
    out = db_tool(d, "status")
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_three_daemons_give_the_documents_of_one(several):
    a, b, c = several(3)
    uid = ok(a, "one.user.allocate", "alice", "pw1", "", [])
    gid = ok(b, "one.group.allocate", "team")
    ok(c, "one.user.addgroup", uid, gid)
    ds = ok(a, "one.datastore.allocate", 'NAME="dum"\nDS_MAD="dummy"\nTM_MAD="dummy"\nDATASTORE_CAPACITY_CHECK="NO"', -1)
    images = [ok(d, "one.image.allocate", f'NAME="i{n}"\nPATH="/var/tmp/i{n}"', ds)
              for n, d in enumerate((a, b, c, a, b, c))]
    ok(b, "one.image.chmod", images[0], 1, 1, 1, 1, 1, 1, 1, 1, 1)
    wait_for(lambda: all("<STATE>1</STATE>" in ok(a, "one.image.info", i) for i in images))
    calls = [("one.imagepool.info", -2, -1, -1), ("one.userpool.info",),
             ("one.grouppool.info",), ("one.acl.info",), ("one.user.info", uid),
             ("one.group.info", gid), ("one.datastore.info", ds)]
    calls += [("one.image.info", i) for i in images]
    for method, *args in calls:
        answers = [ok(d, method, *args) for d in (a, b, c)]
        assert answers[1] == answers[0] and answers[2] == answers[0], method
    # the user's own view (its new group, the ACL rules of the group made on B)
    alice = "alice:pw1"
    views = [ok(d, "one.imagepool.info", -2, -1, -1, session=alice) for d in (a, b, c)]
    assert views[0] == views[1] == views[2]
    assert views[0].count("<IMAGE>") == 1  # the one other users may use
    # each daemon's name: in /metrics and in its log lines
    for n, d in enumerate((a, b, c)):
        text = urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics").read().decode()
        assert f'oned_images_daemon_info{{host="{socket.gethostname()}",name="d{n}"}} 1.0' \
            in text.splitlines()
        assert f" [d{n}] [Z0][OnM][I]: Listening on http://127.0.0.1:{d.port}/RPC2" \
            in d.log_text()
    # db status names the three and what they hold
    lines = db_status(a).splitlines()
    assert lines[0] == f"schema version: {schema.CURRENT}; this release: {schema.CURRENT}"
    assert [ln.split(":")[0] for ln in lines[1:]] == ["daemon d0", "daemon d1", "daemon d2"]


def test_password_and_token_changed_on_one_daemon_are_seen_by_the_next_call_on_another(
        several):
    a, b = several(2)
    uid = ok(a, "one.user.allocate", "bob", "old", "", [])
    for _ in range(3):  # B caches the checked secret
        ok(b, "one.user.info", -1, session="bob:old")
    ok(a, "one.user.passwd", uid, "new")
    refused = call(b, "one.user.info", -1, session="bob:old")
    assert refused[:2] == [False, "[one.user.info] User couldn't be authenticated, aborting "
                                  "call."]
    assert ok(b, "one.user.info", -1, session="bob:new").startswith(f"<USER><ID>{uid}<")
    token = ok(a, "one.user.login", "bob", "", 600, -1, session="bob:new")
    assert ok(b, "one.user.info", -1, session=f"bob:{token}").startswith("<USER>")
    ok(a, "one.user.login", "bob", token, 0, -1, session="bob:new")  # revoked on A
    assert call(b, "one.user.info", -1, session=f"bob:{token}")[0] is False
    ok(b, "one.user.delete", uid)
    assert call(a, "one.user.info", -1, session="bob:new")[0] is False


HOLD_CP = """#!/usr/bin/env bash
cat >/dev/null
while [ ! -e {gate} ]; do sleep 0.05; done
echo /x/held-$1 raw
"""


def test_restart_of_a_daemon_leaves_the_work_of_a_live_one_alone(tmp_path, several):
    gate = tmp_path / "gate"
    remotes = make_remotes(tmp_path / "remotes", {"held": {
        "cp": HOLD_CP.format(gate=gate),
        "monitor": "#!/bin/sh\ncat >/dev/null\necho USED_MB=1; echo FREE_MB=100000; "
                   "echo TOTAL_MB=100001\n",
        "stat": "#!/bin/sh\ncat >/dev/null\necho 1\n"}})
    a, b = several(2, driver_config(remotes, "-t 15 -d dummy,fs,held"))
    ds = ok(a, "one.datastore.allocate", 'NAME="held"\nDS_MAD="held"\nTM_MAD="dummy"\nDATASTORE_CAPACITY_CHECK="NO"', -1)
    iid = ok(a, "one.image.allocate", 'NAME="h"\nPATH="/var/tmp/h"', ds)
    script = str(remotes / "datastore" / "held" / "cp")
    pids = wait_for(lambda: processes_with(script))
    assert f"image {iid} cp" in db_status(b)
    b.restart()
    b.kill9()
    b.start()
    time.sleep(LEASE + 1)  # a lease's worth of ticks on both
    assert processes_with(script) == pids
    assert "<STATE>4</STATE>" in ok(b, "one.image.info", iid)
    assert f"Reconciling image {iid}" not in b.log_text()
    assert f"Reconciling image {iid}" not in a.log_text()
    gate.touch()
    wait_for(lambda: "<STATE>1</STATE>" in ok(b, "one.image.info", iid))
    assert f"<SOURCE><![CDATA[/x/held-{iid}]]></SOURCE>" in ok(b, "one.image.info", iid)


def test_a_daemon_that_lost_its_lease_does_not_undo_the_takeover(tmp_path, several):
    """A daemon frozen beyond its lease (SIGSTOP: a stalled host) has its copy taken over;
    when it wakes up, the reply of its own (killed) run is dropped, not applied."""
    gate = tmp_path / "gate"
    remotes = make_remotes(tmp_path / "remotes", {"held": {
        "cp": HOLD_CP.format(gate=gate),
        "monitor": "#!/bin/sh\ncat >/dev/null\necho USED_MB=1; echo FREE_MB=100000; "
                   "echo TOTAL_MB=100001\n",
        "stat": "#!/bin/sh\ncat >/dev/null\necho 1\n"}})
    a, b = several(2, driver_config(remotes, "-t 15 -d dummy,fs,held"))
    ds = ok(a, "one.datastore.allocate", 'NAME="held"\nDS_MAD="held"\nTM_MAD="dummy"\n'
            'DATASTORE_CAPACITY_CHECK="NO"', -1)
    iid = ok(a, "one.image.allocate", 'NAME="frozen"\nPATH="/var/tmp/frozen"', ds)
    script = str(remotes / "datastore" / "held" / "cp")
    first = wait_for(lambda: processes_with(script))
    a.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: f"Reconciling image {iid}: running cp again" in b.log_text(),
                 timeout=LEASE + 10)
        second = wait_for(lambda: [p for p in processes_with(script) if p not in first])
        assert [p for p in processes_with(script) if p in first] == []  # A's run was stopped
        assert f"image {iid} cp" in db_status(b).split("daemon d1")[1]
    finally:
        a.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: f"Dropped the cp reply of image {iid}: another daemon took the action "
                     "over" in a.log_text(), timeout=LEASE + 10)
    gate.touch()
    doc = wait_for(lambda: (x := ok(a, "one.image.info", iid)) and "<STATE>1</STATE>" in x
                   and x)
    assert "<ERROR>" not in doc
    assert processes_with(script) == [] or wait_for(lambda: processes_with(script) == [])
    assert second


def test_datastore_capacity_is_shared_by_the_daemons(tmp_path, several):
    """Reservations of running copies come from the image rows under the datastore's
    row lock: allocates spread over two daemons never promise more than LIMIT_MB."""
    gate = tmp_path / "gate"
    remotes = make_remotes(tmp_path / "remotes", {"held": {
        "mkfs": HOLD_CP.format(gate=gate),
        "monitor": "#!/bin/sh\ncat >/dev/null\necho USED_MB=0; echo FREE_MB=100000; "
                   "echo TOTAL_MB=100000\n",
        "stat": "#!/bin/sh\ncat >/dev/null\necho 1\n"}})
    a, b = several(2, driver_config(remotes, "-t 15 -d dummy,fs,held"))
    ds = ok(a, "one.datastore.allocate", 'NAME="small"\nDS_MAD="held"\nTM_MAD="dummy"\n'
            'LIMIT_MB="10"', -1)
    wait_for(lambda: "<FREE_MB>100000</FREE_MB>" in ok(b, "one.datastore.info", ds))

    def allocate(n: int):
        return call((a, b)[n % 2], "one.image.allocate",
                    f'NAME="blk{n}"\nTYPE="DATABLOCK"\nSIZE="4"', ds)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(allocate, range(8)))
    accepted = [r[1] for r in replies if r[0] is True]
    refused = [r[1] for r in replies if r[0] is not True]
    assert len(accepted) == 2, replies
    assert refused == ["[one.image.allocate] Not enough space in datastore"] * 6
    gate.touch()


def test_racing_allocates_and_clones_on_two_daemons_promise_no_space_twice(tmp_path, several):
    """Datablocks (4 MB) and clones (10 MB) race from 8 clients over two daemons into a
    datastore of LIMIT_MB 100 whose copies are held: what was accepted fits, a refusal
    means it really did not fit, and the ids are unique and consecutive (none lost)."""
    gate = tmp_path / "gate"
    held = HOLD_CP.format(gate=gate)
    remotes = make_remotes(tmp_path / "remotes", {"held": {
        "mkfs": held, "clone": held,
        "monitor": "#!/bin/sh\ncat >/dev/null\necho USED_MB=0; echo FREE_MB=100000; "
                   "echo TOTAL_MB=100000\n",
        "stat": "#!/bin/sh\ncat >/dev/null\necho 1\n"}})
    a, b = several(2, driver_config(remotes, "-t 15 -d dummy,fs,held"))
    ds = ok(a, "one.datastore.allocate", 'NAME="race"\nDS_MAD="held"\nTM_MAD="dummy"\n'
            'LIMIT_MB="100"', -1)
    wait_for(lambda: "<FREE_MB>100000</FREE_MB>" in ok(b, "one.datastore.info", ds))
    src = ok(a, "one.image.allocate", 'NAME="src"\nSOURCE="/x/src"\nFORMAT="raw"\nSIZE="10"', ds)
    wait_for(lambda: "<STATE>1</STATE>" in ok(b, "one.image.info", src))
    sizes = {}

    def request(n: int):
        d = (a, b)[n % 2]
        if n % 3 == 0:
            sizes[n] = 10
            return call(d, "one.image.clone", src, f"clone{n}", ds)
        sizes[n] = 4
        return call(d, "one.image.allocate", f'NAME="blk{n}"\nTYPE="DATABLOCK"\nSIZE="4"', ds)

    with ThreadPoolExecutor(8) as pool:
        replies = dict(zip(range(48), pool.map(request, range(48)), strict=True))
    accepted = {n: r[1] for n, r in replies.items() if r[0] is True}
    refused = {n: r for n, r in replies.items() if r[0] is not True}
    for n, r in refused.items():
        assert r[1] == f"[one.image.{'clone' if sizes[n] == 10 else 'allocate'}] Not enough "\
            "space in datastore", r
    used = sum(sizes[n] for n in accepted)
    left = 100 - used
    assert 0 <= left < max(sizes[n] for n in refused), (used, replies)  # space ran out
    assert all(sizes[n] > left for n in refused)  # nothing refused that would still fit
    ids = sorted(accepted.values())
    assert ids == list(range(src + 1, src + 1 + len(ids)))  # unique, none lost
    pool_ids = [[int(x.split("</ID>")[0]) for x in ok(d, "one.imagepool.info", -2, -1, -1)
                 .split("<IMAGE><ID>")[1:]] for d in (a, b)]
    assert sorted(pool_ids[0]) == sorted(pool_ids[1]) == [src, *ids]
    gate.touch()
    wait_for(lambda: all("<STATE>1</STATE>" in ok(a, "one.image.info", i) for i in ids))


def test_a_burst_of_allocates_on_two_daemons_waits_for_no_lock(several):
    """8 clients x 200 allocates (SOURCE: no driver) over two daemons: every call
    succeeds (no "database is locked"), ids are unique, and no call waits long, which a
    busy-wait back-off on SQLite's lock (sleeps up to 100 ms) would show."""
    a, b = several(2)
    times: list[float] = []
    ids: list[int] = []
    failures: list = []

    def client(k: int) -> None:
        d = (a, b)[k % 2]
        proxy = d.raw()
        for n in range(200):
            t0 = time.perf_counter()
            r = proxy.one.image.allocate(d.session(), f'NAME="burst{k}-{n}"\n'
                                         f'SOURCE="/x/{k}/{n}"\nFORMAT="raw"\nSIZE="1"', 1)
            times.append(time.perf_counter() - t0)
            (ids if r[0] is True else failures).append(r[1])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client, range(8)))
    assert failures == []
    assert len(ids) == len(set(ids)) == 1600
    times.sort()
    assert times[int(0.99 * len(times))] < 1.0, times[-20:]
    for d in (a, b):
        assert "database is locked" not in d.log_text()


# A cp that proves no two runs of one image's copy overlap (a lock per image that the
# whole process group holds), then runs the real fs cp (as a child: the daemon recognises
# its leftover processes by the script's path in their command line).
GUARD_CP = """#!/usr/bin/env bash
exec 9>>"{state}/lock-$1"
flock -n 9 || echo "$1" >> "{state}/twice"
echo "$1" >> "{state}/runs"
"{fs}/cp" "$@"
"""


def fs_guarded_remotes(root: Path, state: Path) -> Path:
    fs = root / "datastore" / "fs"
    fs.mkdir(parents=True)
    real = REPO / "drivers" / "datastore" / "fs"
    for script in real.iterdir():
        if script.name != "cp":
            (fs / script.name).symlink_to(script)
    (fs / "cp").write_text(GUARD_CP.format(state=state, fs=real))
    (fs / "cp").chmod(0o755)
    return make_remotes(root, {})


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill9_of_one_of_three_daemons_mid_copies(tmp_path, several, request):
    state = tmp_path / "state"
    state.mkdir()
    remotes = fs_guarded_remotes(tmp_path / "remotes", state)
    src = Path("/var/tmp") / f"oned-images-ha-{os.getpid()}.raw"  # under SAFE_DIRS
    src.write_bytes(os.urandom(COPY_SECONDS * 1024 * 1024))
    request.addfinalizer(lambda: src.unlink(missing_ok=True))
    daemons = several(3, driver_config(remotes, "-t 15 -d dummy,fs"))
    base = Path(ok(daemons[0], "one.datastore.info", 1).split("<BASE_PATH><![CDATA[")[1]
                .split("]]>")[0])
    by_daemon: list[list[int]] = [[], [], []]

    def allocate(n: int) -> None:
        for k in range(10):
            by_daemon[n].append(ok(daemons[n], "one.image.allocate",
                                   f'NAME="c{n}-{k}"\nPATH="{src}"\nLIMIT_TRANSFER_BW="1M"', 1))

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(allocate, range(3)))
    ids = sorted(sum(by_daemon, []))
    victim, alive = daemons[1], [daemons[0], daemons[2]]
    runs_file = state / "runs"
    wait_for(lambda: runs_file.exists() and len(runs_file.read_text().split()) >= 30,
             timeout=30)
    owned = by_daemon[1]
    victim.kill9()
    killed = time.monotonic()

    def settled() -> bool:
        return all(any(f"<STATE>{s}</STATE>" in ok(alive[0], "one.image.info", i)
                       for s in (1, 5)) for i in ids)

    wait_for(settled, timeout=LEASE + 60, interval=0.2)
    took = time.monotonic() - killed
    docs = [ok(alive[1], "one.image.info", i) for i in ids]
    ready = [x for x in docs if "<STATE>1</STATE>" in x]
    for x in docs:
        assert "<STATE>1</STATE>" in x or "<ERROR>" in x, x
    assert len(ready) == 30
    twice = (state / "twice").read_text() if (state / "twice").exists() else ""
    assert twice == ""
    runs = (state / "runs").read_text().split()
    assert sorted(set(runs)) == sorted(str(i) for i in ids)
    assert all(runs.count(str(i)) == 1 for i in ids if i not in owned)  # only taken ones ran again
    sources = {x.split("<SOURCE><![CDATA[")[1].split("]]>")[0] for x in ready}
    # no orphan, nothing partial: swept by the first heartbeat with no copy running
    wait_for(lambda: {str(p) for p in base.iterdir()} == sources, timeout=LEASE)
    # the taken copies were re-run after the lease, and took their own time again
    assert took < LEASE + COPY_SECONDS + 10, took
    assert "Daemon d1 (on " in alive[0].log_text() + alive[1].log_text()


def test_a_datastore_a_daemon_cannot_see_gets_no_driver_work(several):
    a, = several(1)
    base = Path(ok(a, "one.datastore.info", 1).split("<BASE_PATH><![CDATA[")[1].split("]]>")[0])
    marker = base.parent / ".markers" / "1"
    token = marker.read_text()
    marker.write_text("another storage\n")
    b = joining(a, a.tmp.parent / "blind", f"DAEMON_LEASE = {LEASE}\n"
                'DAEMON_NAME = "blind"\n').start()
    try:
        assert "Datastore 1 is not visible from daemon blind: " in b.log_text()
        iid = ok(b, "one.image.allocate", 'NAME="blind"\nTYPE="DATABLOCK"\nSIZE="1"', 1)
        doc = wait_for(lambda: (x := ok(b, "one.image.info", iid)) and "<STATE>5</STATE>" in x
                       and x)
        assert field(doc, "TEMPLATE/ERROR").endswith(
            f"Datastore 1 is not visible from daemon blind: {marker} is missing or belongs "
            "to another copy (another storage); every daemon must see each datastore's "
            'BASE_PATH at the same path (shared storage, README "Several daemons")')
        seen = ok(a, "one.image.allocate", 'NAME="seen"\nTYPE="DATABLOCK"\nSIZE="1"', 1)
        wait_for(lambda: "<STATE>1</STATE>" in ok(a, "one.image.info", seen))  # A sees it
    finally:
        b.drop()
        marker.write_text(token)


def test_tools_that_rewrite_the_database_are_refused_while_any_daemon_runs(several):
    """Daemons share the database's lock (a flock on SQLite, an advisory lock on
    PostgreSQL); restore and fsck --repair take it whole, and name who holds it."""
    a, b = several(2)

    def repair() -> str:
        tool = subprocess.run(
            [sys.executable, "-m", "oned_images", "db", "fsck", "--repair", "--config",
             str(a.tmp / "oned-images.conf")], capture_output=True, text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
        assert tool.returncode == 2, tool
        assert tool.stderr.startswith("oned-images: refusing to fsck --repair: The database ")
        assert " is in use by oned-images serve (pid " in tool.stderr
        return tool.stderr

    pids = [a.proc.pid, b.proc.pid]
    if backend() != "sqlite":
        repair()
        return
    text = repair()
    assert f"(pid {pids[0]} on " in text and f"(pid {pids[1]} on " in text
    b.stop()  # its line stays in one.db.lock beside a's, and is skipped
    text = repair()
    assert f"(pid {pids[0]} on " in text and f"(pid {pids[1]} on " not in text


def test_uploads_and_progress_see_another_daemons_user_changes_on_the_next_request(several):
    """/uploads/ and /api/progress check the caches per request as /RPC2 does: a user
    made on A uploads through B at once; after a password change on A, B refuses the old
    password on the very next request, whatever its method."""
    import base64

    import requests

    a, b = several(2)
    uid = ok(a, "one.user.allocate", "uploader", "pw1", "", [])

    names = iter(range(100))

    def auth(password: str) -> dict[str, str]:
        token = base64.b64encode(f"uploader:{password}".encode()).decode()
        name = base64.b64encode(f"up{next(names)}".encode()).decode()
        return {"Tus-Resumable": "1.0.0", "Authorization": f"Basic {token}",
                "Upload-Metadata": f"name {name}"}

    def patch(url: str, offset: int, body: bytes, password: str):
        return requests.patch(url, data=body, timeout=30, headers={
            **auth(password), "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream"})

    uploads = f"http://127.0.0.1:{b.port}/uploads/"
    progress = f"http://127.0.0.1:{b.port}/api/progress"
    made = requests.post(uploads, headers={**auth("pw1"), "Upload-Length": "10"}, timeout=30)
    assert made.status_code == 201, made.text
    url = made.headers["Location"]
    done = patch(url, 0, b"ab", "pw1")
    assert (done.status_code, done.text, done.headers.get("Upload-Offset")) == (204, "", "2")
    assert requests.get(progress, headers=auth("pw1"), timeout=30).status_code == 200
    ok(a, "one.user.passwd", uid, "pw2")
    assert requests.head(url, headers=auth("pw1"), timeout=30).status_code == 401
    assert patch(url, 2, b"cd", "pw1").status_code == 401
    assert requests.get(progress, headers=auth("pw1"), timeout=30).status_code == 401
    assert requests.post(uploads, headers={**auth("pw1"), "Upload-Length": "10"},
                         timeout=30).status_code == 401
    assert requests.post(uploads, data=b"xy", timeout=30, headers={
        **auth("pw1"), "Upload-Length": "10",
        "Content-Type": "application/offset+octet-stream"}).status_code == 401
    again = patch(url, 2, b"cd", "pw2")
    assert (again.status_code, again.text, again.headers.get("Upload-Offset")) == (204, "", "4")
    with_body = requests.post(uploads, data=b"xy", timeout=30, headers={
        **auth("pw2"), "Upload-Length": "10",
        "Content-Type": "application/offset+octet-stream"})
    assert (with_body.status_code, with_body.headers["Upload-Offset"]) == (201, "2")


def test_daemons_started_together_on_an_empty_database_bootstrap_it_once(tmp_path):
    """Three daemons launched at the same moment on a database that does not exist yet:
    one creates and bootstraps it (schema, users, groups, ACLs, datastores in one
    serialised transaction), the others find it made; all three serve the same
    documents, with the one oneadmin whose password the first wrote."""
    first = Daemon(tmp_path / "d0", extra_config='DAEMON_NAME = "d0"\n')
    first.var.mkdir(parents=True)  # (SQLite: the others open d0's file there)
    first.write_config()  # names its database (PostgreSQL) before anyone starts
    others = [joining(first, tmp_path / f"d{n}", f'DAEMON_NAME = "d{n}"\n') for n in (1, 2)]
    made = [first, *others]
    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda d: d.start(), made))
        bootstrapped = [d for d in made if "Bootstrapped a new database" in d.log_text()]
        assert len(bootstrapped) == 1, [d.log_text()[-2000:] for d in made]
        docs = {d.tmp.name: (ok(d, "one.userpool.info"), ok(d, "one.grouppool.info"),
                             ok(d, "one.acl.info"), ok(d, "one.datastorepool.info"))
                for d in made}
        assert len(set(docs.values())) == 1, docs
        users, groups, _, datastores = docs["d0"]
        assert users.count("<USER>") == 2 and groups.count("<GROUP>") == 2
        assert datastores.count("<DATASTORE>") == 3
        for d in made:
            assert ok(d, "one.user.info", -1).count("<NAME>oneadmin</NAME>") == 1
    finally:
        for d in reversed(made):
            d.drop()
