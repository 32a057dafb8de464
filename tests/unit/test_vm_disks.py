"""The image side of VMs (domain/vm_disks.py) inside real database transactions.

Each test gets a bootstrapped database (users, ACLs, datastores 0/1/2 as a fresh
install) on SQLite in a temporary file, or on PostgreSQL (a database of its own) when
ONED_TEST_DB names a server: the functions run exactly as the VM verbs run them, inside
``Database.run_sync``'s transaction, and a refusal rolls the transaction back.
"""

from __future__ import annotations

import re
import threading
import uuid
from urllib.parse import urlparse

import pytest

from oned_images import errors
from oned_images.config import parse as parse_config
from oned_images.domain import vm_disks
from oned_images.domain.datastores import bootstrap_datastores
from oned_images.domain.identity import _insert_user, bootstrap_identity
from oned_images.domain.images import insert_image, read_image, write_image
from oned_images.domain.permissions import Caller
from oned_images.domain.snapshots import new_list
from oned_images.domain.states import ImageState as S
from oned_images.domain.states import ImageType
from oned_images.domain.templates import referenced_image_ids
from oned_images.model.objects import Image, Lock, Permissions, User
from oned_images.model.settings import DbSettings
from oned_images.store import pools, schema
from oned_images.store.database import Database
from oned_images.store.models import ImageRow, PoolControl
from oned_images.template import Template
from oned_images.xmldoc.image import image_xml
from tests.support.daemon import REPO, _pg_admin, backend
from tests.support.xsd import validate

#: the shipped configuration, as the daemon reads it (TM_MAD_CONF: what datastores inherit)
CONFIG = parse_config((REPO / "etc" / "oned-images.conf").read_text())
ALICE, BOB = 2, 3
ADMIN = Caller(0, 0, frozenset({0}), "oneadmin", "oneadmin")


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory):
    url = backend()
    pg_name = None
    if url == "sqlite":
        settings = DbSettings(backend="sqlite",
                              path=str(tmp_path_factory.mktemp("vmdisks") / "one.db"))
    else:
        u = urlparse(url)
        pg_name = "oned_vmdisks_" + uuid.uuid4().hex[:12]
        _pg_admin(url, f'CREATE DATABASE "{pg_name}"')
        settings = DbSettings(backend="postgresql", server=u.hostname or "localhost",
                              port=u.port or 5432, user=u.username or "postgres",
                              passwd=u.password or "", db_name=pg_name)
    database = Database(None, settings)
    database.run_sync(schema.create, database.db)
    database.run_sync(bootstrap_identity, "oneadmin", "pw", "secret")
    database.run_sync(bootstrap_datastores, CONFIG)

    def users() -> None:
        for name in ("alice", "bob"):
            _insert_user(User(id=-1, gid=1, groups=[1], gname="users", name=name,
                              password="x"))

    database.run_sync(users)
    yield database
    database.db.close()
    if pg_name:
        _pg_admin(url, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


@pytest.fixture
def db(bootstrapped):
    """The module's database without images (ids from 0 again), for each test."""

    def clear() -> None:
        ImageRow.delete().execute()
        PoolControl.update(last_oid=-1).where(PoolControl.tablename == "image_pool").execute()

    bootstrapped.run_sync(clear)
    return bootstrapped


def add_image(db: Database, name: str, *, uid: int = 0, itype: ImageType = ImageType.OS,
              persistent: bool = False, state: S = S.READY, size: int = 2252,
              fmt: str = "qcow2", ds: int = 1, template: str = 'DEV_PREFIX="sd"',
              perms: list[int] | None = None) -> int:
    uname = {0: "oneadmin", ALICE: "alice", BOB: "bob"}[uid]

    def txn() -> int:
        img = Image(id=pools.next_oid("image_pool", 0), uid=uid, gid=0 if uid == 0 else 1,
                    uname=uname, gname="oneadmin" if uid == 0 else "users", name=name,
                    perms=Permissions(perms or [1, 1, 0, 0, 0, 0, 0, 0, 0]),
                    type=int(itype), persistent=int(persistent), regtime=1, modtime=1,
                    source=f"/var/lib/one//datastores/{ds}/{name}", format=fmt, size=size,
                    state=int(state), datastore_id=ds,
                    datastore={0: "system", 1: "default", 2: "files"}[ds],
                    template=Template.parse(template), snapshots=new_list())
        insert_image(img)
        return img.id

    return db.run_sync(txn)


def image(db: Database, oid: int) -> Image:
    return db.run_sync(read_image, oid, False)


def acquire(db: Database, vm_id: int, text: str, *, uid: int = 0, gid: int = 0,
            path: str = "allocate") -> tuple[Template, list[int]]:
    tmpl = Template.parse(text, replace_mode=False)
    ids = db.run_sync(lambda: vm_disks.acquire_disks(vm_id, uid, gid, tmpl, CONFIG,
                                                     path=path))
    return tmpl, ids


def refused(db: Database, vm_id: int, text: str, **kw) -> errors.OneError:
    with pytest.raises(errors.OneError) as info:
        acquire(db, vm_id, text, **kw)
    return info.value


def release(db: Database, vm_id: int, tmpl: Template, failed: bool = False) -> None:
    db.run_sync(lambda: vm_disks.release_disks(vm_id, tmpl, failed=failed))


def wire(err: errors.OneError, method: str = "one.vm.allocate") -> tuple[str, int]:
    """The failure as the client reads it (message, code)."""
    return err.message(method, 0, "virtual machine"), int(err.code)


def disk(tmpl: Template, n: int = 0) -> dict[str, str]:
    return [d for d in tmpl.get_all("DISK") if isinstance(d, dict)][n]


# ------------------------------------------------------------------ §2.10, seed template
SECTION_2_10 = {
    "ALLOW_ORPHANS": "FORMAT", "DISK_TYPE": "FILE", "PERSISTENT_SNAPSHOTS": "YES",
    "CLONE": "YES", "CLONE_TARGET": "SYSTEM", "CLUSTER_ID": "0", "DATASTORE": "default",
    "DATASTORE_ID": "1", "DEV_PREFIX": "sd", "DISK_ID": "0", "DISK_SNAPSHOT_TOTAL_SIZE": "0",
    "DRIVER": "qcow2", "FORMAT": "qcow2", "IMAGE": "ubuntu", "IMAGE_ID": "0",
    "IMAGE_STATE": "2", "LN_TARGET": "SYSTEM", "ORIGINAL_SIZE": "2252", "READONLY": "NO",
    "SAVE": "NO", "SIZE": "2252", "SOURCE": "/var/lib/one//datastores/1/ubuntu",
    "TARGET": "sda", "TM_MAD": "local", "TYPE": "FILE",
}


def test_seed_template_resolves_as_section_2_10(db):
    ubuntu = add_image(db, "ubuntu")
    data = add_image(db, "data", uid=ALICE, itype=ImageType.DATABLOCK, fmt="raw", size=10)
    tmpl, ids = acquire(db, 7, 'DISK=[IMAGE_ID="0"]\n'
                               'DISK=[IMAGE="data",IMAGE_UNAME="alice"]\n'
                               'DISK=[TYPE="swap",SIZE="1024"]\nMEMORY="64"')
    assert ids == [ubuntu, data]
    assert disk(tmpl, 0) == SECTION_2_10
    assert disk(tmpl, 1) == {
        "ALLOW_ORPHANS": "FORMAT", "DISK_TYPE": "FILE", "PERSISTENT_SNAPSHOTS": "YES",
        "IMAGE": "data", "IMAGE_UNAME": "alice", "IMAGE_ID": str(data),
        "CLONE": "YES", "CLONE_TARGET": "SYSTEM", "CLUSTER_ID": "0", "DATASTORE": "default",
        "DATASTORE_ID": "1", "DEV_PREFIX": "sd", "DISK_ID": "1",
        "DISK_SNAPSHOT_TOTAL_SIZE": "0", "DRIVER": "raw", "FORMAT": "raw",
        "IMAGE_STATE": "2", "LN_TARGET": "SYSTEM", "ORIGINAL_SIZE": "10", "READONLY": "NO",
        "SAVE": "NO", "SIZE": "10", "SOURCE": "/var/lib/one//datastores/1/data",
        "TARGET": "sdb", "TM_MAD": "local", "TYPE": "FILE"}
    # a volatile disk holds only what the user wrote + DEV_PREFIX, DISK_ID, TARGET
    assert disk(tmpl, 2) == {"TYPE": "swap", "SIZE": "1024", "DEV_PREFIX": "sd",
                             "DISK_ID": "2", "TARGET": "sdc"}
    assert tmpl.get("MEMORY") == "64"
    assert re.fullmatch(r"[0-9a-f-]{36}", tmpl.get_vector("OS")["UUID"])
    for oid in (ubuntu, data):
        img = image(db, oid)
        assert (img.state, img.running_vms, img.vms) == (S.USED, 1, [7])
        validate(image_xml(img))


def test_persistent_disk_attributes(db):
    add_image(db, "ubuntu", persistent=True)
    tmpl, _ = acquire(db, 1, 'DISK=[IMAGE_ID="0"]')
    expected = {**SECTION_2_10, "CLONE": "NO", "PERSISTENT": "YES",
                "SAVE": "YES", "IMAGE_STATE": "8"}
    assert disk(tmpl) == expected
    assert image(db, 0).state == S.USED_PERS


# ------------------------------------------------------------------ acquire matrix
MATRIX = [
    # state, persistent, shareable, create result, attach result
    (S.READY, False, False, S.USED, S.USED),
    (S.READY, True, False, S.USED_PERS, S.USED_PERS),
    (S.USED, False, False, S.USED, S.USED),
    (S.USED_PERS, True, False, "persistent", "persistent"),
    (S.USED_PERS, True, True, S.USED_PERS, S.USED_PERS),
    (S.LOCKED, False, False, S.LOCKED_USED, "locked"),
    (S.LOCKED, True, False, S.LOCKED_USED_PERS, "locked"),
    (S.LOCKED_USED, False, False, S.LOCKED_USED, "locked"),
    (S.LOCKED_USED_PERS, True, False, "persistent", "persistent"),
    (S.LOCKED_USED_PERS, True, True, S.LOCKED_USED_PERS, "locked"),
    (S.INIT, False, False, "INIT", "INIT"),
    (S.DISABLED, False, False, "DISABLED", "DISABLED"),
    (S.ERROR, True, False, "ERROR", "ERROR"),
    (S.DELETE, False, False, "DELETE", "DELETE"),
    (S.CLONE, True, False, "CLONE", "CLONE"),
]


@pytest.mark.parametrize("path", ["allocate", "attach"])
@pytest.mark.parametrize("state,persistent,shareable,create,attach", MATRIX)
def test_acquire_matrix(db, path, state, persistent, shareable, create, attach):
    extra = '\nPERSISTENT_TYPE="shareable"' if shareable else ""
    oid = add_image(db, "img", persistent=persistent, state=state,
                    template='DEV_PREFIX="sd"' + extra, fmt="raw")
    already = state in (S.USED, S.USED_PERS, S.LOCKED_USED, S.LOCKED_USED_PERS)
    if already:  # VM 1 holds it already
        def hold() -> None:
            img = read_image(oid)
            img.vms, img.running_vms = [1], 1
            write_image(img)
        db.run_sync(hold)
    before = image_xml(image(db, oid))
    wanted = create if path == "allocate" else attach
    text = 'DISK=[IMAGE_ID="0"]'
    if path == "attach":
        text = 'DISK=[IMAGE_ID="9",DISK_ID="0",TARGET="sda"]\n' + text
    if isinstance(wanted, S):
        tmpl, ids = acquire(db, 5, text, path=path)
        img = image(db, oid)
        assert ids == [oid]
        assert img.state == wanted
        assert img.vms == ([1, 5] if already else [5])
        assert img.running_vms == len(img.vms)
        new = [d for d in tmpl.get_all("DISK") if d.get("IMAGE_ID") == "0"][0]
        assert new["IMAGE_STATE"] == str(int(wanted))
        assert ("CLONING" in new) == (wanted in (S.LOCKED_USED, S.LOCKED_USED_PERS))
        if path == "attach":
            assert (new["DISK_ID"], new["TARGET"]) == ("1", "sdb")
        validate(image_xml(img))
        return
    err = refused(db, 5, text, path=path)
    text_of = {"persistent": f"Cannot acquire image {oid}, it is persistent and already in use",
               "locked": f"Cannot acquire image {oid}, it is locked"}
    detail = text_of.get(wanted, f"Cannot acquire image {oid}, it is in state: {wanted}")
    if path == "attach":
        assert wire(err, "one.vm.attach") == (f"[one.vm.attach] {detail}", 0x0800)
    else:
        assert wire(err) == (f"[one.vm.allocate] DISK 0: {detail}", 0x2000)
    assert image_xml(image(db, oid)) == before  # rolled back: nothing written


def test_error_codes_and_texts_per_path(db):
    add_image(db, "p", persistent=True, state=S.USED_PERS)
    text = 'DISK=[IMAGE_ID="0"]'
    detail = "Cannot acquire image 0, it is persistent and already in use"
    assert wire(refused(db, 3, text)) == (f"[one.vm.allocate] DISK 0: {detail}", 8192)
    err = refused(db, 3, text, path="instantiate")
    assert wire(err, "one.template.instantiate") == (
        "[one.template.instantiate] Error allocating a new virtual machine template. "
        f"DISK 0: {detail}", 16384)


def test_one_vm_two_disks_same_image(db):
    add_image(db, "np")
    add_image(db, "p", persistent=True)
    tmpl, ids = acquire(db, 4, 'DISK=[IMAGE_ID="0"]\nDISK=[IMAGE_ID="0"]')
    assert ids == [0, 0]
    img = image(db, 0)
    assert (img.running_vms, img.vms) == (1, [4])
    assert [disk(tmpl, n)["TARGET"] for n in (0, 1)] == ["sda", "sdb"]
    err = refused(db, 5, 'DISK=[IMAGE_ID="1"]\nDISK=[IMAGE_ID="1"]')
    assert wire(err)[0] == ("[one.vm.allocate] DISK 1: Cannot acquire image 1, it is "
                            "persistent and already in use")
    assert image(db, 1).state == S.READY


def test_two_vms_then_release(db):
    add_image(db, "np")
    t1, _ = acquire(db, 1, 'DISK=[IMAGE_ID="0"]')
    t2, _ = acquire(db, 2, 'DISK=[IMAGE_ID="0"]')
    img = image(db, 0)
    assert (img.state, img.running_vms, img.vms) == (S.USED, 2, [1, 2])
    release(db, 1, t1)
    img = image(db, 0)
    assert (img.state, img.running_vms, img.vms) == (S.USED, 1, [2])
    release(db, 2, t2, failed=True)  # failed is ignored for non-persistent images
    img = image(db, 0)
    assert (img.state, img.running_vms, img.vms) == (S.READY, 0, [])
    validate(image_xml(img))


@pytest.mark.parametrize("failed,state", [(False, S.READY), (True, S.ERROR)])
def test_release_persistent(db, failed, state):
    add_image(db, "p", persistent=True)
    tmpl, _ = acquire(db, 1, 'DISK=[IMAGE_ID="0",SIZE="2252"]')
    before = image(db, 0)
    assert before.snapshots.to_xml("SNAPSHOTS").startswith("<SNAPSHOTS><ALLOW_ORPHANS>")
    release(db, 1, tmpl, failed=failed)
    img = image(db, 0)
    assert (img.state, img.running_vms, img.vms) == (state, 0, [])
    assert img.modtime > 1
    # no snapshot list on the disk: the image's list is cleared (QUIRK, vms.md §1.5)
    assert img.snapshots.to_xml("SNAPSHOTS") == "<SNAPSHOTS></SNAPSHOTS>"
    assert "ERROR" not in img.template


def test_release_writes_back_size_and_snapshots(db):
    add_image(db, "p", persistent=True, size=100)

    def snaps() -> None:
        img = read_image(0)
        img.snapshots = Template.parse(
            'ALLOW_ORPHANS="NO"\nCURRENT_BASE="-1"\nNEXT_SNAPSHOT="1"\n'
            'SNAPSHOT=[ID="0",DATE="5",PARENT="-1",SIZE="100",ACTIVE="YES",NAME="s"]',
            replace_mode=False)
        write_image(img)

    db.run_sync(snaps)
    tmpl, _ = acquire(db, 1, 'DISK=[IMAGE_ID="0"]')
    assert disk(tmpl)["DISK_SNAPSHOT_TOTAL_SIZE"] == "100"
    xml = db.run_sync(vm_disks.disk_snapshots_xml, tmpl)
    assert xml == ("<SNAPSHOTS><ALLOW_ORPHANS><![CDATA[NO]]></ALLOW_ORPHANS>"
                   "<CURRENT_BASE><![CDATA[-1]]></CURRENT_BASE><DISK_ID><![CDATA[0]]></DISK_ID>"
                   "<NEXT_SNAPSHOT><![CDATA[1]]></NEXT_SNAPSHOT><SNAPSHOT>"
                   "<ACTIVE><![CDATA[YES]]></ACTIVE><DATE><![CDATA[5]]></DATE>"
                   "<ID><![CDATA[0]]></ID><NAME><![CDATA[s]]></NAME>"
                   "<PARENT><![CDATA[-1]]></PARENT><SIZE><![CDATA[100]]></SIZE></SNAPSHOT>"
                   "</SNAPSHOTS>")
    disk(tmpl)["SIZE"] = "150"  # the disk was resized while the VM ran
    before = image(db, 0).snapshots
    release(db, 1, tmpl)
    img = image(db, 0)
    assert (img.state, img.size) == (S.READY, 150)
    assert img.snapshots == before  # copied back without DISK_ID


def test_release_of_non_persistent_writes_nothing_back(db):
    add_image(db, "np", size=100)
    tmpl, _ = acquire(db, 1, 'DISK=[IMAGE_ID="0",SIZE="300"]')
    assert (disk(tmpl)["SIZE"], disk(tmpl)["ORIGINAL_SIZE"]) == ("300", "100")
    release(db, 1, tmpl)
    img = image(db, 0)
    assert (img.state, img.size) == (S.READY, 100)
    assert img.snapshots == new_list()


def test_release_in_wrong_state_keeps_vms(db):
    """A copy that failed while a VM waited: ERROR keeps the VM id (QUIRK §1.4)."""
    add_image(db, "locked", state=S.LOCKED)
    tmpl, _ = acquire(db, 3, 'DISK=[IMAGE_ID="0"]')
    assert disk(tmpl)["CLONING"] == "YES"

    def copy_failed() -> None:
        img = read_image(0)
        img.state = int(S.ERROR)
        write_image(img)

    db.run_sync(copy_failed)
    release(db, 3, tmpl)
    img = image(db, 0)
    assert (img.state, img.running_vms, img.vms) == (S.ERROR, 1, [3])


def test_locked_used_release_goes_back_to_locked(db):
    add_image(db, "locked", state=S.LOCKED, persistent=True)
    tmpl, _ = acquire(db, 3, 'DISK=[IMAGE_ID="0"]')
    assert image(db, 0).state == S.LOCKED_USED_PERS
    release(db, 3, tmpl)
    assert image(db, 0).state == S.LOCKED


def test_acquire_clears_user_lock_on_state_change(db):
    add_image(db, "np")

    def lock() -> None:
        img = read_image(0)
        img.lock = Lock(1, 0, 5, 0)
        write_image(img)

    db.run_sync(lock)
    acquire(db, 1, 'DISK=[IMAGE_ID="0"]')
    assert image(db, 0).lock is None


# ------------------------------------------------------------------ rollback
@pytest.mark.parametrize("bad,expected", [
    ('DISK=[IMAGE_ID="1"]', "DISK {n}: Cannot acquire image 1, it is persistent and already "
                            "in use"),
    ('DISK=[IMAGE_ID="77"]', "DISK {n}: Image with ID: 77 does not exist"),
    ('DISK=[TYPE="cdrom"]', "DISK {n}: Unknown disk type CDROM"),
    ('DISK=[IMAGE_ID="0",TARGET="sda"]', "Two disks have defined the same target sda"),
])
@pytest.mark.parametrize("n", [1, 2])
def test_failure_rolls_back_every_acquire(db, bad, expected, n):
    add_image(db, "np")
    add_image(db, "p", persistent=True, state=S.USED_PERS)
    add_image(db, "p2", persistent=True)
    good = ['DISK=[IMAGE_ID="0",TARGET="sda"]', 'DISK=[IMAGE_ID="2"]']
    disks = good[:n] + [bad]
    before = [image_xml(image(db, i)) for i in range(3)]
    err = refused(db, 9, "\n".join(disks))
    assert wire(err)[0] == "[one.vm.allocate] " + expected.format(n=n)
    assert [image_xml(image(db, i)) for i in range(3)] == before
    assert image(db, 0).state == S.READY and image(db, 2).state == S.READY


def test_context_files_error_rolls_back_disks(db):
    add_image(db, "np")
    err = refused(db, 9, 'DISK=[IMAGE_ID="0"]\nCONTEXT=[FILES_DS="$FILE[IMAGE_ID=0]"]')
    assert wire(err)[0] == ("[one.vm.allocate] Only images of type CONTEXT can be used in "
                            "FILE_DS attribute.")
    assert image(db, 0).state == S.READY


# ------------------------------------------------------------------ size, types, volatile
def test_size_checks(db):
    add_image(db, "p", persistent=True, size=10)
    add_image(db, "cd", itype=ImageType.CDROM, size=10, template="")
    add_image(db, "np", size=10)
    assert wire(refused(db, 1, 'DISK=[IMAGE_ID="0",SIZE="20"]'))[0] == (
        "[one.vm.allocate] DISK 0: SIZE attribute is not supported for persistent image [0].")
    assert wire(refused(db, 1, 'DISK=[IMAGE_ID="1",SIZE="20"]'))[0] == (
        "[one.vm.allocate] DISK 0: SIZE attribute is not supported for CDROM image [1].")
    assert wire(refused(db, 1, 'DISK=[IMAGE_ID="2",SIZE="5"]'))[0] == (
        "[one.vm.allocate] DISK 0: SIZE of 5MB is less than the image [2] size of 10MB.")
    tmpl, _ = acquire(db, 1, 'DISK=[IMAGE_ID="2",SIZE="20"]')
    assert (disk(tmpl)["SIZE"], disk(tmpl)["ORIGINAL_SIZE"]) == ("20", "10")
    assert [image(db, i).state for i in range(3)] == [S.READY, S.READY, S.USED]


@pytest.mark.parametrize("itype", [ImageType.KERNEL, ImageType.RAMDISK, ImageType.CONTEXT])
def test_file_images_cannot_be_disks(db, itype):
    add_image(db, "vmlinuz", itype=itype, ds=2, template="")
    assert wire(refused(db, 1, 'DISK=[IMAGE_ID="0"]'))[0] == (
        f"[one.vm.allocate] DISK 0: Image 0 (vmlinuz) of type {itype.name} cannot be used "
        "as DISK.")


def test_volatile_disk_errors(db):
    assert wire(refused(db, 1, "DISK=[SIZE=\"1\"]"))[0] == (
        "[one.vm.allocate] DISK 0: Unknown disk type ")
    assert wire(refused(db, 1, 'DISK=[TYPE="fs",SIZE="0"]'))[0] == (
        "[one.vm.allocate] DISK 0: SIZE attribute must be a positive integer value.")
    tmpl, ids = acquire(db, 1, 'DISK=[TYPE="fs",SIZE="10",FORMAT="raw",DEV_PREFIX="vd"]')
    assert ids == []
    assert disk(tmpl) == {"TYPE": "fs", "SIZE": "10", "FORMAT": "raw", "DEV_PREFIX": "vd",
                          "DISK_ID": "0", "TARGET": "vda"}


def test_name_resolution_texts(db):
    add_image(db, "mine", uid=ALICE)
    assert wire(refused(db, 1, 'DISK=[IMAGE="mine"]', uid=BOB, gid=1))[0] == (
        "[one.vm.allocate] DISK 0: User 3 does not own an image with name: mine . Set "
        "IMAGE_UNAME or IMAGE_UID of owner in DISK.")
    assert wire(refused(db, 1, 'DISK=[IMAGE="mine",IMAGE_UNAME="nobody"]', uid=BOB))[0] == (
        "[one.vm.allocate] DISK 0: User 3 does not own an image with name: mine . Set "
        "IMAGE_UNAME or IMAGE_UID of owner in DISK.")
    tmpl, ids = acquire(db, 1, 'DISK=[IMAGE="mine",IMAGE_UID="2"]', uid=BOB, gid=1)
    assert ids == [0] and disk(tmpl)["IMAGE_UID"] == "2"


# ------------------------------------------------------------------ targets
def test_targets_os_datablock_cdrom_volatile_context(db):
    add_image(db, "os")
    add_image(db, "data", itype=ImageType.DATABLOCK, fmt="raw")
    add_image(db, "cd", itype=ImageType.CDROM, template='DEV_PREFIX="hd"', fmt="")
    tmpl, _ = acquire(db, 1, 'DISK=[IMAGE_ID="0"]\nDISK=[IMAGE_ID="1"]\nDISK=[IMAGE_ID="2"]\n'
                             'DISK=[TYPE="fs",SIZE="5"]\nCONTEXT=[NETWORK="YES"]')
    assert [disk(tmpl, n)["TARGET"] for n in range(4)] == ["sda", "sdb", "hda", "sdc"]
    cd = disk(tmpl, 2)
    assert (cd["READONLY"], cd["CLONE"], cd["SAVE"], cd["TYPE"]) == ("YES", "NO", "NO", "CDROM")
    assert "DRIVER" not in cd and "FORMAT" not in cd
    assert tmpl.get_vector("CONTEXT") == {"NETWORK": "YES", "DISK_ID": "4", "TARGET": "hdb"}


def test_targets_explicit_and_image_template(db):
    add_image(db, "os1")
    add_image(db, "os2", template='DEV_PREFIX="sd"\nTARGET="sdb"')
    tmpl, _ = acquire(db, 1, 'DISK=[IMAGE_ID="0"]\nDISK=[IMAGE_ID="1"]\nDISK=[IMAGE_ID="0",'
                             'TARGET="sda"]\nCONTEXT=[TARGET="hdc"]')
    assert [disk(tmpl, n)["TARGET"] for n in range(3)] == ["sdc", "sdb", "sda"]
    assert tmpl.get_vector("CONTEXT")["TARGET"] == "hdc"
    err = refused(db, 2, 'DISK=[IMAGE_ID="0",TARGET="hda"]\nCONTEXT=[TARGET="hda"]')
    assert wire(err)[0] == "[one.vm.allocate] Two disks have defined the same target hda"


def test_disk_counts_and_suffixes(db):
    text = "\n".join('DISK=[TYPE="fs",SIZE="1",DEV_PREFIX="hd"]' for _ in range(5))
    assert wire(refused(db, 8, text))[0] == (
        "[one.vm.allocate] Non q35 or virt VM 8 has more than 4 hd disks")
    tmpl, _ = acquire(db, 8, text + '\nOS=[MACHINE="pc-q35-8.2"]')
    assert [disk(tmpl, n)["TARGET"] for n in range(5)] == ["hda", "hdb", "hdc", "hdd", "hde"]
    text = "\n".join('DISK=[TYPE="swap",SIZE="1"]' for _ in range(28))
    tmpl, _ = acquire(db, 8, text)
    assert [disk(tmpl, n)["TARGET"] for n in (0, 25, 26, 27)] == ["sda", "sdz", "sdaa", "sdab"]
    text = "\n".join('DISK=[TYPE="swap",SIZE="1"]' for _ in range(257))
    assert wire(refused(db, 8, text))[0] == "[one.vm.allocate] VM 8 has more than 256 disks"


def test_attach_ids_targets_and_duplicates(db):
    add_image(db, "os")
    add_image(db, "data", itype=ImageType.DATABLOCK, fmt="raw")
    tmpl, _ = acquire(db, 1, 'DISK=[IMAGE_ID="0"]\nCONTEXT=[NETWORK="YES"]')
    tmpl.add("DISK", {"IMAGE_ID": "1"})
    tmpl.set("TM_MAD_SYSTEM", "local")
    ids = db.run_sync(lambda: vm_disks.acquire_disks(1, 0, 0, tmpl, CONFIG, path="attach"))
    assert ids == [1]
    new = disk(tmpl, 1)
    assert (new["DISK_ID"], new["TARGET"], new["TM_MAD_SYSTEM"]) == ("2", "sdb", "local")
    tmpl.add("DISK", {"IMAGE_ID": "0", "TARGET": "sda"})
    with pytest.raises(errors.OneError) as info:
        db.run_sync(lambda: vm_disks.acquire_disks(1, 0, 0, tmpl, CONFIG, path="attach"))
    assert wire(info.value, "one.vm.attach") == (
        "[one.vm.attach] Target sda is already in use.", 2048)


# ------------------------------------------------------------------ $FILE[...]
def test_file_kernel_initrd_context(db):
    kernel = add_image(db, "vmlinuz", itype=ImageType.KERNEL, ds=2, template="", fmt="")
    initrd = add_image(db, "initrd-6", itype=ImageType.RAMDISK, ds=2, template="", fmt="")
    ctx = add_image(db, "ctx", itype=ImageType.CONTEXT, ds=2, template="", fmt="")
    ctx2 = add_image(db, "ctx2", itype=ImageType.CONTEXT, ds=2, template="", fmt="")
    tmpl, ids = acquire(db, 1, 'OS=[KERNEL="/boot/x",KERNEL_DS="$FILE[IMAGE_ID=0]",'
                               'INITRD_DS="  $FILE[IMAGE=\\"initrd-6\\"]"]\n'
                               'CONTEXT=[FILES_DS="$FILE[IMAGE=ctx]$FILE[IMAGE=ctx2, '
                               'IMAGE_UNAME=oneadmin]"]')
    assert ids == []
    os_vec = dict(tmpl.get_vector("OS"))
    assert re.fullmatch(r"[0-9a-f-]{36}", os_vec.pop("UUID"))
    assert os_vec == {
        "KERNEL_DS": "$FILE[IMAGE_ID=0]", "KERNEL_DS_ID": str(kernel),
        "KERNEL_DS_SOURCE": "/var/lib/one//datastores/2/vmlinuz", "KERNEL_DS_DSID": "2",
        "KERNEL_DS_TM": "local", "KERNEL_DS_CLUSTER_ID": "0",
        "INITRD_DS": '  $FILE[IMAGE="initrd-6"]', "INITRD_DS_ID": str(initrd),
        "INITRD_DS_SOURCE": "/var/lib/one//datastores/2/initrd-6", "INITRD_DS_DSID": "2",
        "INITRD_DS_TM": "local", "INITRD_DS_CLUSTER_ID": "0"}
    assert tmpl.get_vector("CONTEXT")["FILES_DS"] == (
        "/var/lib/one//datastores/2/ctx:'ctx' /var/lib/one//datastores/2/ctx2:'ctx2' ")
    # no acquire: the images stay READY with no VM
    for oid in (kernel, initrd, ctx, ctx2):
        img = image(db, oid)
        assert (img.state, img.running_vms, img.vms) == (S.READY, 0, [])


@pytest.mark.parametrize("os_text,expected", [
    ('KERNEL_DS="$FILE[IMAGE_ID=1]"', "KERNEL needs an image of type KERNEL and not OS"),
    ('INITRD_DS="$FILE[IMAGE_ID=0]"', "INITRD needs an image of type RAMDISK and not KERNEL"),
    ('KERNEL_DS="$FILE[IMAGE_ID=2]"', "KERNEL Image '2 'not in READY state."),
    ('KERNEL_DS="$FILE[IMAGE_ID=0]$FILE[IMAGE_ID=0]"',
     "Only one FILE variable can be used in: $FILE[IMAGE_ID=0]$FILE[IMAGE_ID=0]"),
    ('KERNEL_DS="$FILE[IMAGE=vm_rd]"', "Error parsing: $FILE[IMAGE=vm_rd]. syntax error, "
     "unexpected VARIABLE, expecting COMMA or CBRACKET at line 0, columns 15:18"),
    ('KERNEL_DS="$FILE[IMAGE_ID=99]"', "Error parsing: $FILE[IMAGE_ID=99]. Image with ID: 99 "
     "does not exist"),
    ('KERNEL_DS="$FILE[IMAGE=nope]"', "Error parsing: $FILE[IMAGE=nope]. User 0 does not own "
     "an image with name: nope . Set IMAGE_UNAME or IMAGE_UID of owner."),
    ('KERNEL_DS="$FILE[NAME=x]"', "Error parsing: $FILE[NAME=x]. Cannot get image, set "
     "IMAGE_ID or IMAGE."),
    ('KERNEL_DS="$DISK[IMAGE_ID=0]"', "Error parsing: $DISK[IMAGE_ID=0]. Must use FILE "
     "variable for attribute."),
])
def test_file_errors(db, os_text, expected):
    add_image(db, "vmlinuz", itype=ImageType.KERNEL, ds=2, template="", fmt="")
    add_image(db, "os")
    add_image(db, "k2", itype=ImageType.KERNEL, ds=2, template="", fmt="", state=S.LOCKED)
    err = refused(db, 1, f"OS=[{os_text}]")
    assert wire(err) == (f"[one.vm.allocate] {expected}", 8192)
    err = refused(db, 1, f"OS=[{os_text}]", path="instantiate")
    assert wire(err, "one.template.instantiate") == (
        "[one.template.instantiate] Error allocating a new virtual machine template. "
        f"{expected}", 16384)


def test_file_needs_use_of_the_vm_owner(db):
    add_image(db, "vmlinuz", itype=ImageType.KERNEL, ds=2, template="", fmt="", uid=ALICE)
    add_image(db, "ctx", itype=ImageType.CONTEXT, ds=2, template="", fmt="", uid=ALICE,
              state=S.DISABLED, perms=[1, 1, 0, 1, 0, 0, 0, 0, 0])
    err = refused(db, 1, 'OS=[KERNEL_DS="$FILE[IMAGE=vmlinuz,IMAGE_UID=2]"]', uid=BOB, gid=1)
    assert wire(err)[0] == ("[one.vm.allocate] Error parsing: $FILE[IMAGE=vmlinuz,IMAGE_UID=2]."
                            " User not authorize to use image.")
    err = refused(db, 1, 'CONTEXT=[FILES_DS="$FILE[IMAGE=ctx,IMAGE_UNAME=alice]"]', uid=BOB,
                  gid=1)
    assert wire(err)[0] == "[one.vm.allocate] CONTEXT Image '1' not in READY state."
    err = refused(db, 1, 'OS=[A="1"]\nOS=[B="2"]')
    assert wire(err)[0] == "[one.vm.allocate] Only one OS attribute can be defined."


# ------------------------------------------------------------------ authorization
def test_authorize_disks(db):
    add_image(db, "mine", uid=ALICE)
    add_image(db, "shared", uid=ALICE, perms=[1, 1, 0, 1, 0, 0, 0, 0, 0])
    add_image(db, "own", uid=BOB)
    bob = Caller(BOB, 1, frozenset({1}), "bob", "users")
    tmpl = Template.parse('DISK=[IMAGE_ID="0"]\nDISK=[IMAGE="shared",IMAGE_UNAME="alice"]\n'
                          'DISK=[IMAGE="own",IMAGE_ID="0"]\nDISK=[IMAGE="nope"]\n'
                          'DISK=[TYPE="swap",SIZE="1"]\nDISK=[IMAGE_ID="55"]',
                          replace_mode=False)
    with pytest.raises(errors.OneError) as info:
        db.run_sync(vm_disks.authorize_disks, bob, tmpl, CONFIG)
    assert wire(info.value)[0] == ("[one.vm.allocate] User [0] : Not authorized to perform "
                                   "USE IMAGE [0].")
    # IMAGE wins over IMAGE_ID and is written into the DISK (QUIRK §2.1)
    assert disk(tmpl, 2)["IMAGE_ID"] == "2" and disk(tmpl, 1)["IMAGE_ID"] == "1"
    db.run_sync(vm_disks.authorize_disks, ADMIN, tmpl, CONFIG)
    ok = Template.parse('DISK=[IMAGE="shared",IMAGE_UID="2"]\nDISK=[IMAGE="own"]',
                        replace_mode=False)
    db.run_sync(vm_disks.authorize_disks, bob, ok, CONFIG)


def test_authorize_disks_object_lock(db):
    add_image(db, "np")

    def lock() -> None:
        img = read_image(0)
        img.lock = Lock(1, 0, 5, 0)
        write_image(img)

    db.run_sync(lock)
    tmpl = Template.parse('DISK=[IMAGE_ID="0"]')
    with pytest.raises(errors.OneError) as info:
        db.run_sync(vm_disks.authorize_disks, ADMIN, tmpl, CONFIG)
    assert wire(info.value)[0] == "[one.vm.allocate] User [0] : IMAGE is locked. [0]."
    cloning = Template.parse('DISK=[IMAGE_ID="0",CLONING="YES"]')
    db.run_sync(vm_disks.authorize_disks, ADMIN, cloning, CONFIG)


# ------------------------------------------------------------------ orphans, concurrency
def test_image_only_a_vm_uses_is_an_orphan(db):
    """oneimage orphans consults templates only (vms.md §4.10): a USED image that no
    template names is listed."""
    add_image(db, "np")
    acquire(db, 1, 'DISK=[IMAGE_ID="0"]')
    assert image(db, 0).state == S.USED
    assert db.run_sync(referenced_image_ids) == set()


@pytest.mark.skipif(backend() == "sqlite",
                    reason="SQLite has one writer thread in the daemon: no concurrency")
def test_concurrent_acquires_of_a_persistent_image(db):
    add_image(db, "p", persistent=True)
    results: dict[int, object] = {}
    start = threading.Barrier(8)

    def vm(vm_id: int) -> None:
        start.wait()
        try:
            results[vm_id] = acquire(db, vm_id, 'DISK=[IMAGE_ID="0"]')[1]
        except errors.OneError as exc:
            results[vm_id] = exc.detail

    threads = [threading.Thread(target=vm, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [k for k, v in results.items() if v == [0]]
    assert len(winners) == 1, results
    assert all(v == "DISK 0: Cannot acquire image 0, it is persistent and already in use"
               for k, v in results.items() if k not in winners)
    img = image(db, 0)
    assert (img.state, img.vms, img.running_vms) == (S.USED_PERS, winners, 1)


def test_cloning_vm_disks_after_the_copy(db):
    """vms.md §5.3 step 7: a DISK acquired LOCKED is CLONING with no SOURCE; when the copy
    ends the VM core asks cloning_check and refreshes the DISK with clear_cloning."""
    from oned_images.domain import driver_replies as replies
    from oned_images.driver.parse import DriverResult

    oid = add_image(db, "copying", state=S.LOCKED, fmt="")

    def empty_source() -> None:
        img = read_image(oid)
        img.source = ""
        write_image(img)

    db.run_sync(empty_source)
    tmpl, _ = acquire(db, 4, 'DISK=[IMAGE_ID="0"]\nDISK=[TYPE="swap",SIZE="1"]')
    d = disk(tmpl)
    assert (d["CLONING"], d["SOURCE"], d["IMAGE_STATE"]) == ("YES", "", "9")
    assert "DRIVER" not in d and "FORMAT" not in d
    assert db.run_sync(vm_disks.cloning_check, tmpl) == "cloning"

    def copy(ok: bool) -> None:
        img = read_image(oid)
        replies.copy_done(img, DriverResult("cp", oid, 0 if ok else 1,
                                            "/ds/1/abc qcow2\n" if ok else "", ""), "cp")
        write_image(img)

    db.run_sync(copy, True)
    assert db.run_sync(vm_disks.cloning_check, tmpl) == "ready"
    vm_disks.clear_cloning(tmpl, image(db, oid))
    d = disk(tmpl)
    assert "CLONING" not in d
    assert (d["SOURCE"], d["DRIVER"], d["FORMAT"], d["IMAGE_STATE"]) == (
        "/ds/1/abc", "qcow2", "qcow2", "9")
    other, _ = acquire(db, 5, 'DISK=[IMAGE_ID="0"]')  # USED now: no CLONING
    assert "CLONING" not in disk(other)
    add_image(db, "failing", state=S.LOCKED)
    t2, _ = acquire(db, 6, 'DISK=[IMAGE_ID="1"]')

    def fail() -> None:
        img = read_image(1)
        replies.copy_done(img, DriverResult("cp", 1, 1, "", "x", error="x"), "cp")
        write_image(img)

    db.run_sync(fail)
    assert db.run_sync(vm_disks.cloning_check, t2) == "failed"
