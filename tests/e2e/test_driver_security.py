"""Issue 7's driver findings (and issue 8's raw images without qemu-img) on a real daemon.

Each test runs a daemon of its own with the real fs driver on real files and local
HTTP servers (127.0.0.1 and 127.0.0.2 only).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.daemon import wait_for
from tests.support.http_servers import LocalServers

pytestmark = pytest.mark.timeout(120)

POLICY_TEXT = "URL import policy"


@pytest.fixture
def servers(tmp_path):
    s = LocalServers(tmp_path)
    yield s
    s.close()


def settled(one, iid, timeout=60):
    return wait_for(lambda: one.image.info(iid).STATE in (1, 5) and one.image.info(iid),
                    timeout)


def error_of(img) -> str:
    """TEMPLATE/ERROR without oned's "<date> : " prefix."""
    return img.TEMPLATE["ERROR"].split(" : ", 1)[1]


def user_client(d, name="alice"):
    one = d.client()
    one.user.allocate(name, "pw", "", [])
    return d.client(name, "pw")


def _allocate_error(d, session, text, ds=1):
    reply = d.raw().one.image.allocate(session, text, ds)
    assert reply[0] is False, reply
    return reply[1]


# ------------------------------------------------ the daemon's own files --

def test_daemon_files_never_copied_through_a_swapped_symlink(fresh_daemon):
    """VAR_LOCATION under a SAFE_DIRS folder: a symlink that named a harmless directory
    at allocate time and the state directory at copy time must not copy one.db.  (The
    swap follows allocate's reply, long before the forked script opens the file; in the
    rare run where the copy was quicker, the harmless file is in the image: try again.)"""
    d = fresh_daemon()
    one = d.client()
    one.datastore.update(1, f'SAFE_DIRS="/var/tmp {d.tmp}"', 1)
    db = d.var / "one.db"
    work = Path("/var/tmp") / f"oned-swap-{os.getpid()}-{d.port}"
    try:
        for attempt in range(3):
            harmless = work / f"harmless{attempt}"
            harmless.mkdir(parents=True)
            (harmless / "one.db").write_bytes(b"\0" * 4096)
            link = work / f"link{attempt}"
            link.symlink_to(harmless)
            iid = one.image.allocate(f'NAME="db{attempt}"\nPATH="{link}/one.db"', 1)
            tmp_link = work / "link.new"
            tmp_link.symlink_to(d.var)
            os.replace(tmp_link, link)
            img = settled(one, iid)
            if img.STATE == 1:
                copied = Path(img.SOURCE).read_bytes()
                assert copied[:15] != b"SQLite format 3", \
                    "the daemon's database was copied into an image"
                assert copied == b"\0" * 4096
                continue
            break
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=True)
    assert img.STATE == 5, img.TEMPLATE
    assert error_of(img).startswith(
        f"Error copying image in the datastore: Not allowed to copy image file {db}"), \
        img.TEMPLATE["ERROR"]


# ------------------------------------------------------- URL address policy --

def test_url_policy(fresh_daemon, servers):
    d = fresh_daemon()
    one = d.client()
    alice = user_client(d)
    data = os.urandom(300_000)
    (servers.dir / "disk.raw").write_bytes(data)
    url = f"http://{servers.a}/disk.raw"
    err = _allocate_error(d, "alice:pw", f'NAME="ssrf"\nPATH="{url}"')
    assert err.startswith(f"[one.image.allocate] Cannot parse image SIZE: cannot access "
                          f"'{url}' (address 127.0.0.1 is not allowed"), err
    assert POLICY_TEXT in err
    assert servers.requests == []
    assert [i.NAME for i in alice.imagepool.info(-1, -1, -1).IMAGE] == []
    # oneadmin is not restricted
    img = settled(one, one.image.allocate(f'NAME="admin-url"\nPATH="{url}"', 1))
    assert img.STATE == 1 and Path(img.SOURCE).read_bytes() == data
    # a datastore that allows the network
    ds = one.datastore.allocate(
        'NAME="web"\nDS_MAD="fs"\nTM_MAD="local"\nURL_ALLOWED_NETWORKS="127.0.0.1/32"', -1)
    one.datastore.chmod(ds, 1, 1, 0, 1, 0, 0, 1, 0, 0)
    wait_for(lambda: one.datastore.info(ds).TOTAL_MB > 0)
    img = settled(alice, alice.image.allocate(f'NAME="ok"\nPATH="{url}"', ds))
    assert img.STATE == 1 and Path(img.SOURCE).read_bytes() == data
    # ... but a redirect from there to another local address is refused
    hop = f"http://{servers.a}/redirect/{servers.b}/disk.raw"
    err = _allocate_error(d, "alice:pw", f'NAME="hop"\nPATH="{hop}"', ds)
    assert "address 127.0.0.2 is not allowed" in err and POLICY_TEXT in err, err
    # the copy checks too: the size probe is answered, the download redirected
    servers.redirect_full_get = f"{servers.b}/disk.raw"
    iid = alice.image.allocate(f'NAME="late-hop"\nPATH="{url}"', ds)
    img = settled(alice, iid)
    assert img.STATE == 5, img.TEMPLATE
    assert error_of(img).startswith(
        f"Error copying image in the datastore: Error downloading {url}: address 127.0.0.2 "
        "is not allowed"), img.TEMPLATE["ERROR"]
    assert "127.0.0.2" not in {r[0] for r in servers.requests}


# --------------------------------------------------------- stalled transfers --

def test_stalled_transfers_fail(fresh_daemon, servers):
    d = fresh_daemon("DRIVER_STALL_TIMEOUT = 2\n")
    one = d.client()
    url = f"http://{servers.a}/hang"
    t0 = time.monotonic()
    err = _allocate_error(d, d.session(), f'NAME="hang"\nPATH="{url}"')
    assert err == (f"[one.image.allocate] Cannot parse image SIZE: cannot access '{url}' "
                   "(no data received for 2 seconds)")
    assert time.monotonic() - t0 < 20
    (servers.dir / "big.raw").write_bytes(os.urandom(1 << 20))
    url = f"http://{servers.a}/stall-after-probe/big.raw"
    img = settled(one, one.image.allocate(f'NAME="stall"\nPATH="{url}"', 1))
    assert img.STATE == 5
    assert error_of(img) == ("Error copying image in the datastore: Error downloading "
                                     f"{url}: no data received for 2 seconds")


# ------------------------------------------------------ temporary files --

def _driver_groups(var: Path) -> set[int]:
    """Process groups of driver scripts: their working directory is VAR_LOCATION."""
    groups = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/cwd") == str(var):
                groups.add(os.getpgid(int(entry)))
        except OSError:
            continue
    return groups


def test_no_temporary_files_left_after_a_crash(fresh_daemon, servers, tmp_path):
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    d = fresh_daemon(env={"TMPDIR": str(systmp)})
    one = d.client()
    data = os.urandom(6 << 20)
    (servers.dir / "slow.raw").write_bytes(data)
    iid = one.image.allocate(f'NAME="slow"\nPATH="http://{servers.a}/slow/slow.raw"', 1)
    wait_for(lambda: any(r[1] == "/slow/slow.raw" and r[2] is None
                         for r in servers.requests), 30)
    time.sleep(0.5)
    d.kill9()
    # the machine "crashes" too: the drivers die without cleaning up
    for pgid in _driver_groups(d.var):
        os.killpg(pgid, signal.SIGKILL)
    d.start()
    img = settled(d.client(), iid, 90)
    assert img.STATE == 1 and Path(img.SOURCE).read_bytes() == data
    assert sorted(os.listdir(systmp)) == []
    run_tmp = d.var / "run" / "tmp"
    # (a datastore monitor may still be running: its directory goes when it ends)
    wait_for(lambda: not run_tmp.exists() or sorted(os.listdir(run_tmp)) == [])
    del one


# --------------------------------------------------- raw without qemu-img --

def _bin_without(tmp: Path, *missing: str) -> Path:
    bindir = tmp / "bin-without"
    bindir.mkdir()
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            link = bindir / name
            path = os.path.join(d, name)
            if name in missing or link.exists() or link.is_symlink():
                continue
            if os.access(path, os.X_OK) and not os.path.isdir(path):
                link.symlink_to(path)
    return bindir


def test_raw_images_without_qemu_img(fresh_daemon, tmp_path):
    bindir = _bin_without(tmp_path, "qemu-img")
    d = fresh_daemon(env={"ONED_DRIVER_PATH": str(bindir)})
    one = d.client()
    src = Path("/var/tmp") / f"oned-noqemu-{os.getpid()}"
    src.mkdir(exist_ok=True)
    try:
        raw = src / "disk.raw"
        with open(raw, "wb") as f:
            f.write(b"\1" * 4096)
            f.truncate(3 << 20)
        img = settled(one, one.image.allocate(f'NAME="raw"\nPATH="{raw}"', 1))
        assert (img.STATE, img.FORMAT, img.SIZE) == (1, "raw", 3), img.TEMPLATE
        assert Path(img.SOURCE).read_bytes() == raw.read_bytes()
        blank = settled(one, one.image.allocate('NAME="blank"\nTYPE="DATABLOCK"\nSIZE="8"', 1))
        assert blank.STATE == 1, blank.TEMPLATE
        assert os.path.getsize(blank.SOURCE) == 8 << 20
        ext4 = settled(one, one.image.allocate(
            'NAME="blank4"\nTYPE="DATABLOCK"\nSIZE="8"\nFS="ext4"', 1))
        assert ext4.STATE == 1, ext4.TEMPLATE
        qcow = src / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "1G"],
                       check=True)
        err = _allocate_error(d, d.session(), f'NAME="q"\nPATH="{qcow}"')
        assert err == ("[one.image.allocate] Cannot parse image SIZE: qemu-img is required "
                       "to import qcow2 images (install Debian package qemu-utils)")
    finally:
        subprocess.run(["rm", "-rf", str(src)], check=True)
