"""The driver runner under stress: timeouts, the concurrency limit, cancellation,
restart reconciliation, other people's drivers (issue: production drivers)."""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

import pytest

from tests.support.daemon import wait_for
from tests.support.remotes import driver_config, make_remotes, processes_with

pytestmark = pytest.mark.timeout(180)

MONITOR = "#!/bin/sh\ncat >/dev/null\nprintf 'USED_MB=10\\nFREE_MB=100000\\nTOTAL_MB=100010\\n'\n"
STAT = "#!/bin/sh\ncat >/dev/null\necho 1\n"

# A cp that records how many copies run at once, then succeeds after a pause.
COUNTING_CP = """#!/usr/bin/env bash
cat >/dev/null
dir={state}
exec 9>"$dir/lock"
flock 9; n=$(( $(cat "$dir/now" 2>/dev/null || echo 0) + 1 )); echo $n > "$dir/now"
max=$(cat "$dir/max" 2>/dev/null || echo 0); [ $n -gt $max ] && echo $n > "$dir/max"
flock -u 9
sleep {pause}
flock 9; echo $(( $(cat "$dir/now") - 1 )) > "$dir/now"; flock -u 9
echo "/srv/counted/$1 raw"
"""

# A cp that hangs with a child process, ignoring nothing: must die with its group.
HANGING_CP = """#!/usr/bin/env bash
cat >/dev/null
sleep 1000 &  # oned-images-hang-marker
wait
"""

# A driver written to the pre-6.8 argv contract: [script, base64, id], nothing on stdin.
ARGV_CP = """#!/usr/bin/env python3
import base64, sys, xml.etree.ElementTree as ET
doc = ET.fromstring(base64.b64decode(sys.argv[1]))
image_id = sys.argv[2]
path = doc.findtext("IMAGE/PATH")
print(f"/legacy/{image_id}{path.replace('/', '_')} qcow2")
"""

# A driver in someone else's style for the 7.0 contract: reads stdin to EOF, logs on stderr.
FOREIGN_CP = """#!/usr/bin/env python3
import base64, sys, xml.etree.ElementTree as ET
raw = sys.stdin.read()
doc = ET.fromstring(base64.b64decode(raw))
assert doc.tag == "DS_DRIVER_ACTION_DATA"
ds = doc.find("DATASTORE")
print("INFO: foreign cp for image " + sys.argv[1], file=sys.stderr)
if doc.findtext("IMAGE/TEMPLATE/FAIL") == "yes":
    print("ERROR: about to fail", file=sys.stderr)
    print("disk exploded", file=sys.stderr)
    print("please call support", file=sys.stderr)
    sys.exit(3)
print(ds.findtext("BASE_PATH") + "/foreign-" + sys.argv[1] + " raw")
"""


def ds_allocate(one, name, mad):
    dsid = one.datastore.allocate(f'NAME="{name}"\nDS_MAD="{mad}"\nTM_MAD="dummy"', -1)
    wait_for(lambda: one.datastore.info(dsid).FREE_MB > 0)
    return dsid


def wait_states(one, ids, states=(1, 5), timeout=60):
    return wait_for(lambda: all(one.image.info(i).STATE in states for i in ids), timeout)


def test_timeout_kills_the_whole_group(tmp_path, fresh_daemon):
    remotes = make_remotes(tmp_path / "remotes", {
        "hang": {"cp": HANGING_CP, "monitor": MONITOR, "stat": STAT}})
    d = fresh_daemon(driver_config(remotes, "-t 15 -d dummy,fs,hang",
                                   "DRIVER_TIMEOUT = [ CP = 2 ]\n"))
    one = d.client()
    dsid = ds_allocate(one, "hang", "hang")
    iid = one.image.allocate('NAME="h"\nPATH="/var/tmp/whatever"', dsid)
    wait_for(lambda: processes_with("oned-images-hang-marker") or processes_with("sleep 1000"))
    img = wait_for(lambda: (i := one.image.info(iid)).STATE == 5 and i, timeout=30)
    assert img.TEMPLATE["ERROR"].endswith(
        f"Error copying image in the datastore: Timeout executing "
        f"{remotes}/datastore/hang/cp {iid}")
    wait_for(lambda: not processes_with("sleep 1000"), timeout=10)
    assert one.system.version() == "7.0.2"


def test_fifty_copies_with_limit_fifteen(tmp_path, fresh_daemon):
    state = tmp_path / "state"
    state.mkdir()
    remotes = make_remotes(tmp_path / "remotes", {"count": {
        "cp": COUNTING_CP.format(state=state, pause=2.5), "monitor": MONITOR, "stat": STAT}})
    d = fresh_daemon(driver_config(remotes, "-t 15 -d dummy,fs,count"))
    one = d.client()
    dsid = ds_allocate(one, "count", "count")
    ids = [one.image.allocate(f'NAME="c{i}"\nPATH="/var/tmp/c{i}"', dsid) for i in range(50)]
    latencies = []
    stop = threading.Event()

    def probe() -> None:
        client = d.client()
        while not stop.is_set():
            t0 = time.perf_counter()
            client.image.info(ids[0])
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        wait_states(one, ids, timeout=90)
    finally:
        stop.set()
        prober.join()
    imgs = [one.image.info(i) for i in ids]
    assert [i.STATE for i in imgs] == [1] * 50
    assert sorted(i.SOURCE for i in imgs) == sorted(f"/srv/counted/{i} raw".split()[0]
                                                    for i in ids)
    assert int((state / "max").read_text()) == 15
    assert statistics.median(latencies) < 0.1, latencies
    assert max(latencies) < 1.0, max(latencies)


def test_force_delete_of_locked_image_cancels_its_action(tmp_path, fresh_daemon):
    remotes = make_remotes(tmp_path / "remotes", {
        "hang": {"cp": HANGING_CP, "monitor": MONITOR, "stat": STAT}})
    d = fresh_daemon(driver_config(remotes, "-t 15 -d dummy,fs,hang"))
    one = d.client()
    dsid = ds_allocate(one, "hang", "hang")
    iid = one.image.allocate('NAME="h"\nPATH="/var/tmp/whatever"', dsid)
    wait_for(lambda: processes_with("sleep 1000"))
    reply = d.raw().one.image.delete(d.session(), iid)
    assert reply == [False, "[one.image.delete] Image locked, use --force flag to remove the "
                     "image. Force delete may leave some files on Datastore", 8192, iid, -1]
    assert one.image.delete(iid, True) == iid
    assert not processes_with("sleep 1000")
    with pytest.raises(Exception, match=rf"Error getting image \[{iid}\]"):
        one.image.info(iid)


def test_argv_mode_and_foreign_stdin_driver(tmp_path, fresh_daemon):
    remotes = make_remotes(tmp_path / "remotes", {
        "legacy": {"cp": ARGV_CP, "monitor": MONITOR.replace("cat >/dev/null\n", ""),
                   "stat": STAT.replace("cat >/dev/null\n", "")},
        "foreign": {"cp": FOREIGN_CP, "monitor": MONITOR, "stat": STAT},
    })
    d = fresh_daemon(driver_config(
        remotes, "-t 15 -d dummy,fs,legacy,foreign",
        'DS_MAD_CONF = [ NAME = "legacy", MODE = "argv" ]\n'))
    one = d.client()
    legacy = ds_allocate(one, "legacy", "legacy")
    foreign = ds_allocate(one, "foreign", "foreign")
    a = one.image.allocate('NAME="l"\nPATH="/var/tmp/x/y"', legacy)
    b = one.image.allocate('NAME="f"\nPATH="/var/tmp/z"', foreign)
    c = one.image.allocate('NAME="g"\nPATH="/var/tmp/z"\nFAIL="yes"', foreign)
    wait_states(one, [a, b, c])
    la, fb, fc = (one.image.info(i) for i in (a, b, c))
    assert (la.STATE, la.SOURCE, la.FORMAT) == (1, f"/legacy/{a}_var_tmp_x_y", "qcow2")
    base = one.datastore.info(foreign).BASE_PATH
    assert (fb.STATE, fb.SOURCE, fb.FORMAT) == (1, f"{base}/foreign-{b}", "raw")
    assert fc.STATE == 5
    assert fc.TEMPLATE["ERROR"].endswith("Error copying image in the datastore: disk exploded; "
                                         "please call support")
    log = d.log_text()
    assert f"image {b} cp: foreign cp for image {b}" in log


SLOW_CP = """#!/usr/bin/env bash
cat >/dev/null
base={base}
dst="$base/$(printf '%s' "$1-$RANDOM-$$" | md5sum | cut -c1-32)"
trap 'rm -f "$dst.tmp"; exit 143' TERM
: > "$dst.tmp"
sleep {pause} & wait
mv "$dst.tmp" "$dst"
echo "$dst raw"
"""


def test_kill9_during_copies_then_restart_reconciles(tmp_path, fresh_daemon):
    # a pause no other run of this test on the machine uses: the check below looks at
    # every process of the machine
    pause = f"30.{os.getpid()}"
    base = tmp_path / "store"
    base.mkdir()
    remotes = make_remotes(tmp_path / "remotes", {"slow": {
        "cp": SLOW_CP.format(base=base, pause=pause), "monitor": MONITOR, "stat": STAT,
        "rm": "#!/bin/sh\ncat >/dev/null\nexit 0\n"}})
    d = fresh_daemon(driver_config(remotes, "-t 15 -d dummy,fs,slow"))
    one = d.client()
    dsid = ds_allocate(one, "slow", "slow")
    ids = [one.image.allocate(f'NAME="s{i}"\nPATH="/var/tmp/s{i}"', dsid) for i in range(5)]
    wait_for(lambda: len(list(base.glob("*.tmp"))) == 5)
    d.kill9()
    # the scripts die with their daemon (parent-death signal); what they started (the
    # sleep, in a process group of their own) is left for the next start to take down
    wait_for(lambda: not processes_with(str(remotes / "datastore" / "slow" / "cp")),
             timeout=10)
    assert processes_with(f"sleep {pause}")
    (remotes / "datastore" / "slow" / "cp").write_text(SLOW_CP.format(base=base, pause=0.2))
    d.start()
    one = d.client()
    assert not processes_with(str(remotes / "datastore" / "slow" / "cp")) or \
        wait_for(lambda: len(processes_with(f"sleep {pause}")) == 0, timeout=10)
    wait_states(one, ids)
    imgs = [one.image.info(i) for i in ids]
    assert [i.STATE for i in imgs] == [1] * 5
    files = sorted(p.name for p in base.iterdir())
    assert files == sorted(Path(i.SOURCE).name for i in imgs)  # nothing partial, nothing extra
    assert "Reconciling image" in d.log_text()


def test_restart_reconciles_delete_and_clone_states(tmp_path, fresh_daemon):
    remotes = make_remotes(tmp_path / "remotes", {"slow": {
        "cp": "#!/bin/sh\ncat >/dev/null\necho /x/src raw\n",
        "clone": "#!/bin/sh\ncat >/dev/null\nsleep 30\necho /x/clone raw\n",
        "rm": "#!/bin/sh\ncat >/dev/null\nsleep 30\n",
        "monitor": MONITOR, "stat": STAT}})
    d = fresh_daemon(driver_config(remotes, "-t 15 -d dummy,fs,slow"))
    one = d.client()
    dsid = ds_allocate(one, "slow", "slow")
    src = one.image.allocate('NAME="src"\nPATH="/var/tmp/src"', dsid)
    wait_states(one, [src])
    doomed = one.image.allocate('NAME="doomed"\nPATH="/var/tmp/doomed"', dsid)
    wait_states(one, [doomed])
    clone = one.image.clone(src, "cl")
    one.image.delete(doomed)
    assert one.image.info(src).STATE == 2  # USED while cloned
    assert one.image.info(doomed).STATE == 7
    d.kill9()
    for action in ("clone", "rm"):
        p = remotes / "datastore" / "slow" / action
        p.write_text(p.read_text().replace("sleep 30", "true"))
    d.start()
    one = d.client()
    wait_for(lambda: one.image.info(clone).STATE == 1)
    assert one.image.info(clone).SOURCE == "/x/clone"
    wait_for(lambda: one.image.info(src).STATE == 1)
    assert one.image.info(src).CLONING_OPS == 0
    with pytest.raises(Exception, match="Error getting image"):
        wait_for(lambda: one.image.info(doomed) and False, timeout=10)


def test_driver_garbage_and_missing_driver(tmp_path, fresh_daemon):
    remotes = make_remotes(tmp_path / "remotes", {"junk": {
        "cp": "#!/bin/sh\ncat >/dev/null\nprintf 'onlyonetoken\\n'\n",
        "mkfs": "#!/bin/sh\ncat >/dev/null\nexit 0\n",
        "monitor": "#!/bin/sh\ncat >/dev/null\necho '%%%garbage'\n", "stat": STAT}})
    # "absent" is not allowed by -d (an allowed driver without scripts stops start-up)
    d = fresh_daemon(driver_config(remotes, "-t 15 -d dummy,fs,junk",
                                   'DS_MAD_CONF = [ NAME = "absent" ]\n'))
    one = d.client()
    dsid = one.datastore.allocate('NAME="junk"\nDS_MAD="junk"\nTM_MAD="dummy"\n'
                                  'DATASTORE_CAPACITY_CHECK="NO"', -1)
    a = one.image.allocate('NAME="a"\nPATH="/var/tmp/a"', dsid)
    b = one.image.allocate('NAME="b"\nTYPE="DATABLOCK"\nSIZE="1"', dsid)
    wait_states(one, [a, b])
    assert one.image.info(a).TEMPLATE["ERROR"].endswith(
        "CP operation succeeded but image FORMAT was not returned.")
    assert one.image.info(b).STATE == 5
    assert one.datastore.info(dsid).TOTAL_MB == 0
    absent = one.datastore.allocate('NAME="absent"\nDS_MAD="absent"\nTM_MAD="dummy"\n'
                                    'DATASTORE_CAPACITY_CHECK="NO"', -1)
    reply = d.raw().one.image.allocate(d.session(), 'NAME="x"\nPATH="/var/tmp/x"', absent)
    assert reply[:3] == [False, "[one.image.allocate] Cannot parse image SIZE: Datastore driver "
                         "'absent' not available", 8192]
    assert os.path.isdir(d.var)


COUNTING_MONITOR = """#!/usr/bin/env bash
cat >/dev/null
dir={state}
exec 9>"$dir/mlock"
flock 9; n=$(( $(cat "$dir/mnow" 2>/dev/null || echo 0) + 1 )); echo $n > "$dir/mnow"
max=$(cat "$dir/mmax" 2>/dev/null || echo 0); [ $n -gt $max ] && echo $n > "$dir/mmax"
echo $(( $(cat "$dir/mcount" 2>/dev/null || echo 0) + 1 )) > "$dir/mcount"
flock -u 9
sleep 0.3
flock 9; echo $(( $(cat "$dir/mnow") - 1 )) > "$dir/mnow"; flock -u 9
printf 'USED_MB=%s\\nFREE_MB=100000\\nTOTAL_MB=100100\\n' "$(cat "$dir/mcount")"
"""


def counter(path: Path) -> int:
    """A number a driver script keeps in a file (-1 while it is being rewritten)."""
    text = path.read_text().strip()
    return int(text) if text else -1


def test_monitor_after_each_action_and_one_per_datastore(tmp_path, fresh_daemon):
    state = tmp_path / "state"
    state.mkdir()
    remotes = make_remotes(tmp_path / "remotes", {"mon": {
        "cp": "#!/bin/sh\ncat >/dev/null\necho /m/$1 raw\n",
        "monitor": COUNTING_MONITOR.format(state=state), "stat": STAT}})
    d = fresh_daemon(driver_config(remotes, "-t 15 -d dummy,fs,mon"))
    one = d.client()
    dsid = ds_allocate(one, "mon", "mon")
    wait_for(lambda: (state / "mcount").exists())
    before = counter(state / "mcount")
    ids = [one.image.allocate(f'NAME="m{i}"\nPATH="/var/tmp/m{i}"', dsid) for i in range(6)]
    wait_states(one, ids)
    wait_for(lambda: counter(state / "mnow") == 0, timeout=10)
    after = counter(state / "mcount")
    assert after > before  # capacity refreshed after the copies
    assert counter(state / "mmax") == 1  # never two monitors of one datastore
    # the last measurement is what the datastore shows (a request during a run made
    # one more run)
    wait_for(lambda: counter(state / "mnow") == 0 and one.datastore.info(dsid)
             .USED_MB == counter(state / "mcount"), timeout=10)


def test_full_disk_leaves_error_and_no_partial_file(tmp_path, fresh_daemon):
    import subprocess

    d = fresh_daemon()
    one = d.client()
    dsid = one.datastore.allocate('NAME="tiny"\nDS_MAD="fs"\nTM_MAD="local"\n'
                                  'DATASTORE_CAPACITY_CHECK="NO"', -1)
    base = Path(one.datastore.info(dsid).BASE_PATH)
    base.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(base)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    src = Path("/var/tmp") / f"oned-full-{os.getpid()}.raw"
    try:
        src.write_bytes(os.urandom(4 * 1024 * 1024))
        iid = one.image.allocate(f'NAME="big"\nPATH="{src}"', dsid)
        img = wait_for(lambda: (i := one.image.info(iid)).STATE in (1, 5) and i)
        assert img.STATE == 5
        assert "Error copying image in the datastore: " in img.TEMPLATE["ERROR"]
        # the write fails, or (once a monitor saw the 2 MB tmpfs) the copy stops at
        # the datastore's FREE_MB before it (fs_action.copy_limit)
        assert ("No space left on device" in img.TEMPLATE["ERROR"]
                or img.TEMPLATE["ERROR"].endswith(
                    f"Image {src} exceeds 2 MiB, the free space of datastore {dsid} "
                    "(FREE_MB); free space there and retry")), img.TEMPLATE["ERROR"]
        assert os.listdir(base) == []
        one.image.delete(iid)
        with pytest.raises(Exception, match="Error getting image"):
            one.image.info(iid)
    finally:
        src.unlink(missing_ok=True)
        subprocess.run(["umount", str(base)], capture_output=True)


# A cp that is slow for PATHs under /var/tmp/slow/, quick for the others.
SHARE_CP = """#!/usr/bin/env bash
data=$(cat -)
path=$(printf '%s' "$data" | base64 -d | sed -n 's:.*<PATH><!\\[CDATA\\[\\([^]]*\\)\\]\\]></PATH>.*:\\1:p')
case "$path" in /var/tmp/slow/*) sleep 59.0417 & wait ;; esac
echo "/share/$1 raw"
"""


def test_one_user_cannot_starve_the_others(tmp_path, fresh_daemon):
    """-t 4 (a user's share: 2): user A's six stalled copies hold two slots; user B's
    copy and oneadmin's finish at once."""
    remotes = make_remotes(tmp_path / "remotes", {"share": {
        "cp": SHARE_CP, "monitor": MONITOR, "stat": STAT}})
    d = fresh_daemon(driver_config(remotes, "-t 4 -d dummy,fs,share"))
    one = d.client()
    dsid = ds_allocate(one, "share", "share")
    one.datastore.chmod(dsid, 1, 1, 0, 1, 0, 0, 1, 0, 0)
    one.user.allocate("usera", "pw", "", [])
    one.user.allocate("userb", "pw", "", [])
    a, b = d.client("usera", "pw"), d.client("userb", "pw")
    slow = [a.image.allocate(f'NAME="s{i}"\nPATH="/var/tmp/slow/{i}"', dsid) for i in range(6)]
    wait_for(lambda: len(processes_with("sleep 59.0417")) == 2)
    t0 = time.monotonic()
    quick = b.image.allocate('NAME="q"\nPATH="/var/tmp/quick"', dsid)
    admin = one.image.allocate('NAME="adm"\nPATH="/var/tmp/admin"', dsid)
    wait_states(one, [quick, admin], timeout=20)
    assert time.monotonic() - t0 < 10
    assert [one.image.info(i).SOURCE for i in (quick, admin)] == [f"/share/{quick}",
                                                                  f"/share/{admin}"]
    assert [one.image.info(i).STATE for i in slow] == [4] * 6
    assert len(processes_with("sleep 59.0417")) == 2  # A still holds only his share
    for i in slow:
        one.image.delete(i, True)
    wait_for(lambda: not processes_with("sleep 59.0417"), timeout=20)


def test_forced_delete_of_a_queued_copy_never_runs_it(tmp_path, fresh_daemon):
    remotes = make_remotes(tmp_path / "remotes", {"share": {
        "cp": SHARE_CP, "monitor": MONITOR, "stat": STAT}})
    d = fresh_daemon(driver_config(remotes, "-t 4 -d dummy,fs,share",
                                   "DATASTORE_MAD = [ USER_SHARE = 1 ]\n"))
    one = d.client()
    dsid = ds_allocate(one, "share", "share")
    one.datastore.chmod(dsid, 1, 1, 0, 1, 0, 0, 1, 0, 0)
    one.user.allocate("usera", "pw", "", [])
    a = d.client("usera", "pw")
    running = a.image.allocate('NAME="r"\nPATH="/var/tmp/slow/r"', dsid)
    queued = a.image.allocate('NAME="q"\nPATH="/var/tmp/slow/q"', dsid)
    wait_for(lambda: len(processes_with("sleep 59.0417")) == 1)
    assert one.image.delete(queued, True) == queued
    assert one.image.delete(running, True) == running
    wait_for(lambda: not processes_with("sleep 59.0417"), timeout=20)
    time.sleep(1)
    assert not processes_with("sleep 59.0417")  # the queued copy never started
    assert f"cp for image {queued}" not in d.log_text()
    assert one.imagepool.info(-2, -1, -1).IMAGE == []


LOGGING_CP = """#!/bin/sh
cat >/dev/null
echo "INFO: fetching the first half" >&2
while [ ! -e {gate} ]; do sleep 0.05; done
echo "INFO: done" >&2
echo "/live/$1 raw"
"""


def test_driver_log_lines_are_live_and_pid_records_go(tmp_path, fresh_daemon):
    """An INFO line is in oned.log while the script still runs; run/drivers ends empty.
    RUBYLIB/GEM_PATH/GEM_HOME reach the script (OpenNebula's Ruby drivers need them)."""
    gate = tmp_path / "gate"
    remotes = make_remotes(tmp_path / "remotes", {"live": {
        "cp": LOGGING_CP.format(gate=gate), "monitor": MONITOR, "stat": STAT,
        "mkfs": '#!/bin/sh\ncat >/dev/null\necho "/env/$RUBYLIB/$GEM_PATH/$GEM_HOME"\n'}})
    d = fresh_daemon(driver_config(remotes, "-t 15 -d dummy,fs,live"),
                     env={"RUBYLIB": "/one/lib/ruby", "GEM_PATH": "/one/gems:/usr/gems",
                          "GEM_HOME": "/one/gems"})
    one = d.client()
    dsid = ds_allocate(one, "live", "live")
    iid = one.image.allocate('NAME="l"\nPATH="/var/tmp/live"', dsid)
    line = wait_for(lambda: [ln for ln in d.log_text().splitlines()
                             if "fetching the first half" in ln], timeout=20)
    assert line[0].endswith(f"[ImM][I]: image {iid} cp: fetching the first half")
    assert one.image.info(iid).STATE == 4
    assert f"image {iid} cp: done" not in d.log_text()
    gate.touch()
    wait_states(one, [iid])
    assert one.image.info(iid).SOURCE == f"/live/{iid}"
    assert f"[ImM][I]: image {iid} cp: done" in d.log_text()
    blk = one.image.allocate('NAME="b"\nTYPE="DATABLOCK"\nSIZE="1"', dsid)
    wait_states(one, [blk])
    assert one.image.info(blk).SOURCE == "/env//one/lib/ruby//one/gems:/usr/gems//one/gems"
    for i in range(5):
        one.image.allocate(f'NAME="n{i}"\nPATH="/var/tmp/n{i}"', dsid)
    gate.touch()
    wait_for(lambda: all(one.image.info(i).STATE == 1 for i in one.imagepool.info(-2, -1, -1)
                         .IMAGE and [i.ID for i in one.imagepool.info(-2, -1, -1).IMAGE]))
    wait_for(lambda: os.listdir(d.var / "run" / "drivers") == [], timeout=10)
