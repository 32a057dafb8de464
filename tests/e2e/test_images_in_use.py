"""The image API while VMs use images (vms.md §1.8, api.md §2.3-§2.5, §7): refusals
with oned's texts and codes, and the IMAGE document with RUNNING_VMS and <VMS>.

The images are acquired by domain/vm_disks.acquire_disks, the function the VM verbs
call, run on the daemon's own database while the daemon is stopped (one stop for the
whole module); the daemon then serves them like any image.
"""

from __future__ import annotations

from urllib.parse import urlparse

import pytest

from oned_images.config import parse as parse_config
from oned_images.domain import vm_disks
from oned_images.model.settings import DbSettings
from oned_images.store.database import Database
from oned_images.template import Template
from tests.support.daemon import REPO, backend
from tests.support.seed import (
    edit_body,
    fails,
    info,
    num,
    ok,
    register,
    section,
    snapshot,
    snapshots,
    wait_settled,
)

CONFIG = parse_config((REPO / "etc" / "oned-images.conf").read_text())


def run_on_daemon_db(daemon, fn):
    """``fn()`` in one transaction of the daemon's database, the daemon stopped."""
    daemon.stop()
    try:
        url = backend()
        if url == "sqlite":
            settings = DbSettings(backend="sqlite", path=str(daemon.var / "one.db"))
        else:
            u = urlparse(url)
            settings = DbSettings(backend="postgresql", server=u.hostname or "localhost",
                                  port=u.port or 5432, user=u.username or "postgres",
                                  passwd=u.password or "", db_name=daemon.pg_db)
        db = Database(None, settings)
        try:
            return db.run_sync(fn)
        finally:
            db.db.close()
    finally:
        daemon.start()


@pytest.fixture(scope="module")
def used(daemon, ds):
    """Images put in use by VMs 10, 11, 12 (VM ids need no VM rows on the image side)."""
    ids = {
        "np": register(daemon, ds, "np-used"),
        "np2": register(daemon, ds, "np-two-vms"),
        "p": register(daemon, ds, "p-used", extra='PERSISTENT="YES"\n'),
        "perr": register(daemon, ds, "p-error", extra='PERSISTENT="YES"\n'),
        "free": register(daemon, ds, "np-released"),
    }
    edit_body(daemon, ids["p"], SNAPSHOTS=snapshots(snapshot(0, active=True)))
    plan = [(10, ids["np"]), (10, ids["np2"]), (11, ids["np2"]), (10, ids["p"]),
            (12, ids["perr"]), (10, ids["free"])]

    def acquire_all() -> None:
        for vm_id, iid in plan:
            tmpl = Template.parse(f'DISK=[IMAGE_ID="{iid}"]')
            vm_disks.acquire_disks(vm_id, 0, 0, tmpl, CONFIG, path="allocate")
        freed = Template.parse(f'DISK=[IMAGE_ID="{ids["free"]}"]')
        vm_disks.release_disks(10, freed, failed=False)

    run_on_daemon_db(daemon, acquire_all)
    return ids


def test_documents_of_images_in_use(daemon, used):
    np_xml = info(daemon, used["np"])  # validated against image.xsd by info()
    assert (num(np_xml, "STATE"), num(np_xml, "RUNNING_VMS")) == (2, 1)
    assert section(np_xml, "VMS") == "<VMS><ID>10</ID></VMS>"
    two = info(daemon, used["np2"])
    assert (num(two, "STATE"), num(two, "RUNNING_VMS")) == (2, 2)
    assert section(two, "VMS") == "<VMS><ID>10</ID><ID>11</ID></VMS>"
    p_xml = info(daemon, used["p"])
    assert (num(p_xml, "STATE"), num(p_xml, "RUNNING_VMS")) == (8, 1)
    free = info(daemon, used["free"])
    assert (num(free, "STATE"), num(free, "RUNNING_VMS")) == (1, 0)
    assert section(free, "VMS") == "<VMS></VMS>"
    pool = ok(daemon, "one.imagepool.info", -2, -1, -1)
    assert "<VMS><ID>10</ID><ID>11</ID></VMS>" in pool


def test_delete_refused_while_used(daemon, used):
    assert fails(daemon, "one.image.delete", used["np"], False) == (
        "[one.image.delete] Cannot delete image. There are 1 VMs using it.", 2048, -1)
    assert fails(daemon, "one.image.delete", used["np2"], False)[:2] == (
        "[one.image.delete] Cannot delete image. There are 2 VMs using it.", 2048)
    assert fails(daemon, "one.image.delete", used["p"], True)[:2] == (
        "[one.image.delete] Cannot delete image. There are 1 VMs using it.", 2048)
    assert num(info(daemon, used["np"]), "STATE") == 2


def test_persistent_refused_while_used(daemon, used):
    assert fails(daemon, "one.image.persistent", used["np"], True)[:2] == (
        "[one.image.persistent] Could not make image persistent: Image cannot be in state "
        "USED.", 8192)
    # USED_PERS prints USED; with snapshots the snapshot rule answers first
    assert fails(daemon, "one.image.persistent", used["perr"], False)[:2] == (
        "[one.image.persistent] Could not make image non-persistent: Image cannot be in "
        "state USED.", 8192)
    assert fails(daemon, "one.image.persistent", used["p"], False)[:2] == (
        "[one.image.persistent] Could not make image non-persistent: Image has snapshots.",
        8192)
    # the same flag is a success with nothing checked
    assert ok(daemon, "one.image.persistent", used["np"], False) == used["np"]


@pytest.mark.parametrize("method,verb", [("one.image.snapshotdelete", "delete snapshot"),
                                         ("one.image.snapshotrevert", "revert to snapshot"),
                                         ("one.image.snapshotflatten", "flatten snapshot")])
def test_snapshot_calls_refused_while_used(daemon, used, method, verb):
    assert fails(daemon, method, used["p"], 0)[:2] == (
        f"[{method}] Cannot {verb} in state USED", 2048)


def test_clone_of_used_images(daemon, used):
    assert fails(daemon, "one.image.clone", used["perr"], "c-of-used-pers", -1)[:2] == (
        "[one.image.clone] Error allocating a new image. Cannot clone image in state: USED",
        16384)
    new = ok(daemon, "one.image.clone", used["np"], "c-of-used", -1)
    wait_settled(daemon, new)
    src = info(daemon, used["np"])
    assert (num(src, "STATE"), num(src, "RUNNING_VMS"), num(src, "CLONING_OPS")) == (2, 1, 0)


def test_enable_disable_refused_while_used(daemon, used):
    assert fails(daemon, "one.image.enable", used["np"], False)[:2] == (
        "[one.image.enable] Could not disable image: Image cannot be in state USED.", 8192)
    assert fails(daemon, "one.image.enable", used["p"], True)[:2] == (
        "[one.image.enable] Could not enable image: Image cannot be in state USED.", 8192)


def test_chtype_allowed_while_used(daemon, used):
    assert ok(daemon, "one.image.chtype", used["np2"], "DATABLOCK") == used["np2"]
    xml = info(daemon, used["np2"])
    assert (num(xml, "TYPE"), num(xml, "STATE"), num(xml, "RUNNING_VMS")) == (2, 2, 2)


def test_enable_of_error_image_with_vms(daemon, used):
    """ERROR with a VM still listed (a copy failed while it waited): enable gives it back
    to the VM as USED_PERS (api.md §2.4, vms.md §1.8)."""
    edit_body(daemon, used["perr"], STATE="5")
    assert ok(daemon, "one.image.enable", used["perr"], True) == used["perr"]
    xml = info(daemon, used["perr"])
    assert (num(xml, "STATE"), num(xml, "RUNNING_VMS")) == (8, 1)
    assert section(xml, "VMS") == "<VMS><ID>12</ID></VMS>"


def test_released_image_is_usable_again(daemon, used):
    assert ok(daemon, "one.image.persistent", used["free"], True) == used["free"]
    assert ok(daemon, "one.image.enable", used["free"], False) == used["free"]
    assert num(info(daemon, used["free"]), "STATE") == 3


def test_image_only_vms_use_is_an_orphan(daemon, used):
    """``oneimage orphans`` reads imagepool and templatepool only (vms.md §4.10): an image
    that VMs use but no template names is an orphan, as with the Ruby CLI against oned;
    one named by a template's IMAGE_ID is not."""
    import re

    from oned_images.domain.templates import orphan_check_refs

    ok(daemon, "one.template.allocate", f'NAME="uses-np"\nDISK=[IMAGE_ID="{used["np"]}"]')
    images = ok(daemon, "one.imagepool.info", -2, -1, -1)
    bodies = re.findall(r"<VMTEMPLATE>.*?</VMTEMPLATE>",
                        ok(daemon, "one.templatepool.info", -2, -1, -1))
    ids, pairs = orphan_check_refs(bodies)
    orphans = [int(i) for i, uname, name, itype in re.findall(
        r"<IMAGE><ID>(\d+)</ID><UID>\d+</UID><GID>\d+</GID><UNAME>([^<]*)</UNAME>"
        r"<GNAME>[^<]*</GNAME><NAME>([^<]*)</NAME>.*?<TYPE>(\d+)</TYPE>", images)
        if itype != "6" and int(i) not in ids and (name, uname) not in pairs]
    assert used["np2"] in orphans and used["p"] in orphans  # only VMs use them
    assert used["np"] not in orphans
