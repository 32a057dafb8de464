"""one.image.clone end to end (api.md §2.2, §7.5): checks in oned's order, the new
image, and the source's CLONE/USED bookkeeping while the CLONE action runs."""

from __future__ import annotations

import re

import pytest

from tests.support.seed import (
    CTIME,
    dummy_datastore,
    edit_body,
    fails,
    field,
    info,
    num,
    ok,
    open_gate,
    register,
    section,
    snapshot,
    snapshots,
    template_dict,
    unique,
    user,
    wait_state,
)

M = "one.image.clone"


def ids(xml: str, name: str) -> list[int]:
    return [int(x) for x in re.findall(r"<ID>(\d+)</ID>", section(xml, name))]


# ------------------------------------------------------------------ refusals
def test_missing_source(daemon):
    assert fails(daemon, M, 999, "c") == ("[one.image.clone] Error getting image [999].",
                                          1024, 999)
    assert fails(daemon, M, -1, "c", 1) == ("[one.image.clone] Error getting image Pool.",
                                            1024, -1)


@pytest.mark.parametrize("kind", ["KERNEL", "RAMDISK", "CONTEXT"])
def test_file_types_cannot_be_cloned(daemon, kind):
    src = register(daemon, 2, extra=f'TYPE="{kind}"\n')
    assert fails(daemon, M, src, unique("c")) == (
        "[one.image.clone] KERNEL, RAMDISK, BACKUP and CONTEXT cannot be cloned.", 2048, -1)
    # the type check comes before the target datastore lookup
    assert fails(daemon, M, src, unique("c"), 999)[0] == (
        "[one.image.clone] KERNEL, RAMDISK, BACKUP and CONTEXT cannot be cloned.")


def test_images_with_snapshots_cannot_be_cloned(daemon, ds):
    src = register(daemon, ds, extra='TYPE="DATABLOCK"\nPERSISTENT="YES"\n')
    edit_body(daemon, src, SNAPSHOTS=snapshots(snapshot(0, active=True)))
    assert fails(daemon, M, src, unique("c")) == (
        "[one.image.clone] Cannot clone images with snapshots", 2048, -1)


def test_target_datastore_checks(daemon, ds):
    src = register(daemon, ds)
    assert fails(daemon, M, src, "c", 999) == (
        "[one.image.clone] Error getting datastore [999].", 1024, 999)
    for target in (0, 2):
        assert fails(daemon, M, src, "c", target) == (
            "[one.image.clone] Clone only supported for IMAGE_DS Datastores", 2048, -1)
    # datastore 1 is an IMAGE_DS of DS_MAD fs, the source's is dummy
    assert fails(daemon, M, src, "c", 1) == (
        "[one.image.clone] Clone only supported to same DS_MAD Datastores", 2048, -1)


def test_capacity_of_the_target_has_no_admin_bypass(daemon, ds):
    small = dummy_datastore(daemon, "clone-small", 'LIMIT_MB="1"\n')
    src = register(daemon, ds, size=5)
    assert fails(daemon, M, src, unique("c"), small) == (
        "[one.image.clone] Not enough space in datastore", 2048, -1)


def test_authorization(daemon, ds):
    src = register(daemon, ds)
    uid, session = user(daemon)
    assert fails(daemon, M, src, unique("c"), session=session) == (
        f"[one.image.clone] User [{uid}] : Not authorized to perform USE IMAGE [{src}].",
        512, -1)
    # OTHER_U opens the image, but a user outside "users" may not create images
    ok(daemon, "one.image.chmod", src, -1, -1, -1, -1, -1, -1, 1, -1, -1)
    gid = ok(daemon, "one.group.allocate", unique("g"))
    uid2, session2 = user(daemon, groups=[gid])
    assert fails(daemon, M, src, unique("c"), session=session2) == (
        f"[one.image.clone] User [{uid2}] : Not authorized to perform CREATE IMAGE.", 512, -1)
    # without OTHER_U both checks fail, joined in oned's order
    ok(daemon, "one.image.chmod", src, -1, -1, -1, -1, -1, -1, 0, -1, -1)
    assert fails(daemon, M, src, unique("c"), session=session2) == (
        f"[one.image.clone] User [{uid2}] : Not authorized to perform CREATE IMAGE; "
        f"Not authorized to perform USE IMAGE [{src}].", 512, -1)
    # a users member may clone it (OTHER_U again) and owns the clone
    ok(daemon, "one.image.chmod", src, -1, -1, -1, -1, -1, -1, 1, -1, -1)
    new = ok(daemon, M, src, "users-clone", session=session)
    xml = wait_state(daemon, new, 1)
    assert (num(xml, "UID"), num(xml, "GID")) == (uid, 1)


def test_name_rules(daemon, ds):
    src = register(daemon, ds)
    taken = register(daemon, ds)
    taken_name = field(info(daemon, taken), "NAME")
    assert fails(daemon, M, src, taken_name) == (
        f"[one.image.clone] Error allocating a new image. NAME is already taken by IMAGE "
        f"{taken}.", 16384, -1)
    assert fails(daemon, M, src, "a:b") == (
        "[one.image.clone] Error allocating a new image. Invalid NAME, char ':' is not "
        "allowed", 16384, -1)
    assert fails(daemon, M, src, "") == (
        "[one.image.clone] Error allocating a new image. Invalid NAME, it cannot be empty",
        16384, -1)


def test_source_state_must_be_ready_used_or_clone(daemon, ds):
    src = register(daemon, ds)
    ok(daemon, "one.image.enable", src, False)
    assert fails(daemon, M, src, unique("c")) == (
        "[one.image.clone] Error allocating a new image. Cannot clone image in state: "
        "DISABLED", 16384, -1)


# ------------------------------------------------------------------ success
@pytest.mark.parametrize("target", ["absent", -1, "same"])
def test_clone_copies_the_source(daemon, ds, target):
    src = register(daemon, ds, source="/var/tmp/clone-src.img", fmt="qcow2", size=3,
                   extra='TYPE="DATABLOCK"\nDESCRIPTION="base"\nDEV_PREFIX="vd"\n')
    name = unique("copy")
    args = {"absent": (), -1: (-1,), "same": (ds,)}[target]
    new = ok(daemon, M, src, name, *args)
    assert new > src
    xml = wait_state(daemon, new, 1)
    assert [field(xml, t) for t in ("NAME", "SOURCE", "PATH", "FORMAT", "DATASTORE")] == [
        name, "dummy_path", "/var/tmp/clone-src.img", "dummy_format", "dummy-ds"]
    assert [num(xml, t) for t in ("TYPE", "SIZE", "PERSISTENT", "CLONING_ID", "PREV_STATE",
                                  "DATASTORE_ID")] == [2, 3, 0, -1, 1, ds]
    assert template_dict(xml) == {"DESCRIPTION": "base", "DEV_PREFIX": "vd"}
    src_xml = wait_state(daemon, src, 1)
    assert (num(src_xml, "CLONING_OPS"), section(src_xml, "CLONES")) == (0, "<CLONES></CLONES>")


def test_clone_into_another_datastore_of_the_same_driver(daemon, ds, one):
    other = dummy_datastore(daemon, "clone-other")
    src = register(daemon, ds, extra='PERSISTENT="YES"\n')
    new = one.image.clone(src, unique("moved"), other)
    xml = wait_state(daemon, new, 1)
    assert (num(xml, "DATASTORE_ID"), field(xml, "DATASTORE"), num(xml, "PERSISTENT")) == (
        other, "clone-other", 1)
    assert new in [int(e) for e in re.findall(
        r"<ID>(\d+)</ID>", section(ok(daemon, "one.datastore.info", other), "IMAGES"))]


def test_default_image_persistent_of_the_user(daemon, ds):
    uid, session = user(daemon)
    mine_p = ok(daemon, "one.image.allocate", 'NAME="pp"\nTYPE="DATABLOCK"\nSIZE="1"\n'
                'PERSISTENT="YES"\nPERSISTENT_TYPE="SHAREABLE"', ds, session=session)
    mine_np = ok(daemon, "one.image.allocate", 'NAME="np"\nTYPE="DATABLOCK"\nSIZE="1"', ds,
                 session=session)
    wait_state(daemon, mine_p, 1)
    wait_state(daemon, mine_np, 1)
    inherit = ok(daemon, M, mine_p, "inherit", session=session)
    ok(daemon, "one.user.update", uid, 'OPENNEBULA=[ DEFAULT_IMAGE_PERSISTENT="NO" ]', 1)
    forced_np = ok(daemon, M, mine_p, "forced-np", session=session)
    ok(daemon, "one.user.update", uid, 'OPENNEBULA=[ DEFAULT_IMAGE_PERSISTENT="YES" ]', 1)
    forced_p = ok(daemon, M, mine_np, "forced-p", session=session)
    docs = [wait_state(daemon, i, 1) for i in (inherit, forced_np, forced_p)]
    assert [num(x, "PERSISTENT") for x in docs] == [1, 0, 1]
    # a non-persistent result drops PERSISTENT_TYPE=SHAREABLE
    assert template_dict(docs[0])["PERSISTENT_TYPE"] == "SHAREABLE"
    assert "PERSISTENT_TYPE" not in template_dict(docs[1])


# ------------------------------------------------------------------ while cloning
def test_non_persistent_source_is_used_while_cloning(flaky, fds):
    src = register(flaky, fds, source="/var/tmp/gsrc", fmt="raw", size=4,
                   extra='MODE="clone:gate"\nDESCRIPTION="g"\n')
    a = ok(flaky, M, src, unique("a"))
    new = info(flaky, a)
    assert [num(new, t) for t in ("STATE", "PREV_STATE", "CLONING_ID", "SIZE", "PERSISTENT")
            ] == [4, 0, src, 4, 0]
    assert [field(new, t) for t in ("SOURCE", "PATH", "FORMAT")] == ["", "/var/tmp/gsrc", "raw"]
    assert template_dict(new) == {"DESCRIPTION": "g", "DEV_PREFIX": "sd",
                                  "MODE": "clone:gate"}
    xml = info(flaky, src)
    assert [num(xml, t) for t in ("STATE", "PREV_STATE", "CLONING_OPS")] == [2, 2, 1]
    assert ids(xml, "CLONES") == [a]
    b = ok(flaky, M, src, unique("b"))
    xml = info(flaky, src)
    assert (num(xml, "STATE"), num(xml, "CLONING_OPS"), ids(xml, "CLONES")) == (2, 2, [a, b])
    # what a USED source refuses
    assert fails(flaky, "one.image.delete", src) == (
        "[one.image.delete] Cannot delete image. There are 0 VMs using it.", 2048, -1)
    assert fails(flaky, "one.image.enable", src, False) == (
        "[one.image.enable] Could not disable image: Image cannot be in state USED.", 8192, -1)
    assert fails(flaky, "one.image.persistent", src, True) == (
        "[one.image.persistent] Could not make image persistent: Image cannot be in state "
        "USED.", 8192, -1)
    # the clone target is LOCKED
    assert fails(flaky, M, a, unique("c")) == (
        "[one.image.clone] Error allocating a new image. Cannot clone image in state: LOCKED",
        16384, -1)
    open_gate(flaky, "clone", a)
    done = wait_state(flaky, a, 1)
    assert [field(done, t) for t in ("SOURCE", "FORMAT")] == [f"flaky_clone/{a}", "qcow2"]
    assert (num(done, "CLONING_ID"), num(done, "PREV_STATE")) == (-1, 1)
    xml = info(flaky, src)
    assert (num(xml, "STATE"), num(xml, "CLONING_OPS"), ids(xml, "CLONES")) == (2, 1, [b])
    open_gate(flaky, "clone", b)
    wait_state(flaky, b, 1)
    xml = wait_state(flaky, src, 1)
    assert (num(xml, "PREV_STATE"), num(xml, "CLONING_OPS"), ids(xml, "CLONES")) == (1, 0, [])


def test_persistent_source_is_clone_while_cloning(flaky, fds):
    src = register(flaky, fds, extra='MODE="clone:gate"\nPERSISTENT="YES"\n')
    a = ok(flaky, M, src, unique("pa"))
    xml = info(flaky, src)
    assert [num(xml, t) for t in ("STATE", "PREV_STATE", "CLONING_OPS")] == [6, 6, 1]
    assert num(info(flaky, a), "PERSISTENT") == 1
    assert fails(flaky, "one.image.delete", src) == (
        "[one.image.delete] Cannot delete image. There are 1 active clone operations.",
        2048, -1)
    assert fails(flaky, "one.image.enable", src, False) == (
        "[one.image.enable] Could not disable image: Image cannot be in state CLONE.",
        8192, -1)
    assert fails(flaky, "one.image.persistent", src, False) == (
        "[one.image.persistent] Could not make image non-persistent: Image cannot be in "
        "state CLONE.", 8192, -1)
    # a CLONE source can be cloned again
    b = ok(flaky, M, src, unique("pb"))
    assert (num(info(flaky, src), "STATE"), num(info(flaky, src), "CLONING_OPS")) == (6, 2)
    open_gate(flaky, "clone", b)
    open_gate(flaky, "clone", a)
    wait_state(flaky, a, 1)
    wait_state(flaky, b, 1)
    xml = wait_state(flaky, src, 1)
    assert (num(xml, "CLONING_OPS"), ids(xml, "CLONES")) == (0, [])


def test_failed_clone_leaves_the_new_image_in_error(flaky, fds):
    src = register(flaky, fds, extra='MODE="clone:fail"\n')
    new = ok(flaky, M, src, unique("bad"))
    xml = wait_state(flaky, new, 5)
    assert re.fullmatch(rf"{CTIME} : Error cloning from Image {src}: the disk is on fire; "
                        "and smoking", template_dict(xml)["ERROR"])
    assert (num(xml, "CLONING_ID"), field(xml, "SOURCE")) == (-1, "")
    src_xml = wait_state(flaky, src, 1)
    assert (num(src_xml, "CLONING_OPS"), ids(src_xml, "CLONES")) == (0, [])
    # an ERROR image cannot be a clone source
    assert fails(flaky, M, new, unique("c")) == (
        "[one.image.clone] Error allocating a new image. Cannot clone image in state: ERROR",
        16384, -1)


def test_clone_without_source_in_reply_fails(flaky, fds):
    src = register(flaky, fds, extra='MODE="clone:empty"\n')
    new = ok(flaky, M, src, unique("empty"))
    xml = wait_state(flaky, new, 5)
    assert re.fullmatch(rf"{CTIME} : Error cloning from Image {src}: CLONE returned no SOURCE",
                        template_dict(xml)["ERROR"])
    wait_state(flaky, src, 1)


def test_forced_delete_of_a_running_clone_releases_the_source(flaky, fds):
    src = register(flaky, fds, extra='MODE="clone:gate"\n')
    new = ok(flaky, M, src, unique("killed"))
    assert num(info(flaky, src), "STATE") == 2
    assert fails(flaky, "one.image.delete", new) == (
        "[one.image.delete] Image locked, use --force flag to remove the image. Force delete "
        "may leave some files on Datastore", 8192, new)
    assert ok(flaky, "one.image.delete", new, True) == new
    assert fails(flaky, "one.image.info", new) == (
        f"[one.image.info] Error getting image [{new}].", 1024, new)
    xml = info(flaky, src)
    assert (num(xml, "STATE"), num(xml, "CLONING_OPS"), ids(xml, "CLONES")) == (1, 0, [])


def test_clone_template_gets_the_allocate_rules(daemon, ds):
    # ImageAPI::clone allocates through ImagePool::allocate: Image::insert sets
    # DEV_PREFIX when the template has none, removes DRIVER (only mkfs generates it),
    # PATH/SOURCE/FORMAT/SIZE/FS/TYPE/PERSISTENT/TM_MAD from the template, and
    # clone_template drops VCENTER_IMPORTED; FS is not carried over
    src = register(daemon, ds, size=2, extra='TYPE="DATABLOCK"\nFS="ext4"\n')
    assert field(info(daemon, src), "FS") == "ext4"
    ok(daemon, "one.image.update", src,
       'DESCRIPTION="base"\nDRIVER="qcow2"\nPATH="/var/tmp/p"\nSIZE="9"\nFS="xfs"\n'
       'TM_MAD="ssh"\nVCENTER_IMPORTED="YES"\nFORMAT="vmdk"\nTYPE="CDROM"\n'
       'PERSISTENT="YES"\nTARGET="vdb"', 0)
    assert "DEV_PREFIX" not in template_dict(info(daemon, src))
    xml = wait_state(daemon, ok(daemon, M, src, unique("c")), 1)
    assert template_dict(xml) == {"DESCRIPTION": "base", "DEV_PREFIX": "sd", "TARGET": "vdb"}
    assert [field(xml, t) for t in ("FS", "FORMAT")] == ["", "dummy_format"]
    assert [num(xml, t) for t in ("TYPE", "SIZE", "PERSISTENT")] == [2, 2, 0]
    # a CDROM gets DEFAULT_CDROM_DEVICE_PREFIX
    cd = register(daemon, ds, extra='TYPE="CDROM"\n')
    ok(daemon, "one.image.update", cd, 'DESCRIPTION="iso"', 0)
    xml = wait_state(daemon, ok(daemon, M, cd, unique("c")), 1)
    assert template_dict(xml) == {"DESCRIPTION": "iso", "DEV_PREFIX": "hd"}
