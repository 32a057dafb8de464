"""Real images on disk through the daemon and the fs driver (issue: production drivers)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.daemon import wait_for
from tests.support.xsd import validate

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def inputs():
    base = Path("/var/tmp") / f"oned-images-test-{os.getpid()}"
    base.mkdir(parents=True, exist_ok=True)
    raw = base / "disk.raw"
    with open(raw, "wb") as f:
        f.write(b"\x01" * 4096)
        f.seek(3 * 1024 * 1024 - 1)
        f.write(b"\x02")
    qcow = base / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "20M"], check=True)
    yield {"raw": raw, "qcow2": qcow, "dir": base}
    subprocess.run(["rm", "-rf", str(base)], check=True)


def state_of(one, iid):
    return one.image.info(iid).STATE


def wait_state(one, iid, states=(1, 5), timeout=60):
    return wait_for(lambda: state_of(one, iid) in states and one.image.info(iid), timeout)


def test_register_clone_delete_real_files(daemon, one, inputs):
    raw = inputs["raw"]
    iid = one.image.allocate(f'NAME="real-raw"\nPATH="{raw}"\nTYPE="OS"', 1)
    img = wait_state(one, iid)
    assert (img.STATE, img.FORMAT, img.SIZE) == (1, "raw", 3), img.TEMPLATE
    source = Path(img.SOURCE)
    assert source.parent == daemon.var / "datastores" / "1"
    assert source.read_bytes() == raw.read_bytes()
    # holes are kept
    assert source.stat().st_blocks * 512 < 1024 * 1024
    validate(daemon.raw().one.image.info(daemon.session(), iid)[1])

    cid = one.image.clone(iid, "real-raw-clone")
    clone = wait_state(one, cid)
    assert clone.STATE == 1
    assert Path(clone.SOURCE).read_bytes() == raw.read_bytes()
    assert Path(clone.SOURCE) != source
    assert one.image.info(iid).STATE == 1

    one.image.delete(cid)
    wait_for(lambda: not Path(clone.SOURCE).exists())
    one.image.delete(iid)
    wait_for(lambda: not source.exists())
    with pytest.raises(Exception, match=rf"Error getting image \[{iid}\]"):
        wait_for(lambda: one.image.info(iid) and False, timeout=5)


def test_qcow2_format_detected(one, inputs):
    iid = one.image.allocate(f'NAME="real-qcow"\nPATH="{inputs["qcow2"]}"', 1)
    img = wait_state(one, iid)
    assert (img.STATE, img.FORMAT, img.SIZE) == (1, "qcow2", 20)


def test_mkfs_datablock(one):
    iid = one.image.allocate('NAME="blank"\nTYPE="DATABLOCK"\nSIZE="8"\nFS="ext4"', 1)
    img = wait_state(one, iid)
    assert img.STATE == 1, img.TEMPLATE
    assert img.FORMAT == "raw"
    out = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", img.SOURCE],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "ext4"
    assert os.path.getsize(img.SOURCE) == 8 * 1024 * 1024


def test_restricted_path_refused_synchronously(daemon, one):
    proxy = daemon.raw()
    reply = proxy.one.image.allocate(daemon.session(), 'NAME="pw"\nPATH="/etc/passwd"', 1)
    assert reply[:3] == [False, "[one.image.allocate] Cannot parse image SIZE: Not allowed to "
                         "copy image file /etc/passwd: it is not under the datastore SAFE_DIRS "
                         "and is under its RESTRICTED_DIRS", 8192]
    reply = proxy.one.image.allocate(daemon.session(),
                                     'NAME="pw2"\nPATH="/var/tmp/../../etc/passwd"', 1)
    assert reply[0] is False and "Not allowed to copy image file" in reply[1]
    # the daemon's own state directory is never importable
    db = daemon.var / "one.db"
    reply = proxy.one.image.allocate(daemon.session(), f'NAME="db"\nPATH="{db}"', 1)
    assert reply[0] is False and "Not allowed to copy image file" in reply[1]
    assert "pw" not in [i.NAME for i in one.imagepool.info(-2, -1, -1).IMAGE]


def test_missing_file_stat_error(daemon):
    reply = daemon.raw().one.image.allocate(daemon.session(),
                                            'NAME="nofile"\nPATH="/var/tmp/no/such.img"', 1)
    assert reply[:3] == [False, "[one.image.allocate] Cannot parse image SIZE: cannot access "
                         "'/var/tmp/no/such.img' (No such file or directory)", 8192]


def test_checksum_mismatch_leaves_nothing(daemon, one, inputs):
    raw = inputs["raw"]
    before = set(os.listdir(daemon.var / "datastores" / "1"))
    iid = one.image.allocate(f'NAME="badsum"\nPATH="{raw}"\nMD5="0123"', 1)
    img = wait_state(one, iid)
    assert img.STATE == 5
    assert "Error copying image in the datastore: Hash does not match" in img.TEMPLATE["ERROR"]
    assert set(os.listdir(daemon.var / "datastores" / "1")) == before
    good = hashlib.md5(raw.read_bytes()).hexdigest()
    iid2 = one.image.allocate(f'NAME="goodsum"\nPATH="{raw}"\nMD5="{good}"', 1)
    assert wait_state(one, iid2).STATE == 1


def test_datastore_capacity_from_monitor(one):
    ds = one.datastore.info(1)
    assert ds.TOTAL_MB > 0 and ds.FREE_MB > 0 and ds.USED_MB >= 0
    st = os.statvfs(ds.BASE_PATH)
    assert abs(ds.TOTAL_MB - st.f_blocks * st.f_frsize // 2**20) <= 1


def test_http_source(one, inputs):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(inputs["dir"]))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/disk.qcow2"
        iid = one.image.allocate(f'NAME="http-img"\nPATH="{url}"', 1)
        img = wait_state(one, iid)
        assert (img.STATE, img.FORMAT, img.SIZE) == (1, "qcow2", 20)
        missing = f"http://127.0.0.1:{server.server_address[1]}/missing.qcow2"
        with pytest.raises(Exception, match="Cannot parse image SIZE"):
            one.image.allocate(f'NAME="http-404"\nPATH="{missing}"', 1)
    finally:
        server.shutdown()
    time.sleep(0)
