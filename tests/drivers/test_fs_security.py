"""Security findings of issue 7 (and raw images without qemu-img, issue 8) on the fs scripts.

Every test drives ``drivers/datastore/fs/<action>`` the way the daemon does (see
test_fs_driver.py for the harness) and pins one finding:

* a path checked against SAFE_DIRS/RESTRICTED_DIRS is the path that is read (no swap
  of a directory for a symlink between the check and the copy);
* the daemon's own files (ONED_PROTECTED_PATHS) are never readable, whatever SAFE_DIRS;
* URL imports follow an address policy (ONED_URL_POLICY, URL_ALLOWED_NETWORKS), on
  every connection including redirects;
* a stalled transfer fails after ONED_STALL_TIMEOUT seconds;
* raw images work without qemu-img, and the rest fail naming the Debian package.

All servers listen on 127.0.0.0/8 only.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.drivers.test_fs_driver import (
    Driver,
    MiB,
    cp_result,
    failed,
    ok,
    sparse_raw,
    stat,
    stat_mb,
)
from tests.support.http_servers import LocalServers

POLICY_TEXT = "URL import policy"


@pytest.fixture
def drv(tmp_path) -> Driver:
    return Driver(tmp_path)


def _bin_without(tmp: Path, *missing: str) -> Path:
    """A directory of symlinks to every command of the standard dirs except ``missing``."""
    bindir = tmp / "bin-without"
    bindir.mkdir()
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            if name in missing or (bindir / name).exists() or (bindir / name).is_symlink():
                continue
            path = os.path.join(d, name)
            if os.access(path, os.X_OK) and not os.path.isdir(path):
                (bindir / name).symlink_to(path)
    return bindir


# ------------------------------------------------- 1. check and read agree --

@pytest.mark.timeout(60)
def test_cp_swap_after_check_reads_checked_file(drv):
    """The directory of the image is swapped for a symlink to a secret directory right
    after the path was checked (by a `head` wrapper, the first tool the old script ran on
    the source after its check): the copy must hold the checked file or fail, never the
    secret."""
    secret_dir = drv.root / "secret"
    secret_dir.mkdir()
    secret = b"SECRET-" * 1000
    (secret_dir / "disk.raw").write_bytes(secret)
    swap = drv.inp / "sw"
    swap.mkdir()
    # (a leading '#' could start a vmdk descriptor: the cp runs qemu-img on it, the
    # wrapper's hook; a plainly raw head needs no tool at all)
    harmless = b"#harmless" * 1000
    (swap / "disk.raw").write_bytes(harmless)
    wrap = drv.root / "wrap"
    wrap.mkdir()
    flag = drv.root / "swap-pending"
    flag.write_text("")
    for tool in ("head", "qemu-img"):
        real = shutil.which(tool)
        (wrap / tool).write_text(
            "#!/bin/bash\n"
            f"if [ -e '{flag}' ]; then rm -f '{flag}'; mv '{swap}' '{swap}.old'; "
            f"ln -s '{secret_dir}' '{swap}'; fi\n"
            f"exec '{real}' \"$@\"\n")
        (wrap / tool).chmod(0o755)
    env = drv.env
    drv.env = lambda: {**env(), "PATH": f"{wrap}:{env()['PATH']}"}
    res = drv.cp(swap / "disk.raw")
    assert not flag.exists(), "the swap never happened: the test proves nothing"
    if res.rc == 0:
        dst, _ = cp_result(drv, res)
        assert dst.read_bytes() == harmless
    else:
        failed(res, f"Not allowed to copy image file {secret_dir}/disk.raw")
        assert drv.base_files() == []


@pytest.mark.timeout(60)
def test_stat_fifo_fails_at_once(drv):
    """A FIFO must not block the driver (the old stat read it with head(1) for ever)."""
    fifo = drv.inp / "pipe.img"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    res = failed(stat(drv, fifo), f"cannot access '{fifo}' (Not a regular file)")
    assert res.error == f"cannot access '{fifo}' (Not a regular file)"
    failed(drv.cp(fifo), f"Cannot read image file {fifo} (Not a regular file)")
    assert time.monotonic() - t0 < 20


@pytest.mark.timeout(60)
def test_stat_checks_restricted_dirs(drv):
    """STAT checks SAFE_DIRS/RESTRICTED_DIRS on what it opened, as CP does."""
    failed(stat(drv, "/etc/passwd"), "Not allowed to copy image file /etc/passwd")
    (drv.inp / "link.raw").symlink_to("/etc/passwd")
    failed(stat(drv, drv.inp / "link.raw"), "Not allowed to copy image file /etc/passwd")
    (drv.inp / "dirlink").symlink_to("/etc")
    failed(stat(drv, drv.inp / "dirlink"), "Not allowed to copy image file /etc")
    failed(stat(drv, f"file://{drv.inp}/dirlink/passwd"),
           "Not allowed to copy image file /etc/passwd")
    # allowed ones still work, directories too
    d = drv.inp / "dir"
    d.mkdir()
    (d / "a").write_bytes(b"x" * (3 * MiB))
    assert stat_mb(drv, d) in (4, 5)


# ------------------------------------------------ 2. the daemon's own files --

@pytest.mark.timeout(60)
def test_protected_paths_refused_whatever_safe_dirs(drv):
    var = drv.root / "state"
    var.mkdir()
    db = var / "one.db"
    db.write_bytes(b"SQLite format 3\0" + b"\1" * 8000)
    conf = drv.root / "etc" / "oned-images.conf"
    conf.parent.mkdir()
    conf.write_text("PORT = 2633\n")
    drv.safe_dirs = f"{drv.root}"
    env = drv.env
    drv.env = lambda: {**env(), "ONED_PROTECTED_PATHS": f"{var}\n{conf}\n"}
    (drv.inp / "db.raw").symlink_to(db)
    for path, real in ((db, db), (drv.inp / "db.raw", db), (conf, conf),
                       (f"file://{db}", db)):
        res = failed(drv.cp(path), f"Not allowed to copy image file {real}")
        assert "protected" in res.error, res
        failed(stat(drv, path), f"Not allowed to copy image file {real}")
    failed(stat(drv, var), f"Not allowed to copy image file {var}")
    assert drv.base_files() == []
    # the rest of SAFE_DIRS is still readable
    (drv.root / "ok.raw").write_bytes(b"k" * 4096)
    dst, _ = cp_result(drv, drv.cp(drv.root / "ok.raw"))
    assert dst.read_bytes() == b"k" * 4096


# ---------------------------------------------------- 3. URL address policy --

@pytest.fixture
def servers(tmp_path):
    s = LocalServers(tmp_path)
    yield s
    s.close()


def _policy(drv: Driver, policy: str | None) -> None:
    env = Driver.env.__get__(drv)

    def with_policy():
        e = env()
        if policy is None:
            e.pop("ONED_URL_POLICY", None)
        else:
            e["ONED_URL_POLICY"] = policy
        return e
    drv.env = with_policy


@pytest.mark.timeout(60)
def test_url_policy_restricted_refuses_local_addresses(drv, servers):
    data = os.urandom(64 * 1024)
    (servers.dir / "disk.raw").write_bytes(data)
    url = f"http://{servers.a}/disk.raw"
    for policy in ("restricted", None):   # restricted is the default
        _policy(drv, policy)
        res = failed(drv.cp(url), f"Error downloading {url}: ")
        assert "127.0.0.1" in res.error and POLICY_TEXT in res.error, res
        res = failed(stat(drv, url), f"cannot access '{url}' (")
        assert POLICY_TEXT in res.error, res
    assert servers.requests == [], "a refused address must not even be asked"
    assert drv.base_files() == []
    # open (an admin's image): allowed
    _policy(drv, "open")
    dst, _ = cp_result(drv, drv.cp(url))
    assert dst.read_bytes() == data
    dst.unlink()
    # restricted, but the datastore allows the network
    _policy(drv, "restricted")
    dst, _ = cp_result(drv, drv.cp(url, ds_template={"URL_ALLOWED_NETWORKS": "127.0.0.0/8"}))
    assert dst.read_bytes() == data
    res = ok(drv.run("stat", {"PATH": url}, oid="0",
                     ds_template={"URL_ALLOWED_NETWORKS": "127.0.0.0/8"}))
    assert res.out == "1\n"


@pytest.mark.timeout(60)
def test_url_policy_checks_every_redirect(drv, servers):
    data = b"r" * 5000
    (servers.dir / "disk.raw").write_bytes(data)
    url = f"http://{servers.a}/redirect/{servers.b}/disk.raw"
    _policy(drv, "restricted")
    allow_a = {"URL_ALLOWED_NETWORKS": "127.0.0.1/32"}
    res = failed(drv.cp(url, ds_template=allow_a), f"Error downloading {url}: ")
    assert "127.0.0.2" in res.error and POLICY_TEXT in res.error, res
    res = failed(drv.run("stat", {"PATH": url}, oid="0", ds_template=allow_a),
                 f"cannot access '{url}' (")
    assert "127.0.0.2" in res.error and POLICY_TEXT in res.error, res
    assert [r[0] for r in servers.requests] == ["127.0.0.1", "127.0.0.1"]
    # when both are allowed, the redirect is followed
    both = {"URL_ALLOWED_NETWORKS": "127.0.0.1/32 127.0.0.2/32"}
    dst, _ = cp_result(drv, drv.cp(url, ds_template=both))
    assert dst.read_bytes() == data


@pytest.mark.timeout(60)
def test_url_redirects_bounded_and_http_only(drv, servers):
    _policy(drv, "open")
    hops = f"{servers.a}/x"
    for _ in range(11):
        hops = f"{servers.a}/redirect/{hops}"
    res = failed(drv.cp("http://" + hops), "Error downloading http://")
    assert res.error.endswith(": Maximum (10) redirects followed"), res
    assert len(servers.requests) == 11
    # ten are fine
    (servers.dir / "x").write_bytes(b"x" * 1000)
    dst, _ = cp_result(drv, drv.cp("http://" + hops.split("/redirect/", 1)[1]))
    assert dst.read_bytes() == b"x" * 1000
    res = failed(drv.cp(f"http://{servers.a}/redirect/ftp://{servers.a}/x"),
                 "Error downloading http://")
    assert 'Protocol "ftp" not supported' in res.error, res


# ------------------------------------------------------ 4. stalled transfers --

@pytest.mark.timeout(60)
def test_stalled_transfers_fail(drv, servers):
    _policy(drv, "open")
    env = drv.env
    drv.env = lambda: {**env(), "ONED_STALL_TIMEOUT": "2"}
    url = f"http://{servers.a}/hang"
    t0 = time.monotonic()
    res = failed(drv.cp(url), f"Error downloading {url}: no data received for 2 seconds")
    assert res.error == f"Error downloading {url}: no data received for 2 seconds"
    res = failed(stat(drv, url), f"cannot access '{url}' (no data received for 2 seconds)")
    # a server that answers the probe then stops sending in the middle of the body
    (servers.dir / "big.raw").write_bytes(os.urandom(MiB))
    url = f"http://{servers.a}/stall-after-probe/big.raw"
    assert stat_mb(drv, url) == 1
    res = failed(drv.cp(url), f"Error downloading {url}: no data received for 2 seconds")
    assert time.monotonic() - t0 < 30
    assert drv.base_files() == []


@pytest.mark.timeout(60)
def test_accepting_socket_that_never_answers(drv):
    """A listener whose backlog accepts the TCP connection but nobody reads."""
    _policy(drv, "open")
    env = drv.env
    drv.env = lambda: {**env(), "ONED_STALL_TIMEOUT": "2"}
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    try:
        url = f"http://127.0.0.1:{lsock.getsockname()[1]}/x.raw"
        t0 = time.monotonic()
        failed(drv.cp(url), f"Error downloading {url}: no data received for 2 seconds")
        assert time.monotonic() - t0 < 15
    finally:
        lsock.close()


# ------------------------------------------------- 6. raw without qemu-img --

@pytest.mark.timeout(120)
def test_raw_images_without_qemu_img(drv, tmp_path, servers):
    bindir = _bin_without(tmp_path, "qemu-img")
    env = drv.env
    drv.env = lambda: {**env(), "PATH": str(bindir), "ONED_URL_POLICY": "open"}
    raw = drv.inp / "disk.raw"
    data = sparse_raw(raw, size=3 * MiB + 5)
    assert stat_mb(drv, raw) == 4
    dst, fmt = cp_result(drv, drv.cp(raw))
    assert fmt == "raw" and dst.read_bytes() == data
    # clone of a raw image into a raw datastore needs no qemu-img either
    res = ok(drv.run("clone", {"PATH": str(dst), "FORMAT": "raw"},
                     ds_template={"DRIVER": "raw"}))
    assert Path(res.out.split()[0]).read_bytes() == data and res.out.split()[1] == "raw"
    gz = drv.inp / "disk.raw.gz"
    gz.write_bytes(gzip.compress(data))
    assert stat_mb(drv, gz) == 4
    (servers.dir / "disk.raw").write_bytes(data)
    assert stat_mb(drv, f"http://{servers.a}/disk.raw") == 4
    # an ISO is raw for qemu-img too
    iso = drv.inp / "cd.iso"
    iso.write_bytes(bytes(0x8001) + b"CD001" + bytes(4096))
    assert stat_mb(drv, iso) == 1

    need = "qemu-img is required to import qcow2 images (install Debian package qemu-utils)"
    qcow = drv.inp / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "1G"], check=True)
    res = failed(stat(drv, qcow), need)
    assert res.error == need
    res = failed(drv.cp(qcow), need)
    assert res.error == need
    vmdk = drv.inp / "disk.vmdk"
    vmdk.write_bytes(b"KDMV" + bytes(4096))
    failed(stat(drv, vmdk), "qemu-img is required to import vmdk images")
    failed(drv.cp(raw, ds_template={"DRIVER": "qcow2"}),
           "qemu-img is required to convert images to qcow2 (install Debian package "
           "qemu-utils)")
    for f in drv.base.iterdir():
        f.unlink()

    res = ok(drv.run("mkfs", {"SIZE": 16, "FORMAT": "raw", "FS": "", "TYPE": 2}))
    blank = Path(res.out.strip())
    assert blank.stat().st_size == 16 * MiB and blank.stat().st_blocks * 512 < MiB
    res = ok(drv.run("mkfs", {"SIZE": 16, "FORMAT": "raw", "FS": "ext4", "TYPE": 2}))
    out = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", res.out.strip()],
                         capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "ext4"
    res = failed(drv.run("mkfs", {"SIZE": 16, "FORMAT": "qcow2", "FS": "", "TYPE": 2}),
                 "qemu-img is required to create qcow2 images (install Debian package "
                 "qemu-utils)")


# ------------------------------------- images that make qemu read other files --

@pytest.mark.timeout(60)
def test_images_referring_to_other_files_refused(drv):
    """A vmdk descriptor whose FLAT extent is a secret file (or a qcow2 with an
    external data file) would make the conversion to the datastore's DRIVER copy the
    secret: such images are refused, converted or not."""
    secret = drv.root / "secret.bin"
    secret.write_bytes(b"S" * MiB)
    vmdk = drv.inp / "d.vmdk"
    vmdk.write_text(
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
        'createType="monolithicFlat"\n\n# Extent description\n'
        f'RW 2048 FLAT "{secret}" 0\n\nddb.adapterType = "ide"\n')
    for tpl in ({}, {"DRIVER": "raw"}, {"DRIVER": "qcow2"}):
        res = failed(drv.cp(vmdk, ds_template=tpl),
                     f"Image refers to another file ({secret}), refusing it")
        assert res.error == f"Image refers to another file ({secret}), refusing it"
    qcow = drv.inp / "q.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    f"data_file={secret},data_file_raw=on", str(qcow), "1M"], check=True)
    failed(drv.cp(qcow, ds_template={"DRIVER": "raw"}),
           f"Image refers to another file ({secret}), refusing it")
    assert drv.base_files() == []
    # a plain sparse vmdk (its only extent is itself) is fine
    plain = drv.inp / "plain.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(plain), "1M"], check=True)
    dst, fmt = cp_result(drv, drv.cp(plain))
    assert fmt == "vmdk"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("head", ["version=1\n", "  \nversion=1\n", "# any comment\nversion=1\n"])
def test_vmdk_descriptors_without_the_usual_first_line_are_probed(drv, head):
    """qemu-img takes any text whose first line (after '#' comments and blank lines
    of spaces) is "version=N" for a vmdk descriptor: such a head is never taken for raw
    without qemu-img (image_source.plain_raw), so a FLAT extent naming a secret is
    refused as with the usual "# Disk DescriptorFile" line."""
    secret = drv.root / "secret.bin"
    secret.write_bytes(b"S" * MiB)
    vmdk = drv.inp / "d.img"
    vmdk.write_text(head + 'CID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
                    f'RW 2048 FLAT "{secret}" 0\n')
    res = failed(drv.cp(vmdk), f"Image refers to another file ({secret}), refusing it")
    assert res.error == f"Image refers to another file ({secret}), refusing it"
    assert drv.base_files() == []
    assert stat_mb(drv, vmdk) == 1   # the descriptor's virtual size, not its file size


@pytest.mark.timeout(60)
def test_url_imports_use_the_proxy_and_the_policy(drv, servers):
    """http_proxy is honoured (as curl did); the policy still applies to the target."""
    data = b"p" * 5000
    (servers.dir / "disk.raw").write_bytes(data)
    url = f"http://{servers.a}/disk.raw"
    env = Driver.env.__get__(drv)
    proxied = {"http_proxy": f"http://{servers.b}"}
    drv.env = lambda: {**env(), **proxied, "ONED_URL_POLICY": "open"}
    dst, _ = cp_result(drv, drv.cp(url))
    assert dst.read_bytes() == data
    dst.unlink()
    assert servers.requests == [("127.0.0.2", url, None)]
    drv.env = lambda: {**env(), **proxied, "ONED_URL_POLICY": "restricted"}
    res = failed(drv.cp(url), f"Error downloading {url}: address 127.0.0.1 is not allowed")
    assert POLICY_TEXT in res.error
    assert len(servers.requests) == 1
    drv.env = lambda: {**env(), **proxied, "no_proxy": "127.0.0.1",
                       "ONED_URL_POLICY": "open"}
    dst, _ = cp_result(drv, drv.cp(url))
    assert servers.requests[1] == ("127.0.0.1", "/disk.raw", None)
