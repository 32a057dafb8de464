"""Decompression bombs against the real daemon and the real fs driver: what a copy
writes is bounded by the datastore's space and DRIVER_COPY_MAX_MB (README "Drivers",
drivers/datastore/common/fs_action.copy_limit); a copy that goes past it ends in ERROR
with a text naming the limit, its partial file is removed, and nothing else in the
datastore changes.  STAT expands an image no further than that (a bomb is refused at
allocate).  Uploads are measured by STAT like a PATH, so their capacity check and
quotas count the expanded size, not the compressed one."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from tests.e2e.test_uploads import ADMIN, TUS, endpoint, meta, staged
from tests.support.daemon import Daemon, wait_for
from tests.support.remotes import driver_config, make_remotes
from tests.support.seed import CTIME, fails, info, num, ok, template_dict, unique, wait_state

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20
COPY_MAX_MB = 24
FS = Path(__file__).resolve().parents[2] / "drivers" / "datastore" / "fs"
#: "fsfix": the fs driver with a monitor that reports 8 MB free of 1000
FIXED_MONITOR = "#!/bin/sh\ncat >/dev/null\nprintf 'USED_MB=100\\nFREE_MB=8\\nTOTAL_MB=1000\\n'\n"


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    actions = {a: f'#!/bin/sh\nexec "{FS / a}" "$@"\n' for a in ("cp", "stat", "rm")}
    remotes = make_remotes(tmp / "remotes", {"fsfix": {**actions, "monitor": FIXED_MONITOR}})
    daemon = Daemon(tmp / "d", extra_config=driver_config(
        remotes, "-t 15 -d dummy,fs,fsfix", f"DRIVER_COPY_MAX_MB = {COPY_MAX_MB}\n")).start()
    yield daemon
    daemon.drop()


@pytest.fixture(scope="module")
def inputs():
    base = Path("/var/tmp") / f"oned-images-limits-{os.getpid()}"
    base.mkdir(parents=True, exist_ok=True)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def error_of(xml: str) -> str:
    value = template_dict(xml)["ERROR"]
    m = re.fullmatch(rf"{CTIME} : (.*)", value, re.S)
    assert m, value
    return m.group(1)


def settled(d: Daemon, oid: int) -> str:
    """The image's document once its copy ended (no longer LOCKED)."""
    def done():
        xml = info(d, oid)
        return xml if num(xml, "STATE") != 4 else None
    return wait_for(done, 60)


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` with a hash of its content."""
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def zeros_gz(path: Path, mib: int) -> Path:
    path.write_bytes(gzip.compress(bytes(mib * MiB)))
    return path


def test_a_gzip_bomb_by_path_ends_in_error_and_touches_nothing(d, inputs):
    base = d.var / "datastores" / "1"
    good = zeros_gz(inputs / "good.raw.gz", 2)
    kept = ok(d, "one.image.allocate", f'NAME="{unique("kept")}"\nPATH="{good}"', 1)
    assert num(settled(d, kept), "STATE") == 1
    before = tree(base)
    bomb = zeros_gz(inputs / "bomb.raw.gz", 64)
    assert bomb.stat().st_size < 128 * 1024
    # STAT expands it no further than DRIVER_COPY_MAX_MB: the allocate is refused with
    # cp's text, and no image is made
    before_pool = ok(d, "one.imagepool.info", -2, -1, -1)
    assert fails(d, "one.image.allocate", f'NAME="{unique("bomb")}"\nPATH="{bomb}"', 1) == (
        f"[one.image.allocate] Cannot parse image SIZE: Image {bomb} exceeds {COPY_MAX_MB} "
        "MiB, the largest copy DRIVER_COPY_MAX_MB allows (oned-images.conf); raise it there "
        "and retry", 8192, -1)
    assert ok(d, "one.imagepool.info", -2, -1, -1) == before_pool
    assert tree(base) == before
    # a copy that goes past the limit anyway (a qcow2 whose header claims less than
    # follows it) ends in ERROR with that text
    qcow = inputs / "tiny.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "1M"], check=True)
    qbomb = inputs / "bomb-1.qcow2.gz"
    qbomb.write_bytes(gzip.compress(qcow.read_bytes() + bytes(64 * MiB)))
    oid = ok(d, "one.image.allocate", f'NAME="{unique("bomb")}"\nPATH="{qbomb}"', 1)
    xml = settled(d, oid)
    assert (num(xml, "STATE"), num(xml, "SIZE")) == (5, 1)
    assert error_of(xml) == (
        f"Error copying image in the datastore: Image {qbomb} exceeds {COPY_MAX_MB} MiB, the "
        "largest copy DRIVER_COPY_MAX_MB allows (oned-images.conf); raise it there and retry")
    assert tree(base) == before
    # the daemon keeps serving, and a copy within the limit works
    again = ok(d, "one.image.allocate", f'NAME="{unique("fits")}"\nPATH="{good}"', 1)
    xml = settled(d, again)
    assert num(xml, "STATE") == 1, template_dict(xml)
    source = Path(re.search(r"<SOURCE><!\[CDATA\[(.*?)\]\]>", xml).group(1))
    assert source.read_bytes() == bytes(2 * MiB)
    ok(d, "one.image.delete", oid)
    wait_for(lambda: fails(d, "one.image.info", oid))


@pytest.fixture(scope="module")
def fix_ds(d):
    """A datastore whose monitor says 8 MB are free."""
    ds = ok(d, "one.datastore.allocate", f'NAME="{unique("fix")}"\nDS_MAD="fsfix"\n'
            'TM_MAD="local"\nSAFE_DIRS="/var/tmp"', -1)
    wait_for(lambda: num(ok(d, "one.datastore.info", ds), "FREE_MB") == 8)
    return ds


def test_qcow2_inside_gzip_passes_the_capacity_check_but_not_the_copy(d, inputs, fix_ds):
    ds = fix_ds
    # plain compressed raw: STAT reports the expanded 16 MiB, which does not fit
    assert fails(d, "one.image.allocate", f'NAME="{unique()}"\nPATH="'
                 f'{zeros_gz(inputs / "sixteen.raw.gz", 16)}"', ds) == (
        "[one.image.allocate] Not enough space in datastore", 2048, -1)
    # a qcow2 header claiming 1 MiB followed by 32 MiB: STAT says 1, the copy stops at 8
    qcow = inputs / "small.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "1M"], check=True)
    bomb = inputs / "bomb.qcow2.gz"
    bomb.write_bytes(gzip.compress(qcow.read_bytes() + bytes(32 * MiB)))
    oid = ok(d, "one.image.allocate", f'NAME="{unique("qbomb")}"\nPATH="{bomb}"', ds)
    xml = settled(d, oid)
    assert (num(xml, "STATE"), num(xml, "SIZE")) == (5, 1)
    assert error_of(xml) == (
        f"Error copying image in the datastore: Image {bomb} exceeds 8 MiB, the free space "
        f"of datastore {ds} (FREE_MB); free space there and retry")
    base = d.var / "datastores" / str(ds)
    assert tree(base) == {}
    assert num(wait_state(d, ok(d, "one.image.allocate", f'NAME="{unique()}"\nPATH="'
                                f'{zeros_gz(inputs / "one.raw.gz", 1)}"', ds), 1), "SIZE") == 1


def test_an_unchecked_allocate_is_not_bounded_by_free_mb(d, inputs, fix_ds):
    # the datastore's DATASTORE_CAPACITY_CHECK is off, or oneadmin skips the check:
    # the copy may then go past FREE_MB (up to DRIVER_COPY_MAX_MB)
    src = zeros_gz(inputs / "sixteen-b.raw.gz", 16)
    oid = ok(d, "one.image.allocate", f'NAME="{unique()}"\nPATH="{src}"', fix_ds, True)
    assert num(wait_state(d, oid, 1), "SIZE") == 16
    unchecked = ok(d, "one.datastore.allocate", f'NAME="{unique("fix")}"\nDS_MAD="fsfix"\n'
                   'TM_MAD="local"\nSAFE_DIRS="/var/tmp"\nDATASTORE_CAPACITY_CHECK="NO"', -1)
    wait_for(lambda: num(ok(d, "one.datastore.info", unchecked), "FREE_MB") == 8)
    oid = ok(d, "one.image.allocate", f'NAME="{unique()}"\nPATH="{src}"', unchecked)
    assert num(wait_state(d, oid, 1), "SIZE") == 16
    bomb = zeros_gz(inputs / "bomb-b.raw.gz", 32)
    assert fails(d, "one.image.allocate", f'NAME="{unique()}"\nPATH="{bomb}"', unchecked) == (
        f"[one.image.allocate] Cannot parse image SIZE: Image {bomb} exceeds {COPY_MAX_MB} "
        "MiB, the largest copy DRIVER_COPY_MAX_MB allows (oned-images.conf); raise it there "
        "and retry", 8192, -1)


def upload(d: Daemon, data: bytes, **metadata: str) -> requests.Response:
    """A tus upload in one request (creation-with-upload)."""
    hdrs = {**TUS, **ADMIN, "Upload-Length": str(len(data)), "Upload-Metadata": meta(**metadata),
            "Content-Type": "application/offset+octet-stream"}
    return requests.post(endpoint(d), data=data, headers=hdrs, timeout=60)


def test_an_uploaded_bomb_is_measured_expanded_and_stopped(d, fix_ds):
    def staged_data() -> list[str]:
        return [name for name in staged(d) if name.endswith(".bin")]

    before = staged_data()
    bomb = gzip.compress(bytes(64 * MiB))
    reply = upload(d, bomb, name=unique("up"), datastore="1")
    # STAT measures the staged file expanded, and stops at DRIVER_COPY_MAX_MB: no image
    assert reply.status_code == 400, reply.text
    assert re.fullmatch(
        r"\[one\.image\.allocate\] Cannot parse image SIZE: Image (\S+) exceeds "
        rf"{COPY_MAX_MB} MiB, the largest copy DRIVER_COPY_MAX_MB allows \(oned-images\.conf"
        r"\); raise it there and retry\n", reply.text), reply.text
    assert "X-One-Image-Id" not in reply.headers
    wait_for(lambda: staged_data() == before)
    # a 20 MiB one fits: SIZE is what STAT measured (20), not the few KB uploaded
    reply = upload(d, gzip.compress(bytes(20 * MiB)), name=unique("up"), datastore="1")
    assert reply.status_code == 201, reply.text
    xml = wait_state(d, int(reply.headers["X-One-Image-Id"]), 1)
    assert num(xml, "SIZE") == 20
    wait_for(lambda: staged_data() == before)
    # the capacity check counts the expanded size: 16 MB do not fit in 8, although
    # the upload is a few KB (and passed the check of its Upload-Length)
    reply = upload(d, gzip.compress(bytes(16 * MiB)), name=unique("up"),
                   datastore=str(fix_ds))
    assert (reply.status_code, reply.text) == (
        507, "[one.image.allocate] Not enough space in datastore\n")
    assert "X-One-Image-Id" not in reply.headers
    assert staged_data() == before
    # a plain upload keeps its size
    reply = upload(d, os.urandom(MiB + 1), name=unique("up"), datastore=str(fix_ds))
    assert reply.status_code == 201, reply.text
    xml = wait_state(d, int(reply.headers["X-One-Image-Id"]), 1)
    assert num(xml, "SIZE") == 2
