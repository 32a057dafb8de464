"""GET /api/progress: bytes done and total of a LOCKED image's copy (issue 11)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from tests.e2e.test_uploads import ADMIN, basic
from tests.support.daemon import wait_for

pytestmark = pytest.mark.timeout(120)
MB = 1 << 20


@pytest.fixture
def slow_source():
    base = Path("/var/tmp") / f"oned-images-progress-{os.getpid()}"
    base.mkdir(parents=True, exist_ok=True)
    path = base / "disk.raw"
    path.write_bytes(os.urandom(7 * MB))
    yield path
    path.unlink()
    base.rmdir()


def progress(daemon, auth):
    return requests.get(f"http://127.0.0.1:{daemon.port}/api/progress", headers=auth,
                        timeout=10)


def test_progress_of_a_slow_copy(daemon, one, make_user, slow_source):
    name = f"watcher-{os.getpid()}"
    make_user(name, "pw")
    # LIMIT_TRANSFER_BW: 1 MB/s, so the 7 MB copy takes about 7 s
    iid = one.image.allocate(f'NAME="slow-copy"\nPATH="{slow_source}"\n'
                             'LIMIT_TRANSFER_BW="1m"\nTYPE="DATABLOCK"', 1)

    def midway():
        reply = progress(daemon, ADMIN).json()
        rec = reply.get(str(iid))
        return rec if rec and 0 < rec["done"] < rec["total"] else None
    rec = wait_for(midway, timeout=30)
    assert one.image.info(iid).STATE == 4   # LOCKED while it copies
    assert (rec["action"], rec["total"]) == ("cp", 7 * MB)
    assert 0.3 * MB < rec["rate"] < 3 * MB
    assert rec["eta"] == pytest.approx((rec["total"] - rec["done"]) / rec["rate"], rel=0.05)
    # another user may not USE the image: sees nothing of it
    other = progress(daemon, basic(name, "pw"))
    assert (other.status_code, other.json(), other.headers["Content-Type"]) == (
        200, {}, "application/json")
    refused = progress(daemon, basic(name, "wrong"))
    assert (refused.status_code, refused.headers["WWW-Authenticate"]) == (
        401, 'Basic realm="OpenNebula"')
    wait_for(lambda: one.image.info(iid).STATE == 1, timeout=60)
    assert str(iid) not in progress(daemon, ADMIN).json()
    # the log tells rate and ETA every few seconds
    log = daemon.log_text()
    assert f"cp for image {iid}: " in log and " MB/s, ETA " in log
    one.image.delete(iid)
