"""Unit tests of drivers/datastore/common/image_source.py, the fs driver's reader.

The scripts' tests (test_fs_driver.py, test_fs_security.py) show the behaviour end to
end; these pin the pieces deterministically: the check is made on the opened
descriptor (a swap between any path check and the open is caught), a FIFO never
blocks, the address classification of the URL policy, holes, multi-member streams.
No network traffic.
"""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import ipaddress
import lzma
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "image_source", ROOT / "drivers" / "datastore" / "common" / "image_source.py")
src = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(src)

pytestmark = pytest.mark.timeout(30)


def _rules(monkeypatch, safe: str, restricted: str = "/", protected: str = ""):
    monkeypatch.setenv("HOME", "/nonexistent-home")
    monkeypatch.setenv("ONED_PROTECTED_PATHS", protected)
    return src.Rules(safe, restricted)


def _err(why: str) -> str:
    return f"cannot open ({why})"


def test_descriptor_is_checked_not_the_path(tmp_path, monkeypatch):
    """A swap between the path check and the open (simulated: the path check sees a
    harmless path) is caught by the check of the opened descriptor."""
    safe = tmp_path / "safe"
    secret = tmp_path / "secret"
    for d in (safe, secret):
        d.mkdir()
    (secret / "disk.raw").write_bytes(b"secret")
    (safe / "sw").symlink_to(secret)
    rules = _rules(monkeypatch, str(safe))
    monkeypatch.setattr(src.os.path, "realpath", lambda p: str(safe / "sw" / "disk.raw"))
    with pytest.raises(src.Fail) as exc:
        src.open_checked(str(safe / "sw" / "disk.raw"), rules, _err)
    assert str(exc.value) == (f"Not allowed to copy image file {secret}/disk.raw (inside "
                              "restricted directory / and not inside SAFE_DIRS)")


def test_reads_come_from_the_checked_descriptor(tmp_path, monkeypatch):
    """Once opened and checked, swapping the directory changes nothing that is read."""
    safe = tmp_path / "safe"
    (safe / "sw").mkdir(parents=True)
    (safe / "sw" / "disk.raw").write_bytes(b"harmless" * 100)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "disk.raw").write_bytes(b"SECRET" * 100)
    rules = _rules(monkeypatch, str(safe))
    fd, real, st = src.open_checked(str(safe / "sw" / "disk.raw"), rules, _err)
    try:
        os.rename(safe / "sw", safe / "old")
        (safe / "sw").symlink_to(secret)
        body = src.FileBody(os.dup(fd))
        assert body.read(4096) == b"harmless" * 100
        body.close()
        out = tmp_path / "out"
        with open(out, "wb") as fh:
            w = src.SparseWriter(fh.fileno())
            src._copy_fd_sparse(fd, st.st_size, w)
            w.finish()
        assert out.read_bytes() == b"harmless" * 100
        assert real == str(safe / "sw" / "disk.raw")
    finally:
        os.close(fd)


def test_fifo_and_devices_refused_without_blocking(tmp_path, monkeypatch):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    rules = _rules(monkeypatch, str(tmp_path))
    with pytest.raises(src.Fail, match=r"^cannot open \(Not a regular file\)$"):
        src.open_checked(str(fifo), rules, _err)
    with pytest.raises(src.Fail, match="Not a regular file"):
        src.open_checked(str(tmp_path), rules, _err)   # a directory, for cp
    fd, _, _ = src.open_checked(str(tmp_path), rules, _err, allow_dir=True)
    os.close(fd)
    with pytest.raises(src.Fail, match=r"^cannot open \(No such file or directory\)$"):
        src.open_checked(str(tmp_path / "nope"), rules, _err)
    (tmp_path / "dangling").symlink_to(tmp_path / "nope")
    with pytest.raises(src.Fail, match=r"^cannot open \(Dangling symbolic link\)$"):
        src.open_checked(str(tmp_path / "dangling"), rules, _err)


def test_protected_paths_beat_safe_dirs(tmp_path, monkeypatch):
    var = tmp_path / "var"
    var.mkdir()
    (var / "one.db").write_bytes(b"db")
    rules = _rules(monkeypatch, str(tmp_path), protected=f"{var}\n")
    with pytest.raises(src.Fail, match=f"^Not allowed to copy image file {var}/one.db "
                                       r"\(a file of oned-images itself"):
        src.open_checked(str(var / "one.db"), rules, _err)
    # a protected path given through a symlink is protected as what it names
    (tmp_path / "v").symlink_to(var)
    rules = _rules(monkeypatch, str(tmp_path), protected=f"{tmp_path}/v")
    with pytest.raises(src.Fail, match="a file of oned-images itself"):
        src.open_checked(str(var / "one.db"), rules, _err)


@pytest.mark.parametrize("addr,kind", [
    ("127.0.0.1", "a loopback"), ("127.9.9.9", "a loopback"), ("::1", "a loopback"),
    ("10.1.2.3", "a private"), ("172.16.0.1", "a private"), ("192.168.1.1", "a private"),
    ("fc00::1", "a private"), ("169.254.169.254", "a link-local"), ("fe80::1", "a link-local"),
    ("0.0.0.0", "an unspecified"), ("224.0.0.1", "a multicast"), ("ff02::1", "a multicast"),
    ("100.64.0.1", "a reserved"), ("240.0.0.1", "a private"),
    ("::ffff:127.0.0.1", "a loopback"), ("::ffff:10.0.0.1", "a private"),
])
def test_policy_refuses_non_public_addresses(monkeypatch, addr, kind):
    monkeypatch.setenv("ONED_URL_POLICY", "restricted")
    why = src.Policy("").refusal(ipaddress.ip_address(addr))
    assert why is not None and f"is not allowed by the URL import policy: {kind} " in why


def test_policy_allows_public_listed_and_open(monkeypatch):
    monkeypatch.setenv("ONED_URL_POLICY", "restricted")
    pol = src.Policy("10.1.0.0/16, 192.168.7.0/24 fd00::/8")
    for public in ("8.8.8.8", "2001:4860:4860::8888", "1.1.1.1"):
        assert pol.refusal(ipaddress.ip_address(public)) is None
    for listed in ("10.1.200.3", "192.168.7.9", "fd00::5", "::ffff:10.1.0.1"):
        assert pol.refusal(ipaddress.ip_address(listed)) is None
    assert pol.refusal(ipaddress.ip_address("10.2.0.1")) is not None
    assert "an address of this host" in pol.refusal(ipaddress.ip_address("8.8.8.8"), local=True)
    assert pol.refusal(ipaddress.ip_address("10.1.0.1"), local=True) is None
    monkeypatch.delenv("ONED_URL_POLICY")
    assert src.Policy("").restricted, "restricted unless the runner says open"
    monkeypatch.setenv("ONED_URL_POLICY", "open")
    assert src.Policy("").refusal(ipaddress.ip_address("127.0.0.1"), local=True) is None
    with pytest.raises(src.Fail, match="Invalid URL_ALLOWED_NETWORKS entry 'nope'"):
        src.Policy("10.0.0.0/8 nope")


def test_sparse_writer_leaves_holes(tmp_path):
    data = bytes(3 * src.HOLE) + b"x" * 10 + bytes(5 * src.HOLE) + b"y"
    out = tmp_path / "o"
    with open(out, "wb") as fh:
        w = src.SparseWriter(fh.fileno())
        for i in range(0, len(data), 70000):
            w.write(data[i:i + 70000])
        w.finish()
    assert out.read_bytes() == data
    assert os.stat(out).st_blocks * 512 <= 4 * src.HOLE


@pytest.mark.parametrize("how", ["kernel", "stream"])
def test_copies_start_write_back_as_they_go_and_fsync_at_the_end(tmp_path, monkeypatch, how):
    """Every WRITEBACK bytes copied, the write-back of what came before starts (so the
    fsync at the end waits for the tail only), in order and without gaps; the copy is
    still fsynced once, after its last write."""
    monkeypatch.setenv("HOME", "/nonexistent-home")
    monkeypatch.setenv("ONED_PROTECTED_PATHS", "")
    monkeypatch.setattr(src, "WRITEBACK", 1 << 20)
    monkeypatch.setattr(src, "COPY_CHUNK", 1 << 20)
    monkeypatch.setattr(src, "_reflink", lambda *a: False)   # (a reflink writes nothing)
    if how == "stream":   # the read-and-write path (no copy_file_range)
        monkeypatch.setattr(src, "_copy_fd_kernel", lambda *a: False)
    calls: list[tuple] = []
    real_fadvise, real_fsync = os.posix_fadvise, os.fsync
    monkeypatch.setattr(src.os, "posix_fadvise",
                        lambda fd, off, n, advice: (calls.append(("advise", off, n, advice)),
                                                    real_fadvise(fd, off, n, advice))[1])
    monkeypatch.setattr(src.os, "fsync", lambda fd: (calls.append(("fsync",)),
                                                     real_fsync(fd))[1])
    data = os.urandom((5 << 20) + 12345)
    (tmp_path / "in").write_bytes(data)
    src.copy(str(tmp_path / "in"), str(tmp_path / "out"), _copy_opts())
    assert (tmp_path / "out").read_bytes() == data
    advised = [c for c in calls if c[0] == "advise"]
    assert {c[3] for c in advised} == {os.POSIX_FADV_DONTNEED}
    ends = [off + n for _, off, n, _ in advised]
    assert [off for _, off, _, _ in advised] == [0, *ends[:-1]]   # contiguous, in order
    assert ends[-1] == 5 << 20 and all(n >= 1 << 20 for _, _, n, _ in advised)
    assert calls[-1] == ("fsync",) and calls.count(("fsync",)) == 1


@pytest.mark.parametrize("kind,comp", [("gzip", gzip.compress), ("bzip2", bz2.compress),
                                       ("xz", lzma.compress)])
def test_decompressed_concatenated_and_truncated(kind, comp):
    a, b = os.urandom(src.BLOCK + 12345), bytes(2 * src.BLOCK)
    stream = comp(a) + comp(b)
    assert src.compression_of(stream) == kind
    chunks = [stream[i:i + 100000] for i in range(0, len(stream), 100000)]
    assert b"".join(src.decompressed(kind, iter(chunks))) == a + b
    with pytest.raises(EOFError):
        b"".join(src.decompressed(kind, iter([stream[:len(comp(a)) // 2]])))


def test_magic_formats():
    assert src.magic_format(b"QFI\xfb\0\0\0\x03") == "qcow2"
    assert src.magic_format(b"QFI\xfb\0\0\0\x01") == "qcow"
    assert src.magic_format(b"KDMV") == "vmdk"
    assert src.magic_format(b"vhdxfile") == "vhdx"
    assert src.magic_format(b"conectix") == "vpc"
    assert src.magic_format(b"LUKS\xba\xbe\0\x01") == "luks"
    assert src.magic_format(bytes(64) + b"\x7f\x10\xda\xbe") == "vdi"
    assert src.magic_format(bytes(0x8001) + b"CD001") == "raw"   # ISO: raw for qemu too
    assert src.magic_format(b"") == "raw"


def _copy_opts(**extra):
    return {"safe_dirs": "", "restricted_dirs": "", "allowed_networks": "", "md5": "",
            "sha1": "", "limit": "", "no_decompress": False, **extra}


def test_staged_file_is_the_one_exception_and_is_moved(tmp_path, monkeypatch):
    """ONED_STAGED_FILE admits exactly that file of the protected staging directory,
    and the copy moves it (same file system) instead of copying it."""
    staging = tmp_path / "var" / "uploads"
    staging.mkdir(parents=True)
    upload, other = staging / "a.bin", staging / "b.bin"
    upload.write_bytes(b"uploaded" * 1000)
    other.write_bytes(b"someone else's")
    monkeypatch.setenv("HOME", "/nonexistent-home")
    monkeypatch.setenv("ONED_PROTECTED_PATHS", f"{tmp_path / 'var'}\n{staging}")
    monkeypatch.setenv("ONED_STAGED_FILE", str(upload))
    dst = tmp_path / "ds" / "img"
    dst.parent.mkdir()
    with pytest.raises(src.Fail, match="a file of oned-images itself"):
        src.copy(str(other), str(dst), _copy_opts())
    inode = upload.stat().st_ino
    src.copy(str(upload), str(dst), _copy_opts())
    assert dst.read_bytes() == b"uploaded" * 1000
    assert (dst.stat().st_ino, upload.exists()) == (inode, False)
    assert other.read_bytes() == b"someone else's"
    # with a checksum to verify it is read, not moved
    upload.write_bytes(b"again")
    sha = __import__("hashlib").sha1(b"again").hexdigest()
    src.copy(str(upload), str(dst), _copy_opts(sha1=sha))
    assert (dst.read_bytes(), upload.exists()) == (b"again", True)


def test_copies_report_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", "/nonexistent-home")
    monkeypatch.setenv("ONED_PROTECTED_PATHS", "")
    data = os.urandom(3 << 20)
    (tmp_path / "in").write_bytes(data)
    monkeypatch.setattr(src, "PROGRESS_EVERY", 0)   # (a line per block read)
    src.copy(str(tmp_path / "in"), str(tmp_path / "out"), _copy_opts())
    lines = [line for line in capsys.readouterr().err.splitlines() if " progress " in line]
    assert lines[-1] == f"INFO: image_source: progress {3 << 20} {3 << 20}"
    dones = [int(line.split()[-2]) for line in lines]
    assert dones == sorted(dones) and {line.split()[-1] for line in lines} == {str(3 << 20)}
    assert (tmp_path / "out").read_bytes() == data
    # at most one a second otherwise
    monkeypatch.setattr(src, "PROGRESS_EVERY", 1.0)
    meter = src.Meter(10)
    meter.add(4)
    meter.add(4)
    assert [line for line in capsys.readouterr().err.splitlines() if "progress" in line] == []
